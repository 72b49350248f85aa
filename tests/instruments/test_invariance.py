"""Measurement invariance (multi-group CFA, ML): parity with lavaan, known-truth simulation.

Reference: tests/data/psychometrics/holzinger_swineford_lavaan.json, produced by
holzinger_swineford.R (lavaan 0.6.14, R 4.2.2) from holzinger_swineford.csv.
Tolerances: chi-square 1e-3 absolute, CFI/TLI/RMSEA 1e-5, SRMR 1e-5, estimates 1e-4 (the
issue asks 1e-3 on chi-square, CFI and RMSEA; measured gaps are below 1e-7).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import optimize

from instruments.invariance import (
    InvarianceConfig,
    _build_spec,
    _objective,
    fit_cfa,
    fit_invariance,
)

HERE = Path(__file__).resolve().parents[1] / "data" / "psychometrics"
REF = json.loads((HERE / "holzinger_swineford_lavaan.json").read_text())
STRUCTURE = {
    "visual": ["x1", "x2", "x3"],
    "textual": ["x4", "x5", "x6"],
    "speed": ["x7", "x8", "x9"],
}
LEVELS = ["configural", "metric", "scalar"]


@pytest.fixture(scope="module")
def hs() -> pl.DataFrame:
    return pl.read_csv(HERE / "holzinger_swineford.csv")


@pytest.fixture(scope="module")
def invariance(hs):
    return fit_invariance(hs, STRUCTURE, "school")


def _check_fit(got: dict, ref: dict) -> None:
    assert got["chisq"] == pytest.approx(ref["chisq"], abs=1e-3)
    assert got["df"] == ref["df"]
    assert got["npar"] == ref["npar"]
    for k in ("cfi", "tli", "rmsea", "srmr", "pvalue"):
        assert got[k] == pytest.approx(ref[k], abs=1e-5), k
    assert got["baseline_chisq"] == pytest.approx(ref["baseline_chisq"], abs=1e-3)
    assert got["baseline_df"] == ref["baseline_df"]


def test_one_group_three_factor_model_matches_lavaan(hs):
    fit = fit_cfa(hs, STRUCTURE)
    assert fit.converged and fit.message == "ok"
    _check_fit(fit.__dict__, REF["one_group"]["fit"])
    _check_estimates(fit.estimates, REF["one_group"]["estimates"], {1: "all"})


@pytest.mark.parametrize("level", LEVELS)
def test_invariance_levels_match_lavaan(invariance, level):
    row = invariance.to_frame().filter(level=level).row(0, named=True)
    assert row["converged"]
    _check_fit(row, REF[level]["fit"])


def test_chisq_difference_tests_match_lavtestlrt(invariance):
    lrt = REF["lrt"]
    frame = invariance.to_frame()
    for i, level in enumerate(lrt["model"]):
        row = frame.filter(level=level).row(0, named=True)
        if lrt["delta_chisq"][i] is None:
            assert row["delta_chisq"] is None
            continue
        assert row["delta_chisq"] == pytest.approx(lrt["delta_chisq"][i], abs=1e-3)
        assert row["delta_df"] == lrt["delta_df"][i]
        assert row["delta_p"] == pytest.approx(lrt["delta_p"][i], abs=1e-5)


def _check_estimates(est: pl.DataFrame, ref: list[dict], groups: dict[int, str]) -> None:
    checked = 0
    for r in ref:
        if r["op"] not in ("=~", "~~", "~1"):
            continue
        got = est.filter(group=groups[r["group"]], op=r["op"], lhs=r["lhs"], rhs=r["rhs"])
        if got.height == 0 and r["op"] == "~~":  # covariance listed the other way round
            got = est.filter(group=groups[r["group"]], op="~~", lhs=r["rhs"], rhs=r["lhs"])
        assert got.height == 1, r
        assert got["est"][0] == pytest.approx(r["est"], abs=1e-4), r
        checked += 1
    assert checked >= 21


@pytest.mark.parametrize("level", LEVELS)
def test_estimates_match_lavaan(invariance, level):
    groups = {1: "Pasteur", 2: "Grant-White"}  # lavaan numbers groups by first appearance
    assert invariance.groups["group"].to_list() == ["Pasteur", "Grant-White"]
    _check_estimates(
        invariance.estimates_frame().filter(level=level), REF[level]["estimates"], groups
    )


def test_decisions_on_holzinger_swineford(invariance):
    frame = invariance.to_frame()
    # configural RMSEA 0.097 > 0.08: configural fit is not acceptable, later levels follow
    assert frame["holds"].to_list() == [False, False, False]
    assert frame["message"].to_list()[:2] == ["configural_misfit", "previous_level_failed"]
    # with the usual ΔCFI/ΔRMSEA rule metric is supported against configural, scalar not
    lenient = fit_invariance(
        pl.read_csv(HERE / "holzinger_swineford.csv"),
        STRUCTURE,
        "school",
        InvarianceConfig(max_rmsea=0.10),
    ).to_frame()
    assert lenient["holds"].to_list() == [True, True, False]


def test_analytic_gradient_matches_finite_differences(hs):
    items = [it for its in STRUCTURE.values() for it in its]
    assign = np.repeat([0, 1, 2], 3)
    parts = [
        hs.filter(pl.col("school") == g).select(items).to_numpy()
        for g in ("Pasteur", "Grant-White")
    ]
    s = [np.cov(x, rowvar=False, ddof=0) for x in parts]
    xbar = [x.mean(axis=0) for x in parts]
    logdet = [float(np.linalg.slogdet(m)[1]) for m in s]
    w = np.array([156, 145]) / 301
    for level in LEVELS:
        spec = _build_spec(9, 3, assign, 2, level, True)
        rng = np.random.default_rng(0)
        theta = np.abs(rng.normal(0.7, 0.1, spec.npar))
        for g in range(2):
            theta[spec.nu[g]] = xbar[g]

        def f(t, spec=spec):
            return _objective(t, spec, s, xbar, logdet, w)[0]

        num = optimize.approx_fprime(theta, f, 1e-7)
        ana = _objective(theta, spec, s, xbar, logdet, w)[1]
        np.testing.assert_allclose(ana, num, atol=2e-5, rtol=1e-4)


def simulate_two_groups(n: int, intercept_shift: float, seed: int) -> pl.DataFrame:
    """Two-factor model, 3 items each; group g1 differs in factor means (allowed under
    scalar invariance) and, when ``intercept_shift`` != 0, in two item intercepts."""
    rng = np.random.default_rng(seed)
    lam = np.array([[1, 0], [0.8, 0], [0.7, 0], [0, 1], [0, 0.9], [0, 0.6]])
    phi = np.array([[1.0, 0.4], [0.4, 0.8]])
    theta = np.array([0.5, 0.4, 0.6, 0.5, 0.5, 0.7])
    nu = np.array([3.0, 3.2, 2.9, 4.0, 3.8, 4.1])
    shift = np.array([0.0, 1.0, 0.0, 0.0, -1.0, 0.0]) * intercept_shift
    frames = []
    for g, (mean, sh) in enumerate(((np.zeros(2), 0 * shift), (np.array([0.3, -0.2]), shift))):
        eta = rng.multivariate_normal(mean, phi, size=n)
        x = nu + sh + eta @ lam.T + rng.normal(size=(n, 6)) * np.sqrt(theta)
        frames.append(
            pl.DataFrame(x, schema=[f"y{i}" for i in range(1, 7)]).with_columns(
                pl.lit(f"g{g}").alias("country")
            )
        )
    return pl.concat(frames)


SYN = {"f1": ["y1", "y2", "y3"], "f2": ["y4", "y5", "y6"]}


@pytest.mark.parametrize("seed", [1, 2])
def test_known_truth_intercept_shift_rejects_scalar_only(seed):
    res = fit_invariance(simulate_two_groups(500, 0.5, seed), SYN, "country").to_frame()
    assert res["converged"].all()
    assert res["holds"].to_list() == [True, True, False]
    scalar = res.filter(level="scalar").row(0, named=True)
    assert scalar["delta_cfi"] < -0.01 and scalar["delta_p"] < 1e-6


@pytest.mark.parametrize("seed", [1, 2])
def test_known_truth_invariant_model_holds_at_all_levels(seed):
    res = fit_invariance(simulate_two_groups(500, 0.0, seed), SYN, "country").to_frame()
    assert res["holds"].to_list() == [True, True, True]
    # correctly specified: chi-square of each level is of the order of its df
    assert (res["chisq"] < res["df"] + 5 * np.sqrt(2 * res["df"])).all()


def test_strict_index_rule_also_requires_delta_rmsea():
    # seed 124: exactly invariant loadings, but RMSEA rises from its floor of 0 by more
    # than 0.015 at df 16 -> 20 (a known instability of ΔRMSEA at small df)
    data = simulate_two_groups(500, 0.5, 124)
    default = fit_invariance(data, SYN, "country").to_frame()
    strict = fit_invariance(
        data, SYN, "country", InvarianceConfig(index_rule="cfi_and_rmsea")
    ).to_frame()
    metric = default.filter(level="metric").row(0, named=True)
    assert metric["delta_cfi"] > -0.01 and metric["delta_rmsea"] > 0.015
    assert default["holds"].to_list() == [True, True, False]
    assert strict["holds"].to_list() == [True, False, False]


@pytest.mark.slow
def test_known_truth_decision_rates():
    reject_scalar = [
        fit_invariance(simulate_two_groups(500, 0.5, s), SYN, "country")
        .to_frame()["holds"]
        .to_list()
        == [True, True, False]
        for s in range(100, 140)
    ]
    all_hold = [
        all(fit_invariance(simulate_two_groups(500, 0.0, s), SYN, "country").to_frame()["holds"])
        for s in range(200, 240)
    ]
    assert np.mean(reject_scalar) >= 0.95
    assert np.mean(all_hold) >= 0.95


def _mean_chisq(reps: int, seed: int) -> tuple[float, int]:
    chis, df = [], 0
    for s in range(reps):
        row = (
            fit_invariance(
                simulate_two_groups(300, 0.0, seed + s),
                SYN,
                "country",
                InvarianceConfig(levels=("scalar",)),
            )
            .to_frame()
            .row(0, named=True)
        )
        chis.append(row["chisq"])
        df = row["df"]
    return float(np.mean(chis)), df


def test_chisq_is_calibrated_under_the_true_model_reduced():
    # under the true scalar model chi2 ~ chi2(df): mean within 4 SE over 10 replications
    mean, df = _mean_chisq(10, 1000)
    assert abs(mean - df) < 4 * np.sqrt(2 * df / 10)


@pytest.mark.slow
def test_chisq_is_calibrated_under_the_true_model_full():
    mean, df = _mean_chisq(300, 5000)
    assert abs(mean - df) < 3 * np.sqrt(2 * df / 300)


def test_edge_cases_come_back_as_codes(hs):
    small = hs.filter((pl.col("school") == "Pasteur") | (pl.int_range(pl.len()) < 160))
    small = small.with_columns(
        pl.when(pl.int_range(pl.len()) < 12)
        .then(pl.lit("tiny"))
        .otherwise(pl.col("school"))
        .alias("school")
    )
    res = fit_invariance(small, STRUCTURE, "school")
    assert res.message == "group_too_small" and res.to_frame().height == 0
    assert "tiny" in res.groups["group"].to_list()
    one = fit_invariance(hs.with_columns(pl.lit("a").alias("school")), STRUCTURE, "school")
    assert one.message == "too_few_groups"
    starved = fit_invariance(hs, STRUCTURE, "school", InvarianceConfig(max_iter=3))
    assert set(starved.to_frame()["message"]) == {"not_converged"}
    assert starved.to_frame()["holds"].null_count() == 3
    with pytest.raises(ValueError, match="lacks columns"):
        fit_invariance(hs, {"f": ["x1", "nope", "x2"]}, "school")
    with pytest.raises(ValueError, match="more than one factor"):
        fit_invariance(hs, {"f": ["x1", "x2", "x3"], "g": ["x3", "x4", "x5"]}, "school")


def test_missing_rows_are_dropped_listwise(hs):
    holes = hs.with_columns(
        pl.when(pl.int_range(pl.len()) % 50 == 0).then(None).otherwise(pl.col("x5")).alias("x5")
    )
    res = fit_invariance(holes, STRUCTURE, "school", InvarianceConfig(levels=("configural",)))
    assert res.groups["n"].sum() == 301 - 7
    assert res.to_frame()["converged"][0]
