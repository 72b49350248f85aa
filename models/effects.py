"""Trial effect models: ANCOVA (CUPED), growth mixed models, SRM, attrition, multiplicity.

Pure functions on polars frames. The input is the *panel* table of docs/contracts.md
(``participant_id, arm, wave, instrument, scale, score`` + covariates, optional cluster and
``baseline``). :func:`fit_trial_effects` runs every hypothesis of an analysis plan, adds an
exploratory ANCOVA for every other scale in the panel (effects per domain, never only a
composite), adjusts p-values within each family and flags harm.

References
----------
Deng A., Xu Y., Kohavi R., Walker T. (2013) Improving the sensitivity of online controlled
experiments by utilizing pre-experiment data (CUPED). WSDM.
Senn S. (2006) Change from baseline and analysis of covariance revisited. Stat Med 25:4334.
MacKinnon J.G., White H. (1985) Some heteroskedasticity-consistent covariance matrix
estimators with improved finite sample properties. J Econometrics 29:305-325 (HC1, HC3).
Cameron A.C., Miller D.L. (2015) A practitioner's guide to cluster-robust inference.
J Human Resources 50:317-372.
Holm S. (1979) Scand J Stat 6:65-70; Hochberg Y. (1988) Biometrika 75:800-802;
Benjamini Y., Hochberg Y. (1995) JRSS B 57:289-300.
Kohavi R. et al. (2020) Trustworthy Online Controlled Experiments, ch. 21 (sample ratio
mismatch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
from scipy import stats

from models.mixed import MixedModelConfig, fit_mixed_model
from models.plan import AnalysisPlan, HypothesisSpec, PlanStatus

CovType = Literal["HC1", "HC3"]
MultiplicityMethod = Literal["holm", "hochberg", "bh", "none"]
Sided = Literal["two", "one"]
Direction = Literal["higher_is_better", "lower_is_better"]
Flag = Literal["harm", "guardrail_harm"]
MissingData = Literal["complete_case", "baseline_mean_imputation"]

EFFECT_COLUMNS: tuple[str, ...] = (
    "hypothesis",
    "instrument",
    "scale",
    "method",
    "estimand",
    "estimate",
    "std_error",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "role",
    "family",
    "plan_sha256",
    "plan_status",
    "n",
    "flag",
    "message",
)

EFFECT_SCHEMA: dict[str, pl.DataType] = {
    "hypothesis": pl.String(),
    "instrument": pl.String(),
    "scale": pl.String(),
    "method": pl.String(),
    "estimand": pl.String(),
    "estimate": pl.Float64(),
    "std_error": pl.Float64(),
    "ci_low": pl.Float64(),
    "ci_high": pl.Float64(),
    "p_value": pl.Float64(),
    "p_adjusted": pl.Float64(),
    "role": pl.String(),
    "family": pl.String(),
    "plan_sha256": pl.String(),
    "plan_status": pl.String(),
    "n": pl.Int64(),
    "flag": pl.String(),
    "message": pl.String(),
}


# --------------------------------------------------------------------------------------
# Robust OLS core
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RobustOLS:
    """OLS coefficients with a robust covariance matrix and the df used for t tests."""

    params: np.ndarray
    cov: np.ndarray
    df: float
    n: int
    message: str = "ok"

    @property
    def bse(self) -> np.ndarray:
        """Robust standard errors."""
        return np.sqrt(np.diag(self.cov))


def fit_robust_ols(
    y: np.ndarray,
    x: np.ndarray,
    *,
    cov_type: CovType = "HC1",
    groups: np.ndarray | None = None,
) -> RobustOLS:
    """OLS with a heteroskedasticity- or cluster-robust sandwich covariance, in closed form.

    ``beta = (X'X)^-1 X'y``; the sandwich is ``(X'X)^-1 B (X'X)^-1`` with

    - HC1: ``B = sum e_i^2 x_i x_i'`` times ``n / (n - k)``;
    - HC3: ``B = sum (e_i / (1 - h_ii))^2 x_i x_i'``;
    - cluster (``groups`` given; overrides ``cov_type``): ``B = sum_g s_g s_g'`` with
      ``s_g = sum_{i in g} e_i x_i``, times ``G/(G-1) * (n-1)/(n-k)`` (Stata's CR1, the
      statsmodels default).

    The same numbers as ``statsmodels`` ``OLS(y, X).fit(cov_type=...)``, without its overhead
    (the tests check agreement). Degrees of freedom: ``n - k``, or ``G - 1`` with clusters
    (Cameron & Miller 2015, section VI.C).

    Parameters
    ----------
    y
        Outcome, shape (n,).
    x
        Design matrix (n, k), including the intercept column.
    cov_type
        ``HC1`` or ``HC3``.
    groups
        Integer cluster codes 0..G-1 per row, or None.

    Returns
    -------
    RobustOLS
        ``message`` is ``singular_design`` (collinear X, e.g. an empty arm),
        ``too_few_observations``, ``too_few_clusters`` or ``leverage_one`` (HC3 undefined);
        then params/cov are NaN.
    """
    n, k = x.shape
    nan = RobustOLS(np.full(k, np.nan), np.full((k, k), np.nan), float("nan"), n)
    if n <= k:
        return RobustOLS(nan.params, nan.cov, nan.df, n, "too_few_observations")
    xtx = x.T @ x
    scale = np.sqrt(np.diag(xtx))
    if np.any(scale == 0):
        return RobustOLS(nan.params, nan.cov, nan.df, n, "singular_design")
    corr = xtx / np.outer(scale, scale)
    if np.linalg.cond(corr) > 1e12:
        return RobustOLS(nan.params, nan.cov, nan.df, n, "singular_design")
    bread = np.linalg.inv(xtx)
    beta = bread @ (x.T @ y)
    resid = y - x @ beta
    if groups is not None:
        n_groups = int(groups.max()) + 1
        if n_groups < 2:
            return RobustOLS(nan.params, nan.cov, nan.df, n, "too_few_clusters")
        scores = np.empty((n_groups, k))
        for j in range(k):  # k columns, not rows: bincount sums each column by cluster
            scores[:, j] = np.bincount(groups, weights=x[:, j] * resid, minlength=n_groups)
        meat = scores.T @ scores
        meat *= n_groups / (n_groups - 1) * (n - 1) / (n - k)
        df = float(n_groups - 1)
    elif cov_type == "HC3":
        lev = np.einsum("ij,jk,ik->i", x, bread, x)
        if np.any(lev > 1 - 1e-10):
            return RobustOLS(nan.params, nan.cov, nan.df, n, "leverage_one")
        u = x * (resid / (1.0 - lev))[:, None]
        meat = u.T @ u
        df = float(n - k)
    else:
        u = x * resid[:, None]
        meat = (u.T @ u) * (n / (n - k))
        df = float(n - k)
    cov = bread @ meat @ bread
    return RobustOLS(beta, cov, df, n)


# --------------------------------------------------------------------------------------
# Inference helpers
# --------------------------------------------------------------------------------------


def _sign(direction: Direction) -> float:
    return 1.0 if direction == "higher_is_better" else -1.0


def _inference(
    estimate: float, se: float, df: float, alpha: float, sided: Sided, direction: Direction
) -> tuple[float, float, float, float]:
    """Return (p_value, ci_low, ci_high, p_two_sided).

    Two-sided: ``p = 2 P(T > |t|)`` and a ``1 - alpha`` CI. One-sided (in the beneficial
    direction): ``p = P(T > s t)`` with the matching two-sided ``1 - 2 alpha`` CI, whose
    beneficial-side bound excludes zero exactly when the one-sided test rejects.
    """
    t = estimate / se
    p_two = float(2.0 * stats.t.sf(abs(t), df))
    if sided == "two":
        q = stats.t.ppf(1.0 - alpha / 2.0, df)
        p = p_two
    else:
        q = stats.t.ppf(1.0 - alpha, df)
        p = float(stats.t.sf(_sign(direction) * t, df))
    return p, estimate - q * se, estimate + q * se, p_two


# --------------------------------------------------------------------------------------
# ANCOVA
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AncovaConfig:
    """Options of :func:`fit_ancova`.

    ``covariates`` are participant-level columns (numeric used as is, text one-hot coded
    with the first level dropped); ``cluster`` names a cluster column for cluster-robust SEs.
    """

    control_arm: str = "control"
    treatment_arm: str = "treatment"
    outcome: str = "score"
    baseline: str = "baseline"
    covariates: tuple[str, ...] = ()
    cluster: str | None = None
    cov_type: CovType = "HC1"
    alpha: float = 0.05
    sided: Sided = "two"
    direction: Direction = "higher_is_better"
    missing_data: MissingData = "complete_case"


@dataclass(frozen=True)
class AncovaResult:
    """Treatment effect (treatment - control) on the outcome adjusted for baseline."""

    estimate: float
    std_error: float
    ci_low: float
    ci_high: float
    p_value: float
    p_two_sided: float
    df: float
    n: int
    n_treatment: int
    n_control: int
    cov_type: str
    message: str = "ok"

    def to_frame(self) -> pl.DataFrame:
        """One-row frame of the fields."""
        return pl.DataFrame([self.__dict__])


def _nan_ancova(n: int, nt: int, nc: int, cov_type: str, message: str) -> AncovaResult:
    nan = float("nan")
    return AncovaResult(nan, nan, nan, nan, nan, nan, nan, n, nt, nc, cov_type, message)


def fit_ancova(data: pl.DataFrame, config: AncovaConfig) -> AncovaResult:
    """ANCOVA of the follow-up outcome on arm adjusted for baseline (regression CUPED).

    ``y_i = b0 + tau * treat_i + b1 * baseline_i + gamma' z_i + e_i``; ``tau`` estimates the
    difference in mean outcome, treatment minus control, in the outcome's units. Adjusting
    for baseline removes the share ``rho^2`` of the outcome variance (Senn 2006; Deng et al.
    2013), and robust SEs keep the test valid under heteroskedasticity and unequal arms.

    Parameters
    ----------
    data
        One row per participant: arm, outcome, baseline, covariates, optional cluster.
        Arms other than the two compared are ignored.
    config
        See :class:`AncovaConfig`.

    Returns
    -------
    AncovaResult
        Coded ``message`` for edge cases: ``no_data``, ``empty_arm``, ``missing_column:<name>``,
        ``zero_variance``, ``singular_design``, ``too_few_observations``,
        ``too_few_clusters``, ``leverage_one``.
    """
    cov_label = "cluster" if config.cluster else config.cov_type
    needed = ["arm", config.outcome, config.baseline, *config.covariates]
    if config.cluster:
        needed.append(config.cluster)
    missing = [c for c in needed if c not in data.columns]
    if missing:
        return _nan_ancova(0, 0, 0, cov_label, f"missing_column:{missing[0]}")
    frame = data.select(needed).filter(
        pl.col("arm").is_in([config.control_arm, config.treatment_arm])
        & pl.col(config.outcome).is_not_null()
        & pl.col(config.outcome).is_not_nan()
    )
    if config.missing_data == "baseline_mean_imputation":
        base = pl.col(config.baseline)
        frame = frame.with_columns(
            pl.when(base.is_null() | base.is_nan()).then(base.mean()).otherwise(base)
            .alias(config.baseline)
        )
    frame = frame.drop_nulls()
    treat = (frame.get_column("arm") == config.treatment_arm).to_numpy().astype(np.float64)
    n = frame.height
    nt = int(treat.sum())
    nc = n - nt
    if n == 0:
        return _nan_ancova(0, 0, 0, cov_label, "no_data")
    if nt == 0 or nc == 0:
        return _nan_ancova(n, nt, nc, cov_label, "empty_arm")
    y = frame.get_column(config.outcome).cast(pl.Float64).to_numpy()
    columns = [np.ones(n), treat, frame.get_column(config.baseline).cast(pl.Float64).to_numpy()]
    if config.covariates:
        cov_frame = frame.select(config.covariates)
        text = [c for c, t in cov_frame.schema.items() if not t.is_numeric()]
        if text:
            cov_frame = cov_frame.to_dummies(text, drop_first=True)
        columns.extend(cov_frame.cast(pl.Float64).to_numpy().T)
    x = np.column_stack(columns)
    if np.ptp(y) == 0:
        return _nan_ancova(n, nt, nc, cov_label, "zero_variance")
    groups = None
    if config.cluster:
        groups = frame.get_column(config.cluster).rank("dense").cast(pl.Int64).to_numpy() - 1
    fit = fit_robust_ols(y, x, cov_type=config.cov_type, groups=groups)
    if fit.message != "ok":
        return _nan_ancova(n, nt, nc, cov_label, fit.message)
    est = float(fit.params[1])
    se = float(np.sqrt(fit.cov[1, 1]))
    if not se > 0:
        return _nan_ancova(n, nt, nc, cov_label, "zero_variance")
    p, lo, hi, p_two = _inference(est, se, fit.df, config.alpha, config.sided, config.direction)
    return AncovaResult(est, se, lo, hi, p, p_two, fit.df, n, nt, nc, cov_label)


# --------------------------------------------------------------------------------------
# Multiplicity
# --------------------------------------------------------------------------------------


def adjust_pvalues(
    p_values: Sequence[float] | np.ndarray, method: MultiplicityMethod
) -> np.ndarray:
    """Multiplicity-adjusted p-values (family-wise or false discovery rate).

    - ``holm``: step-down, ``p_(i) * (m - i + 1)`` made monotone by a running maximum;
      controls the FWER under any dependence (Holm 1979).
    - ``hochberg``: step-up, ``p_(i) * (m - i + 1)`` made monotone by a running minimum from
      the largest; FWER under independence or positive dependence (Hochberg 1988).
    - ``bh``: step-up ``p_(i) * m / i``; controls the FDR (Benjamini & Hochberg 1995).
    - ``none``: unchanged.

    Adjusted values are capped at 1 and returned in input order; NaN inputs (a hypothesis
    that could not be tested) count as p = 1 in ``m`` and come back NaN, which keeps the
    procedure conservative.

    Examples
    --------
    >>> adjust_pvalues([0.01, 0.04, 0.03], "holm").round(4).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=float)
    if p.size == 0 or method == "none":
        return p.copy()
    missing = np.isnan(p)
    work = np.where(missing, 1.0, p)
    m = work.size
    order = np.argsort(work, kind="stable")
    ranked = work[order]
    i = np.arange(1, m + 1)
    if method == "holm":
        adj = np.maximum.accumulate(ranked * (m - i + 1))
    elif method == "hochberg":
        adj = np.minimum.accumulate((ranked * (m - i + 1))[::-1])[::-1]
    elif method == "bh":
        adj = np.minimum.accumulate((ranked * m / i)[::-1])[::-1]
    else:
        raise ValueError(f"unknown multiplicity method {method!r}")
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    out[missing] = np.nan
    return out


