"""Backend-free description of the Bayesian growth model: priors, spec, data preparation.

The model (one outcome scale, participant ``i``, wave time ``t`` in waves since baseline,
``a_i`` = 1 for the treatment arm, 0 for control)::

    y_it = b0 + b1 t + a_i (b2 + e_i t) + u0_i + u1_i t + eps_it,
    (u0_i, u1_i) ~ N(0, D),  D = [[s0^2, r s0 s1], [r s0 s1, s1^2]],  eps_it ~ N(0, sigma^2)
    e_i = b3 + sum_g tau_g (z_g[level_g(i)] - sum_l w_gl z_g[l]),  z_g ~ ZeroSumNormal(1)

``b3`` (``slope_effect``) is the treatment's effect on the rate of change per wave,
averaged over the study's participants (``w_gl`` = share of participants at level ``l``
of factor ``g``); the level deviations are partially pooled across the levels of each
grouping factor (country, cohort) and answer "for whom does it work" (Gelman & Hill 2007,
ch. 13). Centring the deviations at the sample mix makes ``b3`` the study's average effect
(identified by the data, not by the hyper-mean of a handful of countries, whose
uncertainty would otherwise dominate and whose posterior ridge slows NUTS). Missing waves
are simply absent rows: the likelihood of each participant is over the waves they answered
(valid under MAR; Little & Rubin 2019, ch. 6), no imputation and no listwise deletion.

This module holds the plain description (``GrowthModelSpec``, ``GrowthPriors``) and the
data preparation into sufficient statistics; ``models.growth`` compiles it to PyMC.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import polars as pl

PriorFamily = Literal["normal", "halfnormal", "lkj"]
ModelKind = Literal["marginal", "latent"]
GroupParametrization = Literal["auto", "centered", "non_centered"]

REQUIRED_COLUMNS: tuple[str, ...] = ("participant_id", "arm", "wave", "score")


@dataclass(frozen=True)
class NormalPrior:
    """Normal(mu, sigma) prior, in the outcome's own units."""

    mu: float
    sigma: float


@dataclass(frozen=True)
class HalfNormalPrior:
    """HalfNormal(sigma) prior for a standard deviation, in the outcome's own units."""

    sigma: float


@dataclass(frozen=True)
class LKJPrior:
    """LKJ(eta) prior on the intercept-slope correlation.

    For a 2x2 correlation matrix LKJ(eta) is ``(r + 1) / 2 ~ Beta(eta, eta)``
    (Lewandowski, Kurowicka & Joe 2009), which is how it is implemented.
    """

    eta: float


@dataclass(frozen=True)
class GrowthPriors:
    """Priors of the growth model, as data a user can override (``dataclasses.replace``).

    Every location/scale is in outcome units (score points) and per wave for slopes.
    """

    intercept: NormalPrior
    slope: NormalPrior
    arm_intercept: NormalPrior
    slope_effect: NormalPrior
    sd_group_effect: HalfNormalPrior
    sd_intercept: HalfNormalPrior
    sd_slope: HalfNormalPrior
    corr_intercept_slope: LKJPrior
    sd_residual: HalfNormalPrior

    def constants(self) -> dict[str, float]:
        """Every prior constant by its model data name, in the order the models use them."""
        return {
            "prior_intercept_mu": self.intercept.mu,
            "prior_intercept_sigma": self.intercept.sigma,
            "prior_slope_mu": self.slope.mu,
            "prior_slope_sigma": self.slope.sigma,
            "prior_arm_intercept_mu": self.arm_intercept.mu,
            "prior_arm_intercept_sigma": self.arm_intercept.sigma,
            "prior_slope_effect_mu": self.slope_effect.mu,
            "prior_slope_effect_sigma": self.slope_effect.sigma,
            "prior_sd_group_effect_sigma": self.sd_group_effect.sigma,
            "prior_sd_intercept_sigma": self.sd_intercept.sigma,
            "prior_sd_slope_sigma": self.sd_slope.sigma,
            "prior_corr_eta": self.corr_intercept_slope.eta,
            "prior_sd_residual_sigma": self.sd_residual.sigma,
        }

    def to_frame(self) -> pl.DataFrame:
        """Tidy table ``parameter, family, mu, sigma, eta`` stating every prior."""
        rows = []
        for name, prior in asdict(self).items():
            obj = getattr(self, name)
            family: PriorFamily = (
                "normal"
                if isinstance(obj, NormalPrior)
                else "halfnormal"
                if isinstance(obj, HalfNormalPrior)
                else "lkj"
            )
            rows.append(
                {
                    "parameter": name,
                    "family": family,
                    "mu": prior.get("mu"),
                    "sigma": prior.get("sigma"),
                    "eta": prior.get("eta"),
                }
            )
        return pl.DataFrame(
            rows,
            schema={
                "parameter": pl.String,
                "family": pl.String,
                "mu": pl.Float64,
                "sigma": pl.Float64,
                "eta": pl.Float64,
            },
        )

    def describe(self) -> str:
        """One-line human statement of the priors, e.g. for reports and ``idata.attrs``."""
        parts = []
        for row in self.to_frame().iter_rows(named=True):
            if row["family"] == "normal":
                parts.append(f"{row['parameter']} ~ Normal({row['mu']:.4g}, {row['sigma']:.4g})")
            elif row["family"] == "halfnormal":
                parts.append(f"{row['parameter']} ~ HalfNormal({row['sigma']:.4g})")
            else:
                parts.append(f"{row['parameter']} ~ LKJ({row['eta']:.4g})")
        return "; ".join(parts)


