"""Engagement versus wellbeing: does more use go with flourishing, or against it.

Product teams watch engagement; a programme can raise engagement while a wellbeing domain
(meaning and purpose, say) falls. This module puts the two side by side for every wellbeing
scale, with stated uncertainty, and raises a *divergence flag* when they point in opposite
directions.

Two questions are kept apart (Curran & Bauer 2011, Annu Rev Psychol 62:583-619; Hoffman &
Stawski 2009, Res Hum Dev 6:97-120):

- **between persons**: are people who use the product more (on average over the study)
  better off? Coefficient of the participant's mean engagement ``xbar_i``;
- **within person**: when someone uses it more than they usually do, are they better off
  then? Coefficient of the person-centred engagement ``x_it - xbar_i``.

Both come from one linear mixed model per scale (the within/between "hybrid" model,
Mundlak 1978, Econometrica 46:69-85)::

    score_it = b0 + bW (x_it - xbar_i) + bB xbar_i + [wave effects] + u_i + e_it,
    u_i ~ N(0, tau^2),  e_it ~ N(0, sigma^2)

fitted by REML (:func:`fit_random_intercept`: the likelihood profiled in closed form).
Fixed-effect standard errors are lme4's,
``sqrt(diag((X' V^-1 X)^-1))`` at the REML variance estimates (Bates et al. 2015, J Stat
Softw 67(1)); intervals use t quantiles with the between-within degrees of freedom
(within terms: N - G - p_within; between terms: G - p_between; Pinheiro & Bates 2000,
section 2.4.2), which equal lmerTest's Satterthwaite df on balanced data.

In a trial the treatment's effect on engagement and on each scale is estimated at the final
wave by ANCOVA (outcome ~ arm + baseline value; Vickers & Altman 2001, BMJ 323:1123) with an
OLS fit and a heteroscedasticity-consistent covariance (HC2 by default; with a binary arm
and no covariate HC2 equals Welch's standard error, Imbens & Kolesar 2016, Rev Econ Stat
98:701-712); intervals use t quantiles with the residual degrees of freedom.

Divergence flag (per scale), at the configured ``alpha`` (two-sided intervals, no
multiplicity adjustment across scales — the flag is a screen for a human to look at, not a
confirmatory test):

- ``trial``: the treatment raises engagement (its interval lies above 0) **and** lowers the
  scale (its interval lies below 0);
- ``within_person``: engagement rises (in a trial: the treatment raises it, interval above
  0; without a trial: the engagement time trend, a random-intercept model of engagement on
  wave, has its interval above 0) **and** the within-person association is negative
  (interval below 0): on occasions when people use the product more, they score lower.

``flag_reason`` is ``trial``, ``within_person``, ``both`` or ``none``; ``explanation`` says
the same in words with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
from scipy import stats
from statsmodels.regression.linear_model import OLS

__all__ = [
    "DivergenceConfig",
    "DivergenceResult",
    "EffectEstimate",
    "EngagementMetric",
    "RobustSE",
    "ScaleDivergence",
    "fit_divergence",
    "fit_treatment_effect",
    "fit_within_between",
]

EngagementMetric = Literal[
    "events",
    "active_days",
    "sessions",
    "minutes",
    "late_night_events",
    "late_night_share",
    "longest_streak_days",
]
"""Which engagement feature (``models.telemetry`` column) stands for "engagement"."""

RobustSE = Literal["HC0", "HC1", "HC2", "HC3"]
"""Heteroscedasticity-consistent covariance for the treatment-effect OLS fits."""

FlagReason = Literal["trial", "within_person", "both", "none"]

DivergenceCode = Literal[
    "ok",
    "too_few_participants",
    "no_within_variation",
    "no_between_variation",
    "not_converged",
    "fit_failed",
    "no_trial",
    "empty_arm",
    "unadjusted",
    "no_engagement",
]
"""Coded messages; a row's ``message`` joins the codes that apply with ``;``."""


