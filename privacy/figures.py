"""Declared public figures: what each costs, how accurate it will be, and how it is queried.

Everything here is decided *before any data are read*. A :class:`PublicDeclaration` comes
from the sealed analysis plan (arms, wave schedule, outcomes, ε, usefulness thresholds,
expected sample size). :func:`plan_release` turns it into a :class:`ReleasePlan`: the ε of
each figure and its expected 95 % noise margin in the outcome's units at the declared
expected n. A figure whose margin would be wider than its usefulness threshold is withheld
and its ε goes to the rest; the dry run prints exactly this plan, and the release spends
exactly it.

Figure kinds are a registry (:data:`FIGURE_KINDS`): a kind says which integer columns it
reads from the participant-level table, which DP aggregates it takes (sums with clipping
bounds, each with a share of the figure's ε), how accurate it will be, and how its noisy
aggregates become released values. Adding a kind is one class and its registration.

Every aggregate runs on a table with one row per participant (:mod:`privacy.table`), so a
participant contributes at most one row to any query and the sensitivity of a sum is its
clipping bound: the privacy unit is the participant by construction. Values are fixed point
(``round(x01 * Q)``, ``Q = 10_000``, ``x01`` the score scaled to [0, 1] by the instrument's
range), so OpenDP's integer sums are exact and the charged ε is exactly the planned ε.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np
import polars as pl

from privacy.margins import laplace_equivalent_scale, laplace_sum_margin, normal_laplace_margin
from privacy.objects import FigureKind

FIXED_POINT_Q = 10_000
"""Fixed-point resolution of scores scaled to [0, 1] (1e-4 of the instrument range)."""
MEAN_COUNT_SHARE_OFFSET = 0.25
"""Planning assumption for means: the mean lies within a quarter of the range from the
middle (the count noise enters a centred mean multiplied by that distance)."""

EFFECT_PLANNING_CHANGE = 0.1
"""Planning assumption for effects: the mean change from baseline is a tenth of the range
(the count noise enters the mean change multiplied by it)."""

SplitRule = Literal["auto"]


# ---------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class FigureSpec:
    """One declared public figure (no data): its outcome, breakdown and usefulness.

    ``tier`` orders figures for the budget (0 first): the primary effect, the primary
    outcome's trajectory, other effects in plan order, other trajectories.
    """

    id: str
    kind: FigureKind
    outcome: str
    instrument_title: str
    scale_title: str
    units: str
    lo: float
    hi: float
    role: str
    hypothesis: str | None
    wave: int | None
    threshold: float
    tier: int
    weight: float | None = None
    mid: float | None = None
    """The minimal important difference (outcome units), when the plan or instrument has one."""
    breakdown: str | None = None
    """A declared covariate the figure is broken down by (one value row per category)."""
    categories: tuple[str, ...] = ()
    """The breakdown's declared categories: its only keys (the data never add one)."""
    category_shares: tuple[float, ...] = ()
    """Expected share of participants in each category (planning only)."""

    @property
    def width(self) -> float:
        """Range of the outcome (hi - lo)."""
        return self.hi - self.lo

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for the canonical declaration)."""
        return {
            "id": self.id, "kind": self.kind, "outcome": self.outcome, "lo": self.lo,
            "hi": self.hi, "role": self.role, "hypothesis": self.hypothesis, "wave": self.wave,
            "threshold": self.threshold, "tier": self.tier, "weight": self.weight,
            "mid": self.mid, "breakdown": self.breakdown, "categories": list(self.categories),
            "category_shares": list(self.category_shares),
        }


@dataclass(frozen=True)
class PublicDeclaration:
    """What is public, sealed with the plan: keys, figures, ε and planning assumptions.

    Parameters
    ----------
    study
        The study's public name.
    control_arm, treatment_arm
        The declared arms; the only group keys of any release.
    waves
        The declared public waves (baseline first); the only wave keys.
    figures
        Declared figures, in declaration order.
    epsilon
        ε of this release suite (pure ε-DP, privacy unit: one participant).
    alpha
        1 - confidence of every margin and interval.
    expected_n
        Expected randomised participants per arm (from the plan's planned sample size and
        allocation, or declared).
    expected_retention
        Expected share of an arm still answering at the last wave (linear in between).
    change_bound
        Changes from baseline are clipped to ± this share of the range (sensitivity).
    split
        ``"auto"`` (each figure gets ε in proportion to what it needs to be useful, in
        priority order) or a mapping figure id -> weight.
    """

    study: str
    control_arm: str
    treatment_arm: str
    waves: tuple[int, ...]
    figures: tuple[FigureSpec, ...]
    epsilon: float
    expected_n: Mapping[str, float]
    alpha: float = 0.05
    expected_retention: float = 0.75
    change_bound: float = 0.5
    split: SplitRule | Mapping[str, float] = "auto"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"epsilon must be finite and positive, got {self.epsilon}")
        if self.control_arm == self.treatment_arm:
            raise ValueError("control and treatment arms must differ")
        if not self.waves or self.waves[0] != min(self.waves) or len(set(self.waves)) != len(
            self.waves
        ):
            raise ValueError(f"waves must be distinct with the baseline first, got {self.waves}")
        ids = [f.id for f in self.figures]
        if len(set(ids)) != len(ids):
            raise ValueError(f"figure ids repeat: {ids}")
        for f in self.figures:
            if f.breakdown is not None and (not f.categories or len(set(f.categories)) != len(
                    f.categories) or len(f.category_shares) != len(f.categories)):
                raise ValueError(f"{f.id}: a breakdown needs distinct declared categories and "
                                 "one expected share each")
            if f.kind == "effect" and (f.wave is None or f.wave not in self.waves[1:]):
                raise ValueError(f"{f.id}: effect wave {f.wave} is not a declared follow-up wave")
            if not f.threshold > 0:
                raise ValueError(f"{f.id}: usefulness threshold must be positive")

    @property
    def arms(self) -> tuple[str, str]:
        """(control, treatment)."""
        return (self.control_arm, self.treatment_arm)

    @property
    def baseline(self) -> int:
        """The baseline wave (first declared)."""
        return self.waves[0]

    @property
    def outcomes(self) -> tuple[str, ...]:
        """Outcomes any figure uses, in first-use order."""
        return tuple(dict.fromkeys(f.outcome for f in self.figures))

    def expected_n_at(self, arm: str, wave: int) -> float:
        """Expected participants of ``arm`` answering at ``wave`` (linear retention)."""
        k = self.waves.index(wave)
        last = len(self.waves) - 1
        keep = 1.0 if last == 0 else 1.0 - (1.0 - self.expected_retention) * k / last
        return max(float(self.expected_n[arm]) * keep, 1.0)

    def canonical(self) -> dict[str, Any]:
        """Everything that determines a release except the data (part of its id)."""
        return {
            "format": "flourish-public-declaration/1",
            "study": self.study, "arms": list(self.arms), "waves": list(self.waves),
            "figures": [f.as_dict() for f in self.figures], "epsilon": self.epsilon,
            "alpha": self.alpha, "expected_n": dict(sorted(self.expected_n.items())),
            "expected_retention": self.expected_retention, "change_bound": self.change_bound,
            "split": self.split if isinstance(self.split, str) else dict(self.split),
            "fixed_point_q": FIXED_POINT_Q, **dict(self.extra),
        }


# ---------------------------------------------------------------------- figure kinds


@dataclass(frozen=True)
class Aggregate:
    """One DP sum per arm: ``column`` clipped to ``[lower, upper]`` (fixed point).

    ``share`` is its part of the figure's ε; its noise scale is ``sensitivity / (share ε)``
    with ``sensitivity = max(|lower|, |upper|)`` (one row per participant).
    """

    name: str
    column: str
    lower: int
    upper: int
    share: float

    @property
    def sensitivity(self) -> float:
        """L1 sensitivity of the sum under adding or removing one participant's row."""
        return float(max(abs(self.lower), abs(self.upper)))