# --------------------------------------------------------------------------------------
# Sample ratio mismatch and attrition
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleRatioResult:
    """Chi-square goodness-of-fit of arm sizes against the planned allocation."""

    arms: tuple[str, ...]
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    df: int
    p_value: float
    flagged: bool
    threshold: float
    message: str = "ok"

    def to_frame(self) -> pl.DataFrame:
        """One row per arm with the test repeated on each row."""
        k = len(self.arms)
        total = sum(self.observed)
        exp_total = sum(self.expected) or 1.0
        return pl.DataFrame(
            {
                "arm": list(self.arms),
                "observed": list(self.observed),
                "expected": list(self.expected),
                "share_observed": [o / total if total else None for o in self.observed],
                "share_planned": [e / exp_total for e in self.expected],
                "chi2": [self.chi2] * k,
                "df": [self.df] * k,
                "p_value": [self.p_value] * k,
                "flagged": [self.flagged] * k,
                "message": [self.message] * k,
            },
            schema_overrides={"share_observed": pl.Float64, "observed": pl.Int64},
        )


def check_sample_ratio(
    participants: pl.DataFrame,
    allocation: Mapping[str, float],
    *,
    threshold: float = 0.001,
    arm_column: str = "arm",
    id_column: str = "participant_id",
) -> SampleRatioResult:
    """Check for sample ratio mismatch (SRM): arm sizes against the planned allocation.

    Pearson chi-square goodness-of-fit of distinct participants per arm against
    ``N * share`` (df = arms - 1); flagged when ``p < threshold`` (0.001 by convention, since
    the check runs on every analysis; Kohavi et al. 2020, ch. 21). An SRM signals broken
    randomisation or differential exposure logging, and the effect estimates should not be
    trusted until it is explained.

    Parameters
    ----------
    participants
        Frame with one or more rows per participant (duplicates are counted once).
    allocation
        Planned arm -> share (or ratio; normalised here).
    threshold
        p-value below which the mismatch is flagged.
    arm_column, id_column
        Column names of the arm and the participant id.

    Returns
    -------
    SampleRatioResult
        ``message``: ``ok``, ``no_participants`` or ``unplanned_arm:<arm>`` (an arm with
        participants but no planned share: flagged, p = 0).
    """
    total_share = float(sum(allocation.values()))
    if total_share <= 0 or any(v < 0 for v in allocation.values()):
        raise ValueError("allocation shares must be non-negative with a positive sum")
    counts = participants.group_by(arm_column).agg(pl.col(id_column).n_unique().alias("n"))
    observed_map = dict(
        zip(counts.get_column(arm_column).to_list(), counts.get_column("n").to_list(), strict=True)
    )
    arms = tuple(allocation) + tuple(sorted(a for a in observed_map if a not in allocation))
    observed = np.array([observed_map.get(a, 0) for a in arms], dtype=float)
    total = observed.sum()
    shares = np.array([allocation.get(a, 0.0) / total_share for a in arms])
    expected = total * shares
    obs_t = tuple(int(o) for o in observed)
    if total == 0:
        return SampleRatioResult(
            arms, obs_t, tuple(expected), float("nan"), len(arms) - 1, float("nan"), False,
            threshold, "no_participants",
        )
    unplanned = [a for a, s, o in zip(arms, shares, observed, strict=True) if s == 0 and o > 0]
    if unplanned:
        return SampleRatioResult(
            arms, obs_t, tuple(expected), float("inf"), len(arms) - 1, 0.0, True, threshold,
            f"unplanned_arm:{unplanned[0]}",
        )
    keep = shares > 0
    chi2, p = stats.chisquare(observed[keep], expected[keep])
    return SampleRatioResult(
        arms, obs_t, tuple(float(e) for e in expected), float(chi2), int(keep.sum() - 1),
        float(p), bool(p < threshold), threshold,
    )