@dataclass(frozen=True)
class DivergenceConfig:
    """Options of :func:`fit_divergence`.

    Attributes
    ----------
    engagement_metric
        Feature used as engagement (default ``active_days`` in the window before the
        response; units of every engagement coefficient are units of this feature).
    control_arm, treatment_arm
        Arm labels of a trial; when either is ``None`` no treatment effects are estimated
        (``no_trial``) and "engagement rises" means a positive engagement time trend.
    final_wave
        Wave at which treatment effects are estimated (default: the largest wave).
    baseline_wave
        Wave of the ANCOVA baseline covariate (default 0).
    alpha
        1 - confidence level of every interval (default 0.05: 95 % intervals).
    robust_se
        Covariance of the OLS treatment-effect fits (default HC2).
    adjust_for_wave
        Add wave fixed effects to the within/between model so that a shared time trend in
        engagement and wellbeing is not read as a within-person association (default True).
    min_participants
        Fewer participants with data for a scale give ``too_few_participants`` (default 10).
    reml
        REML (default) or ML for the mixed models.
    """

    engagement_metric: EngagementMetric = "active_days"
    control_arm: str | None = None
    treatment_arm: str | None = None
    final_wave: int | None = None
    baseline_wave: int = 0
    alpha: float = 0.05
    robust_se: RobustSE = "HC2"
    adjust_for_wave: bool = True
    min_participants: int = 10
    reml: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must lie in (0, 1)")
        if self.min_participants < 3:
            raise ValueError("min_participants must be >= 3")
        if (self.control_arm is None) != (self.treatment_arm is None):
            raise ValueError("give both control_arm and treatment_arm, or neither")
        if self.control_arm is not None and self.control_arm == self.treatment_arm:
            raise ValueError("control_arm and treatment_arm must differ")

    @property
    def is_trial(self) -> bool:
        """Whether arms are configured, so treatment effects are estimated."""
        return self.control_arm is not None


@dataclass(frozen=True)
class EffectEstimate:
    """One coefficient with its standard error and a two-sided ``1 - alpha`` interval."""

    estimate: float
    std_error: float
    ci_low: float
    ci_high: float
    df: float
    n: int

    @property
    def above_zero(self) -> bool:
        """Whether the whole interval lies above 0."""
        return bool(self.ci_low > 0)

    @property
    def below_zero(self) -> bool:
        """Whether the whole interval lies below 0."""
        return bool(self.ci_high < 0)


def _interval(est: float, se: float, df: float, alpha: float, n: int) -> EffectEstimate:
    q = (
        float(stats.t.ppf(1 - alpha / 2, df))
        if np.isfinite(df)
        else float(stats.norm.ppf(1 - alpha / 2))
    )
    est, se = float(est), float(se)
    return EffectEstimate(est, se, est - q * se, est + q * se, float(df), int(n))


# --------------------------------------------------------------------------------------
# estimators
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WithinBetweenFit:
    """Within- and between-person coefficients of one hybrid mixed model."""

    within: EffectEstimate | None
    between: EffectEstimate | None
    var_intercept: float
    var_residual: float
    n_participants: int
    n_observations: int
    codes: tuple[str, ...]


def _lme4_cov(x: np.ndarray, groups: np.ndarray, tau2: float, sigma2: float) -> np.ndarray:
    """``(X' V^-1 X)^-1`` for a random-intercept model, using the closed form of ``V_i^-1``.

    ``V_i = sigma2 I + tau2 J`` has inverse ``(I - c_i J) / sigma2`` with
    ``c_i = tau2 / (sigma2 + n_i tau2)``, so ``X'V^-1X = (X'X - sum_i c_i s_i s_i') / sigma2``
    where ``s_i`` are the column sums of participant i's rows.
    """
    _, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    sums = np.zeros((counts.size, x.shape[1]))
    np.add.at(sums, inv, x)
    c = tau2 / (sigma2 + counts * tau2)
    info = (x.T @ x - (sums * c[:, None]).T @ sums) / sigma2
    return np.linalg.inv(info)


@dataclass(frozen=True)
class RandomInterceptFit:
    """REML (or ML) fit of ``y = X beta + u_group + e`` with ``u ~ N(0, tau^2)``."""

    beta: np.ndarray
    var_intercept: float
    var_residual: float
    converged: bool


