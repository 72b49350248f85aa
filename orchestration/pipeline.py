"""Plain functions that compose the domain packages into the study pipeline.

Dagster assets (``orchestration/assets.py``) and the CLI call these; each is a thin step
from one table to the next, so every step can be tested without Dagster. Only this module
and the readers touch the study's files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from instruments.definition import InstrumentLibrary, load_library
from instruments.scoring import score_responses
from instruments.validation import ValidationResult, validate_responses
from orchestration.keys import pseudonym_key
from orchestration.readers import read_participants, read_surveys, timestamp_issues
from orchestration.spec import StudySpec, StudySpecError, load_study_spec
from privacy.pseudonymise import drop_direct_identifiers, pseudonymise_ids, pseudonymise_series


@dataclass(frozen=True)
class Study:
    """A loaded study: its spec and the instrument library it uses."""

    spec: StudySpec
    library: InstrumentLibrary

    @property
    def out(self) -> Path:
        """The study's output directory (created on demand)."""
        path = self.spec.output_path
        path.mkdir(parents=True, exist_ok=True)
        return path


def load_study(spec_path: Path | str) -> Study:
    """Load a study spec and the instrument library it needs (built-ins + its own folders)."""
    spec = load_study_spec(spec_path)
    library = load_library(spec.instrument_dirs)
    for i, survey in enumerate(spec.survey):
        unknown = [x for x in survey.instruments if x not in library.ids()]
        if unknown:
            raise StudySpecError(
                spec_path, f"survey.{i}.instruments",
                f"unknown instrument(s) {unknown}; the library has {list(library.ids())}",
            )
    return Study(spec=spec, library=library)


@dataclass(frozen=True)
class IngestResult:
    """Validated, pseudonymised responses and everything that was set aside."""

    validation: ValidationResult
    participants: pl.DataFrame
    file_issues: pl.DataFrame
    identifiers: pl.DataFrame

    @property
    def blocking_file_issues(self) -> pl.DataFrame:
        """File issues that must make ``validate`` exit non-zero (3).

        A survey file that is empty or has a header only
        (:data:`orchestration.readers.BLOCKING_FILE_ISSUES`).
        """
        from orchestration.readers import BLOCKING_FILE_ISSUES

        return self.file_issues.filter(pl.col("reason").is_in(list(BLOCKING_FILE_ISSUES)))

    @property
    def needs_attention(self) -> bool:
        """Rows were quarantined or a survey file held no response: ``validate`` exits 3."""
        return bool(self.validation.summary.quarantined or self.blocking_file_issues.height)


def ingest_study(study: Study) -> IngestResult:
    """Read every survey file and the participants table, pseudonymise ids, validate.

    Direct identifiers (emails, phones, names, IPs) are dropped before anything is stored.
    """
    key = pseudonym_key(study.spec).key
    participants = read_participants(study.spec)
    participants, identifiers = drop_direct_identifiers(participants, protect=("participant_id",))
    raw = read_surveys(study.spec, study.library)
    try:
        rows = raw.rows.collect()
    except pl.exceptions.ComputeError as exc:
        raise _name_unparseable_file(study, raw.files, exc) from None
    keyed = pseudonymise_ids(participants, "participant_id", key)
    known = pl.DataFrame({"raw": participants["participant_id"], "out": keyed["participant_id"]})

    def pseudonymise(ids: pl.Series) -> pl.Series:
        """The participants table's pseudonyms, computed once; HMAC only for ids it lacks."""
        out = ids.to_frame("raw").join(known, on="raw", how="left", maintain_order="left")["out"]
        new = out.is_null() & ids.is_not_null()
        if new.any():
            out = out.scatter(new.arg_true(), pseudonymise_series(ids.filter(new), key))
        return out

    # Validation sees the ids as written (so " p1" is stripped to "p1" before it is keyed)
    # and pseudonymises the distinct ids; nothing downstream ever holds a raw id.
    validation = validate_responses(
        rows, participants, study.library, pseudonymise=pseudonymise,
        survey_instruments=raw.instruments_by_source, malformed=raw.malformed,
    )
    participants = keyed
    if raw.coercions is not None and raw.coercions.height:
        validation = validation.with_coercions(
            pl.concat([raw.coercions, validation.coercions], how="diagonal_relaxed")
        )
    file_issues = pl.concat(
        [raw.file_issues, timestamp_issues(raw, rows, validation.quarantine)]
    )
    # Participants' identifiers were dropped from the table; the surveys' (a Qualtrics
    # export's IPAddress, RecipientEmail, ...) were never read. Both are reported.
    participants_file = study.spec.participants.path
    identifier_report = pl.concat(
        [
            identifiers.to_frame().select(
                pl.lit(participants_file, dtype=pl.String).alias("source"), pl.all()
            ),
            raw.identifiers,
        ],
        how="vertical_relaxed",
    )
    return IngestResult(
        validation=validation,
        participants=participants,
        file_issues=file_issues,
        identifiers=identifier_report,
    )