@dataclass(frozen=True)
class AttritionResult:
    """Retention by arm and wave, and a test of differential attrition at the final wave."""

    table: pl.DataFrame
    final_wave: int | None
    chi2: float
    p_value: float
    retention_difference: float
    flagged: bool
    alpha: float
    message: str = "ok"

    def to_frame(self) -> pl.DataFrame:
        """Arm x wave table: randomised, observed, retention, with the final-wave test."""
        return self.table.with_columns(
            pl.lit(self.final_wave, pl.Int64).alias("final_wave"),
            pl.lit(self.chi2, pl.Float64).alias("chi2"),
            pl.lit(self.p_value, pl.Float64).alias("p_value"),
            pl.lit(self.flagged).alias("flagged"),
            pl.lit(self.message).alias("message"),
        )


def compute_attrition(
    panel: pl.DataFrame,
    *,
    final_wave: int | None = None,
    alpha: float = 0.05,
) -> AttritionResult:
    """Retention per arm and wave and differential attrition between arms.

    A participant is *observed* at a wave when at least one of their scores at that wave is
    not null; the denominator is every participant of the arm in the panel. Differential
    attrition at ``final_wave`` (default: the last wave) is tested with a Pearson chi-square
    test of independence of arm x (retained, lost); flagged when ``p < alpha``. Differential
    attrition breaks randomisation's balance and makes complete-case estimates suspect
    (CONSORT 2010 item 13; What Works Clearinghouse attrition standard).

    Returns
    -------
    AttritionResult
        ``message``: ``ok``, ``empty_panel``, ``single_arm`` or ``no_attrition`` (every
        participant retained: nothing to test, p = 1).
    """
    ids = panel.select("participant_id", "arm").unique()
    randomised = ids.group_by("arm").agg(pl.len().alias("randomised"))
    observed = (
        panel.filter(pl.col("score").is_not_null() & pl.col("score").is_not_nan())
        .select("participant_id", "arm", "wave")
        .unique()
        .group_by("arm", "wave")
        .agg(pl.len().alias("observed"))
    )
    table = (
        observed.join(randomised, on="arm", how="left")
        .with_columns(
            (pl.col("observed") / pl.col("randomised")).alias("retention"),
            pl.col("observed").cast(pl.Int64),
            pl.col("randomised").cast(pl.Int64),
        )
        .select("arm", "wave", "randomised", "observed", "retention")
        .sort("arm", "wave")
    )
    nan = float("nan")
    if table.height == 0:
        return AttritionResult(table, None, nan, nan, nan, False, alpha, "empty_panel")
    wave = int(table.get_column("wave").max()) if final_wave is None else final_wave
    final = randomised.join(
        table.filter(pl.col("wave") == wave).select("arm", "observed"), on="arm", how="left"
    ).with_columns(pl.col("observed").fill_null(0)).sort("arm")
    if final.height < 2:
        return AttritionResult(table, wave, nan, nan, nan, False, alpha, "single_arm")
    kept = final.get_column("observed").to_numpy().astype(float)
    total = final.get_column("randomised").to_numpy().astype(float)
    lost = total - kept
    retention = kept / total
    diff = float(retention.max() - retention.min())
    if lost.sum() == 0:
        return AttritionResult(table, wave, 0.0, 1.0, diff, False, alpha, "no_attrition")
    chi2, p, _, _ = stats.chi2_contingency(np.column_stack([kept, lost]), correction=False)
    return AttritionResult(table, wave, float(chi2), float(p), diff, bool(p < alpha), alpha)


