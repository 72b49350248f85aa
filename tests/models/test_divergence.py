"""Divergence analysis: within/between mixed model, treatment effects, flags.

References: lme4 1.1.31 on sleepstudy (../shared/data beside the repository), closed forms (Welch's standard
error equals HC2 for a two-group comparison; the textbook sandwich for HC0/HC1), and
simulations with known truth.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from conftest import SHARED_DATA

from models.divergence import (
    DivergenceConfig,
    fit_divergence,
    fit_treatment_effect,
    fit_within_between,
)

SHARED = SHARED_DATA


# -- parity with lme4 -------------------------------------------------------------------


def test_random_intercept_matches_lme4_sleepstudy():
    """lmer(Reaction ~ Days + (1 | Subject)), REML; Days is balanced, so the within-person
    coefficient of person-centred Days equals the Days coefficient, and Days has no
    between-person variation (every subject has days 0..9)."""
    ref = json.loads((SHARED / "sleepstudy_lmm.json").read_text())["icc_conditional_on_days_REML"]
    ss = pl.read_csv(SHARED / "sleepstudy.csv").with_columns(pl.col("Subject").cast(pl.String))
    fit = fit_within_between(ss, outcome="Reaction", exposure="Days", group="Subject", wave=None)
    days = ref["fixed"]["Days"]
    assert fit.within.estimate == pytest.approx(days["estimate"], rel=1e-6)
    assert fit.within.std_error == pytest.approx(days["se"], rel=1e-4)
    assert fit.within.df == pytest.approx(days["df_satterthwaite"], rel=1e-6)  # 161
    assert fit.var_intercept == pytest.approx(ref["var_intercept"], rel=1e-5)
    assert fit.var_residual == pytest.approx(ref["var_residual"], rel=1e-5)
    assert fit.between is None and "no_between_variation" in fit.codes


# -- treatment effect against closed forms -------------------------------------------------


def two_groups(seed: int, n0: int = 40, n1: int = 60) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, n0 + n1)
    treated = np.r_[np.zeros(n0), np.ones(n1)]
    # unequal variances: heteroscedastic by arm
    y = 0.5 * base + 0.8 * treated + rng.normal(0, np.where(treated == 1, 2.0, 0.7))
    return pl.DataFrame({"y": y, "treated": treated.astype(int), "baseline": base})


def test_hc2_equals_welch_without_covariate():
    d = two_groups(3)
    est, codes = fit_treatment_effect(d, outcome="y", robust_se="HC2")
    g1 = d.filter(pl.col("treated") == 1)["y"].to_numpy()
    g0 = d.filter(pl.col("treated") == 0)["y"].to_numpy()
    welch = np.sqrt(g1.var(ddof=1) / g1.size + g0.var(ddof=1) / g0.size)
    assert codes == ()
    assert est.estimate == pytest.approx(g1.mean() - g0.mean(), rel=1e-10)
    assert est.std_error == pytest.approx(welch, rel=1e-10)
    assert est.df == g1.size + g0.size - 2


@pytest.mark.parametrize("kind", ["HC0", "HC1"])
def test_ancova_sandwich_matches_textbook_formula(kind):
    d = two_groups(4)
    est, _ = fit_treatment_effect(d, outcome="y", covariate="baseline", robust_se=kind)
    x = np.column_stack([np.ones(d.height), d["treated"].to_numpy(), d["baseline"].to_numpy()])
    y = d["y"].to_numpy()
    xtx_inv = np.linalg.inv(x.T @ x)
    beta = xtx_inv @ x.T @ y
    e = y - x @ beta
    meat = x.T @ (x * e[:, None] ** 2)
    v = xtx_inv @ meat @ xtx_inv
    if kind == "HC1":
        v *= d.height / (d.height - x.shape[1])
    assert est.estimate == pytest.approx(beta[1], rel=1e-10)
    assert est.std_error == pytest.approx(np.sqrt(v[1, 1]), rel=1e-10)


def test_treatment_effect_edge_cases_are_coded():
    d = two_groups(5).with_columns(pl.lit(1).alias("treated"))
    est, codes = fit_treatment_effect(d, outcome="y")
    assert est is None and codes == ("empty_arm",)
    d = two_groups(5).with_columns(pl.lit(2.0).alias("baseline"))
    est, codes = fit_treatment_effect(d, outcome="y", covariate="baseline")
    assert est is not None and codes == ("unadjusted",)


# -- simulation with known truth -----------------------------------------------------------


def simulate(
    seed: int,
    *,
    n: int = 200,
    waves: int = 5,
    b_within: float = 0.0,
    b_between: float = 0.0,
    trt_engagement: float = 0.0,
    trt_scale: dict[str, float] | None = None,
    engagement_trend: float = 0.0,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Panel and features with known within (b_within) and between (b_between) slopes.

    Scores are generated from the *observed* person mean of engagement, so the hybrid
    model is the true model and its coefficients are the truth.
    """
    rng = np.random.default_rng(seed)
    trt_scale = trt_scale or {}
    scales = ["meaning_purpose", "positive_emotion"]
    pid = np.repeat(np.arange(n), waves)
    wave = np.tile(np.arange(waves), n)
    treated = (np.arange(n) % 2 == 1).astype(float)[pid]
    post = (wave > 0).astype(float)
    mu = rng.normal(10, 3, n)[pid]
    x = mu + engagement_trend * wave + trt_engagement * treated * post + rng.normal(0, 2, pid.size)
    xbar = np.bincount(pid, weights=x)[pid] / waves
    frames = []
    for s in scales:
        u = rng.normal(0, 4, n)[pid]
        y = (
            50
            + b_between * xbar
            + b_within * (x - xbar)
            + trt_scale.get(s, 0.0) * treated * post
            + u
            + rng.normal(0, 4, pid.size)
        )
        frames.append(
            pl.DataFrame(
                {
                    "participant_id": [f"p{i:04d}" for i in pid],
                    "arm": np.where(treated == 1, "treatment", "control"),
                    "wave": wave.astype(np.int32),
                    "instrument": "flourish12",
                    "scale": s,
                    "score": y,
                }
            )
        )
    panel = pl.concat(frames)
    features = pl.DataFrame(
        {
            "participant_id": [f"p{i:04d}" for i in pid],
            "wave": wave.astype(np.int32),
            "active_days": x,
        }
    )
    return panel, features


