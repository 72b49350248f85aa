"""Benchmark: reliability of WHO-5 and Flourish-12 scales, 6 waves, simulated long data.

Run ``python -m benchmarks.bench_reliability [N]`` (prints JSON). ``run()`` returns the
timings; the target is under 2 s of computation for 200,000 participants (data
generation excluded): 6 waves x 17 items = 20.4 million long rows, 9 scales, pairwise and
listwise, omega included. ``load_average_1min`` is recorded because the machine is
shared: compare runs at similar load.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import polars as pl

from instruments.reliability import ReliabilityConfig, compute_reliability

WAVES = 6
WHO5_ITEMS = [f"who5_{i}" for i in range(1, 6)]
FLOURISH_ITEMS = [f"flourish_{i}" for i in range(1, 13)]
FLOURISH_DOMAINS = {
    "happiness_life_satisfaction": (1, 2),
    "mental_physical_health": (3, 4),
    "meaning_purpose": (5, 6),
    "character_virtue": (7, 8),
    "close_social_relationships": (9, 10),
    "financial_material_stability": (11, 12),
}


def scale_table() -> pl.DataFrame:
    """WHO-5 raw; the six Flourish-12 domains, flourish_index (1-10), secure index (1-12)."""
    rows = [("who5", "raw", it, 0, 5) for it in WHO5_ITEMS]
    for dom, (a, b) in FLOURISH_DOMAINS.items():
        rows += [("flourish12", dom, f"flourish_{i}", 0, 10) for i in (a, b)]
    rows += [("flourish12", "flourish_index", f"flourish_{i}", 0, 10) for i in range(1, 11)]
    rows += [("flourish12", "secure_flourish_index", it, 0, 10) for it in FLOURISH_ITEMS]
    return pl.DataFrame(
        {
            "instrument": [r[0] for r in rows],
            "scale": [r[1] for r in rows],
            "item": [r[2] for r in rows],
            "reverse": [False] * len(rows),
            "min": [r[3] for r in rows],
            "max": [r[4] for r in rows],
        }
    )


def simulate_long(n_participants: int, seed: int = 1) -> pl.DataFrame:
    """Long responses from a one-factor model per instrument, 2 % of items skipped."""
    rng = np.random.default_rng(seed)
    frames = []
    pid = np.repeat(np.arange(n_participants), WAVES).astype(str)
    wave = np.tile(np.arange(WAVES, dtype=np.int32), n_participants)
    trait = rng.normal(size=n_participants * WAVES)
    for inst, items, hi in (("who5", WHO5_ITEMS, 5), ("flourish12", FLOURISH_ITEMS, 10)):
        k = len(items)
        lat = trait[:, None] * 0.7 + rng.normal(scale=0.7, size=(trait.size, k))
        vals = np.clip(np.rint(hi / 2 + lat * hi / 4), 0, hi).astype(np.int16)
        vals_f = np.where(rng.random(vals.shape) < 0.02, -1, vals)
        frames.append(
            pl.DataFrame(
                {
                    "participant_id": np.repeat(pid, k),
                    "wave": np.repeat(wave, k),
                    "instrument": inst,
                    "item": np.tile(np.array(items), trait.size),
                    "value": vals_f.ravel(),
                }
            ).with_columns(
                pl.when(pl.col("value") >= 0).then(pl.col("value")).cast(pl.Int16).alias("value")
            )
        )
    return pl.concat(frames)


def run(n_participants: int = 200_000, seed: int = 1) -> dict:
    """Time :func:`compute_reliability` on simulated data; returns a JSON-able dict."""
    t0 = time.perf_counter()
    responses = simulate_long(n_participants, seed)
    scales = scale_table()
    t1 = time.perf_counter()
    c1 = time.process_time()
    result = compute_reliability(responses, scales, ReliabilityConfig())
    t2 = time.perf_counter()
    c2 = time.process_time()
    frame = result.to_frame()
    return {
        "benchmark": "reliability",
        "n_participants": n_participants,
        "waves": WAVES,
        "response_rows": responses.height,
        "scale_rows": frame.height,
        "generate_s": round(t1 - t0, 3),
        "compute_s": round(t2 - t1, 3),
        "compute_cpu_s": round(c2 - c1, 3),  # all threads; > compute_s when parallel
        "load_average_1min": round(os.getloadavg()[0], 2),
        "target_s": 2.0,
        "within_target": (t2 - t1) < 2.0,
        "min_alpha": float(frame["alpha"].min()),
        "messages": sorted(set(frame["message"].to_list())),
    }


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    print(json.dumps(run(n), indent=2))
