"""Validate the raw long table: split it into typed responses and a quarantine with reasons.

Decisions (each is a test in ``tests/instruments/test_validation.py``):

- A blank value (empty cell, null) is a *skipped item*: kept in ``responses`` with a null
  value. Scoring decides what too few answers mean; it is not a data defect.
- Whitespace around a value (``"5 "``) is stripped and reported as coercion
  ``value_whitespace``; a whole number written as a decimal (``"5.0"``) is read as 5 and
  reported as ``value_decimal``; NA tokens (``NA``, ``N/A``, ``n/a``, ``.``, ``NaN`` ...,
  see :class:`ValidationConfig`) are skipped items, reported as ``na_token``.
- Any other text is ``non_numeric_value``; ``3.5`` is ``non_integer_value``; a number
  outside the item's own response range is ``out_of_range``.
- An item id no instrument of the library defines is ``unknown_item``; a stated
  instrument that does not define the item is ``instrument_mismatch``; a missing
  instrument (wide layouts) is inferred from the item. When the caller says which
  instruments each source file administers (a survey's ``instruments = [...]``), an item of
  any other instrument is ``instrument_not_in_survey``.
- A blank participant id is ``missing_participant_id``; an id absent from the
  participants table (when one is given) is ``unknown_participant``.
- A wave that is blank, not a whole number or negative is ``invalid_wave``; a timestamp
  that cannot be parsed is ``invalid_timestamp`` (its quarantine row shows the column
  ``timestamp`` and its text, not the item's); a blank timestamp is allowed (null).
  Timestamps are ISO 8601 (date, date + time, optional fraction, ``Z`` or ``±hh:mm``);
  naive times are read as UTC.
- Among rows without any other defect, several rows for the same participant × wave ×
  item are duplicates: if their values differ (a blank differs from an answer) all are
  ``duplicate_conflict``; if identical, the first (reading order) is kept and the rest
  are ``duplicate_row``.
- A row a reader could not read as a row of its file (passed as ``malformed``: too many
  or too few fields, an unterminated quote, bytes not valid in the file's encoding) is
  ``malformed_row`` (:data:`INGEST_REASONS`), counted as one input row.
- A row with several defects is quarantined once, under its first reason in
  :data:`QUARANTINE_REASONS`, so that ``rows_in == accepted + quarantined`` always.

How the work is split, for speed (20 M rows in seconds, no Python loop over rows):

1. Values, waves, instruments, item ids and participant ids repeat massively (a handful
   of distinct texts, or one text over a run of rows). Each is encoded once into dense
   integer codes (:func:`instruments.encoding.encode_text`: a cast to a polars ``Enum`` of
   its distinct texts, once per run for columns that come in runs); answers, mostly
   plain integers, are parsed as ``Int16`` and coded through a table indexed by the
   number (:func:`instruments.encoding.encode_integer_text`), only the other texts by
   lookup. Parsing, stripping and NA handling run once per *distinct* text and are
   gathered back by code. Timestamps (nearly one per sitting) are parsed once per run
   of equal texts and repeated back over the run, trying each ISO layout only on what
   earlier layouts left unparsed. Codes are combined into one integer key per row in
   place (fresh full-length arrays cost more than the arithmetic), and distinct keys are
   found by counting in a dense table where the key space is small, by sorting
   otherwise.
2. The checks generated from the instrument definitions
   (:func:`instruments.schemas.build_item_schema`) depend on a row only through
   ``(instrument, item, value, wave)``. pandera validates the *distinct* combinations of
   those (a few thousand rows however large the input) lazily, at depth
   ``SCHEMA_AND_DATA``, and its failure cases (check name + index) are mapped back to
   every row with that combination. pandera is thus what detects unknown items,
   instrument mismatches, non-integer and out-of-range values and negative waves
   (``ValidationResult.item_failures`` lists what it found).
3. Missing / unknown participants are decided per distinct id, timestamps per run, and
   gathered; a per-row reason column is built only for the checks that some distinct
   id, run or combination fails, so clean input builds none, filters nothing and
   quarantines nothing. Duplicates use one exact integer key per participant × wave ×
   item (dense codes, no hash): marking each key in a boolean table of all possible
   keys rules repeats out without a sort; only when some key repeats (or the table
   would be too large) are the keys sorted and the few repeated ones grouped in full.
4. The accepted rows' typed columns are gathered from small typed lookup tables;
   instrument and item texts that need no rewrite are the raw columns themselves.
5. The accepted table is validated against :class:`instruments.schemas.ResponsesSchema`
   and the item schema at ``SCHEMA_AND_DATA`` as a gate that proves the output contract
   (``ValidationConfig.check_contract``); a failure there is a bug and raises.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, get_args

import numpy as np
import pandera.polars as pa
import polars as pl
from pandera.config import ValidationDepth, config_context

from instruments import schemas
from instruments.definition import InstrumentLibrary
from instruments.encoding import encode_integer_text, encode_text
from instruments.schemas import (
    ITEM_CHECK_REASON,
    QuarantineReason,
    ResponsesSchema,
    build_item_schema,
)

__all__ = [
    "COERCION_KINDS",
    "INGEST_REASONS",
    "QUARANTINE_REASONS",
    "CoercionKind",
    "QuarantineReason",
    "ValidationConfig",
    "ValidationResult",
    "ValidationSummary",
    "validate_responses",
]

CoercionKind = Literal[
    "value_whitespace",
    "value_decimal",
    "na_token",
    "participant_id_whitespace",
    "wave_format",
    "field_whitespace",
]
#: Every coercion kind that validation reports.
COERCION_KINDS: tuple[CoercionKind, ...] = get_args(CoercionKind)

#: Reasons decided while a file is read, before its rows reach the raw long table: a CSV
#: row that is not a row of the file (too many or too few fields, an unterminated quote,
#: bytes not valid in the file's encoding). Such a row is quarantined whole.
INGEST_REASONS: tuple[str, ...] = ("malformed_row",)
#: Every quarantine reason: the ingest reasons, then validation's, in priority order.
QUARANTINE_REASONS: tuple[str, ...] = schemas.QUARANTINE_REASONS  # ingest reasons included

RAW_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "row": pl.Int64(),
    "participant_id": pl.String(),
    "wave": pl.String(),
    "timestamp": pl.String(),
    "instrument": pl.String(),
    "item": pl.String(),
    "value": pl.String(),
    "column": pl.String(),
}
RAW_COLUMNS: tuple[str, ...] = tuple(RAW_SCHEMA)

QUARANTINE_COLUMNS: dict[str, pl.DataType] = {
    "source": pl.String(),
    "row": pl.Int64(),
    "participant_id": pl.String(),
    "wave": pl.String(),
    "column": pl.String(),
    "value": pl.String(),
    "reason": pl.String(),
}

COERCION_COLUMNS: dict[str, pl.DataType] = {
    "source": pl.String(),
    "column": pl.String(),
    "kind": pl.String(),
    "rows": pl.Int64(),
    "first_row": pl.Int64(),
    "example": pl.String(),
}

_PRIORITY: dict[str, int] = {r: i for i, r in enumerate(schemas.QUARANTINE_REASONS)}
_INT32_MAX = 2**31 - 1
_INTEGER_TEXT = r"^-?[0-9]+$"


@dataclass(frozen=True)
class ValidationConfig:
    """Options of :func:`validate_responses`.

    Attributes
    ----------
    na_tokens
        Texts (after stripping whitespace) that mean "not answered": read as a skipped
        item and reported as coercion ``na_token``. Case-sensitive.
    check_contract
        Validate the accepted table against ``ResponsesSchema`` and the generated item
        schema at ``SCHEMA_AND_DATA`` depth (about a second per 20 M rows). A failure is
        a bug in this module and raises ``pandera.errors.SchemaErrors``.
    """

    na_tokens: tuple[str, ...] = ("NA", "N/A", "n/a", "na", ".", "NaN", "nan")
    check_contract: bool = True


@dataclass(frozen=True)
class ValidationSummary:
    """Row accounting of one validation: ``rows_in == accepted + quarantined`` always."""

    rows_in: int
    accepted: int
    quarantined: int
    by_reason: dict[str, int]
    coerced_by_kind: dict[str, int]

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able data: counts, ``by_reason`` and ``coerced_by_kind``."""
        return asdict(self)

    def to_frame(self) -> pl.DataFrame:
        """Tidy counts, one row per measure.

        Columns: ``measure`` (rows_in, accepted, quarantined, reason, coercion), ``key``
        (the reason or coercion kind) and ``rows``.
        """
        recs = [
            ("rows_in", None, self.rows_in),
            ("accepted", None, self.accepted),
            ("quarantined", None, self.quarantined),
        ]
        recs += [("reason", k, v) for k, v in self.by_reason.items()]
        recs += [("coercion", k, v) for k, v in self.coerced_by_kind.items()]
        return pl.DataFrame(
            recs, schema={"measure": pl.String, "key": pl.String, "rows": pl.Int64}, orient="row"
        )


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of :func:`validate_responses`.

    Attributes
    ----------
    responses
        Valid rows in the ``responses`` contract (``ResponsesSchema``), in reading order.
    quarantine
        Rejected rows: ``source, row, participant_id, wave, column, value`` as written,
        and ``reason`` (one of :data:`QUARANTINE_REASONS`), in reading order.
    coercions
        ``source, column, kind, rows, first_row, example``: values that were accepted after
        a harmless rewrite, counted per file × column × kind (accepted rows only).
    summary
        Row accounting and counts by reason and by coercion kind.
    message
        ``"ok"``, ``"quarantined"`` (some rows rejected) or ``"no_rows"`` (empty input).
    """

    responses: pl.DataFrame
    quarantine: pl.DataFrame
    coercions: pl.DataFrame
    summary: ValidationSummary
    message: Literal["ok", "quarantined", "no_rows"] = "ok"
    item_failures: pl.DataFrame = field(default_factory=pl.DataFrame)

    def to_frame(self) -> pl.DataFrame:
        """The summary as a tidy frame (see :meth:`ValidationSummary.to_frame`)."""
        return self.summary.to_frame()

    def summary_dict(self) -> dict[str, object]:
        """The summary as plain JSON-able data, with ``message``."""
        return {**self.summary.to_dict(), "message": self.message}

    def with_coercions(self, coercions: pl.DataFrame) -> ValidationResult:
        """A copy whose ``coercions`` are replaced (e.g. ingest's and validation's together).

        ``summary.coerced_by_kind`` is recounted from ``coercions``.
        """
        counts = dict(coercions.group_by("kind").agg(pl.col("rows").sum()).iter_rows())
        kinds = {k: int(counts.get(k, 0)) for k in (*COERCION_KINDS, *sorted(set(counts)))}
        summary = replace(self.summary, coerced_by_kind=kinds)
        return replace(self, coercions=coercions, summary=summary)


def _blank_to_null(txt: pl.Expr) -> pl.Expr:
    return pl.when(txt.str.len_bytes() > 0).then(txt)


#: ISO 8601 layouts tried in order; "Z" is a literal (UTC), ``%z`` an offset, the rest
#: are naive and read as UTC. ``%.f`` also matches no fraction.
_TIMESTAMP_FORMATS: tuple[str, ...] = (
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%.fZ",
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%d %H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
)


def _parse_timestamps(txt: pl.Series) -> pl.Series:
    """ISO 8601 text -> Datetime[us, UTC]; null when unparseable. Naive times are UTC.

    Each layout is tried only on the texts that no earlier layout parsed, so the common
    case costs one pass (a loop over layouts, not rows).
    """
    utc = pl.Datetime("us", "UTC")
    out = pl.Series(txt.name, [None] * txt.len(), dtype=utc)
    todo = pl.Series(np.flatnonzero(txt.is_not_null().to_numpy()), dtype=pl.UInt32)
    for fmt in (*_TIMESTAMP_FORMATS, "%Y-%m-%d"):
        if todo.len() == 0:
            break
        part = txt.gather(todo)
        if fmt == "%Y-%m-%d":
            got = part.str.to_date(fmt, strict=False).cast(pl.Datetime("us"))
            got = got.dt.replace_time_zone("UTC")
        elif fmt.endswith("%z"):
            got = part.str.to_datetime(fmt, strict=False, time_unit="us", time_zone="UTC")
        else:
            got = part.str.to_datetime(fmt, strict=False, time_unit="us")
            got = got.dt.replace_time_zone("UTC")
        hit = got.is_not_null()
        out = out.scatter(todo.filter(hit), got.filter(hit))
        todo = todo.filter(~hit)
    return out


def _timestamp_columns(
    raw: pl.Series,
) -> tuple[pl.Series, pl.Series | None, pl.Series | None]:
    """Per row: parsed timestamp, ``bad`` (unparseable) and ``ws`` (parsed after stripping).

    A sitting's rows share one timestamp and lie together in a long file, so each run of
    equal consecutive texts is parsed once (``rle``) and the result repeated back over
    its run; surrounding whitespace is rare, so only texts that fail are stripped and
    retried. ``bad`` and ``ws`` are None when no text is bad (resp. stripped).
    """
    runs = raw.rle().struct.unnest()
    lengths = runs["len"].to_numpy()
    ts, bad, ws = _timestamp_columns_distinct(runs["value"])
    if ts.null_count():
        per_row = ts.gather(np.repeat(np.arange(ts.len(), dtype=np.uint32), lengths))
    else:  # no gather index: repeat the microseconds themselves
        per_row = pl.Series(raw.name, np.repeat(ts.to_physical().to_numpy(), lengths))
        per_row = per_row.cast(ts.dtype)

    def repeat(flags: pl.Series) -> pl.Series | None:
        return pl.Series(np.repeat(flags.to_numpy(), lengths)) if flags.any() else None

    return per_row, repeat(bad), repeat(ws)


def _timestamp_columns_distinct(raw: pl.Series) -> tuple[pl.Series, pl.Series, pl.Series]:
    """:func:`_timestamp_columns` on texts without repeats: parse, strip and retry."""
    ts = _parse_timestamps(raw)
    n = raw.len()
    retry = pl.Series(
        np.flatnonzero((raw.is_not_null() & ts.is_null()).to_numpy()), dtype=pl.UInt32
    )
    bad = pl.Series("bad", np.zeros(n, dtype=bool))
    ws = pl.Series("ws", np.zeros(n, dtype=bool))
    if retry.len():
        stripped = raw.gather(retry).str.strip_chars()
        blank = stripped.str.len_bytes() == 0
        again = _parse_timestamps(pl.select(_blank_to_null(pl.lit(stripped))).to_series())
        ts = ts.scatter(retry, again)
        bad = bad.scatter(retry, ~blank & again.is_null())
        ws = ws.scatter(retry, again.is_not_null())
    return ts, bad, ws


def _item_failures(domain: pl.DataFrame, library: InstrumentLibrary) -> pl.DataFrame:
    """Validate the distinct (instrument, item, value, wave) combinations with pandera.

    Returns the failing combinations: ``index`` (row of ``domain``), its columns,
    ``_domain_code`` (priority of the first reason that applies) and ``checks`` (the
    names of the pandera checks that failed, comma-separated).
    """
    schema = build_item_schema(library)
    empty = (
        domain.clear()
        .with_row_index("index")
        .with_columns(
            pl.col("index").cast(pl.Int64),
            pl.lit(None, pl.UInt8).alias("_domain_code"),
            pl.lit(None, pl.String).alias("checks"),
        )
    )
    try:
        with config_context(validation_depth=ValidationDepth.SCHEMA_AND_DATA):
            schema.validate(domain.lazy(), lazy=True).collect()
    except pa.errors.SchemaErrors as err:
        fc = err.failure_cases
        if fc["index"].null_count():
            # A schema-level failure (dtype, missing column) means this module built the
            # frame wrongly: a bug, not a data defect.
            raise
        codes = {k: _PRIORITY[v] for k, v in ITEM_CHECK_REASON.items()}
        per_index = (
            fc.select(
                pl.col("index").cast(pl.Int64),
                pl.col("check"),
                pl.col("check").replace_strict(codes, return_dtype=pl.UInt8).alias("code"),
            )
            .group_by("index")
            .agg(
                pl.col("code").min().alias("_domain_code"),
                pl.col("check").unique().sort().str.join(",").alias("checks"),
            )
        )
        return (
            domain.with_row_index("index")
            .with_columns(pl.col("index").cast(pl.Int64))
            .join(per_index, on="index", how="inner")
            .sort("index")
        )
    return empty


#: Distinct combination keys are found by counting (a dense table) up to this many possible
#: keys, else by sorting.
_DENSE_KEYS_MAX = 1 << 24
#: Repeated participant × wave × item keys are ruled out by marking a boolean table of this
#: many possible keys at most (256 MiB), else looked for by sorting.
_MARK_KEYS_MAX = 1 << 28


def _combine(first: pl.Series, *rest: tuple[int, pl.Series | np.ndarray]) -> pl.Series:
    """One integer key per row from dense codes, mixed radix: ``(first * n1 + c1) * n2 + c2``.

    ``rest`` holds ``(n, codes)`` with ``0 <= codes < n``. Computed in place in one array
    (UInt32 when the key space allows): a chain of Series operations would allocate a new
    full-length array per operation, and on 20 M rows fresh memory costs more than the
    arithmetic.
    """
    space = int(first.max() or 0) + 1
    for n, _ in rest:
        space *= n
    dtype = np.uint32 if space <= 2**32 else np.uint64
    key = first.to_numpy().astype(dtype)
    for n, codes in rest:
        key *= dtype(n)
        key += codes.to_numpy() if isinstance(codes, pl.Series) else codes
    return pl.Series(key)


def _keys_repeat(keys: pl.Series, size: int) -> bool:
    """Whether any key (``0 <= key < size``) occurs twice.

    Up to :data:`_MARK_KEYS_MAX` possible keys: mark each key's cell of a boolean table and
    compare the marked cells with the rows (no sort); else True, so that the caller sorts.
    """
    if size > _MARK_KEYS_MAX:
        return True
    marks = np.zeros(size, dtype=bool)
    marks[keys.to_numpy()] = True
    return int(np.count_nonzero(marks)) < keys.len()


def _distinct_keys(
    keys: pl.Series, size: int
) -> tuple[pl.Series, Callable[[], pl.Series]]:
    """Sorted distinct keys (``0 <= key < size``) and a function giving each row's place.

    A row's place is its key's index among the distinct keys: a full-length array that
    clean input never needs, so it is computed only when the function is called. With few
    possible keys (the product of a few small code ranges) the keys are marked in a table
    and the places are its cumulative sum; otherwise a sort and a binary search per row.
    """
    if size <= _DENSE_KEYS_MAX:
        k = keys.to_numpy()
        present = np.zeros(size, dtype=bool)
        present[k] = True
        distinct = pl.Series(np.flatnonzero(present).astype(np.uint64))
        return distinct, lambda: pl.Series((np.cumsum(present) - 1).astype(np.uint32)[k])
    distinct = keys.unique().sort()
    return distinct, lambda: distinct.search_sorted(keys)



def _derive(distinct: pl.Series, name: str, exprs: list[pl.Expr]) -> pl.DataFrame:
    return distinct.alias(name).to_frame().with_columns(exprs)


def _value_exprs(na_tokens: tuple[str, ...]) -> list[pl.Expr]:
    raw = pl.col("value")
    txt = _blank_to_null(raw.str.strip_chars())
    na = txt.is_in(list(na_tokens)).fill_null(False)
    num = pl.when(~na).then(txt.cast(pl.Float64, strict=False))
    return [
        num.alias("_value"),
        (txt.is_not_null() & ~na & num.is_null()).alias("_non_numeric"),
        na.alias("na_token"),
        (raw != txt).fill_null(False).alias("value_whitespace"),
        (num.is_not_null() & ~txt.str.contains(_INTEGER_TEXT))
        .fill_null(False)
        .alias("value_decimal"),
    ]


def _wave_exprs() -> list[pl.Expr]:
    raw = pl.col("wave")
    txt = _blank_to_null(raw.str.strip_chars())
    f = txt.cast(pl.Float64, strict=False)
    bad = (f.is_null() | ~f.is_finite() | (f != f.floor()) | (f.abs() > _INT32_MAX)).fill_null(True)
    return [
        pl.when(~bad).then(f.cast(pl.Int64)).alias("_wave"),
        bad.alias("_bad_wave"),
        (~bad & ((raw != txt) | ~txt.str.contains(_INTEGER_TEXT)))
        .fill_null(False)
        .alias("wave_format"),
    ]


def _pair_table(inst: pl.Series, item: pl.Series, library: InstrumentLibrary) -> pl.DataFrame:
    """Every (instrument, item) text pair, indexed ``i_inst * len(item) + i_item``."""
    owner = {str(r["item"]): str(r["instrument"]) for r in library.item_table()}
    i_txt = _blank_to_null(pl.col("instrument").str.strip_chars())
    t_txt = pl.col("item").str.strip_chars().fill_null("")
    return (
        inst.alias("instrument")
        .to_frame()
        .join(item.alias("item").to_frame(), how="cross", maintain_order="left_right")
        .with_columns(
            pl.coalesce(
                i_txt, t_txt.replace_strict(owner, default=None, return_dtype=pl.String)
            ).alias("_instrument"),
            t_txt.alias("_item"),
            (
                (pl.col("instrument") != i_txt).fill_null(False)
                | (pl.col("item") != t_txt).fill_null(False)
            ).alias("_ws"),
        )
    )


def validate_responses(
    raw: pl.LazyFrame | pl.DataFrame,
    participants: pl.DataFrame | None,
    library: InstrumentLibrary,
    config: ValidationConfig | None = None,
    *,
    pseudonymise: Callable[[pl.Series], pl.Series] | None = None,
    survey_instruments: Mapping[str, Collection[str]] | None = None,
    malformed: pl.DataFrame | None = None,
) -> ValidationResult:
    """Split the raw long table into valid responses and a quarantine with reasons.

    Parameters
    ----------
    raw
        The raw long table of ``docs/contracts.md`` (all text but ``row``); extra columns
        are ignored.
    participants
        The participants table (``participant_id`` column); None skips the
        ``unknown_participant`` check.
    library
        The instruments whose items are known; their definitions generate the pandera
        checks (:func:`instruments.schemas.build_item_schema`).
    config
        Options; defaults to :class:`ValidationConfig`.
    pseudonymise
        Applied to the distinct participant ids (stripped of whitespace) after they were
        checked against ``participants``; the responses, the quarantine and the coercion
        examples then carry only its output (e.g. keyed pseudonyms). ``participants`` holds
        the ids as they appear in the files. None keeps the ids (quarantine: as written).
    survey_instruments
        Per ``source`` (as in the raw table), the instruments that file administers; an item
        of another instrument is quarantined as ``instrument_not_in_survey``. Sources not
        named (or named with no instruments) accept every instrument of ``library``.
    malformed
        Rows a reader could not read as a row of their file (``source, row,
        participant_id, wave, column, value``, :data:`orchestration.readers.MALFORMED_SCHEMA`):
        each is one more input row, quarantined as ``malformed_row`` (its participant id
        pseudonymised like the others).

    Returns
    -------
    ValidationResult
        ``responses`` + ``quarantine`` hold every input row exactly once
        (``summary.rows_in == summary.accepted + summary.quarantined``). The module
        docstring lists each decision on what is a defect, a coercion, or a skipped item.

    Examples
    --------
    >>> import polars as pl
    >>> from instruments.definition import load_library
    >>> raw = pl.DataFrame({"source": ["s.csv"] * 3, "row": [1, 2, 3],
    ...     "participant_id": ["p1"] * 3, "wave": ["0"] * 3, "timestamp": [None] * 3,
    ...     "instrument": ["who5"] * 3, "item": ["who5_1", "who5_2", "who5_3"],
    ...     "value": ["5 ", "9", ""], "column": ["value"] * 3},
    ...     schema_overrides={"timestamp": pl.String, "row": pl.Int64})
    >>> res = validate_responses(raw, None, load_library())
    >>> res.responses["value"].to_list(), res.quarantine["reason"].to_list()
    ([5, None], ['out_of_range'])
    """
    cfg = config or ValidationConfig()
    lf = raw.lazy() if isinstance(raw, pl.DataFrame) else raw
    frame = lf.select([pl.col(c).cast(RAW_SCHEMA[c]) for c in RAW_COLUMNS]).collect()
    rows_in = frame.height

    # Every text column but participant_id repeats massively: encode each as dense codes,
    # derive once per distinct text, gather by code (no string work per row).
    v_code, v_txt = encode_integer_text(frame["value"])
    w_code, w_txt = encode_text(frame["wave"])
    in_code, in_txt = encode_text(frame["instrument"])
    it_code, it_txt = encode_text(frame["item"])
    vmap = _derive(v_txt, "value", _value_exprs(cfg.na_tokens))
    wmap = _derive(w_txt, "wave", _wave_exprs())
    ts, bad_ts, ts_ws = _timestamp_columns(frame["timestamp"])
    pmap = _pair_table(in_txt, it_txt, library)
    p_code = _combine(in_code, (it_txt.len(), it_code))
    nv, nw = vmap.height, wmap.height

    # --- the generated instrument checks, by pandera, on distinct combinations ----------
    d_code = _combine(p_code, (nv, v_code), (nw, w_code))
    d_unique, d_index = _distinct_keys(d_code, pmap.height * nv * nw)
    del d_code  # kept by d_index, which computes the places only if a row needs them
    domain = pl.DataFrame(
        {
            "_p": (d_unique // (nv * nw)).cast(pl.UInt32),
            "_v": (d_unique // nw % nv).cast(pl.UInt32),
            "_w": (d_unique % nw).cast(pl.UInt32),
        }
    )
    typed = pl.DataFrame(
        {
            "instrument": pmap["_instrument"].gather(domain["_p"]),
            "item": pmap["_item"].gather(domain["_p"]),
            "value": vmap["_value"].gather(domain["_v"]),
            "wave": wmap["_wave"].gather(domain["_w"]),
        }
    )
    failures = _item_failures(typed, library)
    code = {r: pl.lit(i, dtype=pl.UInt8) for r, i in _PRIORITY.items()}
    domain_reason = (
        domain.with_columns(
            non_numeric=vmap["_non_numeric"].gather(domain["_v"]),
            bad_wave=wmap["_bad_wave"].gather(domain["_w"]),
        )
        .with_row_index("index")
        .with_columns(pl.col("index").cast(pl.Int64))
        .join(
            failures.select("index", "_domain_code"), on="index", how="left", maintain_order="left"
        )
        .select(
            pl.min_horizontal(
                pl.when(pl.col("bad_wave")).then(code["invalid_wave"]),
                pl.when(pl.col("non_numeric")).then(code["non_numeric_value"]),
                pl.col("_domain_code"),
            ).alias("code")
        )["code"]
    )

    # --- per-row reasons -----------------------------------------------------------------
    # Participant ids are encoded like the other text columns: stripping, blank and
    # membership tests run once per distinct id, and the duplicate key below is integer.
    pid_raw = frame["participant_id"]
    pid_code, pid_txt = encode_text(pid_raw)
    pid_map = pid_txt.alias("raw").to_frame().with_columns(
        _blank_to_null(pl.col("raw").str.strip_chars()).alias("pid")
    )
    # dense code of the *stripped* id (" p1" and "p1" are one participant); null last
    pid_map = pid_map.with_columns(
        pl.col("pid").rank("dense").fill_null(pid_map.height + 1).cast(pl.UInt32).alias("key")
    )
    pid_map = pid_map.with_columns(
        (pseudonymise(pid_map["pid"]) if pseudonymise else pid_map["pid"]).alias("out")
    )
    missing_pid = pid_map["pid"].is_null()
    unknown_pid = pl.Series(np.zeros(pid_map.height, dtype=bool))
    if participants is not None:
        known = participants["participant_id"].str.strip_chars().implode()
        unknown_pid = ~missing_pid & ~pid_map["pid"].is_in(known).fill_null(False)
    pid_reason = pl.select(
        pl.when(pl.lit(missing_pid))
        .then(code["missing_participant_id"])
        .when(pl.lit(unknown_pid))
        .then(code["unknown_participant"])
    ).to_series()
    # Each check was decided per distinct id / combination / run; a per-row column is only
    # built for the checks that some row fails, so clean data builds none (reason None).
    outside = _outside_survey(frame["source"], p_code, pmap, survey_instruments)
    per_row = [
        pid_reason.gather(pid_code) if pid_reason.null_count() < pid_reason.len() else None,
        pl.select(pl.when(pl.lit(bad_ts)).then(code["invalid_timestamp"])).to_series()
        if bad_ts is not None
        else None,
        domain_reason.gather(d_index())
        if domain_reason.null_count() < domain_reason.len()
        else None,
        pl.select(pl.when(pl.lit(outside)).then(code["instrument_not_in_survey"])).to_series()
        if outside is not None
        else None,
    ]
    failing = [r for r in per_row if r is not None]
    reason: pl.Series | None = (
        pl.select(pl.min_horizontal(*[pl.lit(r) for r in failing])).to_series()
        if failing
        else None
    )

    # --- duplicates among otherwise valid rows -------------------------------------------
    # One exact integer key per participant × wave × item (dense codes, no hashing). Whether
    # any key repeats is a count of distinct keys (marks in a table of all possible keys)
    # where that table is small; only then are the repeated keys found by sorting and
    # grouped in full on those few rows.
    item_dense = pmap.select(pl.col("_item").rank("dense").cast(pl.UInt32))["_item"]
    wave_dense = wmap.select(pl.col("_wave").rank("dense").fill_null(0).cast(pl.UInt32))["_wave"]
    n_item, n_wave = int(item_dense.max() or 0) + 1, int(wave_dense.max() or 0) + 1
    key = _combine(
        pid_map["key"].gather(pid_code),
        (n_wave, wave_dense.to_numpy()[w_code.to_numpy()]),
        (n_item, item_dense.to_numpy()[p_code.to_numpy()]),
    )
    clean_ord = None if reason is None else reason.is_null().arg_true()
    clean_key = key if clean_ord is None or clean_ord.len() == rows_in else key.gather(clean_ord)
    if _keys_repeat(clean_key, (int(pid_map["key"].max() or 0) + 1) * n_wave * n_item):
        sorted_k = clean_key.sort()
        repeated = sorted_k.filter((sorted_k == sorted_k.shift(1)).fill_null(False))
    else:
        repeated = clean_key.clear()
    if repeated.len():
        is_dup = clean_key.is_in(repeated.unique().implode())
        dup_ord = is_dup.arg_true() if clean_ord is None else clean_ord.filter(is_dup)
        dup_codes = (
            pl.DataFrame(
                {
                    "_ord": dup_ord,
                    "_key": key.gather(dup_ord),
                    "_v": vmap["_value"].gather(v_code.gather(dup_ord)),
                }
            )
            .with_columns(
                pl.len().over("_key").alias("_n"),
                pl.col("_v").n_unique().over("_key").alias("_nu"),
                (pl.col("_ord") == pl.col("_ord").min().over("_key")).alias("_first"),
            )
            .select(
                "_ord",
                pl.when((pl.col("_n") > 1) & (pl.col("_nu") > 1))
                .then(code["duplicate_conflict"])
                .when((pl.col("_n") > 1) & ~pl.col("_first"))
                .then(code["duplicate_row"])
                .alias("_dup"),
            )
            .drop_nulls("_dup")
        )
        if reason is None:
            reason = pl.Series(np.zeros(rows_in, dtype=np.uint8)).clear(rows_in)
        reason = reason.scatter(dup_codes["_ord"], dup_codes["_dup"])

    # ok is None when every row is accepted: no filter, no mask, an empty quarantine
    ok = None if reason is None or reason.null_count() == rows_in else reason.is_null()
    all_ok = ok is None

    def keep(column: pl.Series) -> pl.Series:
        return column if ok is None else column.filter(ok)

    # Typed columns by gathering small typed lookup tables (one allocation per column);
    # instrument and item texts that need no rewrite are the raw columns themselves.
    responses = pl.DataFrame(
        {
            "participant_id": pid_map["out"].rechunk().gather(keep(pid_code)),
            "wave": wmap["_wave"].cast(pl.Int32, strict=False).gather(keep(w_code)),
            "timestamp": keep(ts).cast(pl.Datetime("us", "UTC")),
            "instrument": keep(frame["instrument"])
            if _as_written(frame["instrument"], in_txt, pmap["_instrument"].unique())
            else pmap["_instrument"].gather(keep(p_code)),
            "item": keep(frame["item"])
            if _as_written(frame["item"], it_txt, pmap["_item"].unique())
            else pmap["_item"].gather(keep(p_code)),
            "value": vmap["_value"].cast(pl.Int16, strict=False).gather(keep(v_code)),
            "source": keep(frame["source"]),
            "row": keep(frame["row"]),
        }
    )
    reason_names = {i: r for r, i in _PRIORITY.items()}
    pid_ws = (pid_map["raw"] != pid_map["pid"]).fill_null(False)
    if pseudonymise and (not all_ok or pid_ws.any()):
        # quarantine rows and coercion examples show the pseudonym, never the raw id
        frame = frame.with_columns(pid_map["out"].gather(pid_code).alias("participant_id"))
    if ok is None:
        quarantine = pl.DataFrame(schema=QUARANTINE_COLUMNS)
    else:
        bad = ~ok
        quarantine = (
            frame.filter(bad)
            .select("source", "row", "participant_id", "wave", "column", "value", "timestamp")
            .with_columns(
                reason.filter(bad)  # type: ignore[union-attr]
                .replace_strict(reason_names, return_dtype=pl.String)
                .alias("reason")
            )
        )
        if bad_ts is not None:  # a bad timestamp shows the timestamp, not the item's value
            is_ts = pl.col("reason") == "invalid_timestamp"
            quarantine = quarantine.with_columns(
                pl.when(is_ts).then(pl.lit("timestamp")).otherwise("column").alias("column"),
                pl.when(is_ts).then(pl.col("timestamp")).otherwise("value").alias("value"),
            )
        quarantine = quarantine.drop("timestamp").cast(QUARANTINE_COLUMNS)
    if malformed is not None and malformed.height:
        quarantine = _with_malformed(quarantine, malformed, frame["source"], pseudonymise)
        rows_in += malformed.height
    coercions = _coercions(
        frame,  # not a select: on a many-chunk frame that rechunks (copies) every column
        ok,
        {
            "value": (v_code, vmap),
            "wave": (w_code, wmap),
            "pair": (p_code, pmap),
        },
        pid_ws.gather(pid_code) if pid_ws.any() else None,
        ts_ws,
    )

    if cfg.check_contract:
        # every distinct combination occurs in some row, so all are accepted when all rows are
        accepted = typed if ok is None else typed[d_index().filter(ok).unique().sort()]
        _check_contract(responses, accepted, library)

    counts = dict(quarantine["reason"].value_counts().iter_rows())
    by_reason = {r: int(counts.get(r, 0)) for r in QUARANTINE_REASONS}
    kind_counts = dict(coercions.group_by("kind").agg(pl.col("rows").sum()).iter_rows())
    coerced = {k: int(kind_counts.get(k, 0)) for k in COERCION_KINDS}
    summary = ValidationSummary(
        rows_in=rows_in,
        accepted=responses.height,
        quarantined=quarantine.height,
        by_reason=by_reason,
        coerced_by_kind=coerced,
    )
    if summary.accepted + summary.quarantined != summary.rows_in:  # pragma: no cover
        raise AssertionError(f"row accounting broken: {summary}")
    message: Literal["ok", "quarantined", "no_rows"] = (
        "no_rows" if rows_in == 0 else "quarantined" if quarantine.height else "ok"
    )
    failures_out = (
        failures.drop("index")
        .with_columns(
            pl.col("_domain_code")
            .replace_strict(reason_names, return_dtype=pl.String)
            .alias("reason")
        )
        .drop("_domain_code")
    )
    return ValidationResult(
        responses=responses,
        quarantine=quarantine,
        coercions=coercions,
        summary=summary,
        message=message,
        item_failures=failures_out,
    )


def _with_malformed(
    quarantine: pl.DataFrame,
    malformed: pl.DataFrame,
    sources: pl.Series,
    pseudonymise: Callable[[pl.Series], pl.Series] | None,
) -> pl.DataFrame:
    """The quarantine with the malformed rows added (``malformed_row``), in reading order."""
    pid = malformed["participant_id"].cast(pl.String).str.strip_chars()
    pid = pl.select(_blank_to_null(pl.lit(pid))).to_series()
    bad = malformed.cast({c: t for c, t in QUARANTINE_COLUMNS.items() if c in malformed.columns})
    bad = bad.with_columns(
        (pseudonymise(pid) if pseudonymise else pid).alias("participant_id"),
        pl.lit("malformed_row", dtype=pl.String).alias("reason"),
    ).select(list(QUARANTINE_COLUMNS))
    order = list(dict.fromkeys([*sources.unique(maintain_order=True), *bad["source"]]))
    rank = {s: i for i, s in enumerate(order)}
    return (
        pl.concat([quarantine, bad])
        .with_columns(pl.col("source").replace_strict(rank, return_dtype=pl.UInt32).alias("_o"))
        .sort("_o", "row", maintain_order=True)
        .drop("_o")
    )


def _as_written(column: pl.Series, distinct: pl.Series, cleaned: pl.Series) -> bool:
    """Whether every text of ``column`` is already its cleaned form.

    That is: no null, no blank, no surrounding whitespace, and each distinct text among the
    ``cleaned`` ones (so none is inferred or rewritten).
    """
    texts = distinct.drop_nulls()
    return (
        column.null_count() == 0
        and bool((texts.str.strip_chars() == texts).all())
        and bool((texts.str.len_bytes() > 0).all())
        and bool(texts.is_in(cleaned.drop_nulls().implode()).all())
    )


def _outside_survey(
    source: pl.Series,
    p_code: pl.Series,
    pmap: pl.DataFrame,
    survey_instruments: Mapping[str, Collection[str]] | None,
) -> pl.Series | None:
    """Per row: its (known) instrument is not one its source file administers.

    Decided once per distinct (source, instrument/item pair) and gathered back; None when
    no row is outside its survey (at once, without looking at rows, when every survey
    administers every instrument that any instrument/item pair names).
    """
    n = source.len()
    restricted = {k: set(v) for k, v in (survey_instruments or {}).items() if v}
    named = set(pmap["_instrument"].drop_nulls().to_list())
    if n == 0 or all(named <= allowed for allowed in restricted.values()):
        return None
    s_code, s_txt = encode_text(source)
    n_pairs = pmap.height
    key = _combine(s_code, (n_pairs, p_code))
    distinct, index = _distinct_keys(key, s_txt.len() * n_pairs)
    pairs = pl.DataFrame(
        {
            "source": s_txt.gather(distinct // n_pairs),
            "instrument": pmap["_instrument"].gather(distinct % n_pairs),
        }
    )
    outside = pl.Series(
        [
            src in restricted and inst is not None and inst not in restricted[src]
            for src, inst in pairs.iter_rows()  # distinct pairs: a handful, not rows
        ],
        dtype=pl.Boolean,
    )
    return outside.gather(index()) if outside.any() else None


def _coercions(
    frame: pl.DataFrame,
    ok: pl.Series | None,
    coded: dict[str, tuple[pl.Series, pl.DataFrame]],
    pid_ws: pl.Series | None,
    ts_ws: pl.Series | None,
) -> pl.DataFrame:
    """Coercions on accepted rows, counted per source × column × kind.

    A row-level flag is only materialised when some distinct text carries it (``pid_ws``
    and ``ts_ws`` are None when no row has one), so clean data costs nothing here; ``ok``
    is None when every row is accepted.
    """
    parts: list[pl.DataFrame] = []

    def add(mask: pl.Series, kind: str, column: pl.Expr, example: pl.Expr) -> None:
        mask = mask if ok is None else mask & ok
        if not mask.any():
            return
        parts.append(
            frame.filter(mask)
            .group_by("source", column.alias("column"))
            .agg(
                pl.len().cast(pl.Int64).alias("rows"),
                pl.col("row").min().cast(pl.Int64).alias("first_row"),
                example.first().alias("example"),
            )
            .with_columns(pl.lit(kind).alias("kind"))
        )

    v_code, vmap = coded["value"]
    for kind in ("value_whitespace", "value_decimal", "na_token"):
        if vmap[kind].any():
            add(vmap[kind].gather(v_code), kind, pl.col("column"), pl.col("value"))
    w_code, wmap = coded["wave"]
    if wmap["wave_format"].any():
        add(wmap["wave_format"].gather(w_code), "wave_format", pl.lit("wave"), pl.col("wave"))
    if pid_ws is not None:
        add(pid_ws, "participant_id_whitespace", pl.lit("participant_id"), pl.col("participant_id"))
    if ts_ws is not None:
        add(ts_ws, "field_whitespace", pl.lit("timestamp"), pl.lit(None, pl.String))
    p_code, pmap = coded["pair"]
    if pmap["_ws"].any():
        add(
            pmap["_ws"].gather(p_code),
            "field_whitespace",
            pl.lit("instrument/item"),
            pl.lit(None, pl.String),
        )
    if not parts:
        return pl.DataFrame(schema=COERCION_COLUMNS)
    out = pl.concat([p.select(list(COERCION_COLUMNS)) for p in parts], how="vertical_relaxed")
    return out.cast(COERCION_COLUMNS).sort("source", "column", "kind")


def _check_contract(
    responses: pl.DataFrame, accepted_domain: pl.DataFrame, library: InstrumentLibrary
) -> None:
    """The gate: accepted rows must satisfy the responses contract and the item schema.

    ``accepted_domain`` holds the distinct (instrument, item, value, wave) of the accepted
    rows, decoded from their codes, so the item schema runs on a few rows.
    """
    with config_context(validation_depth=ValidationDepth.SCHEMA_AND_DATA):
        ResponsesSchema.validate(responses.lazy(), lazy=True).collect()
        build_item_schema(library).validate(accepted_domain.lazy(), lazy=True).collect()
