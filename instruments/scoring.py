"""Scoring: turn the long responses table into the scores table, from instrument definitions.

Every scale of every instrument is scored by one vectorised polars query: a scale-membership
table (one row per instrument x scale x item, built once from the library) is joined to the
responses and aggregated with a single ``group_by``. Nothing here loops over data rows or over
scales at query time; Python loops only read the (small) definitions.

Scoring rules (``docs/contracts.md``):

* reverse keying on the item's own range, ``x' = min + max - x``;
* ``score = multiplier * rule(keyed answered items) + offset`` with ``rule`` the ``sum`` or
  the ``mean`` of the answered items;
* ``score`` is null when fewer than ``required_items`` items were answered;
* a ``sum`` scale that allows missing items is *prorated* (see :func:`score_responses`);
* ``band`` is the first band (ascending, inclusive ``upper``) the final score does not exceed.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import polars as pl

from instruments.definition import InstrumentLibrary

#: Columns of the responses table that scoring reads.
RESPONSE_COLUMNS: Final = ("participant_id", "wave", "instrument", "item", "value")

# Packing base for per-slot sums: answered-item count in the low 20 bits (see score_responses).
_SHIFT: Final = 1 << 20

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


def _scale_frame(library: InstrumentLibrary) -> pl.DataFrame:
    """Per-scale constants: ids, slot within its instrument, rule, multiplier/offset, ranges.

    ``lo_all``/``width_all`` are the summed minimum and width (``max - min``) of all the
    scale's items, used to prorate sums over items with unequal ranges.
    """
    rows: list[dict[str, object]] = []
    key = 0
    for code, inst_id in enumerate(library.ids()):
        inst = library[inst_id]
        for slot, s in enumerate(inst.scales):
            ranges = [inst.item_range(i) for i in s.items]
            rows.append(
                {
                    "scale_key": key,
                    "inst_code": code,
                    "slot": slot,
                    "instrument": inst.id,
                    "scale": s.id,
                    "rule": s.rule,
                    "multiplier": float(s.multiplier),
                    "offset": float(s.offset),
                    "n_items": len(s.items),
                    "required": s.required_items,
                    "lo_all": float(sum(lo for lo, _ in ranges)),
                    "width_all": float(sum(hi - lo for lo, hi in ranges)),
                    "equal_ranges": len(set(ranges)) == 1,
                    "item_min": float(ranges[0][0]),
                }
            )
            key += 1
    schema = {
        "scale_key": pl.UInt32,
        "inst_code": pl.UInt32,
        "slot": pl.UInt32,
        "instrument": pl.String,
        "scale": pl.String,
        "rule": pl.String,
        "multiplier": pl.Float64,
        "offset": pl.Float64,
        "n_items": pl.Int32,
        "required": pl.Int32,
        "lo_all": pl.Float64,
        "width_all": pl.Float64,
        "equal_ranges": pl.Boolean,
        "item_min": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def _item_frame(library: InstrumentLibrary, n_slots: int, n_words: int) -> pl.DataFrame:
    """One row per item: instrument, range, keying and scale membership flags.

    Membership: which of the instrument's scales (slots ``0..n_slots-1``, in file order) the
    item belongs to, as 0/1 columns ``m0, m1, ...``. ``word``/``bit`` place the item in a
    per-instrument bit set (64 items per word) so that duplicated item rows can be detected
    without a second group_by.
    """
    rows: list[dict[str, object]] = []
    for code, inst_id in enumerate(library.ids()):
        inst = library[inst_id]
        for pos, it in enumerate(inst.items):
            lo, hi = inst.item_range(it.id)
            row: dict[str, object] = {
                "item": it.id,
                "instrument_def": inst.id,
                "inst_code": code,
                "min": lo,
                "max": hi,
                "reverse": it.reverse,
                "word": pos // 64,
                "bit": 1 << (pos % 64),
            }
            for slot in range(n_slots):
                in_scale = slot < len(inst.scales) and it.id in inst.scales[slot].items
                row[f"m{slot}"] = int(in_scale)
            rows.append(row)
    schema: dict[str, pl.DataType] = {
        "item": pl.String(),
        "instrument_def": pl.String(),
        "inst_code": pl.UInt32(),
        "min": pl.Int32(),
        "max": pl.Int32(),
        "reverse": pl.Boolean(),
        "word": pl.Int32(),
        "bit": pl.UInt64(),
    }
    schema.update({f"m{slot}": pl.Int32() for slot in range(n_slots)})
    return pl.DataFrame(rows, schema=schema)


def _band_expr(library: InstrumentLibrary) -> pl.Expr:
    """``when(scale is s and score <= upper) then label ...`` over every band of every scale.

    Bands are ascending with inclusive upper bounds, so the first matching condition of a
    scale is its band; a null score matches nothing and gets a null band.
    """
    chain = None
    key = 0
    for inst_id in library.ids():
        for s in library[inst_id].scales:
            for band in s.bands:
                cond = (pl.col("scale_key") == key) & (pl.col("score") <= band.upper)
                chain = (pl.when(cond) if chain is None else chain.when(cond)).then(
                    pl.lit(band.label)
                )
            key += 1
    if chain is None:
        return pl.lit(None, dtype=pl.String)
    return chain.otherwise(pl.lit(None, dtype=pl.String))


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

    Parameters
    ----------
    responses
        The long responses table (validated): at least ``participant_id`` (str), ``wave``
        (int), ``instrument`` (str), ``item`` (str), ``value`` (int, null = skipped), one row
        per participant x wave x item.
    library
        The instrument definitions.
    sort
        Sort the rows by participant, wave, instrument and scale (library order). Off by
        default: rows then come in no particular order, and sorting millions of output rows
        by a string id costs about as much as scoring them.

    Returns
    -------
    pl.DataFrame
        Columns ``participant_id, wave, instrument, scale, score, items_answered, band``
        (:data:`SCORES_SCHEMA`); in no particular order unless ``sort``.

    Raises
    ------
    ValueError
        If a required column is missing, or the table was not validated: a value outside its
        item's range, or an item answered twice in one wave (a programmer error upstream).

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
    lf = responses.lazy()
    missing = [c for c in RESPONSE_COLUMNS if c not in lf.collect_schema().names()]
    if missing:
        raise ValueError(f"responses lack column(s) {missing}; expected {list(RESPONSE_COLUMNS)}")
    if not library.ids():
        return pl.DataFrame(schema=SCORES_SCHEMA)

    scales = _scale_frame(library)
    n_slots = max(len(inst.scales) for inst in library)
    n_words = (max(len(inst.items) for inst in library) + 63) // 64
    items = _item_frame(library, n_slots, n_words)
    # Sums of the answered items' minima and widths are needed only where a scale's items
    # have unequal ranges (else they are k * min and k * width).
    need_ranges = not scales["equal_ranges"].all()

    # One row per response, no expansion: each item row carries 0/1 flags m0..m{n_slots-1}
    # for the scales of its instrument it belongs to, and ONE group_by per participant x
    # wave x instrument sums the flagged values slot by slot. To halve the number of
    # aggregations, each slot sums one packed integer per answered item,
    #     1 + 2**20 * (keyed - min)            (0 for a skipped item),
    # so that the slot total is  k + 2**20 * sum(keyed - min):  k (answered items, < 2**20)
    # in the low bits and the shifted keyed sum (>= 0 for in-range values) above. Likewise
    # each row counts  1 + 2**32 * (value out of range).
    value = pl.col("value")
    keyed = (
        pl.when(pl.col("reverse"))
        .then(reverse_key(value, pl.col("min"), pl.col("max")))
        .otherwise(value)
    )
    packed = (
        value.is_not_null().cast(pl.Int64)
        + (keyed - pl.col("min")).cast(pl.Int64).fill_null(0) * _SHIFT
    )
    out_of_range = ((value < pl.col("min")) | (value > pl.col("max"))).fill_null(False)
    # Participant ids (64-character pseudonyms in the pipeline) are grouped and sorted as
    # an Enum of the sorted distinct ids: integer codes whose order is the text's order.
    ids, waves = pl.collect_all(
        [
            lf.select(pl.col("participant_id").cast(pl.String).drop_nulls().unique().sort()),
            lf.select(pl.col("wave").min().alias("lo"), pl.col("wave").max().alias("hi")),
        ]
    )
    pid_values = ids.to_series()
    pid_enum = pl.Enum(pid_values)
    w_lo, w_hi = waves.row(0)
    w_lo, n_w = int(w_lo or 0), int((w_hi or 0) - (w_lo or 0)) + 1
    n_inst = len(library.ids())

    def group_key(pid: pl.Expr) -> pl.Expr:
        """One integer per participant (code) x wave x instrument, ordered the same way."""
        return (
            pid.cast(pl.UInt64) * n_w + (pl.col("wave") - w_lo).cast(pl.UInt64)
        ) * n_inst + pl.col("inst_code").cast(pl.UInt64)

    rows = (
        lf.select(
            pl.col("participant_id").cast(pl.String).cast(pid_enum),
            pl.col("wave").cast(pl.Int32),
            pl.col("instrument").cast(pl.String),
            pl.col("item").cast(pl.String),
            value.cast(pl.Int32),
        )
        .join(items.lazy(), on="item", how="inner")
        .filter(pl.col("instrument") == pl.col("instrument_def"))
        .with_columns(
            packed.alias("packed"),
            (1 + out_of_range.cast(pl.Int64) * (1 << 32)).alias("row_count"),
        )
        .with_columns((pl.col("packed") * pl.col(f"m{j}")).alias(f"p{j}") for j in range(n_slots))
    )
    answered_int = pl.col("value").is_not_null().cast(pl.Int32)
    if need_ranges:
        rows = rows.with_columns(
            *(
                (answered_int * pl.col(f"m{j}") * pl.col("min")).alias(f"lo{j}")
                for j in range(n_slots)
            ),
            *(
                (answered_int * pl.col(f"m{j}") * (pl.col("max") - pl.col("min"))).alias(f"w{j}")
                for j in range(n_slots)
            ),
        )
    # Each item is one bit of its instrument's mask. A *sum* of distinct powers of two has
    # one set bit per term; any item counted twice carries and loses set bits, so
    # popcount(sum) < rows exactly when an item repeats (a wrapped u64 sum only loses more).
    # Sums are a fast group_by aggregation; a bitwise OR is not.
    rows = rows.with_columns(
        pl.when(pl.col("word") == w).then(pl.col("bit")).otherwise(0).alias(f"bits{w}")
        for w in range(n_words)
    )
    bits = [pl.col(f"bits{w}").sum() for w in range(n_words)]
    sums = [f"p{j}" for j in range(n_slots)]
    if need_ranges:
        sums += [f"lo{j}" for j in range(n_slots)] + [f"w{j}" for j in range(n_slots)]
    wide = (
        # one integer group key (participant code x wave x instrument): a multi-column
        # key costs a row encoding and a hash of it per row, several times slower
        rows.group_by(group_key(pl.col("participant_id").to_physical()).alias("_key"))
        .agg(pl.col("row_count").sum(), *bits, pl.col(sums).sum())
        .with_columns(
            (pl.col("_key") // (n_w * n_inst)).cast(pl.UInt32).alias("participant_id"),
            (pl.col("_key") // n_inst % n_w + w_lo).cast(pl.Int32).alias("wave"),
            (pl.col("_key") % n_inst).cast(pl.UInt32).alias("inst_code"),
        )
        .drop("_key")
        .collect(engine="streaming")
    )

    checks = wide.select(
        (pl.col("row_count") // (1 << 32)).sum().alias("out_of_range"),
        (
            pl.col("row_count") % (1 << 32)
            != pl.sum_horizontal(
                pl.col(f"bits{w}").bitwise_count_ones().fill_null(0) for w in range(n_words)
            )
        )
        .sum()
        .alias("duplicated"),
    ).row(0)
    if checks[0]:
        raise ValueError(
            f"{checks[0]} response value(s) lie outside their item's range: validate the "
            "responses before scoring"
        )
    if checks[1]:
        raise ValueError(
            f"{checks[1]} participant x wave x instrument group(s) have an item more than once: "
            "deduplicate the responses before scoring"
        )

    # Wide (one packed column per slot) to long (one row per scale): slot j only for the
    # instruments that have more than j scales. When sorted output is asked for, the long
    # rows are sorted while they hold only integers, by one integer key.
    n_scales = scales.group_by("inst_code").agg(pl.len().alias("n"))
    long = pl.concat(
        wide.lazy()
        .filter(pl.col("inst_code").is_in(n_scales.filter(pl.col("n") > j)["inst_code"].to_list()))
        .select(
            "participant_id",
            "wave",
            "inst_code",
            pl.lit(j, dtype=pl.UInt32).alias("slot"),
            pl.col(f"p{j}").alias("packed"),
            *(
                [pl.col(f"lo{j}").alias("lo_k"), pl.col(f"w{j}").alias("width_k")]
                if need_ranges
                else []
            ),
        )
        for j in range(n_slots)
    )
    if sort:
        long = long.sort(group_key(pl.col("participant_id")) * n_slots + pl.col("slot"))
    # Per-scale constants by gathering from the (small) scales table at each row's scale
    # key, rather than a join on (instrument, slot) that hashes every row.
    key_of = np.full(n_inst * n_slots, -1, dtype=np.int64)
    key_of[(scales["inst_code"] * n_slots + scales["slot"]).to_numpy()] = scales["scale_key"]
    scale_key = pl.lit(pl.Series(key_of)).gather(
        pl.col("inst_code").cast(pl.Int64) * n_slots + pl.col("slot")
    )
    by_key = scales.sort("scale_key")
    constants = [
        "instrument", "scale", "rule", "multiplier", "offset", "n_items", "required",
        "lo_all", "width_all", "item_min",
    ]
    long = long.with_columns(scale_key.cast(pl.UInt32).alias("scale_key")).with_columns(
        pl.lit(by_key[c]).gather(pl.col("scale_key")).alias(c) for c in constants
    )

    k = (pl.col("packed") % _SHIFT).cast(pl.Int32)
    lo_k = pl.col("lo_k").cast(pl.Float64) if need_ranges else k * pl.col("item_min")
    keyed_sum = (pl.col("packed") // _SHIFT).cast(pl.Float64) + lo_k
    if need_ranges:
        width_k = pl.col("width_k").cast(pl.Float64)
        prorated = (pl.col("lo_all") * width_k + (keyed_sum - lo_k) * pl.col("width_all")) / width_k
    else:
        prorated = keyed_sum * pl.col("n_items") / k
    raw = (
        pl.when(k < pl.col("required"))
        .then(None)
        .when(pl.col("rule") == "mean")
        .then(keyed_sum / k)
        .when(k == pl.col("n_items"))
        .then(keyed_sum)
        .otherwise(prorated)
    )
    scored = (
        long.with_columns(
            (pl.col("multiplier") * raw + pl.col("offset")).alias("score"),
            k.alias("items_answered"),
        )
        .with_columns(_band_expr(library).alias("band"))
    )
    # back to text by gathering the distinct ids (views of one buffer), not by casting the
    # Enum (which copies every id, 64 bytes for a pseudonym, into each output row)
    text_id = pl.lit(pid_values).gather(pl.col("participant_id"))
    return scored.select(
        *(
            text_id.alias(name) if name == "participant_id" else pl.col(name).cast(dtype)
            for name, dtype in SCORES_SCHEMA.items()
        )
    ).collect(engine="streaming")
