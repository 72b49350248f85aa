"""Benchmark of the Bayesian growth model: marginal (random effects integrated out) model
at N participants x 5 waves, the latent reference model at 2,000, and statsmodels MixedLM.

Run: ``.venv/bin/python -m benchmarks.bench_growth [N ...]`` (prints JSON). Each marginal
fit runs until R-hat <= 1.01 and bulk ESS >= 400 on every population parameter (draws are
doubled, at most twice, when not reached); wall time includes data reduction and compile.
Marginal fits use the default backend (the hand-written kernel, compiled once per machine
and loaded from numba's disk cache); the smallest size is fitted a second time through
nutpie's numba compile of the PyMC graph, the floor this backend is measured against.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

import polars as pl

from models.growth import GrowthConfig, clear_compiled_cache, fit_growth_model
from models.growth_spec import SimulationTruth, simulate_growth_panel

warnings.filterwarnings("ignore")

TRUTH = SimulationTruth(
    intercept=50.0,
    slope=0.8,
    arm_intercept=0.0,
    slope_effect=1.5,
    sd_intercept=8.0,
    sd_slope=1.5,
    corr_intercept_slope=0.3,
    sd_residual=5.0,
    country_effects=(0.6, -0.6, 0.0),
    cohort_effects=(0.3, -0.3),
)
POPULATION = (
    "slope_effect",
    "difference_final_wave",
    "intercept",
    "slope",
    "arm_intercept",
    "sd_intercept",
    "sd_slope",
    "corr_intercept_slope",
    "sd_residual",
)


def _fit(panel: pl.DataFrame, model: str, draws: int, seed: int, backend: str = "auto") -> dict:
    t0 = time.perf_counter()
    tries = []
    for _ in range(3):
        cfg = GrowthConfig(
            outcome="sim.total",
            scale_range=(0.0, 100.0),
            model=model,  # type: ignore[arg-type]
            backend=backend,  # type: ignore[arg-type]
            draws=draws,
            tune=1000,
            chains=4,
            cores=2,
            seed=seed,
            ppc_draws=200,
        )
        res = fit_growth_model(panel, cfg)
        pop = res.summary.filter(pl.col("parameter").is_in(POPULATION))
        ok = bool((pop["r_hat"] <= 1.01).all() and (pop["ess_bulk"] >= 400).all())
        tries.append({"draws": draws, "ok": ok, **res.diagnostics})
        if ok:
            break
        draws *= 2
    wall = time.perf_counter() - t0
    eff = res.summary.filter(pl.col("parameter") == "slope_effect").row(0, named=True)
    min_ess = float(pop["ess_bulk"].min())
    return {
        "model": model,
        "backend": backend,
        "participants": panel["participant_id"].n_unique(),
        "observations": panel.height,
        "wall_s": round(wall, 2),
        "compile_s": round(res.diagnostics["compile_s"], 2),
        "compiled_from_cache": bool(res.diagnostics["compiled_from_cache"]),
        "sample_s": round(res.diagnostics["sample_s"], 2),
        "converged": tries[-1]["ok"],
        "gate": res.gate,
        "min_ess_bulk_population": min_ess,
        "ess_per_s": round(min_ess / wall, 1),
        "max_r_hat_population": float(pop["r_hat"].max()),
        "divergences": int(res.diagnostics["divergences"]),
        "slope_effect_mean": eff["mean"],
        "slope_effect_sd": eff["sd"],
        "tries": tries,
    }


def _mixedlm(panel: pl.DataFrame) -> dict:
    import statsmodels.formula.api as smf

    t0 = time.perf_counter()
    df = panel.with_columns(
        (pl.col("arm") == "treatment").cast(pl.Float64).alias("treat")
    ).to_pandas()
    fit = smf.mixedlm(
        "score ~ wave * treat", df, groups=df["participant_id"], re_formula="~wave"
    ).fit(reml=True)
    return {
        "model": "statsmodels MixedLM REML",
        "participants": panel["participant_id"].n_unique(),
        "wall_s": round(time.perf_counter() - t0, 2),
        "slope_effect": float(fit.fe_params["wave:treat"]),
        "slope_effect_se": float(fit.bse_fe["wave:treat"]),
    }


def run(
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000), latent_participants: int = 2_000
) -> dict:
    """Time the marginal model at each size, the latent model and MixedLM (10,000)."""
    clear_compiled_cache()
    out: dict = {
        "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "truth_slope_effect": TRUTH.slope_effect,
        "marginal": [],
    }
    panels = {}
    for i, n in enumerate(sizes):
        t0 = time.perf_counter()
        panel = simulate_growth_panel(n, 5, TRUTH, p_missing=0.15, seed=100 + i)
        sim_s = time.perf_counter() - t0
        if n == 10_000:
            panels[n] = panel
        rec = _fit(panel, "marginal", 1000, seed=i)
        rec["simulate_s"] = round(sim_s, 2)
        out["marginal"].append(rec)
        print(json.dumps(rec), file=sys.stderr, flush=True)
    first = simulate_growth_panel(sizes[0], 5, TRUTH, p_missing=0.15, seed=100)
    out["marginal_pymc_numba"] = _fit(first, "marginal", 1000, seed=0, backend="numba")
    out["kernel_speedup_first_size"] = round(
        out["marginal_pymc_numba"]["wall_s"] / out["marginal"][0]["wall_s"], 1
    )
    print(json.dumps(out["marginal_pymc_numba"]), file=sys.stderr, flush=True)
    latent_panel = simulate_growth_panel(latent_participants, 5, TRUTH, p_missing=0.15, seed=7)
    out["latent"] = _fit(latent_panel, "latent", 1000, seed=0)
    print(json.dumps(out["latent"]), file=sys.stderr, flush=True)
    ml_panel = panels.get(10_000)
    if ml_panel is None:
        ml_panel = simulate_growth_panel(10_000, 5, TRUTH, p_missing=0.15, seed=100)
    out["mixedlm_10000"] = _mixedlm(ml_panel)
    out["load_average_end"] = os.getloadavg()
    out["note"] = (
        "Wall times on a shared 2-core machine (other engineers' jobs running; see load "
        "averages); marginal_pymc_numba is the first size through nutpie's own compile."
    )
    return out


if __name__ == "__main__":
    args = tuple(int(a) for a in sys.argv[1:]) or (10_000, 100_000, 1_000_000)
    print(json.dumps(run(args), indent=2, default=float))
