"""Product telemetry: event schema, streamed ingest and validation, engagement features.

Telemetry arrives as event files (Parquet or CSV) with one row per event:
``participant_id, timestamp, event`` and optionally ``duration_s`` and ``properties``.
This module

1. scans those files lazily (:func:`scan_events`), keeping the source file and the 1-based
   data row of every event so that each rejected row can be traced back;
2. validates them (:func:`validate_events`): every input row is either *accepted* or
   *quarantined* with one coded reason (row accounting: rows in = accepted + quarantined);
3. computes engagement features per participant and survey wave over a window before each
   survey response (:func:`compute_engagement_features`).

Everything is a polars query: the accepted events stay a ``LazyFrame`` that a caller can
``sink_parquet`` without materialising it, and the features are computed with sorts,
cumulative sums and as-of joins (no Python loop over rows), so 10^8 events fit on one
machine (see ``benchmarks/bench_telemetry.py``).

Time zone. All times are handled in UTC. Naive timestamps are read as UTC, timestamps with an
offset are converted to UTC, and "late night" and "calendar day" are UTC notions: a study
whose participants live elsewhere must shift timestamps to local time before calling
:func:`compute_engagement_features` (the feature definitions are about local time of day).

Pseudonymisation of ``participant_id`` is the caller's job (``privacy/``), not this module's.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import pandera.polars as pa
import polars as pl

__all__ = [
    "QUARANTINE_REASONS",
    "EngagementConfig",
    "EngagementFeatures",
    "QuarantineReason",
    "TelemetryEventSchema",
    "TelemetryInputError",
    "TelemetryValidationResult",
    "compute_engagement_features",
    "scan_events",
    "validate_events",
]

QuarantineReason = Literal[
    "missing_participant_id",
    "missing_timestamp",
    "unparseable_timestamp",
    "missing_event",
    "non_numeric_duration",
    "negative_duration",
    "unknown_participant",
]
"""Why an event row was quarantined; a row gets the first reason in this order."""

QUARANTINE_REASONS: tuple[str, ...] = get_args(QuarantineReason)

FeaturesMessage = Literal["ok", "no_waves", "no_events"]
"""Coded outcome of :func:`compute_engagement_features`."""

_US_PER_SECOND = 1_000_000
_US_PER_HOUR = 3_600 * _US_PER_SECOND
_US_PER_DAY = 24 * _US_PER_HOUR
_TS = pl.Datetime("us", "UTC")
_REQUIRED = ("participant_id", "timestamp", "event")

TelemetryEventSchema = pa.DataFrameSchema(
    {
        "participant_id": pa.Column(
            pl.String,
            pa.Check.str_length(min_value=1),
            nullable=False,
            description="Participant identifier (pseudonymised by the caller).",
        ),
        "timestamp": pa.Column(
            _TS, nullable=False, description="When the event happened, UTC, microseconds."
        ),
        "event": pa.Column(
            pl.String,
            pa.Check.str_length(min_value=1),
            nullable=False,
            description="Event type as logged by the product (e.g. 'open', 'exercise').",
        ),
        "duration_s": pa.Column(
            pl.Float64,
            pa.Check.ge(0.0),
            nullable=True,
            description="Time spent in the event, seconds (null = not logged, counts as 0).",
        ),
        "properties": pa.Column(
            pl.String,
            nullable=True,
            description="Free-form event properties as given (JSON text for struct columns).",
        ),
        "source": pa.Column(pl.String, nullable=False, description="Source file path as given."),
        "row": pa.Column(
            pl.Int64, pa.Check.ge(1), nullable=False, description="1-based data row in source."
        ),
    },
    strict=True,
    ordered=False,
    name="TelemetryEventSchema",
    description="Accepted telemetry events: one row per valid event.",
)
"""Pandera (polars backend) schema of accepted events.

