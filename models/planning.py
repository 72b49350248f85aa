"""Trial planning: ANCOVA power, sample size, minimum detectable effect; group-sequential bounds.

ANCOVA on a baseline that correlates ``rho`` with the outcome shrinks the residual variance
to ``sigma^2 (1 - rho^2)`` (Borm, Fransen & Lemmens 2007, J Clin Epidemiol 60:1234), so the
required sample size is that of a two-sample t test with effect size
``delta / (sigma sqrt(1 - rho^2))``. Power uses the noncentral t distribution with
``N - 3`` degrees of freedom (two means and one slope estimated).

Group-sequential efficacy boundaries use Lan & DeMets (1983, Biometrika 70:659) alpha
spending, computed by numerical integration of the joint normal of the look statistics
(``corr(Z_j, Z_k) = sqrt(t_j / t_k)``) with :func:`scipy.stats.multivariate_normal.cdf`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from scipy import optimize, stats

from models.plan import AnalysisPlan

Spending = Literal["obrien_fleming", "pocock"]
Sided = Literal["two", "one"]


@dataclass(frozen=True)
class AncovaPowerConfig:
    """Design inputs of the ANCOVA planning functions.

    Parameters
    ----------
    sd
        Outcome standard deviation (outcome units), assumed equal in both arms.
    rho
        Correlation between baseline and follow-up outcome, in [0, 1).
    alpha
        Type I error; two-sided unless ``sided="one"``.
    allocation
        Share of participants in the treatment arm, in (0, 1).
    """

    sd: float
    rho: float = 0.0
    alpha: float = 0.05
    sided: Sided = "two"
    allocation: float = 0.5

    def __post_init__(self) -> None:
        if not self.sd > 0:
            raise ValueError("sd must be positive")
        if not 0 <= self.rho < 1:
            raise ValueError("rho must lie in [0, 1)")
        if not 0 < self.alpha < 1 or not 0 < self.allocation < 1:
            raise ValueError("alpha and allocation must lie in (0, 1)")


@dataclass(frozen=True)
class AncovaPlanningResult:
    """Power, total sample size and minimum detectable effect for one design."""

    effect: float
    n_total: int
    n_treatment: int
    n_control: int
    power: float
    residual_sd: float
    alpha: float
    sided: Sided
    message: str = "ok"

    def to_frame(self) -> pl.DataFrame:
        """One-row frame of the fields."""
        return pl.DataFrame([self.__dict__])


def _arms(n_total: float, allocation: float) -> tuple[float, float]:
    nt = n_total * allocation
    return nt, n_total - nt


def _power(effect: float, n_total: float, cfg: AncovaPowerConfig) -> float:
    nt, nc = _arms(n_total, cfg.allocation)
    df = n_total - 3.0
    if df <= 0:
        return float("nan")
    resid_sd = cfg.sd * np.sqrt(1 - cfg.rho**2)
    ncp = abs(effect) / (resid_sd * np.sqrt(1 / nt + 1 / nc))
    if cfg.sided == "two":
        q = stats.t.ppf(1 - cfg.alpha / 2, df)
        # P(T < -q | ncp) = P(T > q | -ncp); scipy's nct.cdf far in the tail can be NaN.
        lower = float(np.nan_to_num(stats.nct.sf(q, df, -ncp), nan=0.0))
        return float(stats.nct.sf(q, df, ncp)) + lower
    q = stats.t.ppf(1 - cfg.alpha, df)
    return float(stats.nct.sf(q, df, ncp))


def compute_ancova_power(
    effect: float, n_total: int, config: AncovaPowerConfig
) -> AncovaPlanningResult:
    """Power of the baseline-adjusted ANCOVA test for a true effect (outcome units).

    Parameters
    ----------
    effect
        True difference in means, treatment - control, in outcome units.
    n_total
        Participants in both arms together; split by ``config.allocation``.
    config
        :class:`AncovaPowerConfig`.

    Examples
    --------
    >>> r = compute_ancova_power(5.0, 200, AncovaPowerConfig(sd=20.0, rho=0.6))
    >>> round(r.power, 2)
    0.59
    """
    nt, nc = _arms(n_total, config.allocation)
    msg = "ok" if n_total > 3 else "too_few_participants"
    return AncovaPlanningResult(
        effect, int(n_total), int(round(nt)), int(round(nc)), _power(effect, n_total, config),
        config.sd * float(np.sqrt(1 - config.rho**2)), config.alpha, config.sided, msg,
    )


def compute_ancova_sample_size(
    effect: float, power: float, config: AncovaPowerConfig
) -> AncovaPlanningResult:
    """Smallest total sample size whose ANCOVA test reaches ``power`` for ``effect``.

    Starts from the normal-approximation closed form
    ``N = (z_{1-a/2} + z_{power})^2 sigma^2 (1 - rho^2) / (delta^2 p (1 - p))`` and steps up
    to the exact noncentral-t answer; each arm is rounded up so the allocation is kept.
    """
    if not 0 < power < 1:
        raise ValueError("power must lie in (0, 1)")
    if effect == 0:
        return AncovaPlanningResult(effect, 0, 0, 0, float("nan"), config.sd, config.alpha,
                                    config.sided, "zero_effect")
    za = stats.norm.ppf(1 - config.alpha / (2 if config.sided == "two" else 1))
    zb = stats.norm.ppf(power)
    p = config.allocation
    var = config.sd**2 * (1 - config.rho**2)
    n = max(int(np.floor((za + zb) ** 2 * var / (effect**2 * p * (1 - p)))) - 2, 4)
    while _power(effect, n, config) < power:
        n += 1
    nt = int(np.ceil(n * p))
    nc = int(np.ceil(n * (1 - p)))
    total = nt + nc
    return AncovaPlanningResult(
        effect, total, nt, nc, _power(effect, total, config),
        config.sd * float(np.sqrt(1 - config.rho**2)), config.alpha, config.sided,
    )


def compute_minimum_detectable_effect(
    n_total: int, power: float, config: AncovaPowerConfig
) -> AncovaPlanningResult:
    """Smallest true effect (outcome units) detected with ``power`` at ``n_total``.

    Solved on the exact noncentral-t power curve; the normal approximation is
    ``(z_{1-a/2} + z_{power}) sigma sqrt(1 - rho^2) sqrt(1/n_t + 1/n_c)``.
    """
    if n_total <= 3:
        return AncovaPlanningResult(float("nan"), n_total, 0, 0, power, config.sd,
                                    config.alpha, config.sided, "too_few_participants")
    nt, nc = _arms(n_total, config.allocation)
    se = config.sd * np.sqrt(1 - config.rho**2) * np.sqrt(1 / nt + 1 / nc)
    hi = 10 * se
    mde = optimize.brentq(lambda d: _power(d, n_total, config) - power, 1e-12 * se, hi,
                          xtol=1e-12 * se)
    return AncovaPlanningResult(
        float(mde), int(n_total), int(round(nt)), int(round(nc)), power,
        config.sd * float(np.sqrt(1 - config.rho**2)), config.alpha, config.sided,
    )


# --------------------------------------------------------------------------------------
# Group-sequential boundaries
# --------------------------------------------------------------------------------------


def spent_alpha(t: np.ndarray | float, alpha: float, spending: Spending) -> np.ndarray:
    """Cumulative alpha spent by information fraction ``t`` (Lan & DeMets 1983).

    - O'Brien-Fleming type: ``2 - 2 Phi(z_{1-alpha/2} / sqrt(t))``;
    - Pocock type: ``alpha * ln(1 + (e - 1) t)``.
    Both spend exactly ``alpha`` at ``t = 1``.
    """
    t = np.asarray(t, dtype=float)
    if spending == "obrien_fleming":
        with np.errstate(divide="ignore"):
            return 2.0 - 2.0 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 2) / np.sqrt(t))
    if spending == "pocock":
        return alpha * np.log(1 + (np.e - 1) * t)
    raise ValueError(f"unknown spending function {spending!r}")


@dataclass(frozen=True)
class GroupSequentialResult:
    """Efficacy boundaries (z scale) per look and the alpha spent."""

    information_fractions: tuple[float, ...]
    z_boundaries: tuple[float, ...]
    nominal_p: tuple[float, ...]
    cumulative_alpha: tuple[float, ...]
    alpha: float
    sided: Sided
    spending: Spending
    message: str = "ok"

    def to_frame(self) -> pl.DataFrame:
        """One row per look."""
        k = len(self.information_fractions)
        return pl.DataFrame(
            {
                "look": list(range(1, k + 1)),
                "information_fraction": list(self.information_fractions),
                "z_boundary": list(self.z_boundaries),
                "nominal_p": list(self.nominal_p),
                "cumulative_alpha": list(self.cumulative_alpha),
                "spending": [self.spending] * k,
                "sided": [self.sided] * k,
            }
        )


def _continue_prob(bounds: Sequence[float], corr: np.ndarray, sided: Sided) -> float:
    """P(no boundary crossed at looks 1..k) under H0 for the given boundaries."""
    k = len(bounds)
    if k == 0:
        return 1.0
    upper = np.asarray(bounds, dtype=float)
    lower = -upper if sided == "two" else np.full(k, -np.inf)
    if k == 1:
        return float(stats.norm.cdf(upper[0]) - (stats.norm.cdf(lower[0]) if sided == "two"
                                                 else 0.0))
    return float(
        stats.multivariate_normal.cdf(
            upper, mean=np.zeros(k), cov=corr[:k, :k], lower_limit=lower, maxpts=200_000 * k,
            abseps=1e-8, releps=1e-8, rng=np.random.default_rng(20260101),
        )
    )


def compute_group_sequential_bounds(
    information_fractions: Sequence[float],
    *,
    alpha: float = 0.025,
    spending: Spending = "obrien_fleming",
    sided: Sided = "one",
) -> GroupSequentialResult:
    """Lan-DeMets efficacy boundaries for interim looks at the given information fractions.

    Look ``k``'s boundary ``c_k`` solves
    ``P(no crossing at 1..k-1, crossing at k) = a*(t_k) - a*(t_{k-1})`` under H0, where the
    look statistics are jointly normal with ``corr(Z_j, Z_k) = sqrt(t_j / t_k)`` (Brownian
    motion in information time; Jennison & Turnbull 2000, ch. 7). Probabilities are
    integrated numerically (Genz's algorithm in scipy).

    Parameters
    ----------
    information_fractions
        Strictly increasing, in (0, 1]; the final analysis is usually 1.0.
    alpha
        One-sided alpha (``sided="one"``, the convention of gsDesign and EAST) or the total
        two-sided alpha spent symmetrically (``sided="two"``, crossing either boundary).
    spending
        ``obrien_fleming`` or ``pocock`` type spending.
    sided
        ``one`` (upper efficacy boundary only) or ``two`` (symmetric, ``|Z| >= c``).

    Examples
    --------
    >>> r = compute_group_sequential_bounds([0.5, 1.0], alpha=0.025)
    >>> [round(z, 3) for z in r.z_boundaries]
    [2.963, 1.969]
    """
    t = np.asarray(information_fractions, dtype=float)
    if t.size == 0 or np.any(t <= 0) or np.any(t > 1) or np.any(np.diff(t) <= 0):
        raise ValueError("information fractions must be strictly increasing in (0, 1]")
    corr = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    cum = spent_alpha(t, alpha, spending)
    bounds: list[float] = []
    for k in range(t.size):
        target = float(cum[k] - (cum[k - 1] if k else 0.0))
        if target <= 0:
            bounds.append(float("inf"))
            continue
        prev = _continue_prob(bounds, corr, sided)

        def excess(c: float, k: int = k, prev: float = prev, target: float = target) -> float:
            return (prev - _continue_prob([*bounds, c], corr, sided)) - target

        bounds.append(float(optimize.brentq(excess, 0.0, 12.0, xtol=1e-9)))
    b = np.array(bounds)
    nominal = stats.norm.sf(b) * (2 if sided == "two" else 1)
    return GroupSequentialResult(
        tuple(float(x) for x in t), tuple(bounds), tuple(float(x) for x in nominal),
        tuple(float(x) for x in cum), alpha, sided, spending,
    )


def compute_plan_boundaries(
    plan: AnalysisPlan, hypothesis_id: str | None = None
) -> GroupSequentialResult | None:
    """Group-sequential boundaries for the interim looks a plan declares.

    Uses the plan's ``interim`` information fractions and spending function with the
    hypothesis's alpha (the first primary hypothesis unless ``hypothesis_id`` is given):
    a two-sided hypothesis gets symmetric boundaries spending its full alpha, a one-sided
    one an upper boundary at its alpha. Returns None when the plan declares no interim looks.
    """
    if plan.interim is None:
        return None
    if hypothesis_id is not None:
        hyp = plan.hypothesis(hypothesis_id)
    else:
        primaries = [h for h in plan.hypotheses if h.role == "primary"]
        hyp = primaries[0] if primaries else plan.hypotheses[0]
    return compute_group_sequential_bounds(
        plan.interim.information_fractions,
        alpha=hyp.alpha,
        spending=plan.interim.spending,
        sided=hyp.sided,
    )