def default_priors(scale_range: tuple[float, float], final_time: float) -> GrowthPriors:
    """Weakly informative priors scaled to the instrument's range.

    Parameters
    ----------
    scale_range
        ``(low, high)`` possible scores of the scale (``InstrumentSpec.scale_range``).
    final_time
        Time of the final wave in waves since baseline (> 0); slopes are per wave.

    Returns
    -------
    GrowthPriors
        With ``R = high - low`` and ``T = final_time``: baseline mean
        ``Normal(mid, R/2)``; control slope and slope effect ``Normal(0, R/(2T))`` (a change
        of half the range over the study is one prior SD); baseline arm difference
        ``Normal(0, R/4)``; between-participant SD of intercepts ``HalfNormal(R/2)``, of
        slopes ``HalfNormal(R/(2T))``; residual SD ``HalfNormal(R/2)``; SD of country/cohort
        (zero-sum) deviations of the slope effect ``HalfNormal(R/(16T))`` (a level differing
        from the average by a quarter of the range over the study is ~4 prior SDs out);
        correlation ``LKJ(2)``.
        These exclude only values impossible on the scale (weakly informative in the sense
        of Gelman et al. 2008, *Ann. Appl. Stat.* 2:1360).
    """
    low, high = float(scale_range[0]), float(scale_range[1])
    if not high > low:
        raise ValueError(f"scale_range must be (low, high) with high > low, got {scale_range}")
    if not final_time > 0:
        raise ValueError(f"final_time must be > 0, got {final_time}")
    width = high - low
    per_wave = width / (2.0 * final_time)
    return GrowthPriors(
        intercept=NormalPrior(mu=(low + high) / 2.0, sigma=width / 2.0),
        slope=NormalPrior(mu=0.0, sigma=per_wave),
        arm_intercept=NormalPrior(mu=0.0, sigma=width / 4.0),
        slope_effect=NormalPrior(mu=0.0, sigma=per_wave),
        sd_group_effect=HalfNormalPrior(sigma=per_wave / 8.0),
        sd_intercept=HalfNormalPrior(sigma=width / 2.0),
        sd_slope=HalfNormalPrior(sigma=per_wave),
        corr_intercept_slope=LKJPrior(eta=2.0),
        sd_residual=HalfNormalPrior(sigma=width / 2.0),
    )