On a ``LazyFrame`` pandera checks column names and dtypes only (no data pass); on a
``DataFrame`` it also runs the value checks.
"""

_SCANNED_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "row": pl.Int64(),
    "participant_id": pl.String(),
    "timestamp": _TS,
    "timestamp_text": pl.String(),
    "event": pl.String(),
    "duration_s": pl.Float64(),
    "duration_text": pl.String(),
    "properties": pl.String(),
}


class TelemetryInputError(ValueError):
    """An event file cannot be read as telemetry: names the file and the column."""

    def __init__(self, path: Path | str, column: str, message: str) -> None:
        self.path = str(path)
        self.column = column
        super().__init__(f"{path}: column '{column}': {message}")


# --------------------------------------------------------------------------------------
# ingest
# --------------------------------------------------------------------------------------


def _expand_paths(paths: str | Path | Sequence[str | Path]) -> list[str]:
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    out: list[str] = []
    for item in items:
        text = str(item)
        if any(ch in text for ch in "*?["):
            matches = sorted(glob.glob(text))
            if not matches:
                raise TelemetryInputError(text, "", "no file matches this pattern")
            out.extend(matches)
        else:
            if not Path(text).is_file():
                raise TelemetryInputError(text, "", "file not found")
            out.append(text)
    return out


def _parse_timestamp_text(text: pl.Expr) -> pl.Expr:
    """Parse ISO-8601-like text to UTC; naive text is read as UTC, offsets are converted."""
    t = text.str.strip_chars().str.replace(r"[Zz]$", "+00:00")
    with_offset = ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"]
    naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]
    parsed = [
        t.str.to_datetime(f, time_unit="us", time_zone="UTC", strict=False) for f in with_offset
    ]
    parsed += [
        t.str.to_datetime(f, time_unit="us", strict=False).dt.replace_time_zone("UTC")
        for f in naive
    ]
    parsed.append(t.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")))
    parsed[-1] = parsed[-1].dt.replace_time_zone("UTC")
    return pl.coalesce(parsed)


def _blank_to_null(expr: pl.Expr) -> pl.Expr:
    stripped = expr.str.strip_chars()
    return pl.when(stripped.str.len_chars() > 0).then(stripped).otherwise(None)


def _normalise_one(path: str) -> pl.LazyFrame:
    suffix = Path(path).suffix.lower()
    if suffix in {".parquet", ".pq"}:
        lf = pl.scan_parquet(path, row_index_name="row", row_index_offset=1)
    elif suffix in {".csv", ".txt"}:
        lf = pl.scan_csv(path, infer_schema=False, row_index_name="row", row_index_offset=1)
    else:
        raise TelemetryInputError(path, "", f"unsupported file type '{suffix}' (csv, parquet)")
    try:
        schema = lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:  # corrupt file, unreadable header
        raise TelemetryInputError(path, "", f"cannot read file: {exc}") from exc
    missing = [c for c in _REQUIRED if c not in schema]
    if missing:
        raise TelemetryInputError(path, missing[0], "required column is missing")

    def text_of(name: str) -> pl.Expr:
        dtype = schema[name]
        if dtype == pl.String:
            return pl.col(name)
        if isinstance(dtype, pl.Struct):
            return pl.col(name).struct.json_encode()
        if dtype.is_numeric() or dtype.is_temporal() or dtype == pl.Boolean:
            return pl.col(name).cast(pl.String)
        raise TelemetryInputError(path, name, f"has type {dtype}; expected text")

    ts_type = schema["timestamp"]
    if ts_type == pl.String:
        ts = _parse_timestamp_text(pl.col("timestamp"))
        ts_text = pl.col("timestamp")
    elif isinstance(ts_type, pl.Datetime):
        base = pl.col("timestamp").cast(pl.Datetime(ts_type.time_unit or "us", ts_type.time_zone))
        base = (
            base.dt.convert_time_zone("UTC")
            if ts_type.time_zone
            else base.dt.replace_time_zone("UTC")
        )
        ts = base.dt.cast_time_unit("us")
        ts_text = pl.lit(None, dtype=pl.String)
    elif ts_type == pl.Date:
        ts = pl.col("timestamp").cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        ts_text = pl.lit(None, dtype=pl.String)
    else:
        raise TelemetryInputError(
            path, "timestamp", f"has type {ts_type}; expected text or a datetime"
        )

    if "duration_s" not in schema:
        dur = pl.lit(None, dtype=pl.Float64)
        dur_text = pl.lit(None, dtype=pl.String)
    elif schema["duration_s"] == pl.String:
        dur_text = _blank_to_null(pl.col("duration_s"))
        dur = dur_text.cast(pl.Float64, strict=False)
    elif schema["duration_s"].is_numeric():
        dur = pl.col("duration_s").cast(pl.Float64)
        dur_text = pl.lit(None, dtype=pl.String)
    else:
        raise TelemetryInputError(
            path, "duration_s", f"has type {schema['duration_s']}; expected a number"
        )
    props = text_of("properties") if "properties" in schema else pl.lit(None, dtype=pl.String)

    return lf.select(
        pl.lit(path, dtype=pl.String).alias("source"),
        pl.col("row").cast(pl.Int64),
        _blank_to_null(text_of("participant_id")).alias("participant_id"),
        ts.alias("timestamp"),
        ts_text.alias("timestamp_text"),
        _blank_to_null(text_of("event")).alias("event"),
        dur.alias("duration_s"),
        dur_text.alias("duration_text"),
        props.alias("properties"),
    )


def scan_events(paths: str | Path | Sequence[str | Path]) -> pl.LazyFrame:
    """Scan telemetry event files lazily into one normalised, not yet validated, table.

    Parameters
    ----------
    paths
        One path, a glob pattern (``"telemetry/*.parquet"``) or a sequence of either.
        ``.parquet``/``.pq`` and ``.csv``/``.txt`` files; CSV is read as text so that no
        value is silently lost to type inference.

    Returns
    -------
    pl.LazyFrame
        Columns ``source`` (path as given), ``row`` (Int64, 1-based data row in that file),
        ``participant_id`` (String, blank -> null), ``timestamp`` (Datetime[us, UTC], null
        when missing or unparseable), ``timestamp_text`` (the raw text for text sources,
        else null), ``event`` (String, blank -> null), ``duration_s`` (Float64 seconds, null
        when absent or non-numeric), ``duration_text`` (raw text for text sources),
        ``properties`` (String). Nothing is read until the frame is collected or sunk.

    Raises
    ------
    TelemetryInputError
        A file is missing, of an unsupported type, unreadable, lacks a required column
        (``participant_id``, ``timestamp``, ``event``) or has a column of an unusable type.
        These are unusable inputs (``flourish validate`` exit code 2), not row errors.

    Notes
    -----
    Text timestamps are ISO 8601 (``2024-03-01T08:15:00``, optional fractional seconds,
    optional ``Z``/``+hh:mm`` offset, or a bare date). Naive times are taken as UTC.
    """
    files = _expand_paths(paths)
    if not files:
        raise TelemetryInputError("", "", "no telemetry files given")
    frames = [_normalise_one(p) for p in files]
    return pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TelemetryValidationResult:
    """Outcome of :func:`validate_events`.

    Attributes
    ----------
    accepted
        Valid events (``TelemetryEventSchema``), lazy: ``sink_parquet`` it or collect it.
    quarantine
        One row per rejected event: ``source, row, participant_id, wave`` (always null,
        telemetry has no wave), ``column, value`` (text) and ``reason`` — the columns of
        the survey ``quarantine.parquet`` so both can be concatenated.
    summary
        Tidy counts: ``source, outcome, n`` where ``outcome`` is ``"accepted"`` or a
        :data:`QuarantineReason`.
    rows_in, rows_accepted, rows_quarantined
        Row accounting; ``rows_in == rows_accepted + rows_quarantined`` always.
    message
        ``"ok"``, ``"rows_quarantined"`` or ``"no_rows"``.
    """

    accepted: pl.LazyFrame
    quarantine: pl.DataFrame
    summary: pl.DataFrame
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    message: Literal["ok", "rows_quarantined", "no_rows"]

    def to_frame(self) -> pl.DataFrame:
        """Return the tidy per-source, per-outcome count table (``summary``)."""
        return self.summary

    def counts_by_reason(self) -> dict[str, int]:
        """Return quarantined row counts per reason (reasons with no rows are omitted)."""
        by = (
            self.summary.filter(pl.col("outcome") != "accepted")
            .group_by("outcome")
            .agg(pl.col("n").sum())
        )
        return dict(zip(by["outcome"].to_list(), by["n"].to_list(), strict=True))


def _reason_and_value(participant_ids: pl.Series | None) -> list[pl.Expr]:
    ts_missing = pl.col("timestamp").is_null() & pl.col("timestamp_text").is_null()
    ts_bad = pl.col("timestamp").is_null()
    dur_non_numeric = (pl.col("duration_text").is_not_null() & pl.col("duration_s").is_null()) | (
        pl.col("duration_s").is_not_null() & ~pl.col("duration_s").is_finite()
    )
    dur_negative = pl.col("duration_s") < 0
    checks: list[tuple[pl.Expr, str, str, pl.Expr]] = [
        (
            pl.col("participant_id").is_null(),
            "missing_participant_id",
            "participant_id",
            pl.lit(None, dtype=pl.String),
        ),
        (ts_missing, "missing_timestamp", "timestamp", pl.lit(None, dtype=pl.String)),
        (ts_bad, "unparseable_timestamp", "timestamp", pl.col("timestamp_text")),
        (pl.col("event").is_null(), "missing_event", "event", pl.lit(None, dtype=pl.String)),
        (
            dur_non_numeric,
            "non_numeric_duration",
            "duration_s",
            pl.coalesce(pl.col("duration_text"), pl.col("duration_s").cast(pl.String)),
        ),
        (
            dur_negative,
            "negative_duration",
            "duration_s",
            pl.coalesce(pl.col("duration_text"), pl.col("duration_s").cast(pl.String)),
        ),
    ]
    if participant_ids is not None:
        known = participant_ids.cast(pl.String).drop_nulls().unique()
        checks.append(
            (
                ~pl.col("participant_id").is_in(known.implode()),
                "unknown_participant",
                "participant_id",
                pl.col("participant_id"),
            )
        )
    reason = pl.lit(None, dtype=pl.String)
    column = pl.lit(None, dtype=pl.String)
    value = pl.lit(None, dtype=pl.String)
    for cond, code, col, val in reversed(checks):  # first check wins
        reason = pl.when(cond).then(pl.lit(code)).otherwise(reason)
        column = pl.when(cond).then(pl.lit(col)).otherwise(column)
        value = pl.when(cond).then(val).otherwise(value)
    return [reason.alias("reason"), column.alias("column"), value.alias("value")]


def validate_events(
    events: pl.LazyFrame, participant_ids: pl.Series | None = None
) -> TelemetryValidationResult:
    """Split scanned events into accepted rows and quarantined rows with coded reasons.

    Parameters
    ----------
    events
        The frame from :func:`scan_events` (or any frame with its columns).
    participant_ids
        Known participant ids (the participants table). When given, events of any other id
        are quarantined as ``unknown_participant``; when ``None`` that check is skipped.

    Returns
    -------
    TelemetryValidationResult
        ``accepted`` stays lazy; ``quarantine`` and ``summary`` are collected (one streaming
        pass over the input computes both).

    Notes
    -----
    Each rejected row gets exactly one reason, the first that applies in the order of
    :data:`QUARANTINE_REASONS`, so the accounting ``rows_in = accepted + quarantined`` holds
    per row. A missing ``duration_s`` is valid (the event has no duration, counted as 0 s);
    a non-numeric or non-finite value is ``non_numeric_duration``; a value < 0 is
    ``negative_duration``. A timestamp that is absent is ``missing_timestamp``; one that is
    present but not ISO 8601 is ``unparseable_timestamp``.
    """
    names = events.collect_schema().names()
    missing = [c for c in _SCANNED_SCHEMA if c not in names]
    if missing:
        raise ValueError(f"events lack columns {missing}; pass the output of scan_events()")
    tagged = events.with_columns(_reason_and_value(participant_ids))
    summary_lf = (
        tagged.group_by("source", "reason")
        .agg(pl.len().cast(pl.Int64).alias("n"))
        .select("source", pl.col("reason").fill_null("accepted").alias("outcome"), "n")
    )
    quarantine_lf = tagged.filter(pl.col("reason").is_not_null()).select(
        "source",
        "row",
        "participant_id",
        pl.lit(None, dtype=pl.String).alias("wave"),
        "column",
        "value",
        "reason",
    )
    summary, quarantine = pl.collect_all([summary_lf, quarantine_lf], engine="streaming")
    summary = summary.sort("source", "outcome")
    quarantine = quarantine.sort("source", "row")
    rows_in = int(summary["n"].sum())
    rows_accepted = int(summary.filter(pl.col("outcome") == "accepted")["n"].sum())
    rows_quarantined = rows_in - rows_accepted
    accepted = TelemetryEventSchema.validate(
        tagged.filter(pl.col("reason").is_null()).select(
            "participant_id", "timestamp", "event", "duration_s", "properties", "source", "row"
        )
    )
    if rows_in == 0:
        message: Literal["ok", "rows_quarantined", "no_rows"] = "no_rows"
    elif rows_quarantined:
        message = "rows_quarantined"
    else:
        message = "ok"
    return TelemetryValidationResult(
        accepted=accepted,
        quarantine=quarantine,
        summary=summary,
        rows_in=rows_in,
        rows_accepted=rows_accepted,
        rows_quarantined=rows_quarantined,
        message=message,
    )


# --------------------------------------------------------------------------------------
# engagement features
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngagementConfig:
    """How engagement features are computed.

    Attributes
    ----------
    window_days
        Length of the window before each survey response, whole days (default 28). The
        window of a response at time ``t`` is the half-open interval ``[t - window, t)``:
        an event logged exactly at the response time is not in it.
    session_gap_minutes
        Inactivity gap that ends a session, minutes (default 30): a new session starts at a
        participant's first event and at every event more than this after the previous one
        (a gap of exactly 30 min continues the session).
    late_night_start_hour, late_night_end_hour
        Late night is ``[start:00, end:00)`` UTC, wrapping midnight (default 23 -> 5).
    event_types
        The event types reported in ``events_by_type`` (with zero counts); ``None`` = every
        type seen in the events.
    n_partitions
        Process participants in this many hash buckets, one after another, to bound memory
        (each bucket re-scans the events, so use > 1 only for very large inputs).
    """

    window_days: int = 28
    session_gap_minutes: float = 30.0
    late_night_start_hour: int = 23
    late_night_end_hour: int = 5
    event_types: tuple[str, ...] | None = None
    n_partitions: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.window_days, int) or self.window_days < 1:
            raise ValueError("window_days must be a whole number of days >= 1")
        if not self.session_gap_minutes > 0:
            raise ValueError("session_gap_minutes must be > 0")
        for h in (self.late_night_start_hour, self.late_night_end_hour):
            if not 0 <= h <= 23:
                raise ValueError("late-night hours must lie in 0..23")
        if self.late_night_start_hour == self.late_night_end_hour:
            raise ValueError("late-night start and end hours must differ")
        if self.n_partitions < 1:
            raise ValueError("n_partitions must be >= 1")


@dataclass(frozen=True)
class EngagementFeatures:
    """Engagement features per participant and wave (the result of the feature step).

    Attributes
    ----------
    features
        One row per row of the ``waves`` input: ``participant_id, wave, response_time,
        window_start, events, active_days, sessions, minutes, late_night_events,
        late_night_share, longest_streak_days``. Counts are 0 (not null) for a participant
        without events in the window; ``late_night_share`` is null there (0/0 has no
        value). A wave without a response time has null features (no window exists).
    events_by_type
        Tidy counts ``participant_id, wave, event, n`` for every wave row with a response
        time and every event type (``config.event_types`` or all seen), zeros included.
    config
        The configuration used.
    message
        ``"ok"``, ``"no_waves"`` or ``"no_events"`` (features are then all zero).
    """

    features: pl.DataFrame
    events_by_type: pl.DataFrame
    config: EngagementConfig = field(default_factory=EngagementConfig)
    message: FeaturesMessage = "ok"

    def to_frame(self) -> pl.DataFrame:
        """Return the per participant × wave feature table."""
        return self.features


_FEATURE_COLUMNS = (
    "events",
    "active_days",
    "sessions",
    "minutes",
    "late_night_events",
    "late_night_share",
    "longest_streak_days",
)


def _late_night(hour: pl.Expr, start: int, end: int) -> pl.Expr:
    return (hour >= start) & (hour < end) if start < end else (hour >= start) | (hour < end)


_KEY_SORT_LIMIT = 2**62
_TYPE_CHUNK = 8


def _sort_pair(frame: pl.DataFrame, major: str, minor: str) -> pl.DataFrame:
    """Sort by two integer columns (``major`` then ``minor``).

    When ``major * span + (minor - min)`` fits in an Int64 the sort is one integer sort on
    that key (much faster than polars' multi-column sort, whose row encoding is slow on a
    busy machine); otherwise the two-column sort is used. Both give the same order.
    """
    if frame.height == 0:
        return frame
    lo, hi = frame[minor].min(), frame[minor].max()
    span = int(hi) - int(lo) + 1
    n_major = int(frame[major].max()) + 1
    if n_major * span < _KEY_SORT_LIMIT:
        return frame.sort(pl.col(major).cast(pl.Int64) * span + (pl.col(minor) - lo))
    return frame.sort(major, minor)


def _lookup(
    left: pl.DataFrame,
    table: pl.DataFrame,
    at: str,
    key: str,
    values: list[str],
    strategy: Literal["backward", "forward"] = "backward",
) -> pl.DataFrame:
    """As-of lookup of ``values`` at time ``at`` within ``key``; rows stay in ``left``'s order.

    ``left`` must be sorted by ``at`` within ``key`` and ``table`` by ``ts`` within ``key``.
    Backward looks at the last row strictly before ``at``; forward at the first row at or
    after ``at``.
    """
    out = left.select(key, at).join_asof(
        table.select(key, pl.col("ts").alias("_ts"), *values),
        left_on=at,
        right_on="_ts",
        by=key,
        strategy=strategy,
        allow_exact_matches=strategy == "forward",
        check_sortedness=False,
    )
    return out.select(values) if strategy == "backward" else out.select("_ts", *values)


def _features_one_partition(
    events: pl.LazyFrame, waves: pl.DataFrame, cfg: EngagementConfig, types: pl.Series
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Features for the wave rows in ``waves`` (columns wid, pidx, participant_id, s, e µs).

    Returns features keyed by ``wid`` and per-type counts keyed by ``wid, code``.
    """
    gap_us = round(cfg.session_gap_minutes * 60 * _US_PER_SECOND)
    ids = waves.select("participant_id", "pidx").unique("participant_id")
    lo = waves["s"].min() - gap_us  # earlier events cannot change a session start in a window
    hi = waves["e"].max()
    n_types = types.len()
    codes = pl.int_range(n_types, dtype=pl.UInt32, eager=True)
    ev = (
        events.select(
            "participant_id",
            pl.col("timestamp").dt.epoch("us").alias("ts"),
            pl.col("event")
            .replace_strict(types, codes, default=None, return_dtype=pl.UInt32)
            .alias("code"),
            pl.col("duration_s").fill_null(0.0).alias("dur"),
        )
        .filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))
        .join(ids.lazy(), on="participant_id", how="inner")
        .drop("participant_id")
        .collect(engine="streaming")
    )
    ev = _sort_pair(ev, "pidx", "ts")
    hour = (pl.col("ts") // _US_PER_HOUR) % 24
    new_pidx = (pl.col("pidx") != pl.col("pidx").shift(1)).fill_null(True)
    ev = ev.with_columns(
        (pl.col("ts") // _US_PER_DAY).alias("day"),
        (new_pidx | ((pl.col("ts") - pl.col("ts").shift(1)) > gap_us)).alias("start"),
        _late_night(hour, cfg.late_night_start_hour, cfg.late_night_end_hour).alias("late"),
        new_pidx.alias("new_pidx"),
    )
    # global running sums (ev is sorted by pidx): the difference of two lookups within one
    # participant counts that participant's events between them, no per-group reset needed
    values = ["c_n", "c_start", "c_late", "c_dur"]
    cum = ev.select(
        "pidx",
        "ts",
        "start",
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("c_n"),
        pl.col("start").cast(pl.Int64).cum_sum().alias("c_start"),
        pl.col("late").cast(pl.Int64).cum_sum().alias("c_late"),
        pl.col("dur").cum_sum().alias("c_dur"),
    )
    # running sums just before each participant's first event, for lookups that find none
    firsts = ev.select(pl.col("new_pidx"), "late", "dur")
    base = cum.filter(firsts["new_pidx"]).select(
        "pidx",
        (pl.col("c_n") - 1).alias("c_n_base"),
        (pl.col("c_start") - 1).alias("c_start_base"),  # a first event always starts
        (pl.col("c_late") - firsts.filter("new_pidx")["late"].cast(pl.Int64)).alias("c_late_base"),
        (pl.col("c_dur") - firsts.filter("new_pidx")["dur"]).alias("c_dur_base"),
    )
    # waves sorted by (pidx, e); s = e - window keeps the same order, so every lookup below
    # returns rows aligned with `w` and can be stacked side by side
    w = _sort_pair(waves.select("wid", "pidx", "s", "e"), "pidx", "e")
    w = w.join(base, on="pidx", how="left", maintain_order="left")
    at_s = _lookup(w, cum, "s", "pidx", values)
    at_e = _lookup(w, cum, "e", "pidx", values)
    first_in = _lookup(w, cum, "s", "pidx", ["start"], strategy="forward")
    del cum

    def window_sum(v: str) -> pl.Expr:
        base_v = pl.col(f"{v}_base").fill_null(0)
        return pl.coalesce(at_e[v], base_v) - pl.coalesce(at_s[v], base_v)

    # a session already running at the window start is counted once, at its first
    # in-window event; sessions starting inside the window are counted by the running sums
    continued = (
        first_in["_ts"].is_not_null() & (first_in["_ts"] < w["e"]) & ~first_in["start"]
    ).fill_null(False)
    feats = w.select(
        "wid",
        window_sum("c_n").alias("events"),
        (window_sum("c_start") + continued.cast(pl.Int64)).alias("sessions"),
        (window_sum("c_dur") / 60.0).alias("minutes"),
        window_sum("c_late").alias("late_night_events"),
    )

    # calendar days (ev is sorted by pidx, ts, so each participant-day is one run of rows):
    # a day is active in a window when one of its events lies in [s, e)
    new_day = (pl.col("new_pidx") | (pl.col("day") != pl.col("day").shift(1))).fill_null(True)
    last_day = new_day.shift(-1).fill_null(True)
    day0 = int(lo // _US_PER_DAY)
    n_days = int(hi // _US_PER_DAY) - day0 + 2
    dkey = (pl.col("pidx").cast(pl.Int64) * n_days + (pl.col("day") - day0)).alias("dkey")
    days = ev.filter(new_day).select(dkey, pl.col("ts").alias("first_ts"))
    days = days.with_columns(ev.filter(last_day)["ts"].alias("last_ts"))
    # every day of every window as (row of w, dkey); then keep the days active in the window
    wr = w.select("s", "e", pl.col("pidx").cast(pl.Int64) * n_days - day0, "wid")
    window_day_keys = pl.int_ranges(
        pl.col("pidx") + pl.col("s") // _US_PER_DAY,
        pl.col("pidx") + (pl.col("e") - 1) // _US_PER_DAY + 1,
    ).alias("dkey")
    grid = (
        wr.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("r"), window_day_keys)
        .explode("dkey")
        .join(days, on="dkey", how="inner", maintain_order="left")
    )
    inside = (grid["first_ts"] < wr["e"].gather(grid["r"])) & (
        grid["last_ts"] >= wr["s"].gather(grid["r"])
    )
    grid = grid.filter(inside)
    active = pl.DataFrame({"wid": wr["wid"].gather(grid["r"]), "day": grid["dkey"]})
    del grid, inside
    # rows are ordered by window, then day (dkey is the day plus a per-participant offset):
    # consecutive active days share day - rank within the window (gaps and islands)
    first_row = pl.when(pl.col("wid") != pl.col("wid").shift(1).fill_null(-1)).then(
        pl.int_range(pl.len(), dtype=pl.Int64)
    )
    rank = pl.int_range(pl.len(), dtype=pl.Int64) - first_row.forward_fill()
    streaks = (
        active.with_columns((pl.col("day") - rank).alias("island"))
        .group_by("wid", "island")
        .agg(pl.len().alias("run"))
        .group_by("wid")
        .agg(
            pl.col("run").sum().cast(pl.Int64).alias("active_days"),
            pl.col("run").max().cast(pl.Int64).alias("longest_streak_days"),
        )
    )
    feats = feats.join(streaks, on="wid", how="left").with_columns(
        pl.col("active_days", "longest_streak_days").fill_null(0)
    )

    # events per type: per-type global running counts, looked up at both ends like the
    # totals (types in chunks, to bound the extra columns held at once)
    type_parts = [pl.DataFrame(schema={"wid": pl.Int64, "code": pl.UInt32, "n": pl.Int64})]
    first_codes = ev.filter(pl.col("new_pidx"))["code"]
    for first_code in range(0, n_types, _TYPE_CHUNK):
        chunk = range(first_code, min(n_types, first_code + _TYPE_CHUNK))
        names = [f"_t{c}" for c in chunk]
        hits = [(pl.col("code") == c).fill_null(False).cast(pl.Int64) for c in chunk]
        tc = ev.select(
            "pidx", "ts", *[h.cum_sum().alias(n) for h, n in zip(hits, names, strict=True)]
        )
        tbase = tc.filter(ev["new_pidx"]).select(
            "pidx",
            *[
                (pl.col(n) - first_codes.eq(c).fill_null(False).cast(pl.Int64)).alias(n)
                for c, n in zip(chunk, names, strict=True)
            ],
        )
        wb = w.select("pidx").join(tbase, on="pidx", how="left", maintain_order="left")
        t_s = _lookup(w, tc, "s", "pidx", names)
        t_e = _lookup(w, tc, "e", "pidx", names)
        for c, n in zip(chunk, names, strict=True):
            b = wb[n].fill_null(0)
            counts = t_e[n].fill_null(b) - t_s[n].fill_null(b)
            type_parts.append(
                pl.DataFrame(
                    {
                        "wid": w["wid"],
                        "code": pl.repeat(c, w.height, dtype=pl.UInt32, eager=True),
                        "n": counts,
                    }
                )
            )
    by_type = pl.concat(type_parts)
    del ev
    return feats, by_type


def compute_engagement_features(
    events: pl.LazyFrame, waves: pl.DataFrame, config: EngagementConfig | None = None
) -> EngagementFeatures:
    """Compute engagement features per participant and survey wave.

    For each survey response at time ``t`` the window is ``[t - window_days, t)`` (UTC) and,
    from the participant's events in it:

    - ``events``: number of events;
    - ``active_days``: UTC calendar days with at least one event in the window (the two
      edge days count when an event falls inside the window part of that day, so a window
      not starting at midnight touches ``window_days + 1`` days and this can reach that);
    - ``sessions``: runs of events separated by more than ``session_gap_minutes``; sessions
      are found on the participant's whole event stream and a session already running at
      the window start counts once (its in-window part);
    - ``minutes``: ``sum(duration_s) / 60`` (a missing duration counts as 0 s);
    - ``late_night_events`` and ``late_night_share``: events in ``[23:00, 05:00)`` UTC and
      their share of ``events`` (share of events, not of minutes; null when no events);
    - ``longest_streak_days``: longest run of consecutive active days within the window.

    Parameters
    ----------
    events
        Accepted events (``TelemetryValidationResult.accepted``, or any frame with
        ``participant_id, timestamp, event, duration_s``); read lazily and filtered to the
        time span of the windows before it is materialised.
    waves
        Survey response times: ``participant_id, wave, timestamp`` (the wave's response
        time; naive = UTC). One row per participant × wave.
    config
        :class:`EngagementConfig`; defaults apply when ``None``.

    Returns
    -------
    EngagementFeatures
        ``features`` (one row per ``waves`` row) and the tidy ``events_by_type``.

    Notes
    -----
    Counts over a window are differences of per-participant cumulative sums looked up with
    as-of joins at both window ends, so overlapping windows (waves closer together than the
    window) are handled exactly and the cost is one sort of the events.
    """
    cfg = config or EngagementConfig()
    need = {"participant_id", "wave", "timestamp"}
    if not need <= set(waves.columns):
        raise ValueError(f"waves needs columns {sorted(need)}")
    if waves.select(pl.struct("participant_id", "wave").is_duplicated().any()).item():
        raise ValueError("waves has more than one row per participant_id × wave")
    ts = pl.col("timestamp")
    wdt = waves.schema["timestamp"]
    if isinstance(wdt, pl.Datetime):
        ts = ts.dt.convert_time_zone("UTC") if wdt.time_zone else ts.dt.replace_time_zone("UTC")
        ts = ts.dt.cast_time_unit("us")
    elif wdt == pl.Date:
        ts = ts.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    else:
        raise ValueError("waves.timestamp must be a Datetime or Date column")
    base = waves.select(
        pl.col("participant_id").cast(pl.String),
        pl.col("wave").cast(pl.Int32),
        ts.alias("response_time"),
    ).sort("participant_id", "wave")
    window = pl.duration(days=cfg.window_days, time_unit="us")
    base = base.with_columns(
        (pl.col("response_time") - window).alias("window_start"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("wid"),  # row id in the output order
    )
    timed = base.filter(pl.col("response_time").is_not_null()).select(
        "wid",
        "participant_id",
        pl.col("participant_id").rank("dense").cast(pl.UInt32).alias("pidx"),
        pl.col("response_time").dt.epoch("us").alias("e"),
        pl.col("window_start").dt.epoch("us").alias("s"),
    )

    if cfg.event_types is not None:
        types = pl.Series("event", sorted(set(cfg.event_types)), dtype=pl.String)
    else:
        unique = events.select(pl.col("event").cast(pl.String)).unique()
        types = unique.collect(engine="streaming")["event"].drop_nulls().sort()
    n_types = types.len()

    feats_parts: list[pl.DataFrame] = []
    type_parts: list[pl.DataFrame] = []
    if timed.height:
        k = cfg.n_partitions
        bucket = pl.col("participant_id").hash(seed=20_241_129) % k
        for b in range(k):
            w = timed.filter(bucket == b) if k > 1 else timed
            if not w.height:
                continue
            ev_b = events.filter(bucket == b) if k > 1 else events
            f, t = _features_one_partition(ev_b, w, cfg, types)
            feats_parts.append(f)
            type_parts.append(t)
    f_all = (
        pl.concat(feats_parts)
        if feats_parts
        else pl.DataFrame(schema={"wid": pl.Int64} | {c: pl.Int64 for c in _FEATURE_COLUMNS})
    )
    features = (
        base.join(f_all, on="wid", how="left", maintain_order="left")
        .with_columns(
            pl.col("minutes").cast(pl.Float64),
            pl.when(pl.col("events") > 0)
            .then(pl.col("late_night_events") / pl.col("events"))
            .otherwise(None)
            .alias("late_night_share"),
        )
        .select(
            "participant_id",
            "wave",
            "response_time",
            "window_start",
            *[pl.col(c).cast(pl.Int64) for c in ("events", "active_days", "sessions")],
            "minutes",
            pl.col("late_night_events").cast(pl.Int64),
            "late_night_share",
            pl.col("longest_streak_days").cast(pl.Int64),
        )
    )
    # types are sorted, so (wid, code) order is (participant_id, wave, event) order
    t_all = (
        pl.concat(type_parts)
        if type_parts
        else pl.DataFrame(schema={"wid": pl.Int64, "code": pl.UInt32, "n": pl.Int64})
    )
    t_all = t_all.sort(pl.col("wid") * max(n_types, 1) + pl.col("code").cast(pl.Int64))
    events_by_type = pl.DataFrame(
        {
            "participant_id": base["participant_id"].gather(t_all["wid"]),
            "wave": base["wave"].gather(t_all["wid"]),
            "event": types.gather(t_all["code"]),
            "n": t_all["n"].cast(pl.Int64),
        },
        schema={"participant_id": pl.String, "wave": pl.Int32, "event": pl.String, "n": pl.Int64},
    )
    if base.height == 0:
        message: FeaturesMessage = "no_waves"
    elif features["events"].fill_null(0).sum() == 0:
        message = "no_events"
    else:
        message = "ok"
    return EngagementFeatures(
        features=features, events_by_type=events_by_type, config=cfg, message=message
    )
