"""Calibration of the primary ANCOVA test by simulation with known truth.

Gaussian trials simulated directly with numpy; each study goes through the same estimator
(:func:`models.effects.fit_ancova`) that :func:`fit_trial_effects` uses for the primary
hypothesis. Bounds are 99% binomial intervals around the nominal rate, so a correct test
fails a seeded run with probability about 1%, and a miscalibrated one (e.g. model-based SEs
under heteroskedasticity and unequal arms, or no baseline adjustment in the df) is caught.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats

from models.effects import AncovaConfig, fit_ancova
from models.mixed import MixedModelConfig, fit_mixed_model

ALPHA = 0.05


def _simulate(n_studies: int, n: int, effect: float, seed: int) -> list[pl.DataFrame]:
    """Trials with baseline-outcome correlation 0.6, 1:1 allocation, heteroskedastic arms."""
    rng = np.random.default_rng(seed)
    base = rng.normal(50, 15, (n_studies, n))
    treat = rng.random((n_studies, n)) < 0.5
    noise_sd = np.where(treat, 15.0, 10.0)  # unequal residual variance by arm
    y = 20 + 0.6 * base + effect * treat + rng.normal(size=(n_studies, n)) * noise_sd
    arm = np.where(treat, "treatment", "control")
    return [
        pl.DataFrame({"arm": arm[s], "baseline": base[s], "score": y[s]})
        for s in range(n_studies)
    ]


def _run(n_studies: int, effect: float, seed: int, cov_type: str = "HC1"):
    cfg = AncovaConfig(alpha=ALPHA, cov_type=cov_type)  # type: ignore[arg-type]
    results = [fit_ancova(f, cfg) for f in _simulate(n_studies, 200, effect, seed)]
    assert all(r.message == "ok" for r in results)
    p = np.array([r.p_value for r in results])
    covered = np.array([r.ci_low <= effect <= r.ci_high for r in results])
    return p, covered


def _check_false_positive_rate(n_studies: int, seed: int, cov_type: str = "HC1") -> None:
    p, _ = _run(n_studies, 0.0, seed, cov_type)
    lo, hi = stats.binom.interval(0.99, n_studies, ALPHA)
    rejections = int((p < ALPHA).sum())
    assert lo <= rejections <= hi, (rejections, lo, hi)


def _check_coverage(n_studies: int, seed: int, low: float, high: float) -> None:
    _, covered = _run(n_studies, 4.0, seed)
    assert low <= covered.mean() <= high, covered.mean()


def test_aa_false_positive_rate_reduced() -> None:
    _check_false_positive_rate(200, seed=101)


def test_aa_false_positive_rate_reduced_hc3() -> None:
    _check_false_positive_rate(200, seed=102, cov_type="HC3")


def test_coverage_reduced() -> None:
    lo, hi = stats.binom.interval(0.99, 200, 0.95)
    _check_coverage(200, seed=103, low=lo / 200, high=hi / 200)


def test_power_reduced_detects_a_real_effect() -> None:
    """With effect 4 (SE ~1.8 at n=200), most studies reject: the test is not inert."""
    p, _ = _run(200, 4.0, seed=104)
    assert (p < ALPHA).mean() > 0.45


@pytest.mark.slow
def test_aa_false_positive_rate_full() -> None:
    _check_false_positive_rate(2000, seed=201)


@pytest.mark.slow
def test_coverage_full() -> None:
    _check_coverage(1000, seed=202, low=0.93, high=0.97)


def _mmrm_coverage(n_studies: int, seed: int, m: int = 120) -> float:
    """Coverage of the 95% CI of the arm x wave slope difference (truth 0.4 per wave)."""
    rng = np.random.default_rng(seed)
    wave = np.tile(np.arange(5.0), m)
    pid = np.repeat(np.arange(m), 5)
    covered = 0
    for _ in range(n_studies):
        treat = np.repeat(rng.random(m) < 0.5, 5).astype(float)
        b0 = np.repeat(rng.normal(0, 3, m), 5)
        b1 = np.repeat(rng.normal(0, 0.5, m), 5)
        y = 20 + 0.3 * wave + 0.4 * treat * wave + b0 + b1 * wave + rng.normal(0, 2, 5 * m)
        frame = pl.DataFrame({"participant_id": pid, "wave": wave, "treat": treat,
                              "txw": treat * wave, "score": y})
        res = fit_mixed_model(frame, MixedModelConfig(fixed=("wave", "treat", "txw")))
        assert res.message == "ok"
        row = res.to_frame().filter(pl.col("term") == "txw").row(0, named=True)
        covered += row["ci_low"] <= 0.4 <= row["ci_high"]
    return covered / n_studies


def test_mmrm_slope_coverage_reduced() -> None:
    lo, hi = stats.binom.interval(0.99, 40, 0.95)
    assert lo / 40 <= _mmrm_coverage(40, seed=301) <= hi / 40


@pytest.mark.slow
def test_mmrm_slope_coverage_full() -> None:
    assert 0.93 <= _mmrm_coverage(500, seed=302) <= 0.97