# --------------------------------------------------------------------------------------
# The trial analysis
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialEffectsConfig:
    """Options of :func:`fit_trial_effects` beyond the plan.

    Parameters
    ----------
    include_exploratory
        Add an exploratory ANCOVA for every scale of the panel that no hypothesis names.
    exploratory_wave
        Wave of the exploratory ANCOVAs; default: the first ANCOVA hypothesis's wave, else
        the last wave in the panel.
    exploratory_alpha
        Level for exploratory CIs and for harm flags on exploratory rows.
    lower_is_better
        Dotted outcomes (``phq9.total``) where a lower score is better, for exploratory rows
        (hypotheses carry ``direction`` in the plan). Sets the harmful direction.
    cov_type
        Overrides the plan's ``robust_se`` when given.
    cluster
        Overrides the plan's ``cluster`` column when given.
    srm_threshold
        p-value threshold of the sample-ratio check.
    attrition
        Compute :func:`compute_attrition` on the panel (skip when the caller already has it).
    attrition_alpha
        Level of the differential-attrition test.
    """

    include_exploratory: bool = True
    exploratory_wave: int | None = None
    exploratory_alpha: float = 0.05
    lower_is_better: frozenset[str] = frozenset()
    cov_type: CovType | None = None
    cluster: str | None = None
    srm_threshold: float = 0.001
    attrition: bool = True
    attrition_alpha: float = 0.05


