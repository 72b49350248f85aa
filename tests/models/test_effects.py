"""Trial effects: robust OLS vs statsmodels, ANCOVA, multiplicity, SRM, attrition, the plan run."""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests

from models.effects import (
    EFFECT_COLUMNS,
    AncovaConfig,
    TrialEffectsConfig,
    adjust_pvalues,
    check_sample_ratio,
    compute_attrition,
    fit_ancova,
    fit_robust_ols,
    fit_trial_effects,
)
from models.plan import parse_analysis_plan


def simulate_panel(
    n: int,
    effects: dict[tuple[str, str], float],
    *,
    waves: tuple[int, ...] = (0, 2, 4),
    rho: float = 0.6,
    sd: float = 15.0,
    slope_sd: float = 1.0,
    seed: int = 1,
) -> pl.DataFrame:
    """Long panel with a known treatment effect growing linearly to `effect` at the last wave."""
    rng = np.random.default_rng(seed)
    pid = np.array([f"p{i:05d}" for i in range(n)])
    arm = np.where(rng.random(n) < 0.5, "treatment", "control")
    treat = (arm == "treatment").astype(float)
    cohort = rng.choice(["a", "b", "c"], size=n)
    last = max(waves)
    frames = []
    for (inst, scale), eff in effects.items():
        person = rng.normal(0, sd * np.sqrt(rho), n)
        slope = rng.normal(0, slope_sd, n)
        for w in waves:
            noise = rng.normal(0, sd * np.sqrt(1 - rho), n)
            score = 50 + person + slope * w + noise + treat * eff * w / last
            frames.append(
                pl.DataFrame(
                    {
                        "participant_id": pid, "arm": arm, "cohort": cohort,
                        "wave": np.full(n, w, dtype=np.int32), "instrument": inst,
                        "scale": scale, "score": score,
                    }
                )
            )
    return pl.concat(frames)


# ---------------------------------------------------------------- robust OLS vs statsmodels


@pytest.fixture(scope="module")
def ols_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 300
    x = np.column_stack([np.ones(n), rng.integers(0, 2, n), rng.normal(size=n), rng.normal(size=n)])
    y = x @ [1.0, 0.5, 2.0, -1.0] + rng.normal(size=n) * (1 + np.abs(x[:, 2]))
    groups = rng.integers(0, 25, n)
    return y, x, groups


@pytest.mark.parametrize("cov_type", ["HC1", "HC3"])
def test_robust_ols_matches_statsmodels(ols_data, cov_type: str) -> None:
    y, x, _ = ols_data
    ours = fit_robust_ols(y, x, cov_type=cov_type)
    ref = sm.OLS(y, x).fit(cov_type=cov_type)
    np.testing.assert_allclose(ours.params, ref.params, rtol=1e-10)
    np.testing.assert_allclose(ours.cov, ref.cov_params(), rtol=1e-9)
    assert ours.df == ref.df_resid


def test_cluster_robust_ols_matches_statsmodels(ols_data) -> None:
    y, x, groups = ols_data
    ours = fit_robust_ols(y, x, groups=groups)
    ref = sm.OLS(y, x).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    np.testing.assert_allclose(ours.cov, ref.cov_params(), rtol=1e-9)
    assert ours.df == 24  # G - 1
    t = ours.params[1] / ours.bse[1]
    assert 2 * stats.t.sf(abs(t), ours.df) == pytest.approx(ref.pvalues[1], rel=1e-8)


def test_robust_ols_edge_cases() -> None:
    x = np.column_stack([np.ones(10), np.zeros(10), np.arange(10.0)])
    assert fit_robust_ols(np.arange(10.0), x).message == "singular_design"
    assert fit_robust_ols(np.ones(2), np.ones((2, 3))).message == "too_few_observations"
    assert fit_robust_ols(np.arange(10.0), x[:, [0, 2]], groups=np.zeros(10, int)).message == (
        "too_few_clusters"
    )


# ---------------------------------------------------------------- ANCOVA


def _ancova_frame(n: int = 240, seed: int = 3, with_cluster: bool = False) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    arm = np.where(np.arange(n) % 2 == 0, "treatment", "control")
    base = rng.normal(50, 10, n)
    cohort = rng.choice(["north", "south", "west"], n)
    y = 10 + 0.7 * base + 4.0 * (arm == "treatment") + (cohort == "south") * 3 + rng.normal(0, 8, n)
    frame = pl.DataFrame({"arm": arm, "baseline": base, "score": y, "cohort": cohort,
                          "age": rng.normal(40, 10, n)})
    if with_cluster:
        frame = frame.with_columns(pl.Series("site", rng.integers(0, 30, n)))
    return frame


