"""Graded-response (ordered-logit) simulation of item responses, with exact expectations.

Pure numpy: no polars, no I/O. The demo study writer (``orchestration/demo.py``) and the
statistical calibration tests use it to generate responses whose *truth in score units* is
known: :func:`expected_grm_score` is the exact conditional expectation of an item given the
latent trait and :func:`compute_marginal_grm_score` integrates it over a normal latent
distribution by Gauss–Hermite quadrature.

Model (Samejima 1969, logistic form). Item ``j`` has ``K`` ordered categories ``0..K-1``,
discrimination ``a_j > 0`` and strictly increasing thresholds ``b_{j,1} < ... < b_{j,K-1}``
on the latent scale::

    P(Y_j >= k | theta) = logistic(a_j * (theta - b_{j,k})),   k = 1..K-1

so ``Y_j = #{k : theta + L / a_j > b_{j,k}}`` with ``L`` standard logistic. Reported values
are the category plus the item's minimum (``who5`` items 0–5, ``flourish12`` items 0–10).

References
----------
Samejima F (1969). Estimation of latent ability using a response pattern of graded scores.
Psychometrika Monograph Supplement 17.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy.optimize import brentq
from scipy.special import expit

__all__ = [
    "compute_grm_thresholds",
    "compute_marginal_grm_score",
    "expected_grm_score",
    "gauss_hermite_normal",
    "grm_category_probabilities",
    "simulate_grm",
]


def _check_items(
    discrimination: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    a = np.atleast_1d(np.asarray(discrimination, dtype=float))
    b = np.asarray(thresholds, dtype=float)
    if b.ndim == 1:
        b = b[None, :]
    if a.ndim != 1 or b.ndim != 2 or b.shape[0] != a.shape[0]:
        raise ValueError(
            f"discrimination must have shape (J,) and thresholds (J, K-1); got {a.shape} "
            f"and {b.shape}"
        )
    if b.shape[1] < 1:
        raise ValueError("an item needs at least two categories (one threshold)")
    if not (np.all(np.isfinite(a)) and np.all(a > 0)):
        raise ValueError("discrimination must be finite and positive")
    if not np.all(np.isfinite(b)):
        raise ValueError("thresholds must be finite")
    if b.shape[1] > 1 and not np.all(np.diff(b, axis=1) > 0):
        raise ValueError("thresholds must be strictly increasing within each item")
    return a, b


def _theta_matrix(theta: np.ndarray, n_items: int) -> np.ndarray:
    t = np.asarray(theta, dtype=float)
    if t.ndim == 0:
        t = t[None]
    if t.ndim == 1:
        return np.broadcast_to(t[:, None], (t.shape[0], n_items))
    if t.ndim == 2 and t.shape[1] in (1, n_items):
        return np.broadcast_to(t, (t.shape[0], n_items))
    raise ValueError(f"theta must have shape (n,) or (n, {n_items}); got {t.shape}")


def _minimum(minimum: int | np.ndarray, n_items: int) -> np.ndarray:
    m = np.broadcast_to(np.asarray(minimum, dtype=np.int64), (n_items,))
    return m


def simulate_grm(
    theta: np.ndarray,
    discrimination: np.ndarray,
    thresholds: np.ndarray,
    rng: np.random.Generator,
    *,
    minimum: int | np.ndarray = 0,
) -> np.ndarray:
    """Draw graded-response item responses for given latent traits.

    Each response is drawn as ``#{k : theta + L / a_j > b_{j,k}}`` with ``L`` standard
    logistic, which reproduces ``P(Y >= k) = logistic(a_j (theta - b_{j,k}))`` exactly; one
    logistic draw per response, so the cost is O(n·J·log K) whatever the number of
    categories.

    Parameters
    ----------
    theta : numpy.ndarray
        Latent traits, shape ``(n,)`` (the same person trait for every item) or ``(n, J)``
        (one trait per response, e.g. a domain's trait repeated over its items).
    discrimination : numpy.ndarray
        Item discriminations ``a_j > 0``, shape ``(J,)``, in logits per latent unit.
    thresholds : numpy.ndarray
        Strictly increasing thresholds per item, shape ``(J, K-1)``, on the latent scale.
        All ``J`` items share ``K``; call once per response format.
    rng : numpy.random.Generator
        Source of randomness (seeded by the caller).
    minimum : int or numpy.ndarray, default 0
        The item's lowest response value; categories ``0..K-1`` are shifted by it.

    Returns
    -------
    numpy.ndarray
        Integer responses (``int16``), shape ``(n, J)``, in ``minimum..minimum+K-1``.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> y = simulate_grm(np.zeros(4), np.array([1.5]), np.array([[-1.0, 0.0, 1.0]]), rng)
    >>> y.shape, int(y.min()) >= 0, int(y.max()) <= 3
    ((4, 1), True, True)
    """
    a, b = _check_items(discrimination, thresholds)
    n_items = a.shape[0]
    t = _theta_matrix(theta, n_items)
    lo = _minimum(minimum, n_items)
    noise = rng.logistic(size=t.shape)
    out = np.empty(t.shape, dtype=np.int16)
    # A loop over items (J is small), never over rows.
    for j in range(n_items):
        latent = t[:, j] + noise[:, j] / a[j]
        out[:, j] = np.searchsorted(b[j], latent, side="left") + lo[j]
    return out


def grm_category_probabilities(
    theta: np.ndarray, discrimination: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """Exact category probabilities ``P(Y_j = k | theta)`` of the graded-response model.

    ``P(Y = k) = P*(k) - P*(k+1)`` with the cumulative ``P*(k) = logistic(a (theta - b_k))``,
    ``P*(0) = 1`` and ``P*(K) = 0`` (Samejima 1969).

    Parameters
    ----------
    theta : numpy.ndarray
        Latent traits, shape ``(n,)`` or ``(n, J)``.
    discrimination, thresholds : numpy.ndarray
        As in :func:`simulate_grm`.

    Returns
    -------
    numpy.ndarray
        Shape ``(n, J, K)``; sums to one over the last axis.
    """
    a, b = _check_items(discrimination, thresholds)
    t = _theta_matrix(theta, a.shape[0])
    cum = expit(a[None, :, None] * (t[:, :, None] - b[None, :, :]))
    n, j = t.shape
    ones = np.ones((n, j, 1))
    zeros = np.zeros((n, j, 1))
    full = np.concatenate([ones, cum, zeros], axis=2)
    return full[:, :, :-1] - full[:, :, 1:]


def expected_grm_score(
    theta: np.ndarray,
    discrimination: np.ndarray,
    thresholds: np.ndarray,
    *,
    minimum: int | np.ndarray = 0,
) -> np.ndarray:
    """Exact expected item response ``E[Y_j | theta]`` in the item's own units.

    ``E[Y_j | theta] = minimum_j + sum_k logistic(a_j (theta - b_{j,k}))``: the expectation of
    a non-negative integer is the sum of its upper-tail probabilities ``P(Y >= k)``.
    Increasing in ``theta``, bounded by the item's range.

    Parameters
    ----------
    theta : numpy.ndarray
        Latent traits, shape ``(n,)`` or ``(n, J)``.
    discrimination, thresholds : numpy.ndarray
        As in :func:`simulate_grm`.
    minimum : int or numpy.ndarray, default 0
        The item's lowest response value.

    Returns
    -------
    numpy.ndarray
        Shape ``(n, J)``, float.

    Examples
    --------
    >>> float(expected_grm_score(np.array([0.0]), np.array([2.0]), np.array([[0.0]]))[0, 0])
    0.5
    """
    a, b = _check_items(discrimination, thresholds)
    t = _theta_matrix(theta, a.shape[0])
    lo = _minimum(minimum, a.shape[0])
    tail = expit(a[None, :, None] * (t[:, :, None] - b[None, :, :])).sum(axis=2)
    return tail + lo[None, :]


def gauss_hermite_normal(n_nodes: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for ``E[f(Z)]``, ``Z ~ N(0, 1)``: ``sum(w * f(x))``.

    Probabilists' Gauss–Hermite rule (weight ``exp(-x^2 / 2)``) with the weights divided by
    ``sqrt(2 pi)`` so that they sum to one. Exact for polynomials of degree ``2 n - 1``.
    The logistic has poles at imaginary distance ``pi / (a sd)``, so convergence slows for
    steep items in wide populations: with ``a * sd <= 3``, 128 nodes are accurate to ~1e-9
    (64 nodes only to ~3e-7).

    Parameters
    ----------
    n_nodes : int, default 128
        Number of quadrature nodes.

    Returns
    -------
    tuple of numpy.ndarray
        ``(nodes, weights)``, each shape ``(n_nodes,)``.

    Examples
    --------
    >>> x, w = gauss_hermite_normal(10)
    >>> round(float(np.sum(w * x**2)), 12)
    1.0
    """
    if n_nodes < 1:
        raise ValueError("n_nodes must be positive")
    x, w = _gauss_hermite_cached(int(n_nodes))
    return x.copy(), w.copy()


@lru_cache(maxsize=8)
def _gauss_hermite_cached(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    # The eigenvalue solve behind hermegauss costs ~30 ms at 128 nodes; cache it.
    x, w = hermegauss(n_nodes)
    return x, w / np.sqrt(2.0 * np.pi)


def compute_marginal_grm_score(
    mean: np.ndarray | float,
    sd: np.ndarray | float,
    discrimination: np.ndarray,
    thresholds: np.ndarray,
    *,
    minimum: int | np.ndarray = 0,
    n_nodes: int = 128,
) -> np.ndarray:
    """Population expected item response when ``theta ~ N(mean, sd^2)``.

    ``E[Y_j] = E_theta[ E[Y_j | theta] ]`` computed by Gauss–Hermite quadrature
    (:func:`gauss_hermite_normal`). Because scale scores are sums or means of items, a
    scale's expected score is the same linear combination of these item expectations; this
    is how the demo study states its truth in score units.

    Parameters
    ----------
    mean, sd : float or numpy.ndarray
        Mean and standard deviation of the latent trait, broadcast to shape ``(m,)``
        (e.g. one entry per arm × wave). ``sd`` must be non-negative.
    discrimination, thresholds : numpy.ndarray
        As in :func:`simulate_grm`.
    minimum : int or numpy.ndarray, default 0
        The item's lowest response value.
    n_nodes : int, default 128
        Quadrature nodes.

    Returns
    -------
    numpy.ndarray
        Shape ``(m, J)``: expected response of each item in each population.

    Examples
    --------
    >>> # symmetric population around a single threshold: P(Y = 1) = 1/2 exactly
    >>> v = compute_marginal_grm_score(0.3, 1.2, np.array([1.7]), np.array([[0.3]]))
    >>> round(float(v[0, 0]), 10)
    0.5
    """
    a, b = _check_items(discrimination, thresholds)
    mu, s = np.broadcast_arrays(
        np.atleast_1d(np.asarray(mean, dtype=float)), np.atleast_1d(np.asarray(sd, dtype=float))
    )
    if np.any(s < 0):
        raise ValueError("sd must be non-negative")
    x, w = gauss_hermite_normal(n_nodes)
    theta = mu[:, None] + s[:, None] * x[None, :]  # (m, nodes)
    # (m, nodes, J, K-1) is small: m ~ arms × waves, K <= 11.
    tail = expit(a[None, None, :, None] * (theta[:, :, None, None] - b[None, None, :, :]))
    cond = tail.sum(axis=3)  # (m, nodes, J)
    lo = _minimum(minimum, a.shape[0])
    return np.einsum("n,mnj->mj", w, cond) + lo[None, :]


def compute_grm_thresholds(
    minimum: int,
    maximum: int,
    *,
    discrimination: float = 1.7,
    latent_mean: float = 0.0,
    latent_sd: float = 1.0,
    n_nodes: int = 128,
) -> np.ndarray:
    """Thresholds that make every response category equally likely in a reference population.

    Chooses ``b_1 < ... < b_{K-1}`` for an item of range ``minimum..maximum`` so that, when
    ``theta ~ N(latent_mean, latent_sd^2)``, ``P(Y <= k) = (k + 1) / K`` exactly: each ``b_k``
    solves ``E_theta[logistic(a (b_k - theta))] = k / K`` (Gauss–Hermite for the
    expectation, Brent's method for the root). A population whose latent mean sits above
    ``latent_mean`` then answers above the middle of the range, as wellbeing samples do.

    Parameters
    ----------
    minimum, maximum : int
        The item's response range (``K = maximum - minimum + 1`` categories).
    discrimination : float, default 1.7
        The item's discrimination (logits per latent unit).
    latent_mean, latent_sd : float, default 0, 1
        The reference population of the latent trait.
    n_nodes : int, default 128
        Quadrature nodes.

    Returns
    -------
    numpy.ndarray
        Shape ``(K-1,)``, strictly increasing, on the latent scale.

    Examples
    --------
    >>> b = compute_grm_thresholds(0, 1)
    >>> round(float(b[0]), 10)  # two categories: the median, by symmetry
    0.0
    """
    k = int(maximum) - int(minimum) + 1
    if k < 2:
        raise ValueError(f"an item needs at least two categories; got {minimum}..{maximum}")
    if discrimination <= 0 or latent_sd < 0:
        raise ValueError("discrimination must be positive and latent_sd non-negative")
    x, w = gauss_hermite_normal(n_nodes)
    theta = latent_mean + latent_sd * x

    def cdf(b: float, target: float) -> float:
        return float(np.sum(w * expit(discrimination * (b - theta)))) - target

    half_width = 40.0 / discrimination + 10.0 * latent_sd
    lo, hi = latent_mean - half_width, latent_mean + half_width
    # K-1 scalar roots (at most ten): a loop over thresholds, not rows.
    return np.array(
        [brentq(cdf, lo, hi, args=(q / k,), xtol=1e-12) for q in range(1, k)], dtype=float
    )
