"""Planning: ANCOVA power/sample size/MDE and Lan-DeMets group-sequential boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestIndPower

from models.plan import parse_analysis_plan
from models.planning import (
    AncovaPowerConfig,
    compute_ancova_power,
    compute_ancova_sample_size,
    compute_group_sequential_bounds,
    compute_minimum_detectable_effect,
    compute_plan_boundaries,
    spent_alpha,
)


@pytest.mark.parametrize(("rho", "n", "alpha"), [(0.0, 200, 0.05), (0.6, 120, 0.05),
                                                  (0.8, 60, 0.01)])
def test_power_matches_statsmodels_with_deflated_variance(rho, n, alpha) -> None:
    cfg = AncovaPowerConfig(sd=15.0, rho=rho, alpha=alpha)
    res = compute_ancova_power(4.0, n, cfg)
    d = 4.0 / (15.0 * np.sqrt(1 - rho**2))
    ref = TTestIndPower().power(d, n / 2, alpha, ratio=1.0, df=n - 3)
    assert res.power == pytest.approx(ref, rel=1e-6)
    assert res.residual_sd == pytest.approx(15.0 * np.sqrt(1 - rho**2))


def test_one_sided_and_unequal_allocation_power() -> None:
    cfg = AncovaPowerConfig(sd=10.0, rho=0.5, alpha=0.025, sided="one", allocation=2 / 3)
    res = compute_ancova_power(3.0, 300, cfg)
    d = 3.0 / (10.0 * np.sqrt(0.75))
    ref = TTestIndPower().power(d, 200, 0.025, ratio=0.5, df=297, alternative="larger")
    assert res.power == pytest.approx(ref, rel=1e-6)
    assert (res.n_treatment, res.n_control) == (200, 100)


def test_sample_size_against_closed_form() -> None:
    cfg = AncovaPowerConfig(sd=20.0, rho=0.5)
    res = compute_ancova_sample_size(5.0, 0.8, cfg)
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    closed = 2 * 2 * z**2 * 20.0**2 * 0.75 / 5.0**2  # total N, normal approximation
    assert closed == pytest.approx(376.8, abs=0.1)
    # t-based answer exceeds the normal approximation by a few participants at most
    assert closed <= res.n_total <= closed + 6
    assert res.power >= 0.8
    smaller = compute_ancova_power(5.0, res.n_total - 2, cfg)
    assert smaller.power < 0.8
    # statsmodels solve_power (pooled t) gives per-arm n for the deflated effect size
    per_arm = TTestIndPower().solve_power(5.0 / (20 * np.sqrt(0.75)), power=0.8, alpha=0.05)
    assert res.n_treatment == pytest.approx(per_arm, abs=1.5)


def test_rho_deflates_sample_size_by_one_minus_rho_squared() -> None:
    n0 = compute_ancova_sample_size(4.0, 0.9, AncovaPowerConfig(sd=12.0, rho=0.0)).n_total
    n7 = compute_ancova_sample_size(4.0, 0.9, AncovaPowerConfig(sd=12.0, rho=0.7)).n_total
    assert n7 / n0 == pytest.approx(1 - 0.7**2, abs=0.02)


def test_mde_inverts_power_and_approximates_closed_form() -> None:
    cfg = AncovaPowerConfig(sd=20.0, rho=0.5)
    res = compute_minimum_detectable_effect(400, 0.8, cfg)
    assert compute_ancova_power(res.effect, 400, cfg).power == pytest.approx(0.8, abs=1e-8)
    closed = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * 20 * np.sqrt(0.75) * np.sqrt(2 / 200)
    assert res.effect == pytest.approx(closed, rel=0.005)
    assert compute_minimum_detectable_effect(3, 0.8, cfg).message == "too_few_participants"


def test_spending_functions_spend_alpha_at_the_end() -> None:
    for sp in ("obrien_fleming", "pocock"):
        assert spent_alpha(1.0, 0.025, sp) == pytest.approx(0.025)
        assert np.all(np.diff(spent_alpha(np.linspace(0.1, 1, 10), 0.025, sp)) > 0)


# Published Lan-DeMets boundaries, one-sided alpha = 0.025 (gsDesign sfLDOF / sfLDPocock;
# Jennison & Turnbull 2000, table 7.x): two looks at 0.5, 1.0.
@pytest.mark.parametrize(
    ("spending", "expected"),
    [("obrien_fleming", (2.963, 1.969)), ("pocock", (2.157, 2.201))],
)
def test_two_look_boundaries_match_published(spending, expected) -> None:
    res = compute_group_sequential_bounds([0.5, 1.0], alpha=0.025, spending=spending)
    assert res.z_boundaries == pytest.approx(expected, abs=1e-3)
    assert res.cumulative_alpha[-1] == pytest.approx(0.025)


def test_three_look_obf_matches_gsdesign() -> None:
    res = compute_group_sequential_bounds([1 / 3, 2 / 3, 1.0], alpha=0.025)
    assert res.z_boundaries == pytest.approx((3.7103, 2.5114, 1.9930), abs=2e-3)
    assert res.to_frame().height == 3


def test_single_look_is_the_fixed_design() -> None:
    one = compute_group_sequential_bounds([1.0], alpha=0.025)
    assert one.z_boundaries[0] == pytest.approx(stats.norm.ppf(0.975), abs=1e-8)
    two = compute_group_sequential_bounds([1.0], alpha=0.05, sided="two")
    assert two.z_boundaries[0] == pytest.approx(stats.norm.ppf(0.975), abs=1e-8)


def test_boundaries_hold_alpha_by_brownian_simulation() -> None:
    """Crossing probability under H0 by Monte Carlo of the score process (known truth)."""
    t = np.array([0.3, 0.6, 1.0])
    res = compute_group_sequential_bounds(t, alpha=0.05, spending="pocock", sided="two")
    rng = np.random.default_rng(42)
    n = 200_000
    increments = rng.normal(size=(n, 3)) * np.sqrt(np.diff(np.r_[0.0, t]))
    z = np.cumsum(increments, axis=1) / np.sqrt(t)
    crossed = (np.abs(z) >= np.array(res.z_boundaries)).any(axis=1).mean()
    se = np.sqrt(0.05 * 0.95 / n)
    assert abs(crossed - 0.05) < 4 * se
    first = (np.abs(z[:, 0]) >= res.z_boundaries[0]).mean()
    assert abs(first - res.cumulative_alpha[0]) < 4 * np.sqrt(res.cumulative_alpha[0] / n)


def test_invalid_fractions_raise() -> None:
    with pytest.raises(ValueError):
        compute_group_sequential_bounds([0.6, 0.4])
    with pytest.raises(ValueError):
        AncovaPowerConfig(sd=1.0, rho=1.0)


def test_plan_interim_looks_give_boundaries() -> None:
    base = {
        "title": "t", "control_arm": "c", "treatment_arm": "t",
        "hypotheses": [{"id": "H1", "role": "primary", "outcome": "who5.total",
                        "method": "ancova", "wave": 4, "alpha": 0.025, "sided": "one"}],
    }
    assert compute_plan_boundaries(parse_analysis_plan(base)) is None
    plan = parse_analysis_plan({**base, "interim": {"information_fractions": [0.5, 1.0],
                                                    "spending": "obrien_fleming"}})
    res = compute_plan_boundaries(plan)
    assert res is not None and res.z_boundaries == pytest.approx((2.963, 1.969), abs=1e-3)