def test_ancova_matches_statsmodels_formula_hc3() -> None:
    frame = _ancova_frame()
    res = fit_ancova(frame, AncovaConfig(covariates=("cohort", "age"), cov_type="HC3"))
    pdf = frame.to_pandas()
    pdf["treat"] = (pdf["arm"] == "treatment").astype(float)
    ref = sm.OLS.from_formula("score ~ treat + baseline + C(cohort) + age", pdf).fit(
        cov_type="HC3", use_t=True
    )
    assert res.estimate == pytest.approx(ref.params["treat"], rel=1e-10)
    assert res.std_error == pytest.approx(ref.bse["treat"], rel=1e-9)
    assert res.p_value == pytest.approx(ref.pvalues["treat"], rel=1e-8)
    lo, hi = ref.conf_int(0.05).loc["treat"]
    assert (res.ci_low, res.ci_high) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    assert (res.n, res.n_treatment, res.n_control) == (240, 120, 120)


def test_ancova_cluster_and_one_sided() -> None:
    frame = _ancova_frame(with_cluster=True)
    res = fit_ancova(frame, AncovaConfig(cluster="site", sided="one", alpha=0.05))
    pdf = frame.to_pandas()
    pdf["treat"] = (pdf["arm"] == "treatment").astype(float)
    ref = sm.OLS.from_formula("score ~ treat + baseline", pdf).fit(
        cov_type="cluster", cov_kwds={"groups": pdf["site"]}, use_t=True
    )
    assert res.std_error == pytest.approx(ref.bse["treat"], rel=1e-9)
    assert res.cov_type == "cluster" and res.df == 29
    # One-sided p is half the two-sided p when the estimate is in the beneficial direction.
    assert res.estimate > 0
    assert res.p_value == pytest.approx(ref.pvalues["treat"] / 2, rel=1e-8)
    lo, hi = ref.conf_int(0.10).loc["treat"]
    assert res.ci_low == pytest.approx(lo, rel=1e-9) and res.ci_high == pytest.approx(hi, rel=1e-9)


def test_ancova_missing_data_strategies() -> None:
    frame = _ancova_frame().with_columns(
        pl.when(pl.int_range(pl.len()) < 30).then(None).otherwise(pl.col("baseline"))
        .alias("baseline")
    )
    cc = fit_ancova(frame, AncovaConfig())
    imp = fit_ancova(frame, AncovaConfig(missing_data="baseline_mean_imputation"))
    assert cc.n == 210 and imp.n == 240
    # Reference for imputation: fill by hand with the mean of observed baselines.
    filled = frame.with_columns(pl.col("baseline").fill_null(pl.col("baseline").mean()))
    ref = fit_ancova(filled, AncovaConfig())
    assert imp.estimate == pytest.approx(ref.estimate, rel=1e-12)


def test_ancova_edge_cases_return_messages() -> None:
    frame = _ancova_frame()
    assert fit_ancova(frame.filter(pl.col("arm") == "control"), AncovaConfig()).message == (
        "empty_arm"
    )
    assert fit_ancova(frame.drop("baseline"), AncovaConfig()).message == (
        "missing_column:baseline"
    )
    flat = frame.with_columns(pl.lit(3.0).alias("score"))
    assert fit_ancova(flat, AncovaConfig()).message == "zero_variance"
    r = fit_ancova(frame.head(0), AncovaConfig())
    assert r.message == "no_data" and np.isnan(r.estimate)


# ---------------------------------------------------------------- multiplicity


def test_multiplicity_hand_examples() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    # Hochberg: from the top 0.04, min(0.06, .04)=0.04, min(0.03, .04)=0.03, 0.02
    np.testing.assert_allclose(adjust_pvalues(p, "hochberg"), [0.03, 0.04, 0.04, 0.02])
    # BH: 0.005*4/1=.02, .01*4/2=.02, .03*4/3=.04, .04*4/4=.04
    np.testing.assert_allclose(adjust_pvalues(p, "bh"), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(adjust_pvalues(p, "none"), p)
    assert adjust_pvalues([0.9, 0.8], "holm").max() == 1.0


def test_multiplicity_missing_p_counts_conservatively() -> None:
    out = adjust_pvalues([0.01, np.nan], "holm")
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1])