def fit_random_intercept(
    y: np.ndarray, x: np.ndarray, groups: np.ndarray, *, reml: bool = True
) -> RandomInterceptFit:
    """Fit a random-intercept linear mixed model by profiling the likelihood in closed form.

    With ``lam = tau^2 / sigma^2`` each group's covariance is ``sigma^2 (I + lam J)``, whose
    inverse is ``(I - c_i J) / sigma^2`` with ``c_i = lam / (1 + n_i lam)`` and whose
    determinant is ``sigma^(2 n_i) (1 + n_i lam)``. So, from per-group sums of ``X`` and
    ``y`` computed once, ``A = X'X - sum c_i s_i s_i'``, ``b = X'y - sum c_i s_i t_i``,
    ``beta = A^-1 b`` and ``RSS = y'y - sum c_i t_i^2 - b' beta`` cost O(groups) per
    ``lam``; ``sigma^2`` profiles out as ``RSS / (N - p)`` (REML) or ``RSS / N`` (ML), and

        -2 log L_REML(lam) = (N - p) log(RSS / (N - p)) + sum log(1 + n_i lam) + log |A|

    (Harville 1977, JASA 72:320-338; Bates et al. 2015, J Stat Softw 67(1), section 3) is
    minimised over ``log lam`` by a bounded scalar search, and compared with the boundary
    ``lam = 0``. This is the model statsmodels' ``MixedLM`` and lme4's ``lmer`` fit with
    ``(1 | group)``; the tests check both. It replaces a general ``MixedLM`` fit here, whose
    multi-dimensional optimiser took most of a second per scale for the same 1-D problem.
    """
    from scipy.optimize import minimize_scalar

    _, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    n_obs, p = x.shape
    m = counts.size
    sx = np.zeros((m, p))
    np.add.at(sx, inv, x)
    ty = np.bincount(inv, weights=y, minlength=m)
    xtx, xty, yty = x.T @ x, x.T @ y, float(y @ y)
    dof = n_obs - p if reml else n_obs

    def parts(lam: float) -> tuple[float, np.ndarray, float]:
        c = lam / (1.0 + counts * lam)
        a = xtx - (sx * c[:, None]).T @ sx
        b = xty - sx.T @ (c * ty)
        beta = np.linalg.solve(a, b)
        rss = yty - float(c @ ty**2) - float(b @ beta)
        return max(rss, 1e-300), beta, float(np.linalg.slogdet(a)[1])

    def deviance(log_lam: float) -> float:
        lam = float(np.exp(log_lam)) if np.isfinite(log_lam) else 0.0
        rss, _, logdet_a = parts(lam)
        dev = dof * np.log(rss / dof) + float(np.log1p(counts * lam).sum())
        return dev + logdet_a if reml else dev

    opt = minimize_scalar(deviance, bounds=(-25.0, 15.0), method="bounded",
                          options={"xatol": 1e-10})
    lam = float(np.exp(opt.x))
    if deviance(-np.inf) <= opt.fun:
        lam = 0.0
    rss, beta, _ = parts(lam)
    sigma2 = rss / dof
    return RandomInterceptFit(
        beta=beta,
        var_intercept=lam * sigma2,
        var_residual=sigma2,
        converged=bool(opt.success) and opt.x < 15.0 - 1e-6,
    )