@dataclass(frozen=True)
class TrialEffectsResult:
    """Effect rows plus the trial's integrity checks (SRM and attrition)."""

    rows: tuple[dict[str, object], ...]
    sample_ratio: SampleRatioResult | None = None
    attrition: AttritionResult | None = None
    messages: tuple[str, ...] = field(default_factory=tuple)

    def to_frame(self) -> pl.DataFrame:
        """The ``effects.parquet`` table: exactly :data:`EFFECT_COLUMNS`, one row each."""
        return pl.DataFrame(list(self.rows), schema=EFFECT_SCHEMA, orient="row")

    @property
    def harm_flagged(self) -> bool:
        """True when any row carries a harm flag."""
        return any(r["flag"] is not None for r in self.rows)


def _estimand_text(h: HypothesisSpec | None, outcome: str, method: str, wave: int | None,
                   control: str, treatment: str) -> str:
    strategy = "treatment_policy"
    population = "all randomised participants"
    if h is not None and h.estimand is not None:
        population = h.estimand.population
        if h.estimand.intercurrent_events:
            strategy = ",".join(
                f"{e.event}:{e.strategy}" for e in h.estimand.intercurrent_events
            )
    if method == "ancova":
        summary = f"difference in mean {outcome} at wave {wave} ({treatment} - {control})"
    elif method == "mmrm":
        summary = f"difference in {outcome} change per wave ({treatment} - {control})"
    else:
        summary = f"posterior difference in {outcome} growth ({treatment} - {control})"
    return f"{summary}; population: {population}; intercurrent events: {strategy}"