TRIAL = DivergenceConfig(control_arm="control", treatment_arm="treatment")


def test_recovers_negative_within_and_positive_between():
    panel, feats = simulate(11, b_within=-0.8, b_between=1.5)
    res = fit_divergence(panel, feats, DivergenceConfig())
    df = res.divergence_frame()
    assert df.height == 2
    for r in df.iter_rows(named=True):
        assert r["within_ci_high"] < 0 and r["between_ci_low"] > 0  # both signs recovered
        assert r["within_ci_low"] <= -0.8 <= r["within_ci_high"]
        assert r["between_ci_low"] <= 1.5 <= r["between_ci_high"]
        assert r["message"] == "no_trial"
        assert not r["flag"]  # no engagement trend: nothing rises, no divergence


def coverage(reps: int, n: int) -> tuple[float, float]:
    hit_w = hit_b = 0
    for rep in range(reps):
        panel, feats = simulate(1000 + rep, n=n, waves=4, b_within=-0.5, b_between=0.7)
        d = panel.filter(pl.col("scale") == "meaning_purpose").join(
            feats, on=["participant_id", "wave"]
        )
        fit = fit_within_between(d, exposure="active_days")
        hit_w += fit.within.ci_low <= -0.5 <= fit.within.ci_high
        hit_b += fit.between.ci_low <= 0.7 <= fit.between.ci_high
    return hit_w / reps, hit_b / reps


def test_interval_coverage_reduced():
    # 15 fits: P(fewer than 12 of 15 covered | true coverage 0.95) < 0.01
    cw, cb = coverage(15, n=80)
    assert cw >= 12 / 15 and cb >= 12 / 15


@pytest.mark.slow
def test_interval_coverage_full():
    # 400 fits: 95 % intervals should cover 0.95 +- 2.6 binomial SEs (0.011)
    cw, cb = coverage(400, n=150)
    assert 0.92 <= cw <= 0.98
    assert 0.92 <= cb <= 0.98


def test_divergence_flag_fires_for_the_harmed_domain_only():
    panel, feats = simulate(21, n=300, trt_engagement=4.0, trt_scale={"meaning_purpose": -3.0})
    res = fit_divergence(panel, feats, TRIAL)
    assert res.effect_engagement.ci_low > 0 and res.engagement_rises
    assert res.effect_engagement.ci_low <= 4.0 <= res.effect_engagement.ci_high
    df = res.divergence_frame().sort("scale")
    mp = df.filter(pl.col("scale") == "meaning_purpose").row(0, named=True)
    pe = df.filter(pl.col("scale") == "positive_emotion").row(0, named=True)
    assert mp["flag"] and mp["flag_reason"] in ("trial", "both")
    assert mp["effect_scale_ci_high"] < 0
    assert mp["effect_scale_ci_low"] <= -3.0 <= mp["effect_scale_ci_high"]
    assert "raises active_days" in mp["explanation"] and "lowers" in mp["explanation"]
    assert not pe["flag"] and pe["flag_reason"] == "none"
    assert "No divergence" in pe["explanation"]
    # the divergence.parquet columns
    for col in (
        "scale",
        "within_estimate",
        "within_se",
        "within_ci_low",
        "within_ci_high",
        "between_estimate",
        "between_se",
        "between_ci_low",
        "between_ci_high",
        "effect_engagement_estimate",
        "effect_engagement_ci_low",
        "effect_engagement_ci_high",
        "effect_scale_estimate",
        "effect_scale_ci_low",
        "effect_scale_ci_high",
        "flag",
        "explanation",
    ):
        assert col in df.columns
    eng = res.engagement_frame()
    assert eng.columns[:3] == ["participant_id", "arm", "wave"]
    assert eng.height == feats.height