def test_multiplicity_matches_statsmodels() -> None:
    rng = np.random.default_rng(0)
    for size in range(1, 13):
        for rep in range(10):
            # mix of tiny, moderate and tied p-values
            pvals = np.round(rng.beta(0.4, 1.0, size), int(rng.integers(2, 6)))
            pairs = [("hochberg", "simes-hochberg"), ("bh", "fdr_bh")]
            if rep == 0 and size % 2 == 0:  # statsmodels holm: ~0.2 s a call
                pairs.append(("holm", "holm"))
            for ours, theirs in pairs:
                ref = multipletests(pvals, method=theirs)[1]
                np.testing.assert_allclose(adjust_pvalues(pvals, ours), ref, atol=1e-12)


# ---------------------------------------------------------------- SRM and attrition


def _participants(counts: dict[str, int]) -> pl.DataFrame:
    arms = [a for a, c in counts.items() for _ in range(c)]
    return pl.DataFrame({"participant_id": [f"p{i}" for i in range(len(arms))], "arm": arms})


def test_sample_ratio_hand_values() -> None:
    ok = check_sample_ratio(_participants({"control": 520, "treatment": 480}),
                            {"control": 0.5, "treatment": 0.5})
    # chi2 = 2 * 20^2 / 500 = 1.6, df 1
    assert ok.chi2 == pytest.approx(1.6) and ok.df == 1
    assert ok.p_value == pytest.approx(0.205903, abs=1e-6) and not ok.flagged
    bad = check_sample_ratio(_participants({"control": 600, "treatment": 400}),
                             {"control": 1, "treatment": 1})
    assert bad.chi2 == pytest.approx(40.0) and bad.flagged and bad.p_value < 1e-9
    # 2:1 allocation honoured: 660 / 340 against 2/3, 1/3 -> chi2 = 6.67^2/666.67 + ...
    two = check_sample_ratio(_participants({"treatment": 660, "control": 340}),
                             {"treatment": 2, "control": 1})
    exp = np.array([2000 / 3, 1000 / 3])
    assert two.chi2 == pytest.approx((((np.array([660, 340]) - exp) ** 2) / exp).sum())
    frame = two.to_frame()
    assert frame.columns[:3] == ["arm", "observed", "expected"]
    assert frame.get_column("share_planned").to_list() == pytest.approx([2 / 3, 1 / 3])


def test_sample_ratio_edge_cases() -> None:
    extra = check_sample_ratio(_participants({"control": 10, "treatment": 10, "rogue": 1}),
                               {"control": 0.5, "treatment": 0.5})
    assert extra.flagged and extra.message == "unplanned_arm:rogue"
    empty = check_sample_ratio(_participants({}).cast({"arm": pl.String}),
                               {"control": 0.5, "treatment": 0.5})
    assert empty.message == "no_participants" and not empty.flagged


