"""Benchmark: the full DP release suite on a participant x wave score table.

Run ``python -m benchmarks.bench_privacy [n_participants]`` (prints JSON). ``run()`` builds
the score table with numpy (pseudonym-like 64-hex ids, 6 waves, the demo study's
instruments WHO-5 and Flourish-12: 10 scales, so 200,000 participants give 12 million
rows), then times ``release_study`` (all four releases, charged in a fresh ledger) and a
second call served from the ledger. Target at 200,000 participants: the suite < 10 s.
Peak memory: ``tracemalloc`` sees Python allocations only (polars/OpenDP allocate in
Rust), so the process's ``ru_maxrss`` is reported as well.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import polars as pl

from instruments.definition import load_library
from privacy.ledger import PrivacyLedger
from privacy.release import ReleasePlanInfo, release_study

WAVES = (0, 1, 2, 3, 4, 5)
INSTRUMENTS = ("who5", "flourish12")


def _scores(n: int, seed: int = 0) -> tuple[pl.DataFrame, dict]:
    lib = load_library()
    scales = [(i, s.id, lib[i].scale_range(s.id)) for i in INSTRUMENTS for s in lib[i].scales]
    rng = np.random.default_rng(seed)
    ids = np.array([f"{v:064x}" for v in rng.integers(0, 2**63, n, dtype=np.int64)])
    arm = np.where(rng.random(n) < 0.5, "control", "treatment")
    latent = rng.normal(0, 1, n)
    w = len(WAVES)
    frames = []
    for inst, sc, (lo, hi) in scales:
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        eff = np.where(arm == "treatment", 0.05, 0.0)
        x = (
            mid
            + half * 0.3 * latent[:, None]
            + half * eff[:, None] * np.arange(w)[None, :] / (w - 1)
            + half * 0.2 * rng.normal(0, 1, (n, w))
        )
        frames.append(
            pl.DataFrame(
                {
                    "participant_id": np.repeat(ids, w),
                    "arm": np.repeat(arm, w),
                    "wave": np.tile(np.array(WAVES, dtype=np.int32), n),
                    "instrument": inst,
                    "scale": sc,
                    "score": np.clip(x, lo, hi).ravel(),
                }
            )
        )
    bounds = {(i, s): r for i, s, r in scales}
    return pl.concat(frames), bounds


def run(n_participants: int = 200_000, epsilon_per_release: float = 0.5) -> dict:
    """Time the release suite; returns wall times (s), rows, peak memory (MiB)."""
    t0 = time.perf_counter()
    scores, bounds = _scores(n_participants)
    build_s = time.perf_counter() - t0
    plan = ReleasePlanInfo("control", "treatment", "who5.total", WAVES)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = PrivacyLedger(Path(tmp) / "privacy_ledger.sqlite", 4 * epsilon_per_release)
        tracemalloc.start()
        t1 = time.perf_counter()
        first = release_study(
            scores=scores, participants=None, ledger=ledger, bounds=bounds, plan_info=plan,
            data_version="bench-v1", epsilon_per_release=epsilon_per_release,
        )
        suite_s = time.perf_counter() - t1
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        t2 = time.perf_counter()
        again = release_study(
            scores=scores, participants=None, ledger=ledger, bounds=bounds, plan_info=plan,
            data_version="bench-v1", epsilon_per_release=epsilon_per_release,
        )
        cached_s = time.perf_counter() - t2
    return {
        "workload": "privacy",
        "n_participants": n_participants,
        "n_rows": scores.height,
        "n_scales": len(bounds),
        "build_table_s": round(build_s, 3),
        "release_suite_s": round(suite_s, 3),
        "served_from_ledger_s": round(cached_s, 3),
        "status": first.status,
        "served_status": [o["outcome"] for o in again.outcomes],
        "epsilon_spent": round(first.budget.spent, 6),
        "python_peak_mib": round(py_peak / 2**20, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "target_s": 10.0,
        "meets_target": suite_s < 10.0,
    }


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    print(json.dumps(run(n), indent=2))
