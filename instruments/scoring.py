"""Scoring: turn the long responses table into the scores table, from instrument definitions.

Every scale of every instrument is scored from dense integer codes: the answers are scattered
into an administrations x items cube (one row per participant x wave x instrument) and each
instrument's scales are one matrix product of its cube with an item x scale membership matrix
built once from the library. Nothing here loops over data rows; Python loops run over
instruments and the (small) definitions.

Scoring rules (``docs/contracts.md``):

* reverse keying on the item's own range, ``x' = min + max - x``;
* ``score = multiplier * rule(keyed answered items) + offset`` with ``rule`` the ``sum`` or
  the ``mean`` of the answered items;
* ``score`` is null when fewer than ``required_items`` items were answered;
* a ``sum`` scale that allows missing items is *prorated* (see :func:`score_responses`);
* ``band`` is the first band (ascending, inclusive ``upper``) the final score does not exceed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import polars as pl

from instruments.definition import InstrumentLibrary
from instruments.encoding import encode_text

#: Columns of the responses table that scoring reads.
RESPONSE_COLUMNS: Final = ("participant_id", "wave", "instrument", "item", "value")

#: The scores table (``scores.parquet``) schema, in column order.
SCORES_SCHEMA: Final = pl.Schema(
    {
        "participant_id": pl.String,
        "wave": pl.Int32,
        "instrument": pl.String,
        "scale": pl.String,
        "score": pl.Float64,
        "items_answered": pl.Int16,
        "band": pl.String,
    }
)

_MEMBERSHIP_SCHEMA: Final = pl.Schema(
    {
        "instrument": pl.String,
        "scale": pl.String,
        "item": pl.String,
        "reverse": pl.Boolean,
        "min": pl.Int32,
        "max": pl.Int32,
        "multiplier": pl.Float64,
        "offset": pl.Float64,
        "rule": pl.String,
        "n_items": pl.Int32,
        "required": pl.Int32,
        "scale_key": pl.UInt32,
    }
)


def reverse_key(value: pl.Expr | int, lo: pl.Expr | int, hi: pl.Expr | int) -> pl.Expr | int:
    """Reverse-key a response on its item's own range: ``lo + hi - value``.

    A reverse-keyed item is worded so that agreement means *less* of the construct; mapping
    ``x -> min + max - x`` flips it onto the same range (1..5: 1<->5, 2<->4, 3 stays). The map
    is its own inverse. Nulls (skipped items) stay null.

    Parameters
    ----------
    value, lo, hi
        The response and the item's lowest and highest response option: integers or polars
        expressions (broadcast as usual).

    Returns
    -------
    pl.Expr | int
        The keyed value, of the same kind as the inputs.

    Examples
    --------
    >>> reverse_key(2, 1, 5)
    4
    >>> import polars as pl
    >>> pl.select(reverse_key(pl.lit(0), 0, 4)).item()
    4
    """
    return lo + hi - value


def scale_membership(library: InstrumentLibrary) -> pl.DataFrame:
    """One row per instrument x scale x item: what scoring joins to the responses.

    Columns: ``instrument, scale, item, reverse, min, max`` (the item's own response range),
    ``multiplier, offset, rule, n_items`` (items in the scale), ``required`` (answered items
    needed for a score) and ``scale_key`` (a dense integer id of the scale, in library order:
    instruments by id, scales in file order).

    Parameters
    ----------
    library
        The instruments to score.

    Returns
    -------
    pl.DataFrame
        The membership table; empty (with its schema) for an empty library.
    """
    rows: list[dict[str, object]] = []
    key = 0
    for inst_id in library.ids():
        inst = library[inst_id]
        for s in inst.scales:
            for item_id in s.items:
                lo, hi = inst.item_range(item_id)
                rows.append(
                    {
                        "instrument": inst.id,
                        "scale": s.id,
                        "item": item_id,
                        "reverse": inst.item(item_id).reverse,
                        "min": lo,
                        "max": hi,
                        "multiplier": float(s.multiplier),
                        "offset": float(s.offset),
                        "rule": s.rule,
                        "n_items": len(s.items),
                        "required": s.required_items,
                        "scale_key": key,
                    }
                )
            key += 1
    return pl.DataFrame(rows, schema=_MEMBERSHIP_SCHEMA)


def scale_table(library: InstrumentLibrary) -> pl.DataFrame:
    """One row per scale: what each scale is and the range of its final score.

    For dashboards, reports and analysis code that need a scale's name, bounds or minimal
    important difference without reading definition files.

    Parameters
    ----------
    library
        The instruments.

    Returns
    -------
    pl.DataFrame
        Columns ``instrument, scale, name, rule, n_items, required_items, min, max, mid``:
        ``min``/``max`` bound the final score (after multiplier and offset, from the items'
        own ranges, :meth:`InstrumentSpec.scale_range`); ``mid`` is the minimal important
        difference in score units, null where the definition gives none.

    Examples
    --------
    >>> from instruments.definition import load_library
    >>> t = scale_table(load_library()).filter(pl.col("instrument") == "who5")
    >>> t.select("scale", "n_items", "min", "max", "mid").rows()
    [('raw', 5, 0.0, 25.0, None), ('total', 5, 0.0, 100.0, 10.0)]
    """
    rows: list[dict[str, object]] = []
    for inst_id in library.ids():
        inst = library[inst_id]
        for s in inst.scales:
            lo, hi = inst.scale_range(s.id)
            mid = inst.minimal_important_difference.get(s.id)
            rows.append(
                {
                    "instrument": inst.id,
                    "scale": s.id,
                    "name": s.name,
                    "rule": s.rule,
                    "n_items": len(s.items),
                    "required_items": s.required_items,
                    "min": lo,
                    "max": hi,
                    "mid": None if mid is None else float(mid),
                }
            )
    schema = {
        "instrument": pl.String,
        "scale": pl.String,
        "name": pl.String,
        "rule": pl.String,
        "n_items": pl.Int32,
        "required_items": pl.Int32,
        "min": pl.Float64,
        "max": pl.Float64,
        "mid": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


#: Administrations are numbered by counting over a dense participant x wave x instrument grid
#: when it has at most this many cells per row (+ the minimum); else by sorting their keys.
_DENSE_CELLS_PER_ROW = 4
_DENSE_CELLS_MIN = 1024


@dataclass(frozen=True)
class _Instrument:
    """One instrument's scoring constants, as arrays over its items and scales.

    ``membership`` is items x scales (1 where the item belongs to the scale); per-scale
    arrays are in the definition's scale order, ``scale_keys`` their library-wide numbers.
    """

    code: int
    n_items: int
    lo: np.ndarray
    hi: np.ndarray
    reverse: np.ndarray
    membership: np.ndarray
    scale_keys: np.ndarray
    is_mean: np.ndarray
    n_scale_items: np.ndarray
    required: np.ndarray
    multiplier: np.ndarray
    offset: np.ndarray
    lo_all: np.ndarray
    width_all: np.ndarray
    bands: tuple[tuple[tuple[float, int], ...], ...]


@dataclass(frozen=True)
class _Library:
    """The library as arrays: item slots (instruments' items in library order), scales."""

    instruments: tuple[_Instrument, ...]
    item_ids: tuple[str, ...]
    slot_owner: np.ndarray
    slot_pos: np.ndarray
    slot_lo: np.ndarray
    slot_hi: np.ndarray
    scale_instrument: tuple[str, ...]
    scale_names: tuple[str, ...]
    band_labels: tuple[str, ...]
    need_ranges: bool


def _library_arrays(library: InstrumentLibrary) -> _Library:
    insts: list[_Instrument] = []
    item_ids: list[str] = []
    owner: list[int] = []
    scale_inst: list[str] = []
    scale_names: list[str] = []
    labels: list[str] = []
    equal_ranges = True
    for code, inst_id in enumerate(library.ids()):
        inst = library[inst_id]
        items = [it.id for it in inst.items]
        ranges = np.array([inst.item_range(i) for i in items], dtype=np.int64).reshape(-1, 2)
        pos = {item: p for p, item in enumerate(items)}
        member = np.zeros((len(items), len(inst.scales)))
        bands: list[tuple[tuple[float, int], ...]] = []
        for j, s in enumerate(inst.scales):
            member[[pos[i] for i in s.items], j] = 1.0
            equal_ranges &= len({inst.item_range(i) for i in s.items}) == 1
            bands.append(tuple((float(b.upper), len(labels) + n) for n, b in enumerate(s.bands)))
            labels += [b.label for b in s.bands]
        scales = inst.scales
        first_key = len(scale_names)
        insts.append(
            _Instrument(
                code=code,
                n_items=len(items),
                lo=ranges[:, 0],
                hi=ranges[:, 1],
                reverse=np.array([it.reverse for it in inst.items], dtype=bool),
                membership=member,
                scale_keys=np.arange(first_key, first_key + len(scales)),
                is_mean=np.array([s.rule == "mean" for s in scales]),
                n_scale_items=np.array([len(s.items) for s in scales], dtype=np.float64),
                required=np.array([s.required_items for s in scales], dtype=np.float64),
                multiplier=np.array([float(s.multiplier) for s in scales]),
                offset=np.array([float(s.offset) for s in scales]),
                lo_all=member.T @ ranges[:, 0].astype(np.float64),
                width_all=member.T @ (ranges[:, 1] - ranges[:, 0]).astype(np.float64),
                bands=tuple(bands),
            )
        )
        item_ids += items
        owner += [code] * len(items)
        scale_inst += [inst.id] * len(scales)
        scale_names += [s.id for s in scales]
    return _Library(
        instruments=tuple(insts),
        item_ids=tuple(item_ids),
        slot_owner=np.array(owner, dtype=np.int64),
        slot_pos=np.concatenate([np.arange(i.n_items) for i in insts]).astype(np.int64),
        slot_lo=np.concatenate([i.lo for i in insts]),
        slot_hi=np.concatenate([i.hi for i in insts]),
        scale_instrument=tuple(scale_inst),
        scale_names=tuple(scale_names),
        band_labels=tuple(labels),
        need_ranges=not equal_ranges,
    )


def _lookup(distinct: pl.Series, known: list[str]) -> np.ndarray:
    """Index in ``known`` of each distinct text (-1: unknown or null)."""
    index = {t: n for n, t in enumerate(known)}
    return np.array([index.get(t, -1) for t in distinct.to_list()], dtype=np.int64)


def _score_block(inst: _Instrument, keyed: np.ndarray, answered: np.ndarray, need_ranges: bool):
    """Scores of one instrument's administrations (rows of the item cubes).

    ``keyed``/``answered``: administrations x items (keyed values, 0 where unanswered).
    Returns score (float64), null (bool), answered items (int) and band (label index, -1
    none), each administrations x scales. Sums are exact (integers in floating point);
    the formulas are those of :func:`score_responses`, in the same operation order.
    """
    member = inst.membership.astype(keyed.dtype)
    total = (keyed @ member).astype(np.float64)
    k = (answered @ member).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if need_ranges:
            lo_k = (answered @ (member * inst.lo[:, None])).astype(np.float64)
            width = (answered @ (member * (inst.hi - inst.lo)[:, None])).astype(np.float64)
            prorated = (inst.lo_all * width + (total - lo_k) * inst.width_all) / width
        else:
            prorated = total * inst.n_scale_items / k
        raw = np.where(
            inst.is_mean, total / k, np.where(k == inst.n_scale_items, total, prorated)
        )
    null = k < inst.required
    score = inst.multiplier * raw + inst.offset
    band = np.full(score.shape, -1, dtype=np.int64)
    for j, bands in enumerate(inst.bands):
        col = score[:, j]
        for upper, label in reversed(bands):  # the first band whose upper is not exceeded
            band[(col <= upper) & ~null[:, j], j] = label
    return score, null, k.astype(np.int16), band


def score_responses(
    responses: pl.DataFrame | pl.LazyFrame, library: InstrumentLibrary, *, sort: bool = False
) -> pl.DataFrame:
    """Score every scale of every instrument present in the responses.

    Produces the scores table of ``docs/contracts.md``: one row per participant x wave x
    instrument x scale for every instrument the participant was *administered* at that wave,
    i.e. that has at least one item row (a row whose value is null, a skipped item, still
    counts). Scales of an administered instrument with no answered item are present with a
    null score and ``items_answered = 0``.

    Scoring, per scale (item ranges from the definition, ``k`` answered items of ``n``):

    * keyed value ``x'`` = ``min + max - x`` for reverse-keyed items, else ``x``;
    * ``mean``: ``m = sum(x') / k``;
    * ``sum`` with every item answered: ``s = sum(x')``;
    * ``sum`` with missing items allowed (``min_items < n``): *prorated*, the standard
      treatment of sum scores with allowed missing items (person-mean imputation): the mean
      of the answered items times the number of items, ``s = sum(x') * n / k``. When items have different ranges
      the answered part is rescaled on the summed ranges instead,
      ``s = L + (sum(x') - L_k) * W / W_k`` (``L``, ``W``: summed minimum and width of all
      items; ``L_k``, ``W_k``: of the answered ones), which equals ``sum(x') * n / k`` when
      all ranges are equal and keeps the score inside :meth:`InstrumentSpec.scale_range`;
    * ``score = multiplier * (m or s) + offset`` (e.g. WHO-5 ``total = 4 * raw``, Topp et al.
      2015), null when ``k < required_items``;
    * ``band``: label of the first band whose inclusive ``upper`` the score does not exceed.

    Rows whose (instrument, item) the library does not define are ignored: validation
    quarantines them before scoring.

    How (no loop over rows, no group_by): participant ids and item ids become dense integer
    codes (:func:`instruments.encoding.encode_text`); each administration (participant x
    wave x instrument, numbered in output order) is a row of a dense administrations x
    items cube into which the values are scattered, and every scale's answered count and
    keyed sum is one matrix product of the cube with the instrument's item x scale
    membership matrix. Sums of integers are exact in floating point, so the scores are
    those of the formulas above evaluated per row.

    Parameters
    ----------
    responses
        The long responses table (validated): at least ``participant_id`` (str), ``wave``
        (int), ``instrument`` (str), ``item`` (str), ``value`` (int, null = skipped), one row
        per participant x wave x item.
    library
        The instrument definitions.
    sort
        Kept for compatibility: the rows always come sorted by participant, wave,
        instrument and scale (library order), which costs nothing in this method.

    Returns
    -------
    pl.DataFrame
        Columns ``participant_id, wave, instrument, scale, score, items_answered, band``
        (:data:`SCORES_SCHEMA`), sorted as above.

    Raises
    ------
    ValueError
        If a required column is missing, or the table was not validated: a value outside its
        item's range, an item answered twice in one wave, or a null participant id or wave
        (a programmer error upstream).

    Examples
    --------
    WHO-5, one participant answering 3, 4, 2, 3, 3 (raw 15, percentage 60) and another
    skipping item 5 (not scored: WHO-5 needs all five items):

    >>> import polars as pl
    >>> from instruments.definition import load_library
    >>> resp = pl.DataFrame({
    ...     "participant_id": ["a"] * 5 + ["b"] * 5,
    ...     "wave": [0] * 10,
    ...     "instrument": ["who5"] * 10,
    ...     "item": [f"who5_{i}" for i in range(1, 6)] * 2,
    ...     "value": [3, 4, 2, 3, 3, 5, 5, 5, 5, None],
    ... })
    >>> scores = score_responses(resp, load_library().subset(["who5"]), sort=True)
    >>> scores.select("participant_id", "scale", "score", "items_answered", "band").rows()
    [('a', 'raw', 15.0, 5, None), ('a', 'total', 60.0, 5, 'adequate_wellbeing'), ('b', 'raw', None, 4, None), ('b', 'total', None, 4, None)]
    """  # noqa: E501
    missing = [c for c in RESPONSE_COLUMNS if c not in responses.collect_schema().names()]
    if missing:
        raise ValueError(f"responses lack column(s) {missing}; expected {list(RESPONSE_COLUMNS)}")
    if not library.ids():
        return pl.DataFrame(schema=SCORES_SCHEMA)
    lib = _library_arrays(library)
    frame = responses.lazy().select(
        pl.col("participant_id").cast(pl.String),
        pl.col("wave").cast(pl.Int32),
        pl.col("instrument").cast(pl.String),
        pl.col("item").cast(pl.String),
        pl.col("value").cast(pl.Int32),
    ).collect()

    # --- each row's item slot (library order); rows the library does not define drop out
    inst_code, inst_txt = encode_text(frame["instrument"])
    item_code, item_txt = encode_text(frame["item"])
    # Per-row arrays in the smallest integer types, looked up in small tables whose last
    # entry (index -1) answers for "not in the library": on 20 M rows fresh memory costs
    # more than the arithmetic.
    slot = _lookup(item_txt, list(lib.item_ids)).astype(np.int16)[item_code.to_numpy()]
    owner = np.append(lib.slot_owner, -1).astype(np.int16)[slot]
    defined = owner == _lookup(inst_txt, library.ids()).astype(np.int16)[inst_code.to_numpy()]
    defined &= owner >= 0
    pid_code, pid_txt = encode_text(frame["participant_id"])
    wave = frame["wave"]
    if (pid_code == pid_txt.len() - 1).filter(pl.Series(defined)).any() or (
        wave.is_null().to_numpy() & defined
    ).any():
        raise ValueError("null participant id or wave: validate the responses before scoring")
    value = frame["value"]
    answered = value.is_not_null().to_numpy()
    v = value.fill_null(0).to_numpy()
    pid, w = pid_code.to_numpy(), wave.fill_null(0).to_numpy()
    if not defined.all():
        slot, owner, answered, v, pid, w = (a[defined] for a in (slot, owner, answered, v, pid, w))
    n_rows = slot.size
    if n_rows == 0:
        return pl.DataFrame(schema=SCORES_SCHEMA)

    outside = (v < lib.slot_lo.astype(np.int32)[slot]) | (v > lib.slot_hi.astype(np.int32)[slot])
    outside &= answered
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} response value(s) lie outside their item's range: validate "
            "the responses before scoring"
        )

    # --- administrations: participant x wave x instrument, numbered in output order
    present_inst = np.flatnonzero(np.bincount(owner, minlength=len(lib.instruments)))
    local = np.full(len(lib.instruments), -1, dtype=np.int16)
    local[present_inst] = np.arange(present_inst.size)
    m = present_inst.size
    limit = _DENSE_CELLS_PER_ROW * n_rows + _DENSE_CELLS_MIN
    w_lo, w_hi = int(w.min()), int(w.max())
    n_pid = pid_txt.len() - 1
    if n_pid * (w_hi - w_lo + 1) * m <= limit:
        waves, w_code = np.arange(w_lo, w_hi + 1), w - np.int32(w_lo)
    else:
        waves, w_code = np.unique(w, return_inverse=True)
    # key = (participant * waves + wave) * instruments + instrument, in place
    key = pid.astype(np.int32 if n_pid * waves.size * m < 2**31 else np.int64)
    key *= waves.size
    key += w_code
    key *= m
    key += local[owner]
    del w_code
    if n_pid * waves.size * m <= limit:
        present = np.bincount(key, minlength=n_pid * waves.size * m) > 0
        adm_key = np.flatnonzero(present)
        adm = (np.cumsum(present) - 1).astype(key.dtype)[key]
    else:
        adm_key, adm = np.unique(key, return_inverse=True)
    del key
    n_adm = adm_key.size

    # --- the cube: administrations x item position, one cell per (administration, item)
    width = max(lib.instruments[i].n_items for i in present_inst)
    cell = adm.astype(np.int64) if n_adm * width >= 2**31 else adm
    cell *= width
    cell += lib.slot_pos.astype(np.int16)[slot]
    filled = np.zeros(n_adm * width, dtype=bool)
    filled[cell] = True
    if int(np.count_nonzero(filled)) < n_rows:  # some cell was written twice
        counts = np.bincount(cell, minlength=n_adm * width).reshape(n_adm, width)
        repeated = int((counts > 1).any(axis=1).sum())
        raise ValueError(
            f"{repeated} participant x wave x instrument group(s) have an item more than "
            "once: deduplicate the responses before scoring"
        )
    # float32 holds every sum exactly while |sum| < 2**24 (values are Int16 after validation)
    bound = max(int(np.abs(np.concatenate([lib.slot_lo, lib.slot_hi])).max()), 1) * width
    dtype = np.float32 if bound < 2**24 else np.float64
    keyed = np.zeros(n_adm * width, dtype=dtype)
    keyed[cell] = v  # a skipped item's value is 0 here, as is an empty cell's
    keyed = keyed.reshape(n_adm, width)
    is_answered = np.zeros(n_adm * width, dtype=dtype)
    is_answered[cell] = answered
    is_answered = is_answered.reshape(n_adm, width)

    # --- per instrument: scales by matrix products; rows placed in output order
    adm_inst = present_inst[adm_key % m]
    n_out = np.array([len(i.scale_keys) for i in lib.instruments])[adm_inst]
    start = np.cumsum(n_out) - n_out
    total = int(n_out.sum())
    out_adm = np.empty(total, dtype=np.int64 if n_adm >= 2**31 else np.int32)
    out_scale = np.empty(total, dtype=np.uint32)
    out_score = np.empty(total, dtype=np.float64)
    out_null = np.empty(total, dtype=bool)
    out_k = np.empty(total, dtype=np.int16)
    out_band = np.empty(total, dtype=np.int32)
    for i in present_inst:
        inst = lib.instruments[i]
        rows = np.flatnonzero(adm_inst == i)
        x = keyed[rows, : inst.n_items]
        a = is_answered[rows, : inst.n_items]
        for p in np.flatnonzero(inst.reverse):  # reverse_key on the answered cells
            x[:, p] = np.where(a[:, p] > 0, inst.lo[p] + inst.hi[p] - x[:, p], 0)
        score, null, k, band = _score_block(inst, x, a, lib.need_ranges)
        at = (start[rows][:, None] + np.arange(len(inst.scale_keys))).ravel()
        out_adm[at] = np.repeat(rows, len(inst.scale_keys))
        out_scale[at] = np.tile(inst.scale_keys, rows.size)
        out_score[at], out_null[at], out_k[at], out_band[at] = (
            score.ravel(), null.ravel(), k.ravel(), band.ravel()
        )

    group = adm_key[out_adm]
    group //= m
    labels = pl.Series(list(lib.band_labels) + [None], dtype=pl.String)
    out_band[out_band < 0] = len(lib.band_labels)
    scale_key = pl.Series(out_scale, dtype=pl.UInt32)
    return pl.DataFrame(
        {
            "participant_id": pid_txt.gather(
                pl.Series((group // waves.size).astype(np.uint32), dtype=pl.UInt32)
            ),
            "wave": pl.Series(waves.astype(np.int32)[group % waves.size], dtype=pl.Int32),
            "instrument": pl.Series(lib.scale_instrument, dtype=pl.String).gather(scale_key),
            "scale": pl.Series(lib.scale_names, dtype=pl.String).gather(scale_key),
            "score": pl.select(
                pl.when(pl.lit(pl.Series(~out_null))).then(pl.lit(pl.Series(out_score)))
            ).to_series(),
            "items_answered": pl.Series(out_k, dtype=pl.Int16),
            "band": labels.gather(pl.Series(out_band, dtype=pl.UInt32)),
        },
        schema=SCORES_SCHEMA,
    )
