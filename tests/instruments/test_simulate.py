"""Graded-response simulation against closed forms, independent quadrature and simulation.

Tolerances: simulated frequencies/means are compared to their exact values within 4.5
standard errors (false-alarm rate ~1e-5 per comparison); deterministic formulas within 1e-9
(quadrature) or 1e-12 (algebraic identities).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import norm

from instruments.simulate import (
    compute_grm_thresholds,
    compute_marginal_grm_score,
    expected_grm_score,
    gauss_hermite_normal,
    grm_category_probabilities,
    simulate_grm,
)

Z = 4.5


def _logistic(x: np.ndarray) -> np.ndarray:
    # Written out here rather than imported, to be independent of the module's expit.
    return 1.0 / (1.0 + np.exp(-x))


def test_two_category_grm_is_the_logistic_model() -> None:
    theta = np.array([-2.0, -0.5, 0.0, 0.7, 2.5])
    a, b = 1.3, 0.4
    p = grm_category_probabilities(theta, np.array([a]), np.array([[b]]))
    np.testing.assert_allclose(p[:, 0, 1], _logistic(a * (theta - b)), atol=1e-12)
    np.testing.assert_allclose(p[:, 0, 0], 1 - _logistic(a * (theta - b)), atol=1e-12)

    rng = np.random.default_rng(11)
    n = 40_000
    y = simulate_grm(np.repeat(theta, n), np.array([a]), np.array([[b]]), rng)
    freq = y[:, 0].reshape(len(theta), n).mean(axis=1)
    truth = _logistic(a * (theta - b))
    se = np.sqrt(truth * (1 - truth) / n)
    assert np.all(np.abs(freq - truth) < Z * se)


def test_category_frequencies_match_exact_probabilities() -> None:
    rng = np.random.default_rng(3)
    a = np.array([0.8, 2.2])
    b = np.array([[-1.5, -0.2, 0.3, 1.9], [-0.7, 0.0, 0.1, 1.0]])
    theta = 0.35
    n = 100_000
    y = simulate_grm(np.full(n, theta), a, b, rng, minimum=np.array([1, 0]))
    p = grm_category_probabilities(np.array([theta]), a, b)[0]  # (J, K)
    for j, lo in enumerate([1, 0]):
        counts = np.bincount(y[:, j] - lo, minlength=5) / n
        se = np.sqrt(p[j] * (1 - p[j]) / n)
        assert np.all(np.abs(counts - p[j]) < Z * se + 1e-12)


def test_expected_score_is_sum_of_k_times_probability_and_matches_simulation() -> None:
    a = np.array([1.7, 1.7, 1.2])
    b = np.vstack([compute_grm_thresholds(0, 5), compute_grm_thresholds(0, 5) + 0.5,
                   np.linspace(-2, 2, 5)])
    theta = np.array([-1.0, 0.0, 1.3])
    e = expected_grm_score(theta, a, b)
    p = grm_category_probabilities(theta, a, b)
    np.testing.assert_allclose(e, (p * np.arange(6)).sum(axis=2), atol=1e-12)

    rng = np.random.default_rng(5)
    n = 50_000
    y = simulate_grm(np.repeat(theta, n), a, b, rng).reshape(3, n, 3)
    var = (p * np.arange(6) ** 2).sum(axis=2) - e**2
    assert np.all(np.abs(y.mean(axis=1) - e) < Z * np.sqrt(var / n))


def test_expected_score_limits_and_minimum_shift() -> None:
    a = np.array([2.0])
    b = np.array([[-1.0, 0.0, 1.0]])
    e = expected_grm_score(np.array([-60.0, 60.0]), a, b, minimum=2)
    np.testing.assert_allclose(e[:, 0], [2.0, 5.0], atol=1e-12)


def test_gauss_hermite_moments_are_normal_moments() -> None:
    x, w = gauss_hermite_normal(32)
    assert abs(w.sum() - 1) < 1e-13
    assert abs(np.sum(w * x**2) - 1) < 1e-12
    assert abs(np.sum(w * x**4) - 3) < 1e-11  # E Z^4 = 3


@pytest.mark.parametrize(("mean", "sd"), [(0.0, 1.0), (0.8, 1.4), (-1.2, 0.3)])
def test_marginal_score_matches_independent_quadrature(mean: float, sd: float) -> None:
    a = np.array([1.7, 0.9])
    b = np.vstack([compute_grm_thresholds(0, 10), np.linspace(-2.5, 2.0, 10)])
    gh = compute_marginal_grm_score(mean, sd, a, b, minimum=0)[0]
    for j in range(2):
        def f(t: float, j: int = j) -> float:
            return float(expected_grm_score(np.array([t]), a, b)[0, j]) * norm.pdf(t, mean, sd)

        ref, _ = integrate.quad(f, mean - 12 * sd, mean + 12 * sd, epsabs=1e-12, limit=200)
        assert abs(gh[j] - ref) < 1e-9


def test_marginal_score_symmetric_closed_form() -> None:
    # Two categories, threshold at the population mean: P(Y = 1) = 1/2 by symmetry.
    v = compute_marginal_grm_score(np.array([-0.4, 0.9]), np.array([0.5, 2.0]), np.array([1.1]),
                                   np.array([[0.25]]))
    # Only populations centred on the threshold give 1/2.
    centred = compute_marginal_grm_score(0.25, np.array([0.5, 2.0]), np.array([1.1]),
                                         np.array([[0.25]]))
    np.testing.assert_allclose(centred[:, 0], 0.5, atol=1e-12)
    assert v[0, 0] < 0.5 < v[1, 0]


def test_marginal_score_matches_large_simulation() -> None:
    rng = np.random.default_rng(17)
    a = np.array([1.7] * 5)
    b = np.tile(compute_grm_thresholds(0, 5), (5, 1)) + np.linspace(-0.3, 0.3, 5)[:, None]
    mean, sd, n = 0.4, 1.1, 200_000
    y = simulate_grm(rng.normal(mean, sd, n), a, b, rng)
    total = 4 * y.sum(axis=1)  # WHO-5 percentage scoring
    truth = 4 * compute_marginal_grm_score(mean, sd, a, b).sum()
    assert abs(total.mean() - truth) < Z * total.std() / np.sqrt(n)


def test_thresholds_give_uniform_categories_in_reference_population() -> None:
    for lo, hi, a in [(0, 5, 1.7), (0, 10, 2.5), (1, 7, 0.9)]:
        b = compute_grm_thresholds(lo, hi, discrimination=a, latent_mean=0.3, latent_sd=1.2)
        k = hi - lo + 1
        assert b.shape == (k - 1,) and np.all(np.diff(b) > 0)

        def prob(t: float, a: float = a, b: np.ndarray = b) -> np.ndarray:
            return grm_category_probabilities(np.array([t]), np.array([a]), b[None])[0, 0]

        for c in range(k):
            ref, _ = integrate.quad(lambda t, c=c: prob(t)[c] * norm.pdf(t, 0.3, 1.2),
                                    -15, 15, epsabs=1e-12, limit=200)
            assert abs(ref - 1 / k) < 1e-8


def test_invalid_items_raise() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="increasing"):
        simulate_grm(np.zeros(3), np.array([1.0]), np.array([[0.5, 0.1]]), rng)
    with pytest.raises(ValueError, match="positive"):
        expected_grm_score(np.zeros(3), np.array([-1.0]), np.array([[0.0]]))
    with pytest.raises(ValueError, match="two categories"):
        compute_grm_thresholds(3, 3)


@settings(max_examples=40, deadline=None)
@given(
    theta=st.lists(st.floats(-6, 6), min_size=1, max_size=20),
    a=st.floats(0.3, 4.0),
    lo=st.integers(-2, 2),
    k=st.integers(2, 11),
    seed=st.integers(0, 2**32 - 1),
)
def test_responses_within_range_and_expectation_monotone(
    theta: list[float], a: float, lo: int, k: int, seed: int
) -> None:
    b = compute_grm_thresholds(lo, lo + k - 1, discrimination=a)
    y = simulate_grm(np.array(theta), np.array([a]), b[None], np.random.default_rng(seed),
                     minimum=lo)
    assert y.min() >= lo and y.max() <= lo + k - 1
    grid = np.sort(np.array(theta))
    e = expected_grm_score(grid, np.array([a]), b[None], minimum=lo)[:, 0]
    assert np.all(np.diff(e) >= -1e-12)
    assert np.all((e >= lo) & (e <= lo + k - 1))
