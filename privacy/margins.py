"""Exact (1 - alpha) margins of DP noise, alone or added to a normal sampling error.

A released mean is ``(S + L_S) / (n + L_n)``: to first order its error is
``(L_S - mean * L_n) / n``, a sum of two independent Laplace terms, which is not normal
(``1.96 sd`` covers only 93.75 % of one Laplace). An effect's interval adds the normal
sampling error of the estimate to four such terms (sum and count noise of two arms). Both
margins here are exact quantiles of those sums, computed from their characteristic
function ``exp(-σ² w² / 2) Π 1 / (1 + b_i² w²)``, so a published margin covers what it
claims; the tests check them against closed forms and simulation.

OpenDP's noise on integers is the *discrete* Laplace; with the scales used here (tens or
thousands of integer units) it is the continuous Laplace to within its variance, so the
margins take the continuous Laplace with the discrete noise's variance
(:func:`laplace_equivalent_scale`).
"""

from __future__ import annotations

import math

import numpy as np


def discrete_laplace_variance(scale: float) -> float:
    """Variance of the discrete Laplace (two-sided geometric) of ``scale``: 2a / (1 - a)².

    Examples
    --------
    >>> round(discrete_laplace_variance(100.0) / (2 * 100.0**2), 4)
    1.0
    """
    a = math.exp(-1.0 / scale)
    return 2.0 * a / (1.0 - a) ** 2


def laplace_equivalent_scale(scale: float) -> float:
    """Continuous Laplace scale with the discrete Laplace's variance (``sqrt(var / 2)``)."""
    return math.sqrt(discrete_laplace_variance(scale) / 2.0)


def laplace_sum_margin(b1: np.ndarray, b2: np.ndarray, alpha: float) -> np.ndarray:
    """``t`` with ``P(|L1 + L2| > t) = alpha`` for independent Laplace(0, b1), Laplace(0, b2).

    Closed-form tail, solved for ``t`` by bisection, elementwise::

        P(|X| > t) = (b1² exp(-t/b1) - b2² exp(-t/b2)) / (b1² - b2²)      (b1 != b2)
                   = exp(-t/b) (1 + t / (2b))                              (b1 == b2 == b)

    Examples
    --------
    >>> round(float(laplace_sum_margin(np.array(1.0), np.array(0.0), 0.05)), 4)  # ln 20
    2.9957
    """
    b1, b2 = np.broadcast_arrays(np.asarray(b1, dtype=float), np.asarray(b2, dtype=float))
    big = np.maximum(np.abs(b1), np.abs(b2))
    r = np.divide(np.minimum(np.abs(b1), np.abs(b2)), big, out=np.zeros_like(big), where=big > 0)
    near = r > 1.0 - 1e-6

    def tail(u: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            small = np.where(r > 0, np.exp(-u / np.where(r > 0, r, 1.0)), 0.0)
            general = (np.exp(-u) - r**2 * small) / np.where(near, 1.0, 1.0 - r**2)
        return np.where(near, np.exp(-u) * (1.0 + u / 2.0), general)

    lo = np.zeros_like(big)
    hi = np.full_like(big, 2.0 * -math.log(alpha) + 5.0)  # tail(hi) < alpha for every r
    for _ in range(80):
        mid = (lo + hi) / 2.0
        above = tail(mid) > alpha
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return big * (lo + hi) / 2.0


def normal_laplace_margin(sigma: float, laplace_scales: np.ndarray | list[float],
                          alpha: float) -> float:
    """``t`` with ``P(|Z + Σ L_i| > t) = alpha``, Z ~ N(0, σ²), L_i ~ Laplace(0, b_i).

    Gil-Pelaez inversion of the characteristic function (the sum is symmetric)::

        P(|X| > t) = 1 - (2/π) ∫_0^∞ sin(w t) / w · φ(w) dw,
        φ(w) = exp(-σ² w² / 2) Π 1 / (1 + b_i² w²)

    evaluated on a fine grid in units of the total standard deviation (trapezoid rule,
    integrand finite at 0) and solved for ``t`` by bisection.

    Examples
    --------
    >>> round(normal_laplace_margin(1.0, [], 0.05), 3)  # the normal quantile
    1.96
    >>> round(normal_laplace_margin(0.0, [1.0], 0.05), 3)  # ln 20
    2.996
    """
    b = np.abs(np.asarray(laplace_scales, dtype=float))
    b = b[b > 0]
    sd = math.sqrt(sigma**2 + float(np.sum(2.0 * b**2)))
    if sd == 0:
        return 0.0
    s, bu = sigma / sd, b / sd  # unit total variance
    # grid: φ falls below ~1e-12 by w_max; spacing resolves sin(w t) for t up to 12 sd
    w_max = 40.0 if s > 0.3 else 4000.0
    w = np.linspace(0.0, w_max, 40_001 if w_max > 100 else 8_001)
    phi = np.exp(-0.5 * (s * w) ** 2) / np.prod(1.0 + (bu[:, None] * w[None, :]) ** 2, axis=0)
    dw = w[1] - w[0]
    weights = np.full_like(w, dw)
    weights[0] = weights[-1] = dw / 2.0  # trapezoid rule
    wphi = weights * phi
    safe_w = np.where(w > 0, w, 1.0)

    def tail(t: float) -> float:
        kernel = np.where(w > 0, np.sin(w * t) / safe_w, t)
        return 1.0 - 2.0 / math.pi * float(kernel @ wphi)

    lo, hi = 0.0, 12.0
    for _ in range(40):  # P(|X| > t) falls in t: bisection
        mid = (lo + hi) / 2.0
        if tail(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return float((lo + hi) / 2.0 * sd)