def test_attrition_detects_differential_loss() -> None:
    panel = simulate_panel(400, {("who5", "total"): 0.0}, seed=4)
    rng = np.random.default_rng(5)
    drop = rng.random(400)
    ids = panel.filter(pl.col("wave") == 0).select("participant_id", "arm")
    lost_ids = ids.filter(
        ((pl.col("arm") == "treatment") & pl.Series(drop < 0.35))
        | ((pl.col("arm") == "control") & pl.Series(drop < 0.05))
    ).get_column("participant_id")
    panel = panel.with_columns(
        pl.when((pl.col("wave") == 4) & pl.col("participant_id").is_in(lost_ids.implode()))
        .then(None).otherwise(pl.col("score")).alias("score")
    )
    res = compute_attrition(panel)
    assert res.final_wave == 4 and res.flagged
    # Hand chi-square of the 2x2 table retained/lost by arm.
    n = ids.group_by("arm").len().sort("arm").get_column("len").to_numpy()
    lost = ids.filter(pl.col("participant_id").is_in(lost_ids.implode())).group_by("arm").len()
    lost = lost.sort("arm").get_column("len").to_numpy()
    table = np.column_stack([n - lost, lost]).astype(float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    assert res.chi2 == pytest.approx(((table - expected) ** 2 / expected).sum(), rel=1e-10)
    wave0 = res.to_frame().filter(pl.col("wave") == 0)
    assert wave0.get_column("retention").to_list() == [1.0, 1.0]
    none = compute_attrition(simulate_panel(50, {("who5", "total"): 0.0}))
    assert none.message == "no_attrition" and not none.flagged


# ---------------------------------------------------------------- the plan run

PLAN = {
    "title": "t", "control_arm": "control", "treatment_arm": "treatment",
    "multiplicity": "holm", "allocation": {"control": 0.5, "treatment": 0.5},
    "planned_sample_size": 600,
    "hypotheses": [
        {"id": "H1", "role": "primary", "family": "primary", "outcome": "who5.total",
         "method": "ancova", "wave": 4, "alpha": 0.05, "sided": "two",
         "minimum_important_difference": 10},
        {"id": "H2", "role": "secondary", "family": "domains", "outcome": "flourish12.social",
         "method": "ancova", "wave": 4},
        {"id": "H3", "role": "secondary", "family": "domains",
         "outcome": "flourish12.vitality", "method": "mmrm"},
        {"id": "H4", "role": "guardrail", "family": "guardrails",
         "outcome": "flourish12.meaning_purpose", "method": "ancova", "wave": 4},
        {"id": "H5", "role": "secondary", "family": "domains", "outcome": "who5.total",
         "method": "bayes_growth"},
    ],
}

TRUE = {
    ("who5", "total"): 6.0,
    ("flourish12", "social"): 1.0,
    ("flourish12", "vitality"): 4.0,
    ("flourish12", "meaning_purpose"): -6.0,
    ("flourish12", "health"): -7.0,
    ("flourish12", "character"): 0.0,
}


@pytest.fixture(scope="module")
def trial():
    panel = simulate_panel(500, TRUE, seed=11)
    plan = parse_analysis_plan(PLAN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray warnings from the fits
        res = fit_trial_effects(panel, plan, plan_sha256="f" * 64, plan_status="locked")
    return panel, plan, res, res.to_frame()


def test_effects_frame_has_exact_columns(trial) -> None:
    *_, frame = trial
    assert tuple(frame.columns) == EFFECT_COLUMNS
    assert frame.schema["n"] == pl.Int64 and frame.schema["estimate"] == pl.Float64


def test_rows_per_hypothesis_and_exploratory_domains(trial) -> None:
    *_, frame = trial
    assert frame.get_column("hypothesis").to_list() == [
        "H1", "H2", "H3", "H4", "H5",
        "exploratory:flourish12.character", "exploratory:flourish12.health",
    ]
    x = frame.filter(pl.col("role") == "exploratory")
    assert set(x.get_column("plan_status")) == {"unregistered"}
    assert x.get_column("p_adjusted").null_count() == 2
    hyp = frame.filter(pl.col("role") != "exploratory")
    assert set(hyp.get_column("plan_status")) == {"locked"}
    assert set(frame.get_column("plan_sha256")) == {"f" * 64}
    bayes = frame.filter(pl.col("method") == "bayes_growth").row(0, named=True)
    assert bayes["estimate"] is None and bayes["message"] == "fitted_by_growth_model"


def test_estimates_recover_known_truth(trial) -> None:
    *_, frame = trial
    for row in frame.filter(pl.col("method") == "ancova").iter_rows(named=True):
        truth = TRUE[(row["instrument"], row["scale"])]
        assert abs(row["estimate"] - truth) < 4 * row["std_error"], row
        assert row["n"] == 500 and row["message"] == "ok"
    mmrm = frame.filter(pl.col("hypothesis") == "H3").row(0, named=True)
    # True slope difference: 4 points over 4 waves = 1 per wave.
    assert abs(mmrm["estimate"] - 1.0) < 4 * mmrm["std_error"]
    assert mmrm["ci_low"] < mmrm["estimate"] < mmrm["ci_high"]


def test_p_adjusted_within_family(trial) -> None:
    *_, frame = trial
    dom = frame.filter(pl.col("family") == "domains", pl.col("method") != "bayes_growth")
    expected = adjust_pvalues(dom.get_column("p_value").to_numpy(), "holm")
    np.testing.assert_allclose(dom.get_column("p_adjusted").to_numpy(), expected)
    h1 = frame.filter(pl.col("hypothesis") == "H1").row(0, named=True)
    assert h1["p_adjusted"] == pytest.approx(h1["p_value"])  # a family of one


def test_harm_flags(trial) -> None:
    *_, frame = trial
    flags = dict(zip(frame.get_column("hypothesis"), frame.get_column("flag"), strict=True))
    assert flags["H4"] == "guardrail_harm"
    assert flags["exploratory:flourish12.health"] == "harm"
    assert flags["H1"] is None and flags["exploratory:flourish12.character"] is None


def test_lower_is_better_flips_harm_direction() -> None:
    panel = simulate_panel(400, {("who5", "total"): 5.0, ("phq9", "total"): 6.0}, seed=2)
    plan = parse_analysis_plan({**PLAN, "hypotheses": [PLAN["hypotheses"][0]]})
    res = fit_trial_effects(
        panel, plan, plan_sha256=None, plan_status="unregistered",
        config=TrialEffectsConfig(lower_is_better=frozenset({"phq9.total"})),
    ).to_frame()
    row = res.filter(pl.col("instrument") == "phq9").row(0, named=True)
    assert row["estimate"] > 0 and row["flag"] == "harm"
    assert res.filter(pl.col("hypothesis") == "H1").get_column("plan_status").item() == (
        "unregistered"
    )


def test_integrity_checks_attached(trial) -> None:
    _, _, res, _ = trial
    assert res.sample_ratio is not None and res.sample_ratio.df == 1
    assert res.attrition is not None and res.attrition.message == "no_attrition"


def test_empty_arm_and_missing_outcome_do_not_raise() -> None:
    panel = simulate_panel(100, {("who5", "total"): 0.0}).filter(pl.col("arm") == "control")
    plan = parse_analysis_plan(PLAN)
    frame = fit_trial_effects(panel, plan, plan_sha256="x", plan_status="deviated").to_frame()
    msgs = dict(zip(frame.get_column("hypothesis"), frame.get_column("message"), strict=True))
    assert msgs["H1"] == "empty_arm"
    assert msgs["H2"] == "no_data"  # outcome absent from the panel
    assert msgs["H3"] == "empty_arm"
    assert frame.get_column("p_adjusted").null_count() == frame.height
    assert set(frame.get_column("plan_status")) == {"deviated"}


def test_baseline_column_of_panel_is_used_when_present() -> None:
    panel = simulate_panel(300, {("who5", "total"): 3.0}, seed=8)
    base = panel.filter(pl.col("wave") == 0).select(
        "participant_id", "instrument", "scale", pl.col("score").alias("baseline")
    )
    with_base = panel.join(base, on=["participant_id", "instrument", "scale"], how="left")
    plan = parse_analysis_plan({**PLAN, "hypotheses": [PLAN["hypotheses"][0]]})
    a = fit_trial_effects(panel, plan, plan_sha256="x", plan_status="locked").to_frame()
    b = fit_trial_effects(with_base, plan, plan_sha256="x", plan_status="locked").to_frame()
    assert a.get_column("estimate").to_list() == pytest.approx(b.get_column("estimate").to_list())


def test_shuffled_and_incomplete_panel_aligns_by_participant() -> None:
    """Row order and missing baselines must not change the estimate (join fallback path)."""
    panel = simulate_panel(300, {("who5", "total"): 3.0}, seed=9)
    plan = parse_analysis_plan({**PLAN, "hypotheses": [PLAN["hypotheses"][0]]})
    ref = fit_trial_effects(panel, plan, plan_sha256="x", plan_status="locked").to_frame()
    shuffled = panel.sample(fraction=1.0, shuffle=True, seed=3)
    got = fit_trial_effects(shuffled, plan, plan_sha256="x", plan_status="locked").to_frame()
    assert got.get_column("estimate").item() == pytest.approx(ref.get_column("estimate").item())
    # Drop 20 baselines: complete-case n falls by exactly 20 and matches a hand join.
    dropped = panel.filter(~((pl.col("wave") == 0) & (pl.col("participant_id") < "p00020")))
    res = fit_trial_effects(dropped, plan, plan_sha256="x", plan_status="locked").to_frame()
    assert res.get_column("n").item() == 280
    post = dropped.filter(pl.col("wave") == 4)
    base = dropped.filter(pl.col("wave") == 0).select("participant_id",
                                                       pl.col("score").alias("baseline"))
    hand = fit_ancova(post.join(base, on="participant_id", how="inner"), AncovaConfig())
    assert res.get_column("estimate").item() == pytest.approx(hand.estimate, rel=1e-12)


def test_wrong_plan_status_is_a_programmer_error() -> None:
    panel = simulate_panel(40, {("who5", "total"): 0.0})
    with pytest.raises(ValueError, match="plan_status"):
        fit_trial_effects(panel, parse_analysis_plan(PLAN), plan_sha256="x",
                          plan_status="intact")  # type: ignore[arg-type]
