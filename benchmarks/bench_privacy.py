"""Benchmark: the full DP release suite on a participant x wave score table.

Run ``python -m benchmarks.bench_privacy [n_participants]`` (prints JSON). ``run()`` builds
the score table with numpy (pseudonym-like 64-hex ids, 6 waves, the demo study's
instruments WHO-5 and Flourish-12: 10 scales, so 200,000 participants give 12 million
rows), then times building the participant-level public table and drawing the declared suite
(seven effects and WHO-5's trajectory) through OpenDP, against a floor: the same table's
non-private means in one polars group_by. Target at 200,000 participants: the suite < 10 s.
Peak memory: ``tracemalloc`` sees Python allocations only (polars/OpenDP allocate in
Rust), so the process's ``ru_maxrss`` is reported as well.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import tracemalloc

import numpy as np
import polars as pl

from instruments.definition import load_library
from privacy.figures import FigureSpec, PublicDeclaration, plan_release
from privacy.release import draw_release
from privacy.table import build_public_table

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


def _declaration(lib, epsilon: float, n: int) -> PublicDeclaration:
    figs = []
    for inst in INSTRUMENTS:
        for sc in lib[inst].scales:
            if sc.id in ("flourish_index", "secure_flourish_index"):
                continue
            lo, hi = lib[inst].scale_range(sc.id)
            primary = (inst, sc.id) == ("who5", "total")
            figs.append(FigureSpec(f"effect:{inst}.{sc.id}@{WAVES[-1]}", "effect",
                                   f"{inst}.{sc.id}", lib[inst].name, sc.name, "points",
                                   lo, hi, "primary" if primary else "secondary", None,
                                   WAVES[-1], (hi - lo) / (20 if primary else 10),
                                   0 if primary else 2))
    figs.append(FigureSpec("means:who5.total", "means", "who5.total", "WHO-5", "Total",
                           "points", 0.0, 100.0, "primary", None, None, 5.0, 1))
    return PublicDeclaration("bench", "control", "treatment", WAVES, tuple(figs), epsilon,
                             {"control": n / 2, "treatment": n / 2})


def run(n_participants: int = 200_000, epsilon: float = 3.0) -> dict:
    """Time the release suite; returns wall times (s), rows, peak memory (MiB)."""
    t0 = time.perf_counter()
    scores, _ = _scores(n_participants)
    build_s = time.perf_counter() - t0
    participants = scores.select("participant_id", "arm").unique("participant_id")
    decl = _declaration(load_library(), epsilon, n_participants)
    # floor: the same scores grouped to non-private means in one polars pass
    t_f = time.perf_counter()
    scores.group_by("arm", "wave", "instrument", "scale").agg(pl.col("score").mean())
    floor_s = time.perf_counter() - t_f
    tracemalloc.start()
    t1 = time.perf_counter()
    table = build_public_table(scores.drop("arm"), participants, decl)
    table_s = time.perf_counter() - t1
    plan = plan_release(decl)
    t2 = time.perf_counter()
    release = draw_release(plan, table)
    draw_s = time.perf_counter() - t2
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    suite_s = table_s + draw_s
    return {
        "workload": "privacy",
        "n_participants": n_participants,
        "n_rows": scores.height,
        "n_figures": len(decl.figures),
        "released": sum(f.released for f in release.figures),
        "build_scores_s": round(build_s, 3),
        "floor_groupby_means_s": round(floor_s, 3),
        "participant_table_s": round(table_s, 3),
        "draw_suite_s": round(draw_s, 3),
        "release_suite_s": round(suite_s, 3),
        "ratio_to_floor": round(suite_s / floor_s, 2) if floor_s > 0 else None,
        "epsilon_spent": round(release.epsilon, 6),
        "python_peak_mib": round(py_peak / 2**20, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "target_s": 10.0,
        "meets_target": suite_s < 10.0,
    }


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    print(json.dumps(run(n), indent=2))