def fit_within_between(
    frame: pl.DataFrame,
    *,
    outcome: str = "score",
    exposure: str = "engagement",
    group: str = "participant_id",
    wave: str | None = "wave",
    alpha: float = 0.05,
    reml: bool = True,
    min_participants: int = 10,
) -> WithinBetweenFit:
    """Fit the within/between hybrid mixed model of ``outcome`` on ``exposure``.

    Parameters
    ----------
    frame
        Long data, one row per participant × occasion, with ``outcome``, ``exposure``,
        ``group`` and (when ``wave`` is not ``None``) ``wave``. Rows with a null outcome or
        exposure are dropped.
    outcome, exposure, group, wave
        Column names; ``wave=None`` omits the wave fixed effects.
    alpha
        1 - confidence level of the intervals.
    reml
        REML (default) or ML.
    min_participants
        Fewer participants give a result with code ``too_few_participants`` and no fit.

    Returns
    -------
    WithinBetweenFit
        ``within`` is the change in outcome per unit of exposure above the participant's own
        mean; ``between`` the difference in outcome per unit of a participant's mean
        exposure. Either is ``None`` when the data carry no variation for it
        (``no_within_variation`` / ``no_between_variation``).
    """
    cols = [outcome, exposure, group] + ([wave] if wave else [])
    d = (
        frame.select(cols)
        .drop_nulls()
        .filter(pl.col(outcome).is_finite() & pl.col(exposure).cast(pl.Float64).is_finite())
    )
    d = d.with_columns(pl.col(exposure).cast(pl.Float64).mean().over(group).alias("_xbar"))
    d = d.with_columns((pl.col(exposure) - pl.col("_xbar")).alias("_xw")).sort(group)
    n_groups = d[group].n_unique()
    codes: list[str] = []
    if n_groups < min_participants:
        return WithinBetweenFit(
            None, None, np.nan, np.nan, n_groups, d.height, ("too_few_participants",)
        )
    y = d[outcome].cast(pl.Float64).to_numpy()
    xw = d["_xw"].to_numpy()
    xb = d["_xbar"].to_numpy()
    scale_x = max(float(np.std(d[exposure].cast(pl.Float64).to_numpy())), 1e-12)
    has_within = float(np.std(xw)) > 1e-9 * scale_x
    has_between = float(np.std(xb)) > 1e-9 * scale_x
    columns = [np.ones_like(y)]
    within_terms = 0
    i_w = i_b = None
    if has_within:
        i_w = len(columns)
        columns.append(xw)
        within_terms += 1
    else:
        codes.append("no_within_variation")
    if has_between:
        i_b = len(columns)
        columns.append(xb)
    else:
        codes.append("no_between_variation")
    if wave:
        levels = d[wave].unique().sort().to_list()
        for lev in levels[1:]:
            dummy = (d[wave] == lev).cast(pl.Float64).to_numpy()
            columns.append(dummy)
            within_terms += 1
    x = np.column_stack(columns)
    # a design without full rank (e.g. engagement constant within each wave) cannot be fitted
    if np.linalg.matrix_rank(x) < x.shape[1]:
        return WithinBetweenFit(
            None, None, np.nan, np.nan, n_groups, d.height, (*codes, "fit_failed")
        )
    groups = d[group].to_numpy()
    # conditioning: standardise the outcome and centre the between column (slopes are
    # unchanged up to the outcome scale, which is undone below)
    y_mu, y_sd = float(np.mean(y)), float(np.std(y)) or 1.0
    xc = x.copy()
    if i_b is not None:
        xc[:, i_b] = xc[:, i_b] - xc[:, i_b].mean()
    fit = fit_random_intercept((y - y_mu) / y_sd, xc, groups, reml=reml)
    if not fit.converged:
        codes.append("not_converged")
    tau2 = fit.var_intercept * y_sd**2
    sigma2 = fit.var_residual * y_sd**2
    cov = _lme4_cov(xc, groups, max(tau2, 0.0), sigma2)
    se = np.sqrt(np.diag(cov))
    beta = fit.beta * y_sd
    n_obs = d.height
    p_between = 1 + (1 if has_between else 0)
    within = between = None
    if i_w is not None:
        within = _interval(beta[i_w], se[i_w], n_obs - n_groups - within_terms, alpha, n_obs)
    if i_b is not None:
        between = _interval(beta[i_b], se[i_b], n_groups - p_between, alpha, n_groups)
    return WithinBetweenFit(within, between, tau2, sigma2, n_groups, n_obs, tuple(codes) or ("ok",))


def fit_treatment_effect(
    frame: pl.DataFrame,
    *,
    outcome: str,
    treated: str = "treated",
    covariate: str | None = None,
    alpha: float = 0.05,
    robust_se: RobustSE = "HC2",
) -> tuple[EffectEstimate | None, tuple[str, ...]]:
    """Estimate a treatment effect by OLS (ANCOVA when ``covariate`` is given), robust SE.

    Parameters
    ----------
    frame
        One row per participant: ``outcome`` (float), ``treated`` (0/1) and optionally
        ``covariate`` (the baseline value). Rows with nulls in these columns are dropped
        (complete cases).
    outcome, treated, covariate
        Column names. A covariate without variation is left out (code ``unadjusted``).
    alpha
        1 - confidence level.
    robust_se
        Heteroscedasticity-consistent covariance type (statsmodels ``cov_type``).

    Returns
    -------
    (EffectEstimate | None, codes)
        The coefficient of ``treated`` (treatment minus control, in outcome units) with a
        t interval on the residual df; ``None`` with ``empty_arm`` when an arm has fewer
        than 2 participants.
    """
    cols = [outcome, treated] + ([covariate] if covariate else [])
    d = frame.select(cols).drop_nulls()
    n1 = int(d[treated].sum()) if d.height else 0
    n0 = d.height - n1
    if n1 < 2 or n0 < 2:
        return None, ("empty_arm",)
    codes: list[str] = []
    y = d[outcome].cast(pl.Float64).to_numpy()
    columns = [np.ones(d.height), d[treated].cast(pl.Float64).to_numpy()]
    if covariate:
        cov = d[covariate].cast(pl.Float64).to_numpy()
        if np.std(cov) > 0:
            columns.append(cov)
        else:
            codes.append("unadjusted")
    x = np.column_stack(columns)
    res = OLS(y, x).fit(cov_type=robust_se)
    se = float(np.sqrt(res.cov_params()[1, 1]))
    est = _interval(float(res.params[1]), se, float(res.df_resid), alpha, d.height)
    return est, tuple(codes)