class FigureKindImpl(Protocol):
    """What a figure kind provides (see :class:`EffectKind`, :class:`MeansKind`)."""

    def columns(self, fig: FigureSpec, decl: PublicDeclaration, x: Mapping[int, pl.Expr]
                ) -> dict[str, pl.Expr]:
        """Integer input columns from the outcome's [0, 1] value per wave (``x[wave]``)."""
        ...

    def aggregates(self, fig: FigureSpec, decl: PublicDeclaration) -> list[Aggregate]:
        """The DP sums this figure takes per arm."""
        ...

    def planned_margin(self, fig: FigureSpec, decl: PublicDeclaration, epsilon: float) -> float:
        """Expected 95 % noise margin (outcome units) at ``epsilon`` and the expected n."""
        ...

    def values(self, fig: FigureSpec, decl: PublicDeclaration, noisy: pl.DataFrame,
               scales: Mapping[str, float]) -> list[dict[str, Any]]:
        """Released values from the noisy per-arm sums (``arm`` 0/1 and one column each)."""
        ...


def _col(fig: FigureSpec, part: str) -> str:
    return f"{fig.id}|{part}"


def _arm_rows(noisy: pl.DataFrame) -> tuple[dict[str, Any], dict[str, Any]]:
    rows = {int(r["arm"]): r for r in noisy.iter_rows(named=True)}
    empty: dict[str, Any] = {}
    return rows.get(0, empty), rows.get(1, empty)


