"""Ingest + validate + score of N participants × 6 waves × 17 items (WHO-5 + Flourish-12).

The floor, measured in the same run on the same file: a bare polars scan of the Parquet file
plus a group_by mean. The workload is the pipeline's own path: read (long Parquet layout),
pseudonymise, validate (pandera schema + polars reasons), score every scale.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import polars as pl


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_study(tmp: Path, n_participants: int, waves: int, seed: int) -> int:
    """Write the benchmark study (long Parquet, text cells as a CSV export would give).

    Runs in a child process so that the generator's memory is not counted in the
    workload's peak. Returns the number of item rows.
    """
    from orchestration.demo import DemoStudyConfig, simulate_study_frames

    # no dropout: every participant answers all 17 items at every wave (200,000 x 6 x 17 =
    # 20.4 M rows, the workload); 2 % of items are skipped (rows with a null value)
    sim = simulate_study_frames(DemoStudyConfig(n_participants=n_participants, waves=waves,
                                                seed=seed, telemetry=False, dropout_hazard=0.0))
    (tmp / "survey").mkdir()
    responses = sim.responses.with_columns(pl.col("value").cast(pl.String),
                                           pl.col("wave").cast(pl.String),
                                           pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    responses.write_parquet(tmp / "survey" / "responses.parquet")
    sim.participants.write_csv(tmp / "participants.csv")
    (tmp / "study.toml").write_text(
        'name = "bench"\noutput_dir = "out"\n[participants]\npath = "participants.csv"\n'
        '[[survey]]\npath = "survey/*.parquet"\nlayout = "long"\n'
        'instruments = ["who5", "flourish12"]\n'
    )
    (tmp / "pseudonym.key").write_text("0" * 64)
    return responses.height


def run(n_participants: int = 200_000, waves: int = 6, seed: int = 1) -> dict:
    """Time the ingest path against the floor; returns a JSON-able dict."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from orchestration import pipeline

    tmp = Path(tempfile.mkdtemp(prefix="flourish-bench-ingest-"))
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        n_rows = pool.submit(write_study, tmp, n_participants, waves, seed).result()
    rss_before = _peak_mib()

    t0 = time.perf_counter()
    floor = (pl.scan_parquet(tmp / "survey" / "responses.parquet")
             .group_by("item").agg(pl.col("value").cast(pl.Int16).mean()).collect())
    floor_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    study = pipeline.load_study(tmp / "study.toml")
    ingest = pipeline.ingest_study(study)
    t_validate = time.perf_counter() - t0
    scores = pipeline.score_study(study, ingest.validation.responses)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    summary = ingest.validation.summary
    accepted, quarantined, score_rows = summary.accepted, summary.quarantined, scores.height
    del ingest, scores

    # A second reference, after the workload (so it cannot warm anything for it): reading
    # every column of the file into memory. It runs on memory the workload already touched,
    # which on this VM is several times cheaper than fresh memory (the floor, the first
    # thing the process does, pays for fresh memory); read it as "reading the whole file
    # once, at best", not as a floor the workload could reach.
    t0 = time.perf_counter()
    read_all = pl.read_parquet(tmp / "survey" / "responses.parquet")
    read_all_s = time.perf_counter() - t0
    del read_all
    return {
        "n_participants": n_participants,
        "waves": waves,
        "item_rows": n_rows,
        "floor_s": round(floor_s, 3),
        "floor_groups": floor.height,
        "ingest_validate_s": round(t_validate, 3),
        "score_s": round(wall - t_validate, 3),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "rows_per_s": round(n_rows / wall),
        "ratio_to_floor": round(wall / floor_s, 2),
        "read_all_columns_s": round(read_all_s, 3),
        "read_all_columns_ratio_to_floor": round(read_all_s / floor_s, 2),
        "ratio_to_read_all_columns": round(wall / read_all_s, 2),
        "accepted": accepted,
        "quarantined": quarantined,
        "score_rows": score_rows,
        "peak_rss_before_workload_mib": round(rss_before, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "targets": {"ratio_to_floor": 3.0, "peak_rss_gib": 8.0},
    }