# --------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleDivergence:
    """Divergence analysis of one wellbeing scale."""

    instrument: str
    scale: str
    n_participants: int
    n_observations: int
    within: EffectEstimate | None
    between: EffectEstimate | None
    effect_scale: EffectEstimate | None
    flag: bool
    flag_reason: FlagReason
    explanation: str
    message: str


@dataclass(frozen=True)
class DivergenceResult:
    """Result of :func:`fit_divergence`.

    Attributes
    ----------
    scales
        One :class:`ScaleDivergence` per instrument × scale.
    engagement
        The analysed engagement: ``participant_id, arm, wave`` and the engagement features.
    effect_engagement
        Treatment effect on engagement at the final wave (``None`` without a trial).
    engagement_trend
        Change in engagement per wave (random-intercept model on wave as a number).
    engagement_rises
        The "engagement rises" condition used by the flags.
    config
        The configuration used.
    message
        Codes for the analysis as a whole (``;``-joined), e.g. ``no_trial``.
    """

    scales: tuple[ScaleDivergence, ...]
    engagement: pl.DataFrame
    effect_engagement: EffectEstimate | None
    engagement_trend: EffectEstimate | None
    engagement_rises: bool
    config: DivergenceConfig = field(default_factory=DivergenceConfig)
    message: str = "ok"

    def engagement_frame(self) -> pl.DataFrame:
        """Participant × wave engagement with arm (``engagement.parquet``)."""
        return self.engagement

    def divergence_frame(self) -> pl.DataFrame:
        """One row per scale (``divergence.parquet``): estimates, intervals, flag, words."""
        rows = []
        for s in self.scales:
            row: dict[str, object] = {
                "instrument": s.instrument,
                "scale": s.scale,
                "engagement_metric": self.config.engagement_metric,
                "n_participants": s.n_participants,
                "n_observations": s.n_observations,
            }
            for prefix, est in (
                ("within", s.within),
                ("between", s.between),
                ("effect_engagement", self.effect_engagement),
                ("effect_scale", s.effect_scale),
                ("engagement_trend", self.engagement_trend),
            ):
                row[f"{prefix}_estimate"] = None if est is None else est.estimate
                row[f"{prefix}_se"] = None if est is None else est.std_error
                row[f"{prefix}_ci_low"] = None if est is None else est.ci_low
                row[f"{prefix}_ci_high"] = None if est is None else est.ci_high
            row |= {
                "confidence": 1 - self.config.alpha,
                "flag": s.flag,
                "flag_reason": s.flag_reason,
                "explanation": s.explanation,
                "message": s.message,
            }
            rows.append(row)
        schema = {
            "instrument": pl.String,
            "scale": pl.String,
            "engagement_metric": pl.String,
            "n_participants": pl.Int64,
            "n_observations": pl.Int64,
        }
        for prefix in (
            "within",
            "between",
            "effect_engagement",
            "effect_scale",
            "engagement_trend",
        ):
            for suffix in ("estimate", "se", "ci_low", "ci_high"):
                schema[f"{prefix}_{suffix}"] = pl.Float64
        schema |= {
            "confidence": pl.Float64,
            "flag": pl.Boolean,
            "flag_reason": pl.String,
            "explanation": pl.String,
            "message": pl.String,
        }
        return (
            pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
        )

    def to_frame(self) -> pl.DataFrame:
        """Same as :meth:`divergence_frame`."""
        return self.divergence_frame()


def _fmt(e: EffectEstimate, conf: float) -> str:
    return f"{e.estimate:+.3g} ({conf:.0%} CI {e.ci_low:+.3g} to {e.ci_high:+.3g})"