class EffectKind:
    """Difference (treatment - control) in mean change from baseline to the figure's wave.

    Among participants with both scores, per arm: ``n`` (count), ``S`` (sum of the change
    clipped to ± ``change_bound`` of the range) and ``SS`` (sum of the clipped change
    squared). The estimate is ``m_T - m_C`` with ``m = S / n``; the interval adds the
    sampling error (pooled variance from ``SS``) and the DP noise of ``S`` and ``n`` in
    both arms, and its margin is the exact quantile of that normal-plus-four-Laplace sum
    (:func:`privacy.margins.normal_laplace_margin`). ``noise_margin`` is the DP noise's
    own 95 % bound: it covers the data's exact difference in mean change.
    """

    shares = {"n": 0.20, "s": 0.50, "ss": 0.30}

    def columns(self, fig: FigureSpec, decl: PublicDeclaration, x: Mapping[int, pl.Expr]
                ) -> dict[str, pl.Expr]:
        """Integer input columns (see :class:`FigureKindImpl`)."""
        q, c = FIXED_POINT_Q, decl.change_bound
        assert fig.wave is not None
        both = x[decl.baseline].is_not_null() & x[fig.wave].is_not_null()
        d = (x[fig.wave] - x[decl.baseline]).clip(-c, c)
        return {
            _col(fig, "n"): both.cast(pl.Int64),
            _col(fig, "s"): pl.when(both).then((d * q).round(0)).otherwise(0).cast(pl.Int64),
            _col(fig, "ss"): pl.when(both).then((d * d * q).round(0)).otherwise(0).cast(pl.Int64),
        }

    def aggregates(self, fig: FigureSpec, decl: PublicDeclaration) -> list[Aggregate]:
        """The DP sums per arm (see :class:`FigureKindImpl`)."""
        q, c = FIXED_POINT_Q, decl.change_bound
        return [
            Aggregate("n", _col(fig, "n"), 0, 1, self.shares["n"]),
            Aggregate("s", _col(fig, "s"), -round(c * q), round(c * q), self.shares["s"]),
            Aggregate("ss", _col(fig, "ss"), 0, round(c * c * q), self.shares["ss"]),
        ]

    def planned_margin(self, fig: FigureSpec, decl: PublicDeclaration, epsilon: float) -> float:
        """Expected 95 % noise margin before data (see :class:`FigureKindImpl`)."""
        # sum and count noise of both arms' mean change; the count noise enters multiplied
        # by the mean change, planned at EFFECT_PLANNING_CHANGE of the range
        b_sum = decl.change_bound / (self.shares["s"] * epsilon)  # range units
        b_n = 1.0 / (self.shares["n"] * epsilon)
        assert fig.wave is not None
        nt = decl.expected_n_at(decl.treatment_arm, fig.wave)
        nc = decl.expected_n_at(decl.control_arm, fig.wave)
        m = EFFECT_PLANNING_CHANGE
        terms = [b_sum / nt, b_sum / nc, m * b_n / nt, m * b_n / nc]
        return fig.width * normal_laplace_margin(0.0, terms, decl.alpha)

    def values(self, fig: FigureSpec, decl: PublicDeclaration, noisy: pl.DataFrame,
               scales: Mapping[str, float]) -> list[dict[str, Any]]:
        """Released values from the noisy sums (see :class:`FigureKindImpl`)."""
        q = float(FIXED_POINT_Q)
        c_row, t_row = _arm_rows(noisy)
        n_c, n_t = float(c_row.get("n") or 0), float(t_row.get("n") or 0)
        base = {"n_treatment": int(round(n_t)), "n_control": int(round(n_c))}
        if n_c < 2 or n_t < 2:
            return [{**base, "estimate": None, "ci_low": None, "ci_high": None,
                     "std_error": None, "se_sampling": None, "se_noise": None,
                     "noise_margin": None, "mean_change_treatment": None,
                     "mean_change_control": None, "message": "too_few"}]
        c = decl.change_bound
        m_t = min(max(float(t_row["s"]) / q / n_t, -c), c)
        m_c = min(max(float(c_row["s"]) / q / n_c, -c), c)
        ss = (float(t_row["ss"]) + float(c_row["ss"])) / q
        s2 = (ss - n_t * m_t**2 - n_c * m_c**2) / max(n_t + n_c - 2.0, 1.0)
        s2 = min(max(s2, 0.0), c * c)
        se_s = math.sqrt(s2 * (1.0 / n_t + 1.0 / n_c))
        b_s = laplace_equivalent_scale(scales["s"]) / q
        b_n = laplace_equivalent_scale(scales["n"])
        lap = [b_s / n_t, b_s / n_c, abs(m_t) * b_n / n_t, abs(m_c) * b_n / n_c]
        se_n = math.sqrt(sum(2.0 * b * b for b in lap))
        w = fig.width
        est = w * (m_t - m_c)
        ci = w * normal_laplace_margin(se_s, lap, decl.alpha)
        noise = w * normal_laplace_margin(0.0, lap, decl.alpha)
        return [{**base, "estimate": est, "ci_low": est - ci, "ci_high": est + ci,
                 "std_error": w * math.sqrt(se_s**2 + se_n**2), "se_sampling": w * se_s,
                 "se_noise": w * se_n, "noise_margin": noise,
                 "mean_change_treatment": w * m_t, "mean_change_control": w * m_c,
                 "message": "ok"}]


