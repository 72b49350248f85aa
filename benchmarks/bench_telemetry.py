"""Benchmark: engagement features for 6 survey waves from a Parquet file of telemetry events.

Run ``python -m benchmarks.bench_telemetry [n_events] [n_participants]`` (prints JSON).
``run()`` writes synthetic events to a Parquet file in a temporary folder (chunked, numpy,
so generation itself stays small in memory), then times, from that file:

- ``validate_s``: ``scan_events`` + ``validate_events`` (one streaming pass: row accounting
  and quarantine), when ``validate=True``;
- ``features_s``: ``compute_engagement_features`` over 6 waves with the default 28-day
  window and 30-minute session gap, reading the events file (all generated rows are valid,
  so it stands for the accepted-events Parquet that the pipeline sinks after validation).

Target at 10^8 events and 200,000 participants: features < 60 s and peak memory < 8 GiB
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the whole process).
"""

from __future__ import annotations

import datetime as dt
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from models.telemetry import (
    EngagementConfig,
    compute_engagement_features,
    scan_events,
    validate_events,
)

WAVES = 6
SPAN_DAYS = 180
EVENT_TYPES = ["open", "exercise", "journal", "breathing", "notification_tap", "share"]
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def _peak_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _ids(idx: np.ndarray) -> pl.Series:
    return pl.Series("participant_id", idx, dtype=pl.UInt32).cast(pl.String).str.zfill(7)


def write_events(
    path: Path, n_events: int, n_participants: int, seed: int = 1, chunk: int = 4_000_000
) -> None:
    """Write ``n_events`` synthetic events to one Parquet file, one row group per chunk."""
    rng = np.random.default_rng(seed)
    start_us = int(START.timestamp() * 1_000_000)
    # participants differ in activity (gamma weights), events cluster in the day (hours)
    weights = rng.gamma(1.5, 1.0, n_participants)
    weights /= weights.sum()
    writer = None
    try:
        for lo in range(0, n_events, chunk):
            n = min(chunk, n_events - lo)
            pidx = rng.choice(n_participants, n, p=weights)
            day = rng.integers(0, SPAN_DAYS, n)
            sec = (rng.normal(15, 5, n) % 24 * 3600).astype(np.int64)
            ts = start_us + (day * 86_400 + sec) * 1_000_000 + rng.integers(0, 1_000_000, n)
            frame = pl.DataFrame(
                {
                    "participant_id": _ids(pidx),
                    "timestamp": pl.Series(ts, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
                    "event": pl.Series(
                        np.asarray(EVENT_TYPES)[rng.integers(0, len(EVENT_TYPES), n)]
                    ),
                    "duration_s": rng.exponential(45.0, n).round(1),
                }
            )
            table = frame.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def wave_table(n_participants: int, seed: int = 2) -> pl.DataFrame:
    """Six monthly survey responses per participant (day 28 + 30 k, jittered by hours)."""
    rng = np.random.default_rng(seed)
    pidx = np.repeat(np.arange(n_participants), WAVES)
    wave = np.tile(np.arange(WAVES), n_participants)
    offset_h = (28 + 30 * wave) * 24 + rng.integers(0, 72, pidx.size)
    return pl.DataFrame(
        {
            "participant_id": _ids(pidx),
            "wave": pl.Series(wave, dtype=pl.Int32),
            "timestamp": pl.Series(
                int(START.timestamp() * 1_000_000) + offset_h * 3_600_000_000, dtype=pl.Int64
            ).cast(pl.Datetime("us", "UTC")),
        }
    )


def run(
    n_events: int = 100_000_000,
    n_participants: int = 200_000,
    n_partitions: int | None = None,
    validate: bool = True,
    seed: int = 1,
) -> dict:
    """Generate, then time validation and feature computation; return a JSON-able dict.

    ``n_partitions`` (participant ranges processed one after another, each re-reading the
    events) defaults to 1: one pass peaks at about 5.3 GiB (whole process) at 10^8 events.
    """
    parts = n_partitions or 1
    with tempfile.TemporaryDirectory(prefix="bench_telemetry_") as tmp:
        path = Path(tmp) / "events.parquet"
        t0 = time.perf_counter()
        write_events(path, n_events, n_participants, seed=seed)
        gen_s = time.perf_counter() - t0
        waves = wave_table(n_participants)
        peak_after_gen = _peak_mib()
        out: dict[str, object] = {
            "n_events": n_events,
            "n_participants": n_participants,
            "waves": WAVES,
            "n_partitions": parts,
            "file_mib": round(path.stat().st_size / 2**20, 1),
            "generate_s": round(gen_s, 2),
            "peak_rss_after_generate_mib": peak_after_gen,
        }
        if validate:
            t0 = time.perf_counter()
            res = validate_events(scan_events(path))
            out["validate_s"] = round(time.perf_counter() - t0, 2)
            out["rows_in"] = res.rows_in
            out["rows_quarantined"] = res.rows_quarantined
            out["peak_rss_after_validate_mib"] = _peak_mib()
        # features read the (already valid) events file, as the pipeline reads the
        # accepted-events Parquet that validation sinks
        events = pl.scan_parquet(path)
        t0 = time.perf_counter()
        feats = compute_engagement_features(events, waves, EngagementConfig(n_partitions=parts))
        out["features_s"] = round(time.perf_counter() - t0, 2)
        out["peak_rss_mib"] = _peak_mib()
        out["feature_rows"] = feats.features.height
        out["events_by_type_rows"] = feats.events_by_type.height
        out["events_in_windows"] = int(feats.features["events"].sum())
        out["target_features_s"] = 60
        out["target_peak_rss_mib"] = 8 * 1024
        out["meets_target"] = bool(out["features_s"] < 60 and out["peak_rss_mib"] < 8 * 1024)
    return out


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(run(*args), indent=2))