def _row(**kw: object) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(EFFECT_COLUMNS)
    row.update(kw)
    return row


def _ancova_tables(panel: pl.DataFrame, keys: list[tuple[str, str, int]],
                   covariates: list[str], cluster: str | None) -> dict[tuple, pl.DataFrame]:
    """One participant-level frame per (instrument, scale, wave): outcome, baseline, arm, z.

    Filters each scale once and aligns follow-up with baseline by position when both hold
    the same participant ids in the same order (checked exactly), else by a single-key join
    on ``participant_id`` (multi-key string joins and group-bys over the whole panel cost
    several times more at a million participants).
    """
    extra = [c for c in dict.fromkeys([*covariates, *([cluster] if cluster else [])])
             if c in panel.columns]
    cols = ["participant_id", "arm", "score", *extra]
    has_baseline = "baseline" in panel.columns
    out: dict[tuple, pl.DataFrame] = {}
    for inst, scale in dict.fromkeys((k[0], k[1]) for k in keys):
        waves = sorted({k[2] for k in keys if (k[0], k[1]) == (inst, scale)})
        part = panel.filter((pl.col("instrument") == inst) & (pl.col("scale") == scale))
        base = None
        if not has_baseline:
            base = part.filter(pl.col("wave") == 0).select(
                "participant_id", pl.col("score").alias("baseline")
            )
        for wave in waves:
            post = part.filter(pl.col("wave") == wave)
            if base is None:
                post = post.select(*cols, "baseline")
            elif post.get_column("participant_id").equals(base.get_column("participant_id")):
                # Same participants in the same order (a regular panel): align by position.
                post = post.select(cols).with_columns(base.get_column("baseline"))
            else:
                post = post.select(cols).join(base, on="participant_id", how="left")
            out[(inst, scale, wave)] = post
    return out