@dataclass(frozen=True)
class GrowthModelSpec:
    """Plain description of a growth model for one outcome scale (no PyMC in it).

    Parameters
    ----------
    outcome
        Scale id in dotted form (``who5.total``); a label only.
    scale_range
        ``(low, high)`` possible scores; scales the default priors.
    groups
        Participant-level columns across whose levels the slope effect is partially pooled.
        A factor with fewer than two levels in the data is dropped (nothing to pool).
    priors
        ``None`` = ``default_priors(scale_range, final_time)``.
    final_time
        Time of the final wave (waves since baseline); ``None`` = the last wave in the data.
    baseline_wave
        Wave number that is time 0.
    treatment_arm, control_arm
        Arm labels; other arms are left out of this two-arm model.
    """

    outcome: str
    scale_range: tuple[float, float]
    groups: tuple[str, ...] = ("country", "cohort")
    priors: GrowthPriors | None = None
    final_time: float | None = None
    baseline_wave: int = 0
    treatment_arm: str = "treatment"
    control_arm: str = "control"
    group_parametrization: GroupParametrization = "auto"
    centered_min_participants: int = 2000

    def centered_groups(self, design: GrowthDesign) -> tuple[bool, ...]:
        """Per pooled factor, whether its level deviations are sampled centred.

        Non-centred suits weak data per level, centred strong data (Betancourt & Girolami
        2015, *Hamiltonian Monte Carlo for hierarchical models*); ``auto`` centres a factor
        when its smallest level has at least ``centered_min_participants`` participants.
        """
        if self.group_parametrization != "auto":
            return tuple(self.group_parametrization == "centered" for _ in design.groups)
        return tuple(
            min(design.level_shares[g]) * design.n_participants >= self.centered_min_participants
            for g in design.groups
        )

    def resolved_priors(self, final_time: float) -> GrowthPriors:
        """The priors in force: the user's, else the defaults for this range and horizon."""
        return self.priors or default_priors(self.scale_range, final_time)


@dataclass(frozen=True)
class GrowthDesign:
    """What a fitted model needs to know about its data to interpret its parameters."""

    outcome: str
    treatment_arm: str
    control_arm: str
    groups: tuple[str, ...]
    levels: dict[str, tuple[str, ...]]
    level_shares: dict[str, tuple[float, ...]]
    center: float
    n_participants: int
    final_time: float
    baseline_wave: int
    waves: tuple[int, ...]

    @property
    def group_sizes(self) -> tuple[int, ...]:
        """Number of levels of each pooled factor, in ``groups`` order."""
        return tuple(len(self.levels[g]) for g in self.groups)


#: The sufficient-statistic columns of ``GrowthData.cells`` that enter the likelihood.
CELL_COLUMNS: tuple[str, ...] = (
    "n", "k", "g01", "g11", "arm", "r0", "r1", "q00", "q01", "q11", "yy"
)


@dataclass
class GrowthData:
    """A panel reduced for the growth model.

    Attributes
    ----------
    design
        Arms, pooled factors and their levels, centring constant, time origin.
    cells
        Sufficient statistics of the marginal likelihood, one row per
        (number of observed waves ``k``, ``sum t``, ``sum t^2``, arm, group levels): ``n``
        participants, ``r0 = sum_i sum_t y``, ``r1 = sum_i sum_t t y``, ``q00/q01/q11`` the
        sums of the products of the per-participant ``(sum y, sum t y)``, ``yy = sum y^2``
        (``y`` centred at ``design.center``).
    rows
        One row per observed score (for the latent model): ``pid`` (0-based), ``t``, ``y``
        (centred), ``arm`` (0/1), ``<group>_idx``.
    participants
        One row per participant: ``participant_id, pid, arm, <group>_idx``, and the
        per-participant statistics ``k, g01, g11, s0, s1`` used for participant effects.
    arm_wave
        Counts per (arm, wave, group levels) of observed scores, with the observed sum of
        scores, for the posterior predictive check.
    """

    design: GrowthDesign
    cells: pl.DataFrame
    rows: pl.DataFrame
    participants: pl.DataFrame
    arm_wave: pl.DataFrame

    @property
    def n_participants(self) -> int:
        """Number of participants with at least one observed score."""
        return self.participants.height

    @property
    def n_observations(self) -> int:
        """Number of observed scores."""
        return self.rows.height


@dataclass(frozen=True)
class DataIssue:
    """An expected data problem that stops a fit (returned, never raised)."""

    code: Literal["empty_arm", "too_few_participants", "no_variance", "too_few_waves"]
    message: str