class MeansKind:
    """Mean of the outcome per arm x declared wave, with the 95 % bound of its DP noise.

    Per arm and wave: ``n`` (participants with a score) and ``S`` (sum of the score
    centred on the middle of its range, so the count noise enters multiplied by the
    mean's distance from the middle, and the sum's sensitivity is half the range). ε is
    spread over the waves in proportion to ``1 / expected n`` (equal margins), and within a
    wave 0.6 / 0.4 between ``S`` and ``n``. ``margin`` is the exact 95 % quantile of the two
    Laplace noise terms through ``S / n`` (first order): it covers the data's exact mean.
    """

    s_share = 0.6

    def _wave_shares(self, fig: FigureSpec, decl: PublicDeclaration) -> dict[int, float]:
        inv = {w: 1.0 / min(decl.expected_n_at(a, w) for a in decl.arms) for w in decl.waves}
        total = sum(inv.values())
        return {w: v / total for w, v in inv.items()}

    def columns(self, fig: FigureSpec, decl: PublicDeclaration, x: Mapping[int, pl.Expr]
                ) -> dict[str, pl.Expr]:
        """Integer input columns (see :class:`FigureKindImpl`)."""
        q = FIXED_POINT_Q
        out: dict[str, pl.Expr] = {}
        for w in decl.waves:
            out[_col(fig, f"n{w}")] = x[w].is_not_null().cast(pl.Int64)
            out[_col(fig, f"s{w}")] = ((x[w] - 0.5) * q).round(0).fill_null(0).cast(pl.Int64)
        return out

    def aggregates(self, fig: FigureSpec, decl: PublicDeclaration) -> list[Aggregate]:
        """The DP sums per arm (see :class:`FigureKindImpl`)."""
        h = FIXED_POINT_Q // 2
        out = []
        for w, share in self._wave_shares(fig, decl).items():
            out.append(Aggregate(f"n{w}", _col(fig, f"n{w}"), 0, 1, share * (1 - self.s_share)))
            out.append(Aggregate(f"s{w}", _col(fig, f"s{w}"), -h, h, share * self.s_share))
        return out

    def planned_margin(self, fig: FigureSpec, decl: PublicDeclaration, epsilon: float) -> float:
        """Expected 95 % noise margin before data (see :class:`FigureKindImpl`)."""
        worst = 0.0
        for w, share in self._wave_shares(fig, decl).items():
            b_s = 0.5 / (share * self.s_share * epsilon)
            b_n = 1.0 / (share * (1 - self.s_share) * epsilon)
            for arm in decl.arms:
                n = decl.expected_n_at(arm, w)
                m = laplace_sum_margin(np.array(b_s / n), np.array(MEAN_COUNT_SHARE_OFFSET * b_n / n),
                                       decl.alpha)
                worst = max(worst, float(m))
        return fig.width * worst

    def values(self, fig: FigureSpec, decl: PublicDeclaration, noisy: pl.DataFrame,
               scales: Mapping[str, float]) -> list[dict[str, Any]]:
        """Released values from the noisy sums (see :class:`FigureKindImpl`)."""
        q = float(FIXED_POINT_Q)
        rows = []
        arm_rows = _arm_rows(noisy)
        for arm_i, arm in enumerate(decl.arms):
            r = arm_rows[arm_i]
            for w in decl.waves:
                n = float(r.get(f"n{w}") or 0)
                if n < 1:
                    rows.append({"arm": arm, "wave": w, "mean": None, "margin": None,
                                 "n": int(round(n)), "message": "too_few"})
                    continue
                m01 = min(max(0.5 + float(r[f"s{w}"]) / q / n, 0.0), 1.0)
                b_s = laplace_equivalent_scale(scales[f"s{w}"]) / q / n
                b_n = abs(m01 - 0.5) * laplace_equivalent_scale(scales[f"n{w}"]) / n
                margin = float(laplace_sum_margin(np.array(b_s), np.array(b_n), decl.alpha))
                rows.append({"arm": arm, "wave": w, "mean": fig.lo + fig.width * m01,
                             "margin": fig.width * margin, "n": int(round(n)), "message": "ok"})
        return rows


