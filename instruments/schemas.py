"""pandera (polars backend) schemas of Flourish's tables and of the instrument checks.

One ``DataFrameModel`` per table of ``docs/contracts.md``; every column carries a
``description``. :func:`build_item_schema` turns an :class:`InstrumentLibrary` into the
checks that a typed long table of answers must pass (known item, instrument matches
item, integer value inside the item's own response range, wave >= 0), so that adding an
instrument file adds its checks without code.

Validation depth: pandera checks only the *schema* (names, dtypes) of a polars
``LazyFrame`` unless the validation depth is ``SCHEMA_AND_DATA``; the validators in
:mod:`instruments.validation` always set it explicitly with
``pandera.config.config_context``.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import pandera.polars as pa
import polars as pl

from instruments.definition import InstrumentLibrary

QuarantineReason = Literal[
    "malformed_row",  # a CSV row that cannot be parsed (quarantined by the reader, whole)
    "missing_participant_id",
    "invalid_wave",
    "invalid_timestamp",
    "unknown_item",
    "instrument_mismatch",
    "instrument_not_in_survey",
    "non_numeric_value",
    "non_integer_value",
    "out_of_range",
    "unknown_participant",
    "duplicate_conflict",
    "duplicate_row",
]
#: Every quarantine reason, in priority order: a row with several defects is quarantined
#: once, under the first reason here that applies.
QUARANTINE_REASONS: tuple[QuarantineReason, ...] = get_args(QuarantineReason)

ItemCheckName = Literal[
    "known_item", "instrument_matches_item", "integer_value", "value_in_item_range", "wave_ge_0"
]
#: Which quarantine reason a failure of each generated check means.
ITEM_CHECK_REASON: dict[ItemCheckName, QuarantineReason] = {
    "known_item": "unknown_item",
    "instrument_matches_item": "instrument_mismatch",
    "integer_value": "non_integer_value",
    "value_in_item_range": "out_of_range",
    "wave_ge_0": "invalid_wave",
}

UtcDatetime = Annotated[pl.Datetime, "us", "UTC"]


class RawLongSchema(pa.DataFrameModel):
    """The raw long table produced by ingest: everything is text except ``row``."""

    source: str = pa.Field(description="Input file, relative to the study folder when inside it.")
    row: pl.Int64 = pa.Field(ge=1, description="1-based data row in that file (headers excluded).")
    participant_id: str = pa.Field(nullable=True, description="Participant id as written.")
    wave: str = pa.Field(nullable=True, description="Wave as written (or the spec's constant).")
    timestamp: str = pa.Field(nullable=True, description="Response time as written.")
    instrument: str = pa.Field(
        nullable=True, description="Instrument id as written; null when the layout has none."
    )
    item: str = pa.Field(nullable=True, description="Item id (wide: the renamed column name).")
    value: str = pa.Field(nullable=True, description="Answer as written; null = blank cell.")
    column: str = pa.Field(description="Source column the value came from.")

    class Config:  # noqa: D106 - pandera's model options
        strict = True
        ordered = False


class ResponsesSchema(pa.DataFrameModel):
    """Valid responses (``responses.parquet``): one row per participant × wave × item."""

    participant_id: str = pa.Field(description="Participant id (whitespace stripped).")
    wave: pl.Int32 = pa.Field(ge=0, description="Survey wave; 0 is baseline.")
    timestamp: UtcDatetime = pa.Field(
        nullable=True, description="Response time in UTC (naive input read as UTC); null if absent."
    )
    instrument: str = pa.Field(description="Instrument id (inferred from the item when absent).")
    item: str = pa.Field(description="Global, instrument-prefixed item id, e.g. who5_3.")
    value: pl.Int16 = pa.Field(
        nullable=True, description="Answer on the item's own integer scale; null = skipped item."
    )
    source: str = pa.Field(description="Input file the answer came from.")
    row: pl.Int64 = pa.Field(ge=1, description="1-based data row in that file.")

    class Config:  # noqa: D106 - pandera's model options
        strict = True
        ordered = False


class QuarantineSchema(pa.DataFrameModel):
    """Rejected input rows (``quarantine.parquet``): where they were and why."""

    source: str = pa.Field(description="Input file of the rejected row.")
    row: pl.Int64 = pa.Field(ge=1, description="1-based data row in that file.")
    participant_id: str = pa.Field(nullable=True, description="Participant id as written.")
    wave: str = pa.Field(nullable=True, description="Wave as written.")
    column: str = pa.Field(description="Source column of the rejected value.")
    value: str = pa.Field(nullable=True, description="Rejected value as written (text).")
    reason: str = pa.Field(
        isin=list(QUARANTINE_REASONS),
        description="Why the row was rejected (instruments.validation.QUARANTINE_REASONS).",
    )

    class Config:  # noqa: D106 - pandera's model options
        strict = True
        ordered = False


class ScoresSchema(pa.DataFrameModel):
    """Scale scores (``scores.parquet``): one row per participant × wave × scale."""

    participant_id: str = pa.Field(description="Participant id.")
    wave: pl.Int32 = pa.Field(ge=0, description="Survey wave; 0 is baseline.")
    instrument: str = pa.Field(description="Instrument id, e.g. who5.")
    scale: str = pa.Field(description="Bare scale id of the instrument file, e.g. total.")
    score: pl.Float64 = pa.Field(
        nullable=True, description="Scale score; null when fewer than min_items were answered."
    )
    items_answered: pl.Int16 = pa.Field(ge=0, description="Number of the scale's items answered.")
    band: str = pa.Field(
        nullable=True, description="Interpretation band label, if the scale has bands."
    )

    class Config:  # noqa: D106 - pandera's model options
        strict = True
        ordered = False


class ParticipantsSchema(pa.DataFrameModel):
    """The participants table: one row per participant; covariates are allowed."""

    participant_id: str = pa.Field(unique=True, description="Participant id, one row each.")
    arm: str = pa.Field(nullable=True, description="Randomised arm (e.g. control, treatment).")

    class Config:  # noqa: D106 - pandera's model options
        strict = False
        ordered = False


def _lookup(mapping: dict[str, object], dtype: pl.DataType) -> pl.Expr:
    return pl.col("item").replace_strict(mapping, default=None, return_dtype=dtype)


def build_item_schema(library: InstrumentLibrary) -> pa.DataFrameSchema:
    """The pandera schema of a *typed* long table, generated from the instrument definitions.

    The table has ``instrument`` (str, null allowed only for unknown items), ``item``
    (str), ``value`` (Float64, null = skipped) and ``wave`` (Int64, null = unparseable,
    reported elsewhere). Float ``value`` is deliberate: the schema must see ``3.5`` to
    reject it as non-integer.

    Checks (names in :data:`ItemCheckName`, reasons in :data:`ITEM_CHECK_REASON`):

    - ``known_item``: the item is defined by an instrument of the library;
    - ``instrument_matches_item``: a stated instrument is the one that defines the item;
    - ``integer_value``: the value is a whole number;
    - ``value_in_item_range``: ``min <= value <= max`` of the item's own response scale
      (its override, else the instrument's);
    - ``wave_ge_0``: waves count from 0 (baseline).

    Parameters
    ----------
    library
        The study's instruments.

    Returns
    -------
    pandera.polars.DataFrameSchema
        Validate with ``lazy=True`` and depth ``SCHEMA_AND_DATA`` to get every failure.
    """
    table = library.item_table()
    known = [str(r["item"]) for r in table]
    owner = {str(r["item"]): str(r["instrument"]) for r in table}
    lows = {str(r["item"]): float(r["min"]) for r in table}  # type: ignore[arg-type]
    highs = {str(r["item"]): float(r["max"]) for r in table}  # type: ignore[arg-type]

    def known_item(data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).is_in(known))

    def integer_value(data: pa.PolarsData) -> pl.LazyFrame:
        v = pl.col(data.key)
        return data.lazyframe.select(v.is_null() | (v.is_finite() & (v == v.floor())))

    def wave_ge_0(data: pa.PolarsData) -> pl.LazyFrame:
        w = pl.col(data.key)
        return data.lazyframe.select(w.is_null() | (w >= 0))

    def instrument_matches_item(data: pa.PolarsData) -> pl.LazyFrame:
        expected = _lookup(owner, pl.String())
        ok = expected.is_null() | (pl.col("instrument") == expected).fill_null(False)
        return data.lazyframe.select(ok.alias("instrument_matches_item"))

    def value_in_item_range(data: pa.PolarsData) -> pl.LazyFrame:
        v, lo, hi = pl.col("value"), _lookup(lows, pl.Float64()), _lookup(highs, pl.Float64())
        ok = v.is_null() | lo.is_null() | ((v >= lo) & (v <= hi)).fill_null(False)
        return data.lazyframe.select(ok.alias("value_in_item_range"))

    return pa.DataFrameSchema(
        {
            "instrument": pa.Column(str, nullable=True, description="Instrument id."),
            "item": pa.Column(
                str,
                pa.Check(known_item, name="known_item"),
                description="Item id.",
            ),
            "value": pa.Column(
                pl.Float64,
                pa.Check(integer_value, name="integer_value"),
                nullable=True,
                description="Answer as a number; null = skipped.",
            ),
            "wave": pa.Column(
                pl.Int64,
                pa.Check(wave_ge_0, name="wave_ge_0"),
                nullable=True,
                description="Wave number.",
            ),
        },
        checks=[
            pa.Check(
                instrument_matches_item,
                name="instrument_matches_item",
            ),
            pa.Check(
                value_in_item_range,
                name="value_in_item_range",
            ),
        ],
        strict=True,
        name="item_schema",
        description="Typed long table of answers, generated from the instrument definitions.",
    )