def _name_unparseable_file(study: Study, files: list[str], exc: Exception) -> Exception:
    """Name the survey file polars could not parse; polars' own message names no file.

    Runs only on the error path, re-reading each CSV until one fails.
    """
    from orchestration.readers import IngestError

    detail = str(exc).strip().splitlines()[0]
    for name in files:
        path = study.spec.resolve(name)
        if path.suffix.lower() != ".csv":
            continue
        try:
            pl.read_csv(path, infer_schema=False)
        except pl.exceptions.ComputeError as file_exc:
            first = str(file_exc).strip().splitlines()[0]
            return IngestError(path, f"cannot parse as CSV: {first}")
    return IngestError(", ".join(files) or "survey files", f"cannot parse: {detail}")


def write_ingest_outputs(study: Study, result: IngestResult) -> dict[str, Path]:
    """Write responses, quarantine (Parquet + CSV) and the validation summary."""
    out = study.out
    paths = {
        "responses": out / "responses.parquet",
        "quarantine": out / "quarantine.parquet",
        "participants": out / "participants.parquet",
        "validation_summary": out / "validation_summary.json",
    }
    result.validation.responses.write_parquet(paths["responses"])
    result.validation.quarantine.write_parquet(paths["quarantine"])
    result.validation.quarantine.write_csv(out / "quarantine.csv")
    result.participants.write_parquet(paths["participants"])
    summary = dict(result.validation.summary_dict())
    summary["file_issues"] = result.file_issues.to_dicts()
    ignored = result.file_issues.filter(pl.col("reason") == "ignored_column")
    summary["ignored_columns"] = {
        source: cols
        for source, cols in ignored.group_by("source", maintain_order=True)
        .agg(pl.col("column"))
        .iter_rows()
    }
    summary["identifiers_dropped"] = result.identifiers.to_dicts()
    paths["validation_summary"].write_text(json.dumps(summary, indent=2, default=str))
    return paths


def score_study(study: Study, responses: pl.DataFrame) -> pl.DataFrame:
    """Score every scale of every instrument present in the responses."""
    return score_responses(responses, study.library, sort=True)


def build_panel(scores: pl.DataFrame, participants: pl.DataFrame) -> pl.DataFrame:
    """Scores joined with arm and covariates, plus each participant's baseline (wave 0)."""
    baseline = scores.filter(pl.col("wave") == 0).select(
        "participant_id", "instrument", "scale", pl.col("score").alias("baseline")
    )
    return (
        scores.join(participants, on="participant_id", how="inner")
        .join(baseline, on=["participant_id", "instrument", "scale"], how="left")
        .sort("instrument", "scale", "participant_id", "wave")
    )


def compute_response_rates(scores: pl.DataFrame, participants: pl.DataFrame) -> pl.DataFrame:
    """Participants with any score per arm × wave, over those randomised to the arm."""
    randomised = participants.group_by("arm").agg(pl.len().alias("randomised"))
    responded = (
        scores.join(participants.select("participant_id", "arm"), on="participant_id")
        .group_by("arm", "wave")
        .agg(pl.col("participant_id").n_unique().alias("responded"))
    )
    return (
        responded.join(randomised, on="arm")
        .with_columns((pl.col("responded") / pl.col("randomised")).alias("response_rate"))
        .sort("arm", "wave")
    )