FIGURE_KINDS: dict[str, FigureKindImpl] = {"effect": EffectKind(), "means": MeansKind()}
"""Registry of figure kinds by name (the ``kind`` of a :class:`FigureSpec`)."""


# ---------------------------------------------------------------------- planning


@dataclass(frozen=True)
class PlannedFigure:
    """A figure's share of the budget and its expected accuracy, decided before any data.

    ``epsilon_needed`` is the smallest ε at which its expected margin meets its threshold.
    For a withheld figure ``planned_margin`` is the margin at the ε that was left for it
    (infinite when none was), which is wider than its threshold.
    """

    spec: FigureSpec
    epsilon: float
    epsilon_needed: float
    planned_margin: float
    status: Literal["released", "withheld"]
    reason: str = ""


@dataclass(frozen=True)
class ReleasePlan:
    """The suite's plan: ε and expected accuracy per figure (what ``--dry-run`` prints)."""

    declaration: PublicDeclaration
    figures: tuple[PlannedFigure, ...]

    @property
    def epsilon(self) -> float:
        """ε the suite spends (sum over released figures)."""
        return float(sum(f.epsilon for f in self.figures))

    @property
    def released(self) -> tuple[PlannedFigure, ...]:
        """Figures that will be drawn."""
        return tuple(f for f in self.figures if f.status == "released")

    def to_frame(self) -> pl.DataFrame:
        """One row per declared figure: id, status, ε, expected margin, threshold, reason."""
        return pl.DataFrame(
            [{"figure": f.spec.id, "status": f.status, "epsilon": f.epsilon,
              "epsilon_needed": f.epsilon_needed, "expected_margin_95": f.planned_margin,
              "threshold": f.spec.threshold, "units": f.spec.units, "reason": f.reason}
             for f in self.figures],
            schema={"figure": pl.String, "status": pl.String, "epsilon": pl.Float64,
                    "epsilon_needed": pl.Float64, "expected_margin_95": pl.Float64,
                    "threshold": pl.Float64, "units": pl.String, "reason": pl.String},
        )


def planning_declaration(fig: FigureSpec, decl: PublicDeclaration) -> PublicDeclaration:
    """The declaration a figure is planned under.

    For a breakdown: the smallest category's expected n (each category is its own group,
    so the worst one sets the margin).
    """
    if fig.breakdown is None:
        return decl
    share = min(fig.category_shares)
    return replace(decl, expected_n={a: n * share for a, n in decl.expected_n.items()})


