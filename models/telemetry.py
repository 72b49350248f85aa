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

Ingest and validation are polars queries: the accepted events stay a ``LazyFrame`` that a
caller can ``sink_parquet`` without materialising it. The features read only four compact
columns of the events in one streaming pass and are then computed with vectorised numpy
(table look-ups, ``bincount`` and one integer sort; no Python loop over rows), so 10^8
events take well under a minute and a few GiB on one machine (see
``benchmarks/bench_telemetry.py``).

Time zone. All times are handled in UTC. Naive timestamps are read as UTC, timestamps with an
offset are converted to UTC, and "late night" and "calendar day" are UTC notions: a study
whose participants live elsewhere must shift timestamps to local time before calling
:func:`compute_engagement_features` (the feature definitions are about local time of day).

Pseudonymisation of ``participant_id`` is the caller's job (``privacy/``), not this module's.
"""

from __future__ import annotations

import glob
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
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
        Process participants in this many ranges, one after another, to bound memory: each
        range reads the events again and holds about 21 bytes per event of its participants
        in the windows' time span plus 8-16 bytes per (event, window) pair (10^8 events in
        one range peak at about 5.3 GiB for the whole process). Use > 1 only for inputs
        larger than memory allows.
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


_TABLE_CELLS = 1 << 23  # cells of the participant x time-bucket lookup table
_BATCH_ROWS = 1 << 20  # events per vectorised step of the first pass
_SLICE_ROWS = 1 << 20  # sorted window events handled per vectorised step
_KEY_LIMIT = 1 << 62  # packed sort keys stay below this (chunks of windows otherwise)
_NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True)
class _Windows:
    """Survey windows in "slots": by participant, then end time, one sentinel per participant.

    Participant ``p``'s windows are slots ``first[p]`` to ``first[p + 1] - 2``, followed by
    a sentinel slot that ends never. Every window has the same length, so sorting by end
    also sorts by start: the windows that contain a time ``t`` are one run of slots, from
    the first window ending after ``t`` on while windows have started by ``t``; the sentinel
    stops both walks without a bounds check. Times are microseconds since the epoch.

    Attributes
    ----------
    e
        Window end per slot (``_NEVER`` for sentinels); the start is ``e - length``.
    overlaps
        The next slot's window starts before this one ends (an event can be in both).
    key_offset
        ``key_offset[slot] + t`` is the packed sort key of an event at ``t`` in the window:
        ``(slot - chunk start) * stride + (t - midnight before the window start)``, so
        ``key // day`` numbers the window's calendar days consecutively.
    slot
        Slot of each window, in the order of the rows it was built from.
    first
        First slot of each participant, plus the total number of slots.
    length, n_days, stride, chunk
        Window length (us), calendar days a window can touch, key span of one window
        (``n_days`` days) and slots per sort chunk (so that keys fit an Int64).
    """

    e: np.ndarray
    overlaps: np.ndarray
    key_offset: np.ndarray
    slot: np.ndarray
    first: np.ndarray
    length: int
    n_days: int
    stride: int
    chunk: int

    @classmethod
    def build(cls, pidx: np.ndarray, e: np.ndarray, n_part: int, window_days: int) -> _Windows:
        """Slots for windows ending at ``e``, sorted by participant ``pidx``, then by end."""
        length = window_days * _US_PER_DAY
        n_days = window_days + 1
        stride = n_days * _US_PER_DAY
        chunk = max(1, _KEY_LIMIT // stride)
        slot = np.arange(pidx.size) + pidx
        n_slots = pidx.size + n_part
        first = np.append(np.searchsorted(pidx, np.arange(n_part)), pidx.size)
        first += np.arange(n_part + 1)
        e_slot = np.full(n_slots, _NEVER, dtype=np.int64)
        e_slot[slot] = e
        overlaps = np.zeros(n_slots, dtype=bool)
        overlaps[:-1] = e_slot[1:] - length < e_slot[:-1]
        key_offset = np.zeros(n_slots, dtype=np.int64)
        key_offset[slot] = slot % chunk * stride - (e - length) // _US_PER_DAY * _US_PER_DAY
        return cls(e_slot, overlaps, key_offset, slot, first, length, n_days, stride, chunk)

    @property
    def n_slots(self) -> int:
        """Number of slots (windows plus one sentinel per participant)."""
        return int(self.e.size)


def _late_mask(ts: np.ndarray, start: int, end: int) -> np.ndarray:
    hour = ts % _US_PER_DAY // _US_PER_HOUR
    return (hour >= start) & (hour < end) if start < end else (hour >= start) | (hour < end)


def _bucket_table(win: _Windows, t0: int, t1: int) -> tuple[np.ndarray, int, int]:
    """First candidate slot per (participant, time bucket), flattened.

    ``cells[p * n_buckets + b]`` is participant ``p``'s first slot whose window does not end
    in a bucket before ``b``. Every earlier window of ``p`` ends before any time in bucket
    ``b``, so the search for "the first window ending after ``t``" starts there and steps
    over the few windows that end inside ``t``'s bucket: no sort of the events and no binary
    search over all windows.
    """
    n_part = win.first.size - 1
    n_buckets = max(1, min(_TABLE_CELLS // max(n_part, 1), (t1 - t0) // _US_PER_HOUR + 1))
    width = -(-(t1 - t0) // n_buckets)
    real = win.e != _NEVER
    owner = np.repeat(np.arange(n_part), np.diff(win.first))[real]
    bucket = np.minimum((win.e[real] - t0) // width, n_buckets)  # ending at t1 -> n_buckets
    counts = np.bincount(
        owner * (n_buckets + 1) + bucket, minlength=n_part * (n_buckets + 1)
    ).reshape(n_part, n_buckets + 1)[:, :-1]
    before = np.cumsum(counts, axis=1) - counts  # windows ending in buckets < b
    cells = before + win.first[:-1, None]
    return cells.astype(np.int32 if win.n_slots < 2**31 else np.int64).ravel(), n_buckets, width


def _memberships(
    p: np.ndarray, ts: np.ndarray, win: _Windows, table: tuple[np.ndarray, int, int], t0: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(event rows, slots) for every window that contains each event (t0 <= ts < t1).

    Returned per level: level ``k`` pairs each event with the ``k``-th window containing it
    (only overlapping windows make levels above 0), rows in input order within a level.
    """
    cells, n_buckets, width = table
    i = cells[p.astype(np.int64) * n_buckets + (ts - t0) // width].astype(np.int64)
    end = win.e[i]
    step = np.flatnonzero(end <= ts)
    while step.size:  # on to the first window ending after ts (within one bucket)
        i[step] += 1
        end[step] = win.e[i[step]]
        step = step[end[step] <= ts[step]]
    end -= win.length  # the window start
    rows = np.flatnonzero(end <= ts)
    i = i[rows]
    rows_out, slots_out = [rows], [i]
    more = np.flatnonzero(win.overlaps[i])
    rows, i = rows[more], i[more] + 1
    while rows.size:  # overlapping windows: the next ones while they have started by ts
        inside = win.e[i] - win.length <= ts[rows]
        rows, i = rows[inside], i[inside]
        if rows.size:
            rows_out.append(rows)
            slots_out.append(i)
        more = win.overlaps[i]
        rows, i = rows[more], i[more] + 1
    return rows_out, slots_out


def _sequence_features(key: np.ndarray, w0: int, n_days: int, gap_us: int, out: dict) -> None:
    """Sessions, active days and longest streak from sorted packed keys.

    ``key`` holds ``_Windows.key_offset[slot] + t`` for each event time ``t`` in a window
    of the chunk starting at slot ``w0``, sorted: the events of each window follow one
    another in time order and ``key // day`` numbers the window's calendar days
    consecutively (``n_days`` per window). A session starts at a window's first event and
    after every gap longer than ``gap_us``, which counts the sessions of the participant's
    whole stream that reach into the window (a session running at the window start is
    counted once); runs of consecutive days give streaks. ``out`` arrays are per slot.
    """
    n = key.size
    q = key // _US_PER_DAY  # window-day number
    new_day = np.empty(n, dtype=bool)
    new_day[0] = True
    np.not_equal(q[1:], q[:-1], out=new_day[1:])
    pos = np.flatnonzero(new_day)  # first event of each active day
    del new_day
    q = q[pos]
    w = q // n_days
    new_w = np.empty(pos.size, dtype=bool)
    new_w[0] = True
    np.not_equal(w[1:], w[:-1], out=new_w[1:])
    w_day = np.flatnonzero(new_w)  # first active day of each window, among the days
    slots = w[w_day] + w0
    first = pos[w_day]  # first event of each window
    start = np.empty(n, dtype=bool)
    start[0] = True
    np.greater(np.diff(key), gap_us, out=start[1:])
    start[first] = True
    n_start = np.cumsum(start, dtype=np.int64)
    del start
    last = np.append(first[1:], n) - 1
    out["sessions"][slots] = n_start[last] - n_start[first] + 1
    del n_start
    out["active_days"][slots] = np.diff(np.append(w_day, pos.size))
    brk = new_w.copy()
    brk[1:] |= q[1:] != q[:-1] + 1
    runs = np.flatnonzero(brk)
    run_len = np.diff(np.append(runs, pos.size))
    out["longest_streak_days"][slots] = np.maximum.reduceat(run_len, np.flatnonzero(new_w[runs]))


def _window_features(
    events: pl.LazyFrame, win: _Windows, ids: pl.Series, cfg: EngagementConfig, types: pl.Series
) -> dict[str, np.ndarray]:
    """Feature arrays per window (in ``win.slot`` order) and per-type counts ``(n, types)``.

    First pass (one streaming read of four compact columns, then slices of rows in input
    order, which may be any order): find each event's windows, add its type, duration and
    late-night flag to those windows' totals, and keep one packed integer (window, time)
    per membership. Then one integer sort of those keys per chunk of windows orders every
    window's events in time for sessions, active days and streaks.
    """
    n_types = types.len()
    gap_us = round(cfg.session_gap_minutes * 60 * _US_PER_SECOND)
    real = win.e != _NEVER
    t0, t1 = int(win.e[real].min()) - win.length, int(win.e[real].max())
    table = _bucket_table(win, t0, t1)
    minutes: list[np.ndarray] = []  # duration sums (s) of the events at each window level
    out = {
        "late_night_events": np.zeros(win.n_slots, dtype=np.int64),
        "sessions": np.zeros(win.n_slots, dtype=np.int64),
        "active_days": np.zeros(win.n_slots, dtype=np.int64),
        "longest_streak_days": np.zeros(win.n_slots, dtype=np.int64),
        "by_type": np.zeros(win.n_slots * (n_types + 1), dtype=np.int64),
    }
    epoch = pl.col("timestamp").dt.epoch("us")
    code_type = pl.UInt8 if n_types < 2**8 - 1 else pl.UInt32
    code = (
        pl.col("event").cast(pl.String).cast(pl.Enum(types), strict=False).to_physical()
        if n_types
        else pl.lit(None)
    )
    compact = (
        events.filter((epoch >= t0) & (epoch < t1))
        .select(
            pl.col("participant_id")
            .cast(pl.String)
            .cast(pl.Enum(ids), strict=False)
            .to_physical()
            .cast(pl.UInt32)
            .alias("p"),
            epoch.alias("ts"),
            code.cast(code_type).fill_null(n_types).alias("code"),  # other types -> n_types
            pl.col("duration_s").cast(pl.Float64).fill_null(0.0).alias("dur"),
        )
        .filter(pl.col("p").is_not_null())
    )
    n_part = ids.len()
    k = min(cfg.n_partitions, n_part)
    bounds = [n_part * j // k for j in range(k + 1)]
    for lo, hi in itertools.pairwise(bounds):  # participants lo..hi-1: one scan each
        part = compact.filter((pl.col("p") >= lo) & (pl.col("p") < hi)) if k > 1 else compact
        chunks = range(int(win.first[lo]) // win.chunk, (int(win.first[hi]) - 1) // win.chunk + 1)
        keys: list[np.ndarray] = []
        key_chunk: list[np.ndarray] = []
        collected = part.collect(engine="streaming")
        for batch in collected.iter_slices(_BATCH_ROWS):
            ts = batch["ts"].to_numpy()
            rows_by_level, slots_by_level = _memberships(batch["p"].to_numpy(), ts, win, table, t0)
            dur = batch["dur"].to_numpy()
            for level, (rows, slots) in enumerate(zip(rows_by_level, slots_by_level, strict=True)):
                # per level in input order: the same float sums however rows are batched
                if level == len(minutes):
                    minutes.append(np.zeros(win.n_slots, dtype=np.float64))
                np.add.at(minutes[level], slots, dur[rows])
            if len(rows_by_level) == 1:
                rows, slots = rows_by_level[0], slots_by_level[0]
            else:
                rows, slots = np.concatenate(rows_by_level), np.concatenate(slots_by_level)
            del rows_by_level, slots_by_level, dur
            ts = ts[rows]
            np.add.at(out["by_type"], slots * (n_types + 1) + batch["code"].to_numpy()[rows], 1)
            late = _late_mask(ts, cfg.late_night_start_hour, cfg.late_night_end_hour)
            np.add.at(out["late_night_events"], slots[late], 1)
            del batch, rows, late
            if len(chunks) > 1:
                key_chunk.append((slots // win.chunk).astype(np.int32))
            ts += win.key_offset[slots]
            keys.append(ts)
            del ts, slots
        del collected
        for c in chunks if keys else ():
            if len(chunks) == 1:
                key = np.concatenate(keys)
                keys.clear()
            else:
                key = np.concatenate([kk[cc == c] for kk, cc in zip(keys, key_chunk, strict=True)])
            key = pl.Series(key).sort().to_numpy()  # polars' parallel integer sort
            j0 = 0
            while j0 < key.size:  # slices that end at a window boundary
                j1 = min(key.size, j0 + _SLICE_ROWS)
                if j1 < key.size:
                    j1 = int(np.searchsorted(key, (key[j1 - 1] // win.stride + 1) * win.stride))
                _sequence_features(key[j0:j1], c * win.chunk, win.n_days, gap_us, out)
                j0 = j1
            del key
    by_type = out.pop("by_type").reshape(win.n_slots, n_types + 1)
    feats = {name: values[win.slot] for name, values in out.items()}
    feats["events"] = by_type.sum(axis=1)[win.slot]
    feats["minutes"] = sum(minutes, np.zeros(win.n_slots))[win.slot] / 60.0
    feats["by_type"] = by_type[win.slot, :n_types]
    return feats


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
    One streaming pass reads ``participant_id`` (as a code), time, type and duration of the
    events in the windows' overall time span. Each event's windows are found with a
    participant x time-bucket table (the windows of one participant, sorted by end, that
    contain a time form one run), so overlapping windows (waves closer together than the
    window) are handled exactly, and counts, minutes and types are summed per window with
    ``bincount``-style scatter-adds in input order. For the order-dependent features every
    (event, window) pair becomes one packed integer ``window * span + time``; one integer
    sort puts each window's events in time order. A session crossing the window start
    contributes its in-window part, so the sessions of a window are its first in-window
    event plus every in-window gap longer than ``session_gap_minutes``, which is the count
    of sessions of the whole stream that reach into the window. Cost: one read of the
    events (plus one of the ``event`` column when ``event_types`` is ``None``) and one sort
    of ``int64`` keys, no sort of the events themselves.
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
        (pl.col("participant_id").rank("dense") - 1).cast(pl.Int64).alias("pidx"),
        pl.col("response_time").dt.epoch("us").alias("e"),
        pl.col("window_start").dt.epoch("us").alias("s"),
    )

    if cfg.event_types is not None:
        types = pl.Series("event", sorted(set(cfg.event_types)), dtype=pl.String)
    else:
        unique = events.select(pl.col("event").cast(pl.String)).unique()
        types = unique.collect(engine="streaming")["event"].drop_nulls().sort()
    n_types = types.len()

    if timed.height:
        timed = timed.sort("pidx", "e")
        ids = timed["participant_id"].unique(maintain_order=True)  # pidx order
        win = _Windows.build(
            timed["pidx"].to_numpy(), timed["e"].to_numpy(), ids.len(), cfg.window_days
        )
        wid = timed["wid"].to_numpy()
        arrays = _window_features(events, win, ids, cfg, types)
        by_type = arrays.pop("by_type")
        f_all = pl.DataFrame({"wid": wid, **arrays})
        order = np.argsort(wid)  # output order: participant_id, wave, then event
        t_wid = np.repeat(wid[order], n_types)
        t_code = np.tile(np.arange(n_types), order.size)
        t_n = by_type[order].ravel()
    else:
        f_all = pl.DataFrame(
            schema={"wid": pl.Int64} | {c: pl.Int64 for c in _FEATURE_COLUMNS}
        )
        t_wid = t_code = t_n = np.zeros(0, dtype=np.int64)
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
    events_by_type = pl.DataFrame(
        {
            "participant_id": base["participant_id"].gather(t_wid),
            "wave": base["wave"].gather(t_wid),
            "event": types.gather(t_code),
            "n": t_n,
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