def fit_trial_effects(
    panel: pl.DataFrame,
    plan: AnalysisPlan,
    *,
    plan_sha256: str | None,
    plan_status: PlanStatus,
    config: TrialEffectsConfig | None = None,
    participants: pl.DataFrame | None = None,
) -> TrialEffectsResult:
    """Run the analysis plan on the panel: one row per hypothesis plus exploratory rows.

    - ``ancova`` hypotheses: :func:`fit_ancova` at the hypothesis's wave, baseline = wave 0
      (or the panel's ``baseline`` column), the plan's covariates, robust SE type, cluster
      and missing-data strategy.
    - ``mmrm`` hypotheses: random intercept and slope per participant, fixed
      ``arm x wave`` (:func:`models.mixed.fit_mixed_model`, REML) on waves up to the
      hypothesis's ``wave`` (all when absent); the estimate is the difference in slope per
      wave, treatment minus control. (A linear-time random-slopes model, not an
      unstructured-covariance MMRM with categorical time.)
    - ``bayes_growth`` hypotheses are listed (message ``fitted_by_growth_model``) without
      numbers: the longitudinal Bayesian model fits them.
    - Every other scale in the panel gets an exploratory ANCOVA (role ``exploratory``,
      ``plan_status`` ``unregistered``, no multiplicity adjustment).

    p-values are adjusted with the plan's ``multiplicity`` within each family. A row is
    flagged ``harm`` (``guardrail_harm`` for guardrails) when its estimate lies in the
    harmful direction and the two-sided test at its alpha rejects (unadjusted: for safety a
    false alarm is cheaper than a missed harm).

    Parameters
    ----------
    panel
        The panel table (docs/contracts.md).
    plan
        The validated analysis plan.
    plan_sha256
        The plan's canonical sha256 (:func:`models.plan.plan_sha256`), carried on every row.
    plan_status
        ``locked``, ``deviated`` or ``unregistered`` (:attr:`PlanVerification.plan_status`),
        carried on every hypothesis row.
    config
        :class:`TrialEffectsConfig`; defaults apply when None.
    participants
        The study's participants table (``participant_id, arm``), one row per randomised
        participant. The sample-ratio check runs on it when given (the right denominator:
        participants with no score are still randomised, and it is cheaper than finding the
        distinct participants of a long panel); otherwise on the panel's participants.
    """
    if plan_status not in ("locked", "deviated", "unregistered"):
        raise ValueError(
            f"plan_status must be locked, deviated or unregistered, not {plan_status!r} "
            "(PlanVerification.plan_status maps intact/deviated/unlocked)"
        )
    cfg = config or TrialEffectsConfig()
    cov_type: CovType = cfg.cov_type or plan.robust_se
    cluster = cfg.cluster if cfg.cluster is not None else plan.cluster
    ctrl, trt = plan.control_arm, plan.treatment_arm
    messages: list[str] = []

    ancova_hyps = [h for h in plan.hypotheses if h.method == "ancova"]
    named = {(h.instrument, h.scale) for h in plan.hypotheses}
    present = panel.select("instrument", "scale").unique().sort("instrument", "scale")
    others: list[tuple[str, str]] = []
    if cfg.include_exploratory:
        others = [
            (i, s) for i, s in present.iter_rows() if (i, s) not in named
        ]
    if cfg.exploratory_wave is not None:
        x_wave = cfg.exploratory_wave
    elif ancova_hyps:
        x_wave = int(ancova_hyps[0].wave or 0)
    else:
        x_wave = int(panel.get_column("wave").max() or 0)

    all_covs = sorted({c for h in ancova_hyps for c in (h.covariates or [])} | set(plan.covariates))
    keys = [(h.instrument, h.scale, int(h.wave or 0)) for h in ancova_hyps]
    keys += [(i, s, x_wave) for i, s in others]
    tables = _ancova_tables(panel, list(dict.fromkeys(keys)), all_covs, cluster)
    empty = pl.DataFrame(schema={"arm": pl.String, "score": pl.Float64, "baseline": pl.Float64})

    rows: list[dict[str, object]] = []
    for h in plan.hypotheses:
        common = dict(
            hypothesis=h.id, instrument=h.instrument, scale=h.scale, method=h.method,
            estimand=_estimand_text(h, h.outcome, h.method, h.wave, ctrl, trt),
            role=h.role, family=h.family_name, plan_sha256=plan_sha256, plan_status=plan_status,
        )
        if h.method == "bayes_growth":
            rows.append(_row(**common, n=None, message="fitted_by_growth_model"))
            continue
        if h.method == "ancova":
            covs = tuple(h.covariates if h.covariates is not None else plan.covariates)
            acfg = AncovaConfig(
                control_arm=ctrl, treatment_arm=trt, covariates=covs, cluster=cluster,
                cov_type=cov_type, alpha=h.alpha, sided=h.sided, direction=h.direction,
                missing_data=plan.missing_data.strategy,
            )
            res = fit_ancova(tables.get((h.instrument, h.scale, int(h.wave or 0)), empty), acfg)
            est, se, lo, hi, p, p_two, n, msg = (
                res.estimate, res.std_error, res.ci_low, res.ci_high, res.p_value,
                res.p_two_sided, res.n, res.message,
            )
        else:
            est, se, lo, hi, p, p_two, n, msg = _fit_slope_difference(panel, h, ctrl, trt)
        rows.append(
            _row(**common, estimate=est, std_error=se, ci_low=lo, ci_high=hi, p_value=p,
                 n=n, message=msg, flag=_harm_flag(est, p_two, h.alpha, h.direction, h.role))
        )

    # Multiplicity within each family (hypotheses with a frequentist test only).
    fams: dict[str, list[int]] = {}
    for idx, (h, r) in enumerate(zip(plan.hypotheses, rows, strict=True)):
        if h.method != "bayes_growth":
            fams.setdefault(str(r["family"]), []).append(idx)
    for members in fams.values():
        ps = [r if r is not None else float("nan")
              for r in (rows[i]["p_value"] for i in members)]
        adj = adjust_pvalues(np.array(ps, dtype=float), plan.multiplicity)
        for i, a in zip(members, adj, strict=True):
            rows[i]["p_adjusted"] = None if np.isnan(a) else float(a)

    for inst, scale in others:
        outcome = f"{inst}.{scale}"
        direction: Direction = (
            "lower_is_better" if outcome in cfg.lower_is_better else "higher_is_better"
        )
        acfg = AncovaConfig(
            control_arm=ctrl, treatment_arm=trt, covariates=tuple(plan.covariates),
            cluster=cluster, cov_type=cov_type, alpha=cfg.exploratory_alpha,
            direction=direction, missing_data=plan.missing_data.strategy,
        )
        res = fit_ancova(tables.get((inst, scale, x_wave), empty), acfg)
        rows.append(_row(
            hypothesis=f"exploratory:{outcome}", instrument=inst, scale=scale, method="ancova",
            estimand=_estimand_text(None, outcome, "ancova", x_wave, ctrl, trt),
            estimate=res.estimate, std_error=res.std_error, ci_low=res.ci_low,
            ci_high=res.ci_high, p_value=res.p_value, p_adjusted=None, role="exploratory",
            family="exploratory", plan_sha256=plan_sha256, plan_status="unregistered",
            n=res.n, message=res.message,
            flag=_harm_flag(res.estimate, res.p_two_sided, cfg.exploratory_alpha, direction,
                            "exploratory"),
        ))

    for r in rows:
        for k in ("estimate", "std_error", "ci_low", "ci_high", "p_value", "p_adjusted"):
            v = r[k]
            if v is not None and np.isnan(float(v)):  # type: ignore[arg-type]
                r[k] = None

    srm = None
    if plan.allocation_shares is not None:
        srm = check_sample_ratio(
            participants if participants is not None else panel.select("participant_id", "arm"),
            plan.allocation_shares,
            threshold=cfg.srm_threshold,
        )
        if srm.flagged:
            messages.append(f"sample_ratio_mismatch:p={srm.p_value:.3g}")
    attrition = compute_attrition(panel, alpha=cfg.attrition_alpha) if cfg.attrition else None
    if attrition is not None and attrition.flagged:
        messages.append(f"differential_attrition:p={attrition.p_value:.3g}")
    return TrialEffectsResult(tuple(rows), srm, attrition, tuple(messages))