def _explain(
    label: str,
    final_wave: int,
    metric: str,
    cfg: DivergenceConfig,
    within: EffectEstimate | None,
    between: EffectEstimate | None,
    eff_eng: EffectEstimate | None,
    eff_y: EffectEstimate | None,
    trend: EffectEstimate | None,
    reason: FlagReason,
) -> str:
    conf = 1 - cfg.alpha
    parts: list[str] = []
    if reason in ("trial", "both") and eff_eng and eff_y:
        parts.append(
            f"Divergence: the treatment raises {metric} (effect {_fmt(eff_eng, conf)}) but "
            f"lowers {label} (effect {_fmt(eff_y, conf)}) at wave {final_wave}."
        )
    if reason in ("within_person", "both") and within:
        rise = (
            f"the treatment raises {metric} ({_fmt(eff_eng, conf)})"
            if cfg.is_trial and eff_eng
            else f"{metric} rises over waves ({_fmt(trend, conf)} per wave)"
            if trend
            else ""
        )
        parts.append(
            f"Divergence: {rise}, while within a person each extra unit of {metric} above "
            f"their usual level goes with {label} changing by {_fmt(within, conf)}."
        )
    if reason == "none":
        parts.append(f"No divergence flagged for {label}.")
    if within is not None:
        parts.append(f"Within-person: {_fmt(within, conf)} per unit of {metric} above own mean.")
    if between is not None:
        parts.append(f"Between-person: {_fmt(between, conf)} per unit of mean {metric}.")
    if eff_y is not None:
        parts.append(f"Treatment effect on {label}: {_fmt(eff_y, conf)}.")
    return " ".join(parts)


