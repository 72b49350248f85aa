"""The demo study: a synthetic randomised trial with known truth, in memory or on disk.

:func:`simulate_study_frames` draws a whole study with numpy (vectorised over participants,
waves and items) and returns polars frames; :func:`write_demo_study` writes it as a
complete Flourish study (``study.toml``, participants, one long CSV per wave, telemetry,
the pre-registered analysis plan and ``truth.json``), optionally with every kind of dirty
input that ingest and validation must handle, counted exactly.

Latent model
------------
Seven latent domains ``d``: ``wellbeing`` (the five WHO-5 items) and the six Flourish
Measure domains (two items each). For participant ``i`` at wave ``t = 0..T-1``::

    theta[i, d, t] = a[i, d] + (b[i, d] + delta_d * m_country(i) * treated_i) * t + e[i, d, t]
    a[i, d] = mu_d  + sd_a * (sqrt(rho) * f_i + sqrt(1 - rho) * u[i, d])
    b[i, d] = beta0 + sd_b * (sqrt(rho) * g_i + sqrt(1 - rho) * v[i, d])
    f, g, u, v, e/sd_e ~ N(0, 1) independent

so domains correlate (``rho``) through common factors ``f`` (level) and ``g`` (change), and
``delta_d`` is the treatment effect on the latent slope per wave (``m_country`` = 1 unless
country heterogeneity is configured). Items load on their domain's ``theta`` through the
graded-response model (:mod:`instruments.simulate`). Attrition is monotone and missing at
random given the past: the hazard of leaving before wave ``t`` is
``logistic(logit(h0) + gamma * z[i, t-1])`` with ``z`` the standardised latent wellbeing at
the previous wave (``gamma < 0``: lower wellbeing, more dropout). Skipped items are missing
completely at random.

Truth in score units
--------------------
In arm ``g``, country ``c``, wave ``t`` the latent trait of a domain is normal with mean
``mu_d + (beta0 + delta_d m_c g) t`` and variance ``sd_a^2 + t^2 sd_b^2 + sd_e^2``, so each
item's expected response is a one-dimensional Gauss–Hermite integral of the exact GRM
expectation; scales are linear in their items, countries mix by their population shares.
``truth.json`` states these for the randomised population (before attrition).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import yaml

from instruments.definition import InstrumentLibrary, InstrumentSpec, load_library
from instruments.simulate import (
    compute_grm_thresholds,
    compute_marginal_grm_score,
    simulate_grm,
)
from orchestration.readers import IngestError

__all__ = [
    "DEFECT_KINDS",
    "DOMAINS",
    "DemoStudy",
    "DemoStudyConfig",
    "DemoTargetError",
    "SimulatedStudy",
    "build_analysis_plan",
    "check_demo_target",
    "compute_truth",
    "simulate_study_frames",
    "write_demo_study",
]

Arm = Literal["control", "treatment"]
ARMS: tuple[Arm, Arm] = ("control", "treatment")
TelemetryEvent = Literal["app_open", "exercise_completed", "journal_entry"]
TELEMETRY_EVENTS: tuple[TelemetryEvent, ...] = ("app_open", "exercise_completed", "journal_entry")
DefectKind = Literal[
    "unknown_item",
    "out_of_range",
    "non_integer",
    "text_value",
    "whitespace_value",
    "duplicate_conflicting",
    "duplicate_identical",
    "unknown_participant",
    "bad_timestamp",
    "wrong_type_wave",
]
DEFECT_KINDS: tuple[DefectKind, ...] = (
    "unknown_item",
    "out_of_range",
    "non_integer",
    "text_value",
    "whitespace_value",
    "duplicate_conflicting",
    "duplicate_identical",
    "unknown_participant",
    "bad_timestamp",
    "wrong_type_wave",
)

INSTRUMENTS: tuple[str, str] = ("who5", "flourish12")
# Latent domain -> (instrument, scale whose items load on it).
DOMAINS: dict[str, tuple[str, str]] = {
    "wellbeing": ("who5", "raw"),
    "happiness_life_satisfaction": ("flourish12", "happiness_life_satisfaction"),
    "mental_physical_health": ("flourish12", "mental_physical_health"),
    "meaning_purpose": ("flourish12", "meaning_purpose"),
    "character_virtue": ("flourish12", "character_virtue"),
    "close_social_relationships": ("flourish12", "close_social_relationships"),
    "financial_material_stability": ("flourish12", "financial_material_stability"),
}
# Smallest effect of interest written into the demo plan for 0-10 Flourish scales, which
# have no published minimal important difference: half a point on the 0-10 mean (a plan
# choice of the demo's authors, not an instrument fact). WHO-5 uses its file's value (10).
DEMO_FLOURISH_MID = 0.5
PLAN_ALPHA = 0.05
_MICROS_PER_DAY = 86_400_000_000


def _default_effects() -> dict[str, float]:
    return {
        "wellbeing": 0.10,
        "happiness_life_satisfaction": 0.08,
        "mental_physical_health": 0.04,
        "meaning_purpose": 0.08,
        "character_virtue": 0.0,
        "close_social_relationships": 0.03,
        "financial_material_stability": 0.0,
    }


def _default_intercepts() -> dict[str, float]:
    return {
        "wellbeing": 0.3,
        "happiness_life_satisfaction": 0.5,
        "mental_physical_health": 0.4,
        "meaning_purpose": 0.6,
        "character_virtue": 0.9,
        "close_social_relationships": 0.6,
        "financial_material_stability": 0.0,
    }


@dataclass(frozen=True)
class DemoStudyConfig:
    """Everything that defines a synthetic study; same config (and seed), same bytes.

    Latent quantities are in latent-trait units (the scale of the GRM's ``theta``, where the
    reference population at baseline has SD ``sqrt(intercept_sd^2 + residual_sd^2)``).

    Parameters
    ----------
    n_participants : int
        Participants randomised.
    waves : int
        Number of waves, numbered ``0..waves-1``; wave 0 is baseline.
    seed : int
        Seed of the single ``numpy.random.Generator`` behind every draw.
    treatment_share : float
        Allocation share of the treatment arm; exactly ``round(n * share)`` are treated.
    cohorts, countries : Mapping[str, float]
        Labels and population shares (normalised); cohort ``k`` enrols ``cohort_spacing_days
        * k`` days after ``start_date``.
    treatment_slope_effects : Mapping[str, float]
        ``delta_d``: treatment effect on the latent slope per wave, per domain of
        :data:`DOMAINS` (missing domains: 0, a null effect).
    country_effect_multipliers : Mapping[str, float]
        ``m_c``: the effect in country ``c`` is ``delta_d * m_c`` (missing countries: 1).
    intercept_means : Mapping[str, float]
        ``mu_d``: latent mean at baseline per domain.
    slope_mean : float
        ``beta0``: latent change per wave in the control arm.
    intercept_sd, slope_sd, residual_sd : float
        Between-participant SDs of the latent intercept and slope, and the SD of the
        occasion-specific deviation ``e``.
    domain_correlation : float
        ``rho`` in [0, 1]: correlation of intercepts (and of slopes) across domains.
    discrimination_range : tuple[float, float]
        Item discriminations are drawn uniformly from this range.
    threshold_shift_sd : float
        SD of a per-item shift of the thresholds (items differ in difficulty).
    dropout_hazard : float
        ``h0``: probability of leaving before each follow-up wave at average wellbeing.
    dropout_wellbeing_log_odds : float
        ``gamma``: change in the log-odds of dropout per latent SD of wellbeing at the
        previous wave (negative: lower wellbeing, more dropout; 0: dropout is MCAR).
    item_missing_rate : float
        Probability that an item is skipped (blank), independently of everything.
    telemetry : bool
        Whether to simulate app telemetry events.
    telemetry_rate : float
        Expected events per participant per inter-wave window at average wellbeing, control.
    telemetry_treatment_rate_ratio : float
        Multiplier of the event rate in the treatment arm.
    telemetry_wellbeing_log_rate : float
        Change in the log event rate per latent SD of current wellbeing.
    defects : bool
        Inject every kind of dirty input when the study is written (see
        :func:`write_demo_study`); the in-memory frames stay clean.
    defect_rows : int
        Rows (or, for ``unknown_participant``, participant sessions) per defect kind.
    start_date : str
        ISO date of the first cohort's enrolment.
    wave_interval_days, cohort_spacing_days : int
        Days between waves, and between cohorts' enrolment.
    name : str
        The study's name (``study.toml``, plan title).
    epsilon : float
        Total privacy budget written to ``study.toml``.
    """

    n_participants: int = 1000
    waves: int = 5
    seed: int = 20261129
    treatment_share: float = 0.5
    cohorts: Mapping[str, float] = field(
        default_factory=lambda: {"2026-01": 0.4, "2026-02": 0.35, "2026-03": 0.25}
    )
    countries: Mapping[str, float] = field(
        default_factory=lambda: {"GB": 0.35, "US": 0.3, "DE": 0.2, "BR": 0.15}
    )
    treatment_slope_effects: Mapping[str, float] = field(default_factory=_default_effects)
    country_effect_multipliers: Mapping[str, float] = field(default_factory=dict)
    intercept_means: Mapping[str, float] = field(default_factory=_default_intercepts)
    slope_mean: float = 0.02
    intercept_sd: float = 0.9
    slope_sd: float = 0.1
    residual_sd: float = 0.5
    domain_correlation: float = 0.5
    discrimination_range: tuple[float, float] = (1.3, 2.2)
    threshold_shift_sd: float = 0.15
    dropout_hazard: float = 0.08
    dropout_wellbeing_log_odds: float = -0.7
    item_missing_rate: float = 0.02
    telemetry: bool = True
    telemetry_rate: float = 4.0
    telemetry_treatment_rate_ratio: float = 1.5
    telemetry_wellbeing_log_rate: float = 0.3
    defects: bool = False
    defect_rows: int = 5
    start_date: str = "2026-01-05"
    wave_interval_days: int = 28
    cohort_spacing_days: int = 30
    name: str = "Flourish demo trial"
    epsilon: float = 3.0

    def __post_init__(self) -> None:
        if self.n_participants < 2:
            raise ValueError("n_participants must be at least 2")
        if self.waves < 1:
            raise ValueError("waves must be at least 1")
        if not 0.0 < self.treatment_share < 1.0:
            raise ValueError("treatment_share must lie in (0, 1)")
        for label, shares in (("cohorts", self.cohorts), ("countries", self.countries)):
            if not shares or any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
                raise ValueError(f"{label} needs at least one label with a positive share")
        unknown = set(self.treatment_slope_effects) | set(self.intercept_means)
        unknown -= set(DOMAINS)
        if unknown:
            raise ValueError(f"unknown domains {sorted(unknown)}; known: {list(DOMAINS)}")
        if set(self.country_effect_multipliers) - set(self.countries):
            raise ValueError("country_effect_multipliers names countries not in 'countries'")
        if not 0.0 <= self.domain_correlation <= 1.0:
            raise ValueError("domain_correlation must lie in [0, 1]")
        if min(self.intercept_sd, self.slope_sd, self.residual_sd) < 0:
            raise ValueError("standard deviations must be non-negative")
        if not 0.0 <= self.dropout_hazard < 1.0:
            raise ValueError("dropout_hazard must lie in [0, 1)")
        if not 0.0 <= self.item_missing_rate < 1.0:
            raise ValueError("item_missing_rate must lie in [0, 1)")
        lo, hi = self.discrimination_range
        if not 0 < lo <= hi:
            raise ValueError("discrimination_range must be positive and ordered")
        if self.defect_rows < 1:
            raise ValueError("defect_rows must be at least 1")
        if self.wave_interval_days < 7 or self.cohort_spacing_days < 0:
            # Responses arrive up to three days late and telemetry fills the rest of the
            # interval, so shorter intervals would overlap waves.
            raise ValueError("wave_interval_days must be at least 7 (cohort spacing >= 0)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the config (for ``truth.json``)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Mapping):
                d[k] = {str(kk): float(vv) for kk, vv in v.items()}
            elif isinstance(v, tuple):
                d[k] = list(v)
        return d


@dataclass(frozen=True)
class SimulatedStudy:
    """A simulated study held in memory.

    Attributes
    ----------
    participants : polars.DataFrame
        ``participant_id, arm, cohort, country`` (one row per randomised participant).
    responses : polars.DataFrame
        Long table ``participant_id, wave (Int32), timestamp (Datetime[us, UTC]),
        instrument, item, value (Int16, null = skipped)``: one row per item of every wave a
        participant attended (after attrition), ordered by participant, wave, item.
    telemetry : polars.DataFrame
        ``participant_id, timestamp, event, duration_s`` (empty when telemetry is off).
    latents : polars.DataFrame
        ``participant_id, domain, intercept, slope, slope_effect``: each participant's
        latent intercept ``a``, control slope ``b`` and their own treatment slope effect.
    truth : dict
        JSON-able known truth (see :func:`compute_truth`) plus sample facts.
    config : DemoStudyConfig
        The config that produced it.
    """

    participants: pl.DataFrame
    responses: pl.DataFrame
    telemetry: pl.DataFrame
    latents: pl.DataFrame
    truth: dict[str, Any]
    config: DemoStudyConfig

    def to_frame(self) -> pl.DataFrame:
        """Known truth in score units as a tidy table.

        Columns ``instrument, scale, outcome, arm, wave, expected_score, effect`` (the
        effect, treatment minus control, repeated on both arms' rows).
        """
        expected = pl.DataFrame(self.truth["expected_scores"])
        effects = pl.DataFrame(self.truth["effects"]).select("outcome", "wave", "effect")
        return expected.join(effects, on=["outcome", "wave"], how="left",
                             maintain_order="left").select(
            "instrument", "scale", "outcome", "arm", "wave", "expected_score", "effect"
        )


@dataclass(frozen=True)
class DemoStudy:
    """A demo study written to disk: where its files are and its truth."""

    root: Path
    study_path: Path
    participants_path: Path
    survey_paths: tuple[Path, ...]
    telemetry_path: Path | None
    plan_path: Path
    truth_path: Path
    truth: dict[str, Any]

    def to_frame(self) -> pl.DataFrame:
        """One row per written file: ``kind, path`` (relative to the study root)."""
        rows = [("spec", self.study_path), ("participants", self.participants_path)]
        rows += [("survey", p) for p in self.survey_paths]
        if self.telemetry_path is not None:
            rows.append(("telemetry", self.telemetry_path))
        rows += [("analysis_plan", self.plan_path), ("truth", self.truth_path)]
        return pl.DataFrame(
            {"kind": [k for k, _ in rows], "path": [str(p.relative_to(self.root)) for _, p in rows]}
        )


# ----------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class _Items:
    """The 17 items in output order with their domain, range and GRM parameters."""

    instrument: list[str]
    item: list[str]
    domain_index: np.ndarray  # (J,) index into DOMAINS
    minimum: np.ndarray  # (J,)
    maximum: np.ndarray  # (J,)
    discrimination: np.ndarray  # (J,)
    thresholds: list[np.ndarray]  # J arrays (K_j - 1,)


def _library() -> InstrumentLibrary:
    return load_library().subset(INSTRUMENTS)


def _normalise(shares: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    labels = list(shares)
    p = np.array([float(shares[k]) for k in labels])
    return labels, p / p.sum()


def _build_items(
    lib: InstrumentLibrary, config: DemoStudyConfig, rng: np.random.Generator
) -> _Items:
    domain_ids = list(DOMAINS)
    instrument: list[str] = []
    item: list[str] = []
    dom: list[int] = []
    for inst_id in INSTRUMENTS:
        spec = lib[inst_id]
        for it in spec.items:
            owners = [k for k, d in enumerate(domain_ids)
                      if DOMAINS[d][0] == inst_id and it.id in spec.scale(DOMAINS[d][1]).items]
            if len(owners) != 1:
                raise ValueError(f"item {it.id} must load on exactly one demo domain")
            instrument.append(inst_id)
            item.append(it.id)
            dom.append(owners[0])
    n_items = len(item)
    ranges = [lib[i].item_range(j) for i, j in zip(instrument, item, strict=True)]
    lo, hi = config.discrimination_range
    a = rng.uniform(lo, hi, n_items)
    shift = rng.normal(0.0, config.threshold_shift_sd, n_items)
    ref_sd = math.hypot(config.intercept_sd, config.residual_sd)
    thresholds = [
        compute_grm_thresholds(mn, mx, discrimination=float(a[j]), latent_sd=ref_sd) + shift[j]
        for j, (mn, mx) in enumerate(ranges)
    ]
    return _Items(
        instrument=instrument,
        item=item,
        domain_index=np.array(dom),
        minimum=np.array([r[0] for r in ranges]),
        maximum=np.array([r[1] for r in ranges]),
        discrimination=a,
        thresholds=thresholds,
    )


def _effects_vector(config: DemoStudyConfig) -> np.ndarray:
    return np.array([float(config.treatment_slope_effects.get(d, 0.0)) for d in DOMAINS])


def _intercept_vector(config: DemoStudyConfig) -> np.ndarray:
    return np.array([float(config.intercept_means.get(d, 0.0)) for d in DOMAINS])


def _multipliers(config: DemoStudyConfig, countries: Sequence[str]) -> np.ndarray:
    return np.array([float(config.country_effect_multipliers.get(c, 1.0)) for c in countries])


# ----------------------------------------------------------------------------- truth


def compute_truth(
    config: DemoStudyConfig,
    *,
    library: InstrumentLibrary | None = None,
    items: _Items | None = None,
) -> dict[str, Any]:
    """Known truth of a demo study in score units, for the randomised population.

    For each scale of ``who5`` and ``flourish12``, arm and wave: the population expected
    score (before attrition and item missingness, which are ignorable for the
    expectation: attrition is MAR and skips are MCAR), the true treatment effect at each
    wave (treatment minus control expected score), and the true slope effect per wave in
    score units (ordinary least-squares slope of the effect on ``t = 0..T-1``; the GRM is
    non-linear, so the score-unit effect is only approximately linear in ``t``).

    Parameters
    ----------
    config : DemoStudyConfig
        The study's config (its seed fixes the item parameters).
    library : InstrumentLibrary, optional
        Instrument library (default: the built-in one).
    items : optional
        Item parameters already drawn (internal; default: drawn from the seed exactly as
        :func:`simulate_study_frames` draws them).

    Returns
    -------
    dict
        JSON-able: ``latent_model``, ``items``, ``attrition``, ``telemetry``,
        ``expected_scores``, ``effects``, ``slope_effects``, ``effects_by_country``
        (records with ``outcome = "instrument.scale"``).
    """
    lib = library or _library()
    if items is None:
        items = _build_items(lib, config, np.random.default_rng(config.seed))
    countries, cshare = _normalise(config.countries)
    mult = _multipliers(config, countries)
    delta = _effects_vector(config)
    mu = _intercept_vector(config)
    t = np.arange(config.waves, dtype=float)
    sd_t = np.sqrt(config.intercept_sd**2 + t**2 * config.slope_sd**2 + config.residual_sd**2)

    # E[Y_j] for arm g (0/1), country c, wave t: shape (2, C, T, J).
    n_c, n_t, n_j = len(countries), len(t), len(items.item)
    item_mean = np.empty((2, n_c, n_t, n_j))
    for j in range(n_j):  # 17 items: a loop over items, not rows
        d = items.domain_index[j]
        g = np.arange(2)[:, None, None]
        mean = mu[d] + (config.slope_mean + delta[d] * mult[None, :, None] * g) * t[None, None, :]
        mean = np.broadcast_to(mean, (2, n_c, n_t))
        sd = np.broadcast_to(sd_t[None, None, :], (2, n_c, n_t))
        e = compute_marginal_grm_score(
            mean.ravel(), sd.ravel(), items.discrimination[j : j + 1],
            items.thresholds[j][None, :], minimum=int(items.minimum[j]),
        )
        item_mean[..., j] = e[:, 0].reshape(2, n_c, n_t)
    pop_item_mean = np.einsum("c,gctj->gtj", cshare, item_mean)

    index = {name: k for k, name in enumerate(items.item)}
    expected, effects, slopes, by_country = [], [], [], []
    tc = t - t.mean()
    for inst_id in INSTRUMENTS:
        spec: InstrumentSpec = lib[inst_id]
        for scale in spec.scales:
            cols = [index[i] for i in scale.items]
            w = np.full(len(cols), 1.0 if scale.rule == "sum" else 1.0 / len(cols))
            pop = scale.multiplier * (pop_item_mean[:, :, cols] @ w) + scale.offset  # (2, T)
            cty = scale.multiplier * (item_mean[:, :, :, cols] @ w) + scale.offset  # (2, C, T)
            outcome = f"{inst_id}.{scale.id}"
            base = {"outcome": outcome, "instrument": inst_id, "scale": scale.id}
            for gi, arm in enumerate(ARMS):
                for ti in range(n_t):
                    expected.append({**base, "arm": arm, "wave": ti,
                                     "expected_score": float(pop[gi, ti])})
            eff = pop[1] - pop[0]
            for ti in range(n_t):
                effects.append({**base, "wave": ti, "effect": float(eff[ti])})
                for ci, c in enumerate(countries):
                    by_country.append({**base, "country": c, "wave": ti,
                                       "effect": float(cty[1, ci, ti] - cty[0, ci, ti])})
            slope = float(np.sum(tc * eff) / np.sum(tc**2)) if n_t > 1 else 0.0
            slopes.append({**base, "slope_effect_per_wave": slope})

    ref_sd = math.hypot(config.intercept_sd, config.residual_sd)
    return {
        "population": "all randomised participants, countries mixed by the configured "
                      "shares, before attrition and item skips (both ignorable for these "
                      "expectations: dropout is MAR on latent wellbeing, skips are MCAR)",
        "latent_model": {
            "formula": "theta[i,d,t] = a[i,d] + (b[i,d] + delta_d * m_country * treated) * t"
                       " + e[i,d,t]",
            "domains": {
                d: {
                    "instrument": DOMAINS[d][0],
                    "scale": DOMAINS[d][1],
                    "items": [items.item[j] for j in range(n_j) if items.domain_index[j] == k],
                    "intercept_mean": float(mu[k]),
                    "treatment_slope_effect": float(delta[k]),
                }
                for k, d in enumerate(DOMAINS)
            },
            "slope_mean": config.slope_mean,
            "intercept_sd": config.intercept_sd,
            "slope_sd": config.slope_sd,
            "residual_sd": config.residual_sd,
            "domain_correlation": config.domain_correlation,
            "country_shares": {c: float(s) for c, s in zip(countries, cshare, strict=True)},
            "country_effect_multipliers": {c: float(m) for c, m in zip(countries, mult,
                                                                      strict=True)},
            "latent_sd_by_wave": [float(s) for s in sd_t],
        },
        "items": [
            {
                "instrument": items.instrument[j],
                "item": items.item[j],
                "domain": list(DOMAINS)[items.domain_index[j]],
                "min": int(items.minimum[j]),
                "max": int(items.maximum[j]),
                "discrimination": float(items.discrimination[j]),
                "thresholds": [float(x) for x in items.thresholds[j]],
            }
            for j in range(n_j)
        ],
        "attrition": {
            "model": "monotone; P(leave before wave t | present at t-1) = "
                     "logistic(logit(hazard) + wellbeing_log_odds * z[t-1])",
            "hazard": config.dropout_hazard,
            "wellbeing_log_odds": config.dropout_wellbeing_log_odds,
            "z": "(theta_wellbeing - intercept_mean_wellbeing) / reference_sd",
            "reference_sd": ref_sd,
            "item_missing_rate": config.item_missing_rate,
        },
        "telemetry": {
            "model": "events per participant and inter-wave window ~ Poisson(rate * "
                     "rate_ratio^treated * exp(wellbeing_log_rate * z[t]))",
            "enabled": config.telemetry,
            "rate": config.telemetry_rate,
            "treatment_rate_ratio": config.telemetry_treatment_rate_ratio,
            "wellbeing_log_rate": config.telemetry_wellbeing_log_rate,
            "window_days": config.wave_interval_days - 3,
            "duration_s": "log-normal: exp(log(90) + 0.2 * z[t] + 0.6 * N(0, 1))",
            "events": list(TELEMETRY_EVENTS),
        },
        "expected_scores": expected,
        "effects": effects,
        "slope_effects": slopes,
        "effects_by_country": by_country,
    }


# ----------------------------------------------------------------------------- simulation


def _participant_ids(n: int, start: int = 1) -> pl.Series:
    """Ids ``P000001``, ``P000002``, ... (zero-padded to at least six digits)."""
    width = max(6, len(str(start + n)))
    return pl.select(
        (pl.lit("P") + pl.int_range(start, start + n).cast(pl.String).str.zfill(width))
        .alias("participant_id")
    ).to_series()


def simulate_study_frames(config: DemoStudyConfig | None = None) -> SimulatedStudy:
    """Draw a whole synthetic study in memory, vectorised over participants, waves and items.

    Cost is linear in ``participants × waves × items``: 200,000 participants × 6 waves ×
    17 items (20.4 M item rows before attrition) take a few seconds, so the benchmarks
    reuse it. Deterministic for a config (one seeded generator, fixed draw order).

    Parameters
    ----------
    config : DemoStudyConfig, optional
        The study (default: ``DemoStudyConfig()``).

    Returns
    -------
    SimulatedStudy
        Clean frames (``config.defects`` only affects what :func:`write_demo_study`
        writes) and the truth (:func:`compute_truth` plus a ``sample`` section).
    """
    config = config or DemoStudyConfig()
    rng = np.random.default_rng(config.seed)
    lib = _library()
    items = _build_items(lib, config, rng)
    n, n_t, n_d, n_j = config.n_participants, config.waves, len(DOMAINS), len(items.item)

    # Allocation: exactly round(n * share) treated, in random order (complete randomisation
    # with a fixed total, i.e. one permuted block).
    n_treat = int(round(n * config.treatment_share))
    treated = np.zeros(n, dtype=bool)
    treated[:n_treat] = True
    treated = rng.permutation(treated)
    cohorts, cohort_p = _normalise(config.cohorts)
    countries, country_p = _normalise(config.countries)
    cohort = rng.choice(len(cohorts), size=n, p=cohort_p)
    country = rng.choice(len(countries), size=n, p=country_p)

    # Latent intercepts, slopes and traits: theta (n, T, D).
    rho = config.domain_correlation
    f, g = rng.standard_normal(n), rng.standard_normal(n)
    u, v = rng.standard_normal((n, n_d)), rng.standard_normal((n, n_d))
    mu = _intercept_vector(config)
    a = mu + config.intercept_sd * (math.sqrt(rho) * f[:, None] + math.sqrt(1 - rho) * u)
    b = config.slope_mean + config.slope_sd * (
        math.sqrt(rho) * g[:, None] + math.sqrt(1 - rho) * v
    )
    eff = (_effects_vector(config)[None, :] * _multipliers(config, countries)[country][:, None]
           * treated[:, None])
    t = np.arange(n_t, dtype=float)
    theta = (a[:, None, :] + (b + eff)[:, None, :] * t[None, :, None]
             + config.residual_sd * rng.standard_normal((n, n_t, n_d)))

    # Monotone attrition, MAR on latent wellbeing at the previous wave.
    ref_sd = math.hypot(config.intercept_sd, config.residual_sd)
    z = (theta[:, :, 0] - mu[0]) / ref_sd  # (n, T) standardised latent wellbeing
    present = np.ones((n, n_t), dtype=bool)
    if n_t > 1:
        h0 = config.dropout_hazard
        base = math.log(h0 / (1 - h0)) if h0 > 0 else -np.inf
        hazard = 1.0 / (1.0 + np.exp(-(base + config.dropout_wellbeing_log_odds * z[:, :-1])))
        leave = rng.random((n, n_t - 1)) < hazard
        present[:, 1:] = np.cumprod(~leave, axis=1).astype(bool)

    # Item responses (n, T, J) through the GRM, one call per item (responses of a domain's
    # items are conditionally independent given theta).
    values = np.empty((n, n_t, n_j), dtype=np.int16)
    for j in range(n_j):
        th = theta[:, :, items.domain_index[j]].ravel()
        values[:, :, j] = simulate_grm(
            th, items.discrimination[j : j + 1], items.thresholds[j][None, :], rng,
            minimum=int(items.minimum[j]),
        ).reshape(n, n_t)
    skipped = rng.random((n, n_t, n_j)) < config.item_missing_rate

    # Session timestamps (µs since epoch, UTC): cohort start + enrolment day within the
    # cohort's four weeks + wave schedule + a response delay of up to three days.
    start_us = int(datetime.fromisoformat(config.start_date).replace(tzinfo=UTC).timestamp()
                   * 1_000_000)
    enrol = (start_us + cohort * config.cohort_spacing_days * _MICROS_PER_DAY
             + rng.integers(0, 28, n) * _MICROS_PER_DAY)
    delay = rng.integers(7 * 3600, 3 * 86_400, (n, n_t)) * 1_000_000  # whole seconds
    session = enrol[:, None] + (t.astype(np.int64) * config.wave_interval_days
                                * _MICROS_PER_DAY)[None, :] + delay
    instrument_offset = np.array([0 if i == INSTRUMENTS[0] else 120_000_000
                                  for i in items.instrument], dtype=np.int64)

    ids = _participant_ids(n)
    pi, ti = np.nonzero(present)  # row-major: participant, then wave
    n_sessions = pi.size
    rows_p = np.repeat(pi, n_j)
    rows_t = np.repeat(ti, n_j)
    rows_j = np.tile(np.arange(n_j), n_sessions)
    vals = values[pi, ti, :].ravel()
    miss = skipped[pi, ti, :].ravel()
    ts = (session[pi, ti][:, None] + instrument_offset[None, :]).ravel()
    item_names = pl.Series("item", items.item, dtype=pl.String)
    inst_names = pl.Series("instrument", items.instrument, dtype=pl.String)
    j_idx = pl.Series(rows_j.astype(np.uint32))
    responses = pl.DataFrame(
        {
            "participant_id": ids.gather(pl.Series(rows_p.astype(np.uint32))),
            "wave": pl.Series(rows_t.astype(np.int32)),
            "timestamp": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
            "instrument": inst_names.gather(j_idx),
            "item": item_names.gather(j_idx),
            "value": pl.from_arrow(pa.array(vals, mask=miss)),
        }
    )

    participants = pl.DataFrame(
        {
            "participant_id": ids,
            "arm": pl.Series(np.array(ARMS)[treated.astype(int)], dtype=pl.String),
            "cohort": pl.Series(np.array(cohorts)[cohort], dtype=pl.String),
            "country": pl.Series(np.array(countries)[country], dtype=pl.String),
        }
    )
    latents = pl.DataFrame(
        {
            "participant_id": ids.gather(pl.Series(np.repeat(np.arange(n), n_d).astype(np.uint32))),
            "domain": pl.Series(list(DOMAINS) * n, dtype=pl.String),
            "intercept": a.ravel(),
            "slope": b.ravel(),
            "slope_effect": eff.ravel(),
        }
    )

    telemetry = _simulate_telemetry(config, rng, ids, pi, ti, session, z, treated)

    truth = compute_truth(config, library=lib, items=items)
    truth["sample"] = {
        "n_participants": n,
        "n_by_arm": {arm: int(k) for arm, k in zip(ARMS, [n - n_treat, n_treat], strict=True)},
        "present_by_arm_wave": [
            {"arm": arm, "wave": w, "n": int(present[treated == (k == 1), w].sum())}
            for k, arm in enumerate(ARMS) for w in range(n_t)
        ],
        "response_rows": int(responses.height),
        "skipped_items": int(miss.sum()),
        "telemetry_rows": int(telemetry.height),
    }
    truth = {"config": config.to_dict(), **truth}
    return SimulatedStudy(participants, responses, telemetry, latents, truth, config)


def _simulate_telemetry(
    config: DemoStudyConfig,
    rng: np.random.Generator,
    ids: pl.Series,
    pi: np.ndarray,
    ti: np.ndarray,
    session: np.ndarray,
    z: np.ndarray,
    treated: np.ndarray,
) -> pl.DataFrame:
    schema = {"participant_id": pl.String, "timestamp": pl.Datetime("us", "UTC"),
              "event": pl.String, "duration_s": pl.Float64}
    if not config.telemetry:
        return pl.DataFrame(schema=schema)
    # Events in the window after each attended wave; rate rises with current latent
    # wellbeing and in the treatment arm (engagement tracks the latent state). The window
    # is the wave interval less the three-day response delay, so windows never overlap and
    # events come out ordered by participant and time without a sort of the big frame.
    zt = z[pi, ti]
    rate = (config.telemetry_rate * np.where(treated[pi], config.telemetry_treatment_rate_ratio,
                                             1.0)
            * np.exp(config.telemetry_wellbeing_log_rate * zt))
    count = rng.poisson(rate)
    total = int(count.sum())
    window_s = (config.wave_interval_days - 3) * 86_400
    owner = np.repeat(np.arange(pi.size, dtype=np.int64), count)
    key = np.sort(owner * window_s + rng.integers(0, window_s, total))
    owner, offset_s = np.divmod(key, window_s)
    ts = session[pi[owner], ti[owner]] + offset_s * 1_000_000
    kind = np.searchsorted(np.cumsum([0.6, 0.3]), rng.random(total), side="right")
    # Sessions last longer for people doing better: log-normal, median 90 s at z = 0.
    duration = np.round(np.exp(np.log(90.0) + 0.2 * zt[owner] + 0.6 * rng.standard_normal(total)),
                        1)
    return pl.DataFrame(
        {
            "participant_id": ids.gather(pl.Series(pi[owner].astype(np.uint32))),
            "timestamp": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
            "event": pl.Series(list(TELEMETRY_EVENTS), dtype=pl.String).gather(
                pl.Series(kind.astype(np.uint32))),
            "duration_s": duration,
        }
    )


# ----------------------------------------------------------------------------- analysis plan


def build_analysis_plan(
    config: DemoStudyConfig | None = None, *, library: InstrumentLibrary | None = None
) -> dict[str, Any]:
    """The demo's pre-registered analysis plan as the mapping written to ``analysis_plan.yaml``.

    H1 (primary): ANCOVA on ``who5.total`` at the final wave. H2–H7 (secondary, family
    ``domains``): ANCOVA on each Flourish domain at the final wave. H8: MMRM arm × wave
    slope on ``flourish12.flourish_index``. H9: Bayesian growth model on ``who5.total``.
    H10 (guardrail): MMRM on ``flourish12.mental_physical_health`` (the programme must not
    harm health). Minimum important differences come from the instrument file where it has
    one (WHO-5: 10 points), else :data:`DEMO_FLOURISH_MID` on the 0–10 Flourish scales.

    Parameters
    ----------
    config : DemoStudyConfig, optional
        Study config (title, final wave, planned sample size, allocation).
    library : InstrumentLibrary, optional
        Instrument library (default: built-in).

    Returns
    -------
    dict
        Keys ``title, control_arm, treatment_arm, multiplicity, allocation,
        planned_sample_size, waves, hypotheses, public``.
    """
    config = config or DemoStudyConfig()
    lib = library or _library()
    final = config.waves - 1

    def mid(outcome: str) -> float:
        inst, scale = outcome.split(".", 1)
        return float(lib[inst].minimal_important_difference.get(scale, DEMO_FLOURISH_MID))

    def hyp(hid: str, role: str, family: str, outcome: str, method: str) -> dict[str, Any]:
        h: dict[str, Any] = {"id": hid, "role": role, "family": family, "outcome": outcome,
                             "method": method}
        if method == "ancova":
            h["wave"] = final
        h.update({"alpha": PLAN_ALPHA, "sided": "two",
                  "minimum_important_difference": mid(outcome)})
        return h

    domains = [d for d in DOMAINS if DOMAINS[d][0] == "flourish12"]
    hypotheses = [hyp("H1", "primary", "primary", "who5.total", "ancova")]
    hypotheses += [
        hyp(f"H{k + 2}", "secondary", "domains", f"flourish12.{d}", "ancova")
        for k, d in enumerate(domains)
    ]
    n = len(hypotheses)
    hypotheses += [
        hyp(f"H{n + 1}", "secondary", "indices", "flourish12.flourish_index", "mmrm"),
        hyp(f"H{n + 2}", "secondary", "bayesian", "who5.total", "bayes_growth"),
        hyp(f"H{n + 3}", "guardrail", "guardrails", "flourish12.mental_physical_health", "mmrm"),
    ]
    share = float(config.treatment_share)
    return {
        "title": config.name,
        "control_arm": ARMS[0],
        "treatment_arm": ARMS[1],
        "multiplicity": "holm",
        "allocation": {ARMS[0]: round(1.0 - share, 10), ARMS[1]: round(share, 10)},
        "planned_sample_size": int(config.n_participants),
        "waves": list(range(config.waves)),
        "hypotheses": hypotheses,
        # What the public report may show, sealed with the plan: the primary outcome and
        # each Flourish domain separately (a profile, not the collapsed index), WHO-5's
        # trajectory by arm; retention is the share expected to have a WHO-5 total at the last
        # wave: the planned attrition (8 % a wave) times all five items answered. The
        # primary effect's and the trajectory's usefulness is 4 points (not the default 5,
        # half the MID): the published margins divide by noisy counts and the effect's
        # interval adds sampling error, and both should stay well inside 5 points and 2.5x
        # the non-private interval.
        "public": {
            "outcomes": ["who5.total", *(f"flourish12.{d}" for d in domains)],
            "trajectories": ["who5.total"],
            "usefulness": {"effect:who5.total@4": 4.0, "means:who5.total": 4.0},
            "expected_retention": round((1.0 - config.dropout_hazard) ** final
                                        * (1.0 - config.item_missing_rate) ** 5, 2),
        },
    }


# ----------------------------------------------------------------------------- writing

_SURVEY_COLUMNS = ["participant_id", "wave", "timestamp", "instrument", "item", "value"]
_HEADER_ONLY_FILE = "survey/wave_extra_header_only.csv"
_ZERO_BYTE_FILE = "survey/wave_extra_zero_bytes.csv"


def _survey_text(study: SimulatedStudy) -> pl.DataFrame:
    """The long responses as text (what a CSV holds) with helper columns for ordering."""
    names = [r["item"] for r in study.truth["items"]]
    order = pl.DataFrame({"item": names, "_j": list(range(len(names)))},
                         schema={"item": pl.String, "_j": pl.Int64})
    return (
        study.responses.join(order, on="item", how="left", maintain_order="left")
        .select(
            pl.col("participant_id"),
            pl.col("wave").cast(pl.String),
            pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%SZ").alias("timestamp"),
            pl.col("instrument"),
            pl.col("item"),
            pl.col("value").cast(pl.String),
            pl.col("wave").cast(pl.Int64).alias("_wave"),
            (pl.col("participant_id").str.slice(1).cast(pl.Int64) - 1).alias("_p"),
            pl.col("_j"),
            pl.lit(0, dtype=pl.Int64).alias("_copy"),
            pl.lit(None, dtype=pl.String).alias("_kind"),
            pl.lit(None, dtype=pl.String).alias("_role"),
        )
    )


def _inject_defects(
    text: pl.DataFrame, study: SimulatedStudy
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Add every kind of row-level defect; each defective row carries exactly one kind.

    Draws come from a generator seeded by ``(seed, 1)``, so the clean data are the same
    whether or not defects are injected.
    """
    config = study.config
    rng = np.random.default_rng([config.seed, 1])
    k = config.defect_rows
    item_ranges = {r["item"]: (r["min"], r["max"]) for r in study.truth["items"]}
    height = text.height
    has_value = text["value"].is_not_null().to_numpy()
    is_wave0 = (text["_wave"] == 0).to_numpy()
    used = np.zeros(height, dtype=bool)

    def pick(pool: np.ndarray, count: int) -> np.ndarray:
        cand = np.flatnonzero(pool & ~used)
        if cand.size < count:
            raise ValueError("study too small for the requested number of defect rows")
        chosen = np.sort(rng.choice(cand, size=count, replace=False))
        used[chosen] = True
        return chosen

    chosen = {
        "out_of_range": pick(has_value, k),
        "non_integer": pick(has_value, k),
        "text_value": pick(has_value, k),
        "whitespace_value": pick(has_value, k),
        "bad_timestamp": pick(np.ones(height, dtype=bool), k),
        "wrong_type_wave": pick(is_wave0, k),
        "duplicate_conflicting": pick(has_value, k),
        "duplicate_identical": pick(np.ones(height, dtype=bool), k),
        "unknown_item": pick(np.ones(height, dtype=bool), k),
    }
    # Ghost sessions: k distinct (participant, wave) sessions copied under new ids.
    sessions = text.select("_p", "_wave").unique(maintain_order=True)
    ghost_src = np.sort(rng.choice(sessions.height, size=k, replace=False))
    n = config.n_participants

    ranges = pl.DataFrame(
        {"item": list(item_ranges), "_min": [v[0] for v in item_ranges.values()],
         "_max": [v[1] for v in item_ranges.values()]}
    )
    text = text.with_row_index("_r").join(ranges, on="item", how="left", maintain_order="left")

    def rows(kind: str) -> pl.Expr:
        return pl.col("_r").is_in(pl.Series(chosen[kind].astype(np.uint32)).implode())

    def alt(kind: str) -> pl.Expr:
        # Every other chosen row gets the first of two variants, so both always occur.
        return pl.col("_r").is_in(pl.Series(chosen[kind][::2].astype(np.uint32)).implode())

    v = pl.col("value").cast(pl.Int64, strict=False)

    # Appended rows are copied from the clean rows before any modification.
    dup_conf = text.filter(rows("duplicate_conflicting")).with_columns(
        ((v - pl.col("_min") + 1) % (pl.col("_max") - pl.col("_min") + 1) + pl.col("_min"))
        .cast(pl.String).alias("value"),
        pl.lit(1, dtype=pl.Int64).alias("_copy"),
        pl.lit("duplicate_conflicting").alias("_kind"),
        pl.lit("duplicate").alias("_role"),
    )
    dup_same = text.filter(rows("duplicate_identical")).with_columns(
        pl.lit(1, dtype=pl.Int64).alias("_copy"),
        pl.lit("duplicate_identical").alias("_kind"),
        pl.lit("duplicate").alias("_role"),
    )
    unknown = text.filter(rows("unknown_item")).with_columns(
        (pl.col("item").str.replace(r"_[0-9]+$", "_")
         + (90 + pl.int_range(pl.len())).cast(pl.String)).alias("item"),
        (90 + pl.int_range(pl.len())).cast(pl.Int64).alias("_j"),
        pl.lit("unknown_item").alias("_kind"),
    )
    ghost_keys = sessions[ghost_src].with_columns(
        (n + pl.int_range(pl.len())).cast(pl.Int64).alias("_ghost")
    )
    width = max(6, len(str(n + 1)))
    ghosts = (
        text.join(ghost_keys, on=["_p", "_wave"], how="inner", maintain_order="left")
        .with_columns(
            (pl.lit("P") + (pl.col("_ghost") + 1).cast(pl.String).str.zfill(width))
            .alias("participant_id"),
            pl.col("_ghost").alias("_p"),
            pl.lit("unknown_participant").alias("_kind"),
        )
        .drop("_ghost")
    )

    # In-place modifications.
    text = text.with_columns(
        pl.when(rows("out_of_range"))
        .then(
            pl.when(alt("out_of_range")).then(pl.col("_max") + 1)
            .otherwise(pl.col("_min") - 1).cast(pl.String)
        )
        .when(rows("non_integer"))
        .then(pl.when(v < pl.col("_max")).then(v).otherwise(v - 1).cast(pl.String) + ".5")
        .when(rows("text_value"))
        .then(pl.when(alt("text_value")).then(pl.lit("n/a")).otherwise(pl.lit("abc")))
        .when(rows("whitespace_value"))
        .then(pl.col("value") + " ")
        .otherwise(pl.col("value"))
        .alias("value"),
        pl.when(rows("bad_timestamp"))
        .then(
            pl.when(alt("bad_timestamp")).then(pl.lit("not a date"))
            .otherwise(pl.lit("2026-02-30T25:61:00Z"))
        )
        .otherwise(pl.col("timestamp"))
        .alias("timestamp"),
        pl.when(rows("wrong_type_wave")).then(pl.lit("baseline")).otherwise(pl.col("wave"))
        .alias("wave"),
        pl.when(rows("duplicate_conflicting") | rows("duplicate_identical"))
        .then(pl.lit("original"))
        .otherwise(pl.col("_role"))
        .alias("_role"),
    )
    kind_expr = pl.col("_kind")
    for kind in ("out_of_range", "non_integer", "text_value", "whitespace_value",
                 "bad_timestamp", "wrong_type_wave"):
        kind_expr = pl.when(rows(kind)).then(pl.lit(kind)).otherwise(kind_expr)
    kind_expr = (
        pl.when(rows("duplicate_conflicting")).then(pl.lit("duplicate_conflicting"))
        .when(rows("duplicate_identical")).then(pl.lit("duplicate_identical"))
        .otherwise(kind_expr)
    )
    text = text.with_columns(kind_expr.alias("_kind"))
    combined = pl.concat([text, dup_conf, dup_same, unknown, ghosts], how="vertical")
    combined = combined.drop("_r", "_min", "_max")
    return combined, {"ghost_participants": int(k)}


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _study_toml(config: DemoStudyConfig) -> str:
    lines = [
        f"name = {_toml_string(config.name)}",
        'output_dir = "out"',
        "",
        "[participants]",
        'path = "participants.csv"',
        "",
        "[[survey]]",
        'path = "survey/*.csv"',
        'layout = "long"',
        'instruments = ["who5", "flourish12"]',
        "",
    ]
    if config.telemetry:
        lines += ["[telemetry]", 'path = "telemetry/*.parquet"', ""]
    lines += [
        "[analysis]",
        'plan = "analysis_plan.yaml"',
        "",
        "[privacy]",
        f"epsilon = {float(config.epsilon)!r}",
        "",
    ]
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


class DemoTargetError(IngestError):
    """The demo's folder holds something that is not a previous demo; nothing was written.

    An ``IngestError`` so that the CLI reports it as unusable input (exit 2).
    """


def _is_previous_demo(root: Path) -> bool:
    """Whether ``root`` holds a ``truth.json`` as this writer writes it (config + defects)."""
    try:
        truth = json.loads((root / "truth.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(truth, dict) and isinstance(truth.get("config"), dict) and (
        "defects" in truth)


def check_demo_target(out_dir: Path | str) -> Path:
    """The demo's folder, when it is safe to write into; else :class:`DemoTargetError`.

    Safe: a folder that does not exist yet, an empty folder, or a previous demo (recognised
    by its ``truth.json``). Any other folder may be a user's study, whose survey files,
    spec and participants a demo would delete or overwrite, so it is refused.
    """
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise DemoTargetError(root, "exists and is not a folder; choose a new or empty folder")
    if root.is_dir() and any(root.iterdir()) and not _is_previous_demo(root):
        raise DemoTargetError(
            root,
            "the folder is not empty and is not a previous demo (no truth.json written by "
            "'flourish demo'); refusing to overwrite it — choose a new or empty folder",
        )
    return root


def write_demo_study(
    out_dir: Path | str,
    config: DemoStudyConfig | None = None,
    *,
    dirty: bool | None = None,
) -> DemoStudy:
    """Write a complete synthetic study with known truth; same config, byte-identical files.

    Files (relative to ``out_dir``): ``study.toml``, ``participants.csv`` (participant_id,
    arm, cohort, country), ``survey/wave_<w>.csv`` (long layout, blank value = skipped
    item), ``telemetry/events.parquet`` (when telemetry is on), ``analysis_plan.yaml``
    (:func:`build_analysis_plan`) and ``truth.json`` (:func:`compute_truth`, sample facts
    and, when dirty, ``defects``). Previously written ``survey/wave_*.csv`` and
    ``telemetry/events.parquet`` are removed first, so a rewrite with fewer waves leaves no
    stale files; nothing else in ``out_dir`` is touched. A non-empty ``out_dir`` that is not
    a previous demo (no ``truth.json`` as written here) is refused with
    :class:`DemoTargetError` before anything is written (:func:`check_demo_target`).

    With defects (``dirty=True``, or ``config.defects`` when ``dirty`` is None) the survey
    files also carry, ``config.defect_rows`` each: unknown item ids, out-of-range values,
    non-integer values (``"3.5"``), text values (``"n/a"``, ``"abc"``), values with a
    trailing space (``"5 "``), duplicated participant × wave × item rows with a conflicting
    value and identical repeats, whole sessions of participants missing from the
    participants table, unparseable timestamps and the wave ``"baseline"`` in the wave-0
    file; the final wave's header has a stray space (``"value "``); and the survey glob
    also matches a header-only file and a zero-byte file. ``truth.json["defects"]`` records
    how many rows of each kind were injected and where (file, 1-based data row).

    Parameters
    ----------
    out_dir : Path or str
        Study folder (created if missing).
    config : DemoStudyConfig, optional
        The study (default: ``DemoStudyConfig()``).
    dirty : bool, optional
        Override ``config.defects``.

    Returns
    -------
    DemoStudy
        Paths of the written files and the truth.

    Raises
    ------
    DemoTargetError
        ``out_dir`` is a file, or a non-empty folder that is not a previous demo.
    """
    config = config or DemoStudyConfig()
    if dirty is not None and dirty != config.defects:
        config = DemoStudyConfig(**{**_config_fields(config), "defects": dirty})
    root = check_demo_target(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    survey_dir = root / "survey"
    survey_dir.mkdir(exist_ok=True)
    for stale in sorted(survey_dir.glob("wave_*.csv")):
        stale.unlink()
    stale_tel = root / "telemetry" / "events.parquet"
    if stale_tel.exists():
        stale_tel.unlink()

    study = simulate_study_frames(config)
    lib = _library()
    truth = dict(study.truth)

    participants_path = root / "participants.csv"
    study.participants.write_csv(participants_path, line_terminator="\n")

    text = _survey_text(study)
    defects_meta: dict[str, Any] | None = None
    if config.defects:
        text, defects_meta = _inject_defects(text, study)
    text = text.sort("_wave", "_p", "_j", "_copy", maintain_order=True)
    text = text.with_columns(
        (pl.int_range(pl.len()).over("_wave") + 1).alias("_row"),
        pl.format("survey/wave_{}.csv", pl.col("_wave")).alias("_file"),
    )
    final = config.waves - 1
    survey_paths: list[Path] = []
    for w in range(config.waves):
        path = survey_dir / f"wave_{w}.csv"
        part = text.filter(pl.col("_wave") == w).select(_SURVEY_COLUMNS)
        csv = part.write_csv(line_terminator="\n")
        if config.defects and w == final:
            header, _, body = csv.partition("\n")
            csv = header.replace(",value", ",value ") + "\n" + body
        _write_text(path, csv)
        survey_paths.append(path)

    if config.defects:
        header_only = root / _HEADER_ONLY_FILE
        _write_text(header_only, ",".join(_SURVEY_COLUMNS) + "\n")
        zero = root / _ZERO_BYTE_FILE
        _write_text(zero, "")
        survey_paths += [header_only, zero]
        truth["defects"] = _defect_summary(text, config, defects_meta or {})
    else:
        truth["defects"] = {"injected": False}

    telemetry_path: Path | None = None
    if config.telemetry:
        telemetry_path = root / "telemetry" / "events.parquet"
        telemetry_path.parent.mkdir(parents=True, exist_ok=True)
        study.telemetry.write_parquet(telemetry_path)

    plan_path = root / "analysis_plan.yaml"
    plan = build_analysis_plan(config, library=lib)
    _write_text(plan_path, yaml.safe_dump(plan, sort_keys=False, allow_unicode=True))

    study_path = root / "study.toml"
    _write_text(study_path, _study_toml(config))

    truth_path = root / "truth.json"
    _write_text(truth_path, json.dumps(truth, indent=1, ensure_ascii=False) + "\n")
    return DemoStudy(
        root=root,
        study_path=study_path,
        participants_path=participants_path,
        survey_paths=tuple(survey_paths),
        telemetry_path=telemetry_path,
        plan_path=plan_path,
        truth_path=truth_path,
        truth=truth,
    )


def _config_fields(config: DemoStudyConfig) -> dict[str, Any]:
    return {f: getattr(config, f) for f in config.__dataclass_fields__}


def _defect_summary(
    text: pl.DataFrame, config: DemoStudyConfig, meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Exact counts and locations of the injected defects (``truth.json["defects"]``)."""
    injected = text.filter(pl.col("_kind").is_not_null() & (pl.col("_role") != "original")
                           | pl.col("_kind").is_not_null() & pl.col("_role").is_null())
    counts = injected.group_by("_kind").len()
    rows = {k: 0 for k in DEFECT_KINDS}
    rows.update({r["_kind"]: int(r["len"]) for r in counts.iter_rows(named=True)})
    by_file = (
        injected.group_by("_file", "_kind").len().sort("_file", "_kind")
        .iter_rows(named=True)
    )
    rows_by_file: dict[str, dict[str, int]] = {}
    for r in by_file:
        rows_by_file.setdefault(r["_file"], {})[r["_kind"]] = int(r["len"])
    involved = text.filter(pl.col("_kind").is_not_null()).sort("_wave", "_row")
    locations = [
        {
            "kind": r["_kind"],
            "role": r["_role"] or "defect",
            "file": r["_file"],
            "row": int(r["_row"]),
            "participant_id": r["participant_id"],
            "wave": r["wave"],
            "timestamp": r["timestamp"],
            "item": r["item"],
            "value": r["value"],
        }
        for r in involved.iter_rows(named=True)
    ]
    # How each kind was written, so a test can map kinds onto validation's own reasons
    # (e.g. "n/a" is an NA token, "abc" is not a number).
    variants: dict[str, dict[str, int]] = {"text_value": {}, "out_of_range": {},
                                           "bad_timestamp": {}}
    for loc in locations:
        if loc["kind"] == "text_value":
            label = loc["value"]
        elif loc["kind"] == "out_of_range":
            label = "below_min" if loc["value"].startswith("-") else "above_max"
        elif loc["kind"] == "bad_timestamp":
            label = loc["timestamp"]
        else:
            continue
        variants[loc["kind"]][label] = variants[loc["kind"]].get(label, 0) + 1
    data_rows = {
        r["_file"]: int(r["len"])
        for r in text.group_by("_file").len().sort("_file").iter_rows(named=True)
    }
    data_rows[_HEADER_ONLY_FILE] = 0
    data_rows[_ZERO_BYTE_FILE] = 0
    return {
        "injected": True,
        "rows": rows,
        "rows_by_file": rows_by_file,
        "rows_total": int(sum(rows.values())),
        "variants": variants,
        "duplicate_keys": {
            "duplicate_conflicting": rows["duplicate_conflicting"],
            "duplicate_identical": rows["duplicate_identical"],
        },
        "duplicate_rows_involved": {
            "duplicate_conflicting": 2 * rows["duplicate_conflicting"],
            "duplicate_identical": 2 * rows["duplicate_identical"],
        },
        "unknown_participants": int(meta.get("ghost_participants", 0)),
        "data_rows_by_file": data_rows,
        "clean_rows": int(text.filter(pl.col("_kind").is_null()).height),
        "header_whitespace": {"file": f"survey/wave_{config.waves - 1}.csv",
                              "column": "value ", "canonical": "value"},
        "empty_file": {"file": _HEADER_ONLY_FILE, "data_rows": 0},
        "zero_byte_file": {"file": _ZERO_BYTE_FILE, "bytes": 0},
        "locations": locations,
        "notes": (
            "rows[kind] counts injected rows: modified in place, or appended "
            "(duplicate_* count the appended copy; its original is listed in locations "
            "with role 'original'; unknown_participant counts every row of the copied "
            "sessions). whitespace_value rows hold a valid value after stripping; "
            "duplicate_identical rows are exact repeats of a valid row."
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Write a demo study: ``python -m orchestration.demo --out DIR [--participants N]``."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--participants", type=int, default=1000)
    p.add_argument("--seed", type=int, default=DemoStudyConfig.seed)
    p.add_argument("--dirty", action="store_true")
    args = p.parse_args(argv)
    demo = write_demo_study(
        args.out, DemoStudyConfig(n_participants=args.participants, seed=args.seed),
        dirty=args.dirty,
    )
    print(f"wrote {demo.study_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