def prepare_growth_data(
    panel: pl.DataFrame, spec: GrowthModelSpec
) -> GrowthData | DataIssue:
    """Reduce a one-outcome panel to the growth model's inputs.

    Parameters
    ----------
    panel
        Long frame with at least ``participant_id, arm, wave, score`` (+ the ``spec.groups``
        columns; a missing group column is treated as one level). Null scores are missing
        waves and are dropped (the likelihood covers observed waves only). Arm and group are
        participant-level: the first row's value is used.
    spec
        The model description.

    Returns
    -------
    GrowthData or DataIssue
        ``DataIssue`` for an empty arm, fewer than 3 participants per arm, fewer than two
        distinct waves, or zero variance of the scores.

    Raises
    ------
    ValueError
        A required column is missing or a participant has two rows for one wave.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in panel.columns]
    if missing:
        raise ValueError(f"panel lacks required columns {missing}")
    group_cols = list(spec.groups)
    frame = panel.select(
        pl.col("participant_id").cast(pl.String),
        pl.col("arm").cast(pl.String),
        pl.col("wave").cast(pl.Int64),
        pl.col("score").cast(pl.Float64),
        *[
            (pl.col(g).cast(pl.String) if g in panel.columns else pl.lit("all"))
            .fill_null("unknown")
            .alias(g)
            for g in group_cols
        ],
    ).filter(
        pl.col("score").is_not_null()
        & pl.col("score").is_not_nan()
        & pl.col("arm").is_in([spec.treatment_arm, spec.control_arm])
        & (pl.col("wave") >= spec.baseline_wave)
    )
    dup = frame.select(pl.struct("participant_id", "wave").is_duplicated().any()).item()
    if dup:
        raise ValueError("panel has more than one row for some (participant_id, wave)")

    per_arm = frame.group_by("arm").agg(pl.col("participant_id").n_unique().alias("n"))
    counts = dict(zip(per_arm["arm"].to_list(), per_arm["n"].to_list(), strict=True))
    for arm in (spec.treatment_arm, spec.control_arm):
        if counts.get(arm, 0) == 0:
            return DataIssue("empty_arm", f"arm {arm!r} has no observed scores")
        if counts[arm] < 3:
            return DataIssue("too_few_participants", f"arm {arm!r} has {counts[arm]} < 3")
    waves = tuple(sorted(frame["wave"].unique().to_list()))
    if len(waves) < 2:
        return DataIssue("too_few_waves", f"only wave(s) {waves} observed; no slope")
    sd = frame["score"].std()
    if sd is None or not sd > 0:
        return DataIssue("no_variance", "all observed scores are equal")

    final_time = (
        float(spec.final_time)
        if spec.final_time is not None
        else float(max(waves) - spec.baseline_wave)
    )
    center = float(frame["score"].mean())

    # participant-level attributes (first row's value) and integer codes
    first = frame.group_by("participant_id").agg(
        pl.col("arm").first(), *[pl.col(g).first() for g in group_cols]
    )
    levels: dict[str, tuple[str, ...]] = {}
    for g in group_cols:
        levels[g] = tuple(sorted(first[g].unique().to_list()))
    pooled = tuple(g for g in group_cols if len(levels[g]) >= 2)
    first = first.sort("participant_id").with_columns(
        pl.int_range(pl.len()).alias("pid"),
        (pl.col("arm") == spec.treatment_arm).cast(pl.Int64).alias("arm"),
        *[
            pl.col(g)
            .replace_strict(list(levels[g]), list(range(len(levels[g]))), return_dtype=pl.Int64)
            .alias(f"{g}_idx")
            for g in pooled
        ],
    )
    idx_cols = [f"{g}_idx" for g in pooled]
    rows = (
        frame.select("participant_id", "wave", "score")
        .join(first.select("participant_id", "pid", "arm", *idx_cols), on="participant_id")
        .with_columns(
            (pl.col("wave") - spec.baseline_wave).cast(pl.Float64).alias("t"),
            (pl.col("score") - center).alias("y"),
        )
        .sort("pid", "t")
    )
    part = rows.group_by("pid").agg(
        pl.len().cast(pl.Float64).alias("k"),
        pl.col("t").sum().alias("g01"),
        (pl.col("t") ** 2).sum().alias("g11"),
        pl.col("y").sum().alias("s0"),
        (pl.col("t") * pl.col("y")).sum().alias("s1"),
        (pl.col("y") ** 2).sum().alias("yy"),
    )
    participants = first.join(part, on="pid").sort("pid")
    cells = (
        participants.group_by("k", "g01", "g11", "arm", *idx_cols)
        .agg(
            pl.len().cast(pl.Float64).alias("n"),
            pl.col("s0").sum().alias("r0"),
            pl.col("s1").sum().alias("r1"),
            (pl.col("s0") ** 2).sum().alias("q00"),
            (pl.col("s0") * pl.col("s1")).sum().alias("q01"),
            (pl.col("s1") ** 2).sum().alias("q11"),
            pl.col("yy").sum(),
        )
        .sort("k", "g01", "g11", "arm", *idx_cols)
    )
    arm_wave = (
        rows.group_by("arm", "wave", "t", *idx_cols)
        .agg(pl.len().alias("n"), pl.col("score").sum().alias("score_sum"))
        .sort("arm", "wave", *idx_cols)
    )
    design = GrowthDesign(
        outcome=spec.outcome,
        treatment_arm=spec.treatment_arm,
        control_arm=spec.control_arm,
        groups=pooled,
        levels={g: levels[g] for g in pooled},
        level_shares={
            g: tuple(
                first.group_by(f"{g}_idx")
                .len()
                .sort(f"{g}_idx")["len"]
                .cast(pl.Float64)
                .to_numpy()
                / first.height
            )
            for g in pooled
        },
        center=center,
        n_participants=first.height,
        final_time=final_time,
        baseline_wave=spec.baseline_wave,
        waves=waves,
    )
    return GrowthData(
        design=design,
        cells=cells,
        rows=rows.select("pid", "t", "y", "arm", *idx_cols),
        participants=participants.drop("yy"),
        arm_wave=arm_wave,
    )


@dataclass(frozen=True)
class SimulationTruth:
    """Known truth of a simulated panel (outcome units, slopes per wave)."""

    intercept: float
    slope: float
    arm_intercept: float
    slope_effect: float
    sd_intercept: float
    sd_slope: float
    corr_intercept_slope: float
    sd_residual: float
    country_effects: tuple[float, ...] = field(default_factory=tuple)
    cohort_effects: tuple[float, ...] = field(default_factory=tuple)


def simulate_growth_panel(
    n_participants: int,
    n_waves: int,
    truth: SimulationTruth,
    *,
    p_missing: float = 0.15,
    seed: int = 0,
) -> pl.DataFrame:
    """Simulate a one-outcome panel from the growth model with known truth (numpy only).

    Participants are randomised 1:1; country and cohort levels are drawn uniformly from the
    lengths of ``truth.country_effects`` / ``truth.cohort_effects`` (one level "c0"/"h0" when
    empty), whose entries are added to the slope effect. Each non-baseline wave is missing
    completely at random with probability ``p_missing``; baseline is always observed.

    Returns
    -------
    polars.DataFrame
        ``participant_id, arm, wave, score, country, cohort`` (missing waves are absent).
    """
    rng = np.random.default_rng(seed)
    n, w = n_participants, n_waves
    arm = rng.integers(0, 2, n)
    cty_eff = np.asarray(truth.country_effects or (0.0,))
    coh_eff = np.asarray(truth.cohort_effects or (0.0,))
    cty = rng.integers(0, cty_eff.size, n)
    coh = rng.integers(0, coh_eff.size, n)
    s0, s1, r = truth.sd_intercept, truth.sd_slope, truth.corr_intercept_slope
    cov = np.array([[s0**2, r * s0 * s1], [r * s0 * s1, s1**2]])
    u = rng.multivariate_normal(np.zeros(2), cov, size=n)
    t = np.arange(w, dtype=float)
    effect = truth.slope_effect + cty_eff[cty] + coh_eff[coh]
    mean = (
        truth.intercept
        + truth.slope * t[None, :]
        + arm[:, None] * (truth.arm_intercept + effect[:, None] * t[None, :])
        + u[:, :1]
        + u[:, 1:] * t[None, :]
    )
    y = mean + rng.normal(0.0, truth.sd_residual, size=(n, w))
    observed = rng.random((n, w)) >= p_missing
    observed[:, 0] = True
    ii, tt = np.nonzero(observed)
    return pl.DataFrame(
        {
            "pid": ii,
            "arm_code": arm[ii],
            "wave": tt.astype(np.int32),
            "score": y[ii, tt],
            "cty": cty[ii],
            "coh": coh[ii],
        }
    ).select(
        pl.col("pid").cast(pl.String).alias("participant_id"),
        pl.when(pl.col("arm_code") == 1)
        .then(pl.lit("treatment"))
        .otherwise(pl.lit("control"))
        .alias("arm"),
        "wave",
        "score",
        pl.format("c{}", "cty").alias("country"),
        pl.format("h{}", "coh").alias("cohort"),
    )