# ------------------------------------------------------------------ trial analysis


def count_outcome_rows(study: Study) -> int:
    """Outcome rows present now (scores, else responses): recorded when a plan is sealed."""
    for stem in ("scores", "responses"):
        path = study.spec.output_path / f"{stem}.parquet"
        if path.exists():
            return pl.scan_parquet(path).select(pl.len()).collect().item()
    return 0


def plan_path(study: Study) -> Path | None:
    """The analysis plan named in the spec, or None."""
    return study.spec.resolve(study.spec.analysis.plan) if study.spec.analysis else None


def known_outcomes(library: InstrumentLibrary) -> set[str]:
    """Every ``instrument.scale`` id of the library."""
    return {f"{inst.id}.{s.id}" for inst in library for s in inst.scales}


def load_plan_for(study: Study, participants: pl.DataFrame):  # noqa: ANN201
    """The study's analysis plan (validated against its outcomes and arms) and its seal status."""
    from models.plan import load_analysis_plan, verify_plan

    path = plan_path(study)
    if path is None:
        return None, None
    arms = set(participants["arm"].unique().to_list())
    plan = load_analysis_plan(path, known_outcomes=known_outcomes(study.library), known_arms=arms)
    return plan, verify_plan(path)


def fit_effects(study: Study, panel: pl.DataFrame, participants: pl.DataFrame) -> pl.DataFrame:
    """Every pre-registered hypothesis plus exploratory ANCOVAs; ``effects.parquet``."""
    from models.effects import fit_trial_effects

    plan, check = load_plan_for(study, participants)
    if plan is None:
        return pl.DataFrame()
    result = fit_trial_effects(
        panel, plan, plan_sha256=check.sha256, plan_status=check.plan_status,
        participants=participants,
    )
    if result.sample_ratio is not None:
        result.sample_ratio.to_frame().write_parquet(study.out / "sample_ratio.parquet")
    return result.to_frame()


def compute_sample_ratio(study: Study, participants: pl.DataFrame):  # noqa: ANN201
    """Sample-ratio-mismatch check of arm sizes against the plan's allocation (or None)."""
    from models.effects import check_sample_ratio

    plan, _ = load_plan_for(study, participants)
    if plan is None or plan.allocation_shares is None:
        return None
    return check_sample_ratio(participants, plan.allocation_shares)


# ------------------------------------------------------------------ psychometrics


def compute_reliability_tables(study: Study, responses: pl.DataFrame):  # noqa: ANN201
    """Reliability per scale and wave (scale rows, item rows)."""
    from instruments.reliability import ReliabilityConfig, compute_reliability, scale_items_table

    result = compute_reliability(responses, scale_items_table(study.library), ReliabilityConfig())
    return result.to_frame(), result.items_frame()


def compute_retest_table(scores: pl.DataFrame) -> pl.DataFrame:
    """ICC(2,1) and ICC(3,1) between consecutive waves, per scale."""
    from instruments.retest import compute_retest

    return compute_retest(scores).to_frame()


INVARIANCE_GROUPS = ("country", "cohort", "language")


def compute_invariance_table(
    study: Study, responses: pl.DataFrame, participants: pl.DataFrame
) -> pl.DataFrame:
    """Configural/metric/scalar invariance at baseline, per instrument with ≥ 2 domains.

    The factor structure is the instrument's domain scales (those whose items do not
    overlap); the grouping is the first of country, cohort, language in the participants table.
    """
    from instruments.invariance import fit_invariance

    group = next((g for g in INVARIANCE_GROUPS if g in participants.columns), None)
    frames: list[pl.DataFrame] = []
    if group is None:
        return pl.DataFrame()
    base = responses.filter(pl.col("wave") == pl.col("wave").min())
    for inst in study.library:
        if inst.id not in set(base["instrument"].unique().to_list()):
            continue
        structure: dict[str, list[str]] = {}
        used: set[str] = set()
        for s in inst.scales:
            if len(s.items) < len(inst.items) and not used & set(s.items):
                structure[s.id] = list(s.items)
                used |= set(s.items)
        if len(structure) < 2:
            structure = {"general": [i.id for i in inst.items]}
        wide = (
            base.filter(pl.col("instrument") == inst.id)
            .pivot(on="item", index="participant_id", values="value")
            .join(participants.select("participant_id", group), on="participant_id")
            .drop_nulls()
        )
        items = [i for items in structure.values() for i in items]
        if any(i not in wide.columns for i in items):
            continue
        res = fit_invariance(wide.select(group, *[pl.col(i).cast(pl.Float64) for i in items]),
                             structure, group)
        frames.append(res.to_frame().with_columns(
            pl.lit(inst.id).alias("instrument"), pl.lit(group).alias("group")))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