def test_within_person_flag_without_a_trial():
    panel, feats = simulate(31, n=200, b_within=-0.6, engagement_trend=1.0)
    res = fit_divergence(panel, feats, DivergenceConfig())
    trend = res.engagement_trend
    assert abs(trend.estimate - 1.0) < 4 * trend.std_error  # truth: +1 per wave
    assert res.engagement_rises
    df = res.divergence_frame()
    assert df["flag"].all() and (df["flag_reason"] == "within_person").all()
    assert df["explanation"].str.contains("rises over waves").all()


@pytest.mark.parametrize("seed", [41, 42, 43])
def test_null_data_stay_silent(seed):
    panel, feats = simulate(seed, n=200)
    for cfg in (TRIAL, DivergenceConfig()):
        df = fit_divergence(panel, feats, cfg).divergence_frame()
        assert not df["flag"].any()
        assert (df["flag_reason"] == "none").all()


@pytest.mark.slow
def test_null_false_flag_rate():
    flags = 0
    total = 0
    for seed in range(100):
        panel, feats = simulate(5000 + seed, n=150, waves=4)
        df = fit_divergence(panel, feats, TRIAL).divergence_frame()
        flags += int(df["flag"].sum())
        total += df.height
    # each flag needs two independent 2.5 % tails (trial) or a 2.5 % tail given a rise
    assert flags / total <= 0.03


def test_edge_cases_are_coded_not_raised():
    panel, feats = simulate(51, n=6)
    res = fit_divergence(panel, feats, TRIAL)
    df = res.divergence_frame()
    assert (df["message"].str.contains("too_few_participants")).all()
    assert df["within_estimate"].is_null().all() and not df["flag"].any()
    # only one arm present
    panel, feats = simulate(52, n=40)
    one_arm = panel.filter(pl.col("arm") == "control")
    res = fit_divergence(one_arm, feats, TRIAL)
    assert "empty_arm" in res.message
    assert res.divergence_frame()["effect_scale_estimate"].is_null().all()


def test_config_programmer_errors_raise():
    with pytest.raises(ValueError):
        DivergenceConfig(control_arm="a")
    with pytest.raises(ValueError):
        DivergenceConfig(alpha=1.5)
    panel, feats = simulate(1, n=20)
    with pytest.raises(ValueError):
        fit_divergence(panel.drop("arm"), feats)


def test_random_intercept_matches_statsmodels_on_unbalanced_data():
    """Closed-form profiled REML and ML against statsmodels' general MixedLM optimiser on
    unbalanced groups with a between-person covariate (independent implementation)."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    from models.divergence import fit_random_intercept

    rng = np.random.default_rng(11)
    sizes = rng.integers(1, 7, 150)
    groups = np.repeat(np.arange(sizes.size), sizes)
    xb = rng.normal(size=sizes.size)[groups]
    xw = rng.normal(size=groups.size)
    x = np.column_stack([np.ones(groups.size), xw, xb])
    y = x @ [0.3, -0.5, 0.8] + rng.normal(0, 0.9, sizes.size)[groups] + rng.normal(0, 1.2, groups.size)
    for reml in (True, False):
        ours = fit_random_intercept(y, x, groups, reml=reml)
        ref = MixedLM(y, x, groups).fit(reml=reml, method="powell")
        assert ours.converged and ref.converged
        np.testing.assert_allclose(ours.beta, ref.fe_params, rtol=1e-5, atol=1e-6)
        assert ours.var_intercept == pytest.approx(float(np.asarray(ref.cov_re).ravel()[0]), rel=1e-4)
        assert ours.var_residual == pytest.approx(float(ref.scale), rel=1e-4)


def test_random_intercept_boundary_when_groups_do_not_differ():
    """No between-group variance in the data-generating process and a negative moment
    estimate: the REML variance is on the boundary 0 (as lme4 reports a singular fit)."""
    from models.divergence import fit_random_intercept

    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(40), 3)
    # within-group residuals anti-correlated: the sample intercept variance is negative
    e = rng.normal(size=(40, 3))
    e = e - e.mean(axis=1, keepdims=True) * 1.5
    y = e.ravel()
    x = np.ones((y.size, 1))
    fit = fit_random_intercept(y, x, groups)
    assert fit.var_intercept == 0.0
    assert fit.beta[0] == pytest.approx(y.mean(), rel=1e-10)
    assert fit.var_residual == pytest.approx(y.var(ddof=1), rel=1e-10)