def _harm_flag(est: float, p_two: float, alpha: float, direction: Direction,
               role: str) -> str | None:
    if est is None or p_two is None or np.isnan(est) or np.isnan(p_two):
        return None
    if _sign(direction) * est < 0 and p_two < alpha:
        return "guardrail_harm" if role == "guardrail" else "harm"
    return None


def _fit_slope_difference(
    panel: pl.DataFrame, h: HypothesisSpec, ctrl: str, trt: str
) -> tuple[float, float, float, float, float, float, int, str]:
    """Arm x wave interaction of a random intercept + slope model (REML).

    Uses waves 0..``h.wave`` (all waves when the hypothesis names none).
    """
    data = (
        panel.filter(
            (pl.col("instrument") == h.instrument)
            & (pl.col("scale") == h.scale)
            & pl.col("arm").is_in([ctrl, trt])
            & pl.col("score").is_not_null()
            & (pl.col("wave") <= (h.wave if h.wave is not None else pl.col("wave").max()))
        )
        .select("participant_id", "wave", "score", "arm")
        .with_columns(
            pl.col("wave").cast(pl.Float64),
            (pl.col("arm") == trt).cast(pl.Float64).alias("treat"),
        )
        .with_columns((pl.col("treat") * pl.col("wave")).alias("treat_x_wave"))
    )
    nan = float("nan")
    n = data.get_column("participant_id").n_unique()
    arms = data.get_column("arm").n_unique()
    if arms < 2:
        return nan, nan, nan, nan, nan, nan, n, "empty_arm"
    res = fit_mixed_model(
        data, MixedModelConfig(fixed=("wave", "treat", "treat_x_wave"), alpha=h.alpha)
    )
    if res.message not in ("ok", "singular_fit"):
        return nan, nan, nan, nan, nan, nan, n, res.message
    est, se = res.coefficient("treat_x_wave")
    p, lo, hi, p_two = _inference(est, se, res.df, h.alpha, h.sided, h.direction)
    return est, se, lo, hi, p, p_two, n, res.message