# ------------------------------------------------------------------ Bayesian growth


def fit_posteriors(study: Study, panel: pl.DataFrame, participants: pl.DataFrame,
                   progress=None) -> pl.DataFrame:  # noqa: ANN001
    """Growth model for every ``bayes_growth`` hypothesis; writes ``posterior.nc`` beside."""
    from models.growth import GrowthConfig, fit_growth_model

    plan, _ = load_plan_for(study, participants)
    if plan is None:
        return pl.DataFrame()
    frames: list[pl.DataFrame] = []
    for h in plan.hypotheses:
        if h.method != "bayes_growth":
            continue
        inst_id, scale = h.outcome.split(".", 1)
        inst = study.library[inst_id]
        data = panel.filter((pl.col("instrument") == inst_id) & (pl.col("scale") == scale)
                            & pl.col("score").is_not_null())
        groups = tuple(g for g in ("country", "cohort") if g in data.columns)
        mid = h.minimum_important_difference
        if mid is None:
            mid = inst.minimal_important_difference.get(scale)
        config = GrowthConfig(
            outcome=h.outcome, scale_range=inst.scale_range(scale), hypothesis=h.id, mid=mid,
            treatment_arm=plan.treatment_arm, control_arm=plan.control_arm, groups=groups,
            chains=4, draws=2000, tune=1500, progress_callback=progress,
        )
        result = fit_growth_model(data, config)
        result.write_posterior(study.out / ("posterior.nc" if not frames else f"posterior_{h.id}.nc"))
        frames.append(result.to_frame())
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


# ------------------------------------------------------------------ telemetry


def ingest_telemetry(study: Study, participants: pl.DataFrame):  # noqa: ANN201
    """Validated, pseudonymised events (or None when the study has no telemetry)."""
    from models.telemetry import scan_events, validate_events

    if study.spec.telemetry is None:
        return None
    from orchestration.readers import expand_paths

    paths = expand_paths(study.spec, study.spec.telemetry.path)
    events = scan_events(paths).collect()
    events, _ = drop_direct_identifiers(events, protect=("participant_id",))
    events = pseudonymise_ids(events, "participant_id", pseudonym_key(study.spec).key)
    return validate_events(events.lazy(), participants["participant_id"])


def compute_engagement(study: Study, events: pl.DataFrame, responses: pl.DataFrame):  # noqa: ANN201
    """Engagement features per participant × wave over the window before each response."""
    from models.telemetry import EngagementConfig, compute_engagement_features

    tel = study.spec.telemetry
    waves = (
        responses.group_by("participant_id", "wave")
        .agg(pl.col("timestamp").min())
        .sort("participant_id", "wave")
    )
    config = EngagementConfig(window_days=tel.window_days, session_gap_minutes=tel.session_gap_minutes)
    return compute_engagement_features(events.lazy(), waves, config)


def fit_divergence_tables(study: Study, panel: pl.DataFrame, features: pl.DataFrame,
                          participants: pl.DataFrame):  # noqa: ANN201
    """Within/between models and the divergence flag per scale."""
    from models.divergence import DivergenceConfig, fit_divergence

    plan, _ = load_plan_for(study, participants)
    config = DivergenceConfig(
        control_arm=plan.control_arm if plan else None,
        treatment_arm=plan.treatment_arm if plan else None,
    )
    result = fit_divergence(panel, features, config)
    return result.engagement_frame(), result.divergence_frame()