def fit_divergence(
    panel: pl.DataFrame, features: pl.DataFrame, config: DivergenceConfig | None = None
) -> DivergenceResult:
    """Compare engagement with every wellbeing scale and flag divergence.

    Parameters
    ----------
    panel
        Scores with arm: ``participant_id, arm, wave, instrument, scale, score`` (extra
        columns are ignored). One row per participant × wave × scale.
    features
        Engagement features per ``participant_id, wave`` (``EngagementFeatures.features``),
        containing the configured ``engagement_metric`` column.
    config
        :class:`DivergenceConfig`; defaults apply when ``None``.

    Returns
    -------
    DivergenceResult
        Per-scale within/between associations, treatment effects, flags and explanations;
        expected problems (too few participants, no variation, an empty arm, no trial) are
        coded in ``message`` instead of raised.

    Notes
    -----
    The flag rules are in the module docstring. Engagement is the feature of the window
    before each wave's response, so the within-person association is concurrent (same
    wave); it is an association, not a causal effect of use on wellbeing.
    """
    cfg = config or DivergenceConfig()
    metric = cfg.engagement_metric
    need_panel = {"participant_id", "arm", "wave", "instrument", "scale", "score"}
    if not need_panel <= set(panel.columns):
        raise ValueError(f"panel needs columns {sorted(need_panel)}")
    if not {"participant_id", "wave", metric} <= set(features.columns):
        raise ValueError(f"features need participant_id, wave and '{metric}'")

    arms = panel.select("participant_id", "arm").unique("participant_id")
    feat_cols = [c for c in features.columns if c not in ("participant_id", "wave")]
    eng = (
        features.with_columns(
            pl.col("participant_id").cast(pl.String), pl.col("wave").cast(pl.Int32)
        )
        .join(arms, on="participant_id", how="left")
        .select("participant_id", "arm", "wave", *feat_cols)
        .sort("participant_id", "wave")
    )
    final_wave = cfg.final_wave if cfg.final_wave is not None else panel["wave"].max()
    global_codes: list[str] = []
    if eng[metric].drop_nulls().len() == 0:
        global_codes.append("no_engagement")

    # engagement trend over waves (random intercept, wave as a number)
    trend_fit = fit_within_between(
        eng.select(
            "participant_id",
            pl.col("wave").cast(pl.Float64).alias("w"),
            pl.col(metric).cast(pl.Float64).alias("y"),
        ),
        outcome="y",
        exposure="w",
        wave=None,
        alpha=cfg.alpha,
        reml=cfg.reml,
        min_participants=cfg.min_participants,
    )
    # with wave as exposure the within coefficient is the per-wave change within a person
    trend = trend_fit.within

    effect_eng: EffectEstimate | None = None
    eng_codes: tuple[str, ...] = ()
    if cfg.is_trial:
        trial = eng.filter(pl.col("arm").is_in([cfg.control_arm, cfg.treatment_arm]))
        base = trial.filter(pl.col("wave") == cfg.baseline_wave).select(
            "participant_id", pl.col(metric).cast(pl.Float64).alias("baseline")
        )
        fin = trial.filter(pl.col("wave") == final_wave).select(
            "participant_id",
            (pl.col("arm") == cfg.treatment_arm).cast(pl.Int8).alias("treated"),
            pl.col(metric).cast(pl.Float64).alias("y"),
        )
        effect_eng, eng_codes = fit_treatment_effect(
            fin.join(base, on="participant_id", how="left"),
            outcome="y",
            covariate="baseline" if cfg.baseline_wave != final_wave else None,
            alpha=cfg.alpha,
            robust_se=cfg.robust_se,
        )
        if effect_eng is None:
            global_codes.extend(eng_codes)
        rises = bool(effect_eng is not None and effect_eng.above_zero)
    else:
        global_codes.append("no_trial")
        rises = bool(trend is not None and trend.above_zero)

    scores = panel.select(
        pl.col("participant_id").cast(pl.String),
        "arm",
        pl.col("wave").cast(pl.Int32),
        "instrument",
        "scale",
        pl.col("score").cast(pl.Float64),
    )
    joined = scores.join(
        eng.select("participant_id", "wave", pl.col(metric).cast(pl.Float64).alias("engagement")),
        on=["participant_id", "wave"],
        how="left",
    )
    results: list[ScaleDivergence] = []
    keys = joined.select("instrument", "scale").unique().sort("instrument", "scale")
    for instrument, scale in keys.iter_rows():
        d = joined.filter((pl.col("instrument") == instrument) & (pl.col("scale") == scale))
        wb = fit_within_between(
            d,
            outcome="score",
            exposure="engagement",
            wave="wave" if cfg.adjust_for_wave else None,
            alpha=cfg.alpha,
            reml=cfg.reml,
            min_participants=cfg.min_participants,
        )
        codes = [c for c in wb.codes if c != "ok"]
        eff_y = None
        if cfg.is_trial:
            t = d.filter(pl.col("arm").is_in([cfg.control_arm, cfg.treatment_arm]))
            base = t.filter(pl.col("wave") == cfg.baseline_wave).select(
                "participant_id", pl.col("score").alias("baseline")
            )
            fin = t.filter(pl.col("wave") == final_wave).select(
                "participant_id",
                (pl.col("arm") == cfg.treatment_arm).cast(pl.Int8).alias("treated"),
                pl.col("score").alias("y"),
            )
            eff_y, c_y = fit_treatment_effect(
                fin.join(base, on="participant_id", how="left"),
                outcome="y",
                covariate="baseline" if cfg.baseline_wave != final_wave else None,
                alpha=cfg.alpha,
                robust_se=cfg.robust_se,
            )
            codes.extend(c_y)
        trial_flag = bool(
            cfg.is_trial
            and effect_eng is not None
            and eff_y is not None
            and effect_eng.above_zero
            and eff_y.below_zero
        )
        within_flag = bool(rises and wb.within is not None and wb.within.below_zero)
        reason: FlagReason = (
            "both"
            if trial_flag and within_flag
            else "trial"
            if trial_flag
            else "within_person"
            if within_flag
            else "none"
        )
        label = f"{instrument}.{scale}"
        results.append(
            ScaleDivergence(
                instrument=instrument,
                scale=scale,
                n_participants=wb.n_participants,
                n_observations=wb.n_observations,
                within=wb.within,
                between=wb.between,
                effect_scale=eff_y,
                flag=trial_flag or within_flag,
                flag_reason=reason,
                explanation=_explain(
                    label,
                    int(final_wave),
                    metric,
                    cfg,
                    wb.within,
                    wb.between,
                    effect_eng,
                    eff_y,
                    trend,
                    reason,
                ),
                message=";".join(dict.fromkeys(codes + global_codes)) or "ok",
            )
        )
    return DivergenceResult(
        scales=tuple(results),
        engagement=eng,
        effect_engagement=effect_eng,
        engagement_trend=trend,
        engagement_rises=rises,
        config=cfg,
        message=";".join(dict.fromkeys(global_codes)) or "ok",
    )
