"""Benchmark: the ANCOVA trial path against bare statsmodels OLS fits.

``run()`` builds a long scores table (participant x wave x 7 scales) for ``n_participants``
with numpy/polars, then times

(a) the floor: seven ``statsmodels`` OLS fits with HC1 on ready numpy arrays;
(b) the full path from the long table: :func:`models.effects.fit_trial_effects` with seven
    ANCOVA hypotheses (WHO-5 + six domains), the sample-ratio check and Holm adjustment.

Run: ``.venv/bin/python -m benchmarks.bench_effects [n_participants]``; prints JSON.
"""

from __future__ import annotations

import gc
import json
import sys
import time

import numpy as np
import polars as pl
import statsmodels.api as sm

from models.effects import TrialEffectsConfig, fit_trial_effects
from models.plan import parse_analysis_plan

SCALES: tuple[tuple[str, str], ...] = (
    ("who5", "total"),
    ("flourish12", "happiness"),
    ("flourish12", "health"),
    ("flourish12", "meaning_purpose"),
    ("flourish12", "character"),
    ("flourish12", "social"),
    ("flourish12", "financial"),
)
WAVES: tuple[int, ...] = (0, 4)


def build_scores(
    n_participants: int, seed: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Long scores table, the participants table, and ready numpy arrays for the floor."""
    rng = np.random.default_rng(seed)
    n = n_participants
    treat = rng.random(n) < 0.5
    arm = pl.Series("arm", np.where(treat, "treatment", "control"), dtype=pl.Categorical)
    pid = pl.int_range(n, eager=True).cast(pl.String).alias("participant_id")
    frames = []
    arrays = {}
    for k, (inst, scale) in enumerate(SCALES):
        person = rng.normal(50, 12, n)
        scores = {}
        for w in WAVES:
            scores[w] = person + rng.normal(0, 8, n) + (0.1 * k) * treat * (w > 0)
            frames.append(
                pl.DataFrame(
                    {
                        "participant_id": pid,
                        "arm": arm,
                        "wave": pl.Series(np.full(n, w, dtype=np.int32)),
                        "score": scores[w],
                    }
                ).with_columns(instrument=pl.lit(inst), scale=pl.lit(scale))
            )
        x = np.column_stack([np.ones(n), treat.astype(float), scores[0]])
        arrays[(inst, scale)] = (scores[WAVES[-1]], x)
    table = pl.concat(frames).select(
        "participant_id", pl.col("arm").cast(pl.String), "wave", "instrument", "scale", "score"
    )
    participants = pl.DataFrame({"participant_id": pid, "arm": arm.cast(pl.String)})
    return table, participants, arrays


def _plan() -> dict:
    hyps = [
        {"id": f"H{i + 1}", "role": "primary" if i == 0 else "secondary",
         "family": "primary" if i == 0 else "domains", "outcome": f"{inst}.{scale}",
         "method": "ancova", "wave": WAVES[-1]}
        for i, (inst, scale) in enumerate(SCALES)
    ]
    return {"title": "bench", "control_arm": "control", "treatment_arm": "treatment",
            "multiplicity": "holm", "allocation": {"control": 0.5, "treatment": 0.5},
            "hypotheses": hyps}


def run(n_participants: int = 1_000_000, repeats: int = 2) -> dict:
    """Time the floor and the full path (best of ``repeats``); wall seconds and their ratio."""
    t0 = time.perf_counter()
    table, participants, arrays = build_scores(n_participants)
    build_s = time.perf_counter() - t0
    plan = parse_analysis_plan(_plan())
    gc.collect()

    floor_times, full_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        floor_est = {}
        for key, (y, x) in arrays.items():
            fit = sm.OLS(y, x).fit(cov_type="HC1")
            floor_est[key] = (float(fit.params[1]), float(fit.bse[1]))
        floor_times.append(time.perf_counter() - t0)
        gc.collect()

        t0 = time.perf_counter()
        result = fit_trial_effects(
            table, plan, plan_sha256="bench", plan_status="unregistered",
            config=TrialEffectsConfig(include_exploratory=False, attrition=False),
            participants=participants,
        )
        full_times.append(time.perf_counter() - t0)
        gc.collect()
    floor_s, full_s = min(floor_times), min(full_times)

    frame = result.to_frame()
    # The two paths must agree on the numbers, or the timing compares different work.
    max_rel = 0.0
    for row in frame.iter_rows(named=True):
        est, se = floor_est[(row["instrument"], row["scale"])]
        max_rel = max(max_rel, abs(row["estimate"] - est) / abs(se),
                      abs(row["std_error"] - se) / se)
    return {
        "n_participants": n_participants,
        "rows": table.height,
        "build_s": round(build_s, 3),
        "floor_statsmodels_ols_hc1_s": round(floor_s, 3),
        "full_path_s": round(full_s, 3),
        "ratio": round(full_s / floor_s, 3),
        "repeats": repeats,
        "floor_all_s": [round(t, 3) for t in floor_times],
        "full_all_s": [round(t, 3) for t in full_times],
        "target_ratio": 2.0,
        "max_rel_diff_vs_statsmodels": max_rel,
        "srm_p_value": result.sample_ratio.p_value if result.sample_ratio else None,
    }


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    print(json.dumps(run(n), indent=2))