def planned_margin(fig: FigureSpec, decl: PublicDeclaration, epsilon: float) -> float:
    """Expected 95 % noise margin of ``fig`` at ``epsilon`` (outcome units), before data."""
    return FIGURE_KINDS[fig.kind].planned_margin(fig, planning_declaration(fig, decl), epsilon)


def _needed(fig: FigureSpec, decl: PublicDeclaration) -> float:
    # every noise scale is proportional to 1/ε, so the margin is margin(1) / ε
    return planned_margin(fig, decl, 1.0) / fig.threshold


def plan_release(decl: PublicDeclaration) -> ReleasePlan:
    """Split the suite's ε over the declared figures and predict each one's accuracy.

    ``split="auto"``: figures are admitted in priority order (tier, then declaration order)
    while the ε each needs to meet its usefulness threshold still fits; the rest are
    withheld, and all of ε is then shared among the admitted figures in proportion to what
    each needs, so every admitted figure beats its threshold by the same factor. With
    weights: ε is split by weight, figures that miss their threshold are withheld and
    their ε is shared among the others again, until every remaining figure is useful.

    Examples
    --------
    >>> f = FigureSpec("effect:who5.total@4", "effect", "who5.total", "WHO-5", "Total",
    ...                "points", 0.0, 100.0, "primary", "H1", 4, 5.0, 0)
    >>> d = PublicDeclaration("S", "c", "t", (0, 4), (f,), 1.0, {"c": 500, "t": 500})
    >>> p = plan_release(d); p.figures[0].status, round(p.epsilon, 6)
    ('released', 1.0)
    """
    need = {f.id: _needed(f, decl) for f in decl.figures}
    eps: dict[str, float] = {}
    reasons: dict[str, str] = {}
    available: dict[str, float] = {}  # ε a withheld figure could have had (its margin's basis)
    if isinstance(decl.split, str):
        order = sorted(decl.figures, key=lambda f: f.tier)  # stable: declaration order
        used = 0.0
        for f in order:
            if used + need[f.id] <= decl.epsilon * (1 + 1e-12):
                eps[f.id] = need[f.id]
                used += need[f.id]
            else:
                available[f.id] = max(decl.epsilon - used, 0.0)
                reasons[f.id] = (
                    f"withheld: too uncertain at this privacy level (needs ε ≥ "
                    f"{need[f.id]:.3g} for a 95 % noise margin of at most {f.threshold:g} "
                    f"{f.units}; {max(decl.epsilon - used, 0.0):.3g} of ε {decl.epsilon:g} "
                    "was left after higher-priority figures)"
                )
        scale = decl.epsilon / used if used > 0 else 0.0
        eps = {k: v * scale for k, v in eps.items()}
    else:
        weights = {f.id: float(decl.split.get(f.id, 0.0)) for f in decl.figures}
        for f in decl.figures:
            if weights[f.id] <= 0:
                reasons[f.id] = "withheld: the declared split gives it no ε"
        active = [f for f in decl.figures if f.id not in reasons]
        while active:
            total_w = sum(weights[f.id] for f in active)
            trial = {f.id: decl.epsilon * weights[f.id] / total_w for f in active}
            missed = [f for f in active if trial[f.id] < need[f.id] * (1 - 1e-12)]
            if not missed:
                eps = trial
                break
            for f in missed:
                available[f.id] = trial[f.id]
                reasons[f.id] = (
                    f"withheld: too uncertain at this privacy level (its share ε "
                    f"{trial[f.id]:.3g} gives a 95 % noise margin wider than {f.threshold:g} "
                    f"{f.units}; it needs ε ≥ {need[f.id]:.3g})"
                )
            active = [f for f in active if f.id not in reasons]
    planned = []
    for f in decl.figures:
        if f.id in eps:
            planned.append(PlannedFigure(f, eps[f.id], need[f.id],
                                         planned_margin(f, decl, eps[f.id]), "released"))
        else:  # the margin it would have had with the ε left for it (inf: none left)
            left = available.get(f.id, 0.0)
            margin = planned_margin(f, decl, left) if left > 0 else math.inf
            planned.append(PlannedFigure(f, 0.0, need[f.id], margin, "withheld", reasons[f.id]))
    return ReleasePlan(decl, tuple(planned))
