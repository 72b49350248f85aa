"""Plain functions that compose the domain packages into the study pipeline.

Dagster assets (``orchestration/assets.py``) and the CLI call these; each is a thin step
from one table to the next, so every step can be tested without Dagster. Only this module
and the readers touch the study's files.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from instruments.definition import InstrumentLibrary, load_library
from instruments.scoring import score_responses
from instruments.validation import ValidationResult, validate_responses
from orchestration.readers import read_participants, read_surveys
from orchestration.spec import StudySpec, load_study_spec
from privacy.pseudonymise import drop_direct_identifiers, pseudonymise_ids

PSEUDONYM_ENV_DEFAULT = "FLOURISH_PSEUDONYM_KEY"


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
    return Study(spec=spec, library=library)


def load_pseudonym_key(spec: StudySpec) -> bytes:
    """The study's pseudonymisation key.

    Order: the environment variable named in the spec (default ``FLOURISH_PSEUDONYM_KEY``),
    then the spec's key file, then ``pseudonym.key`` beside study.toml, created on first use
    with mode 0600. The key never enters ``output_dir`` (users share and delete outputs).
    """
    privacy = spec.privacy
    env = (privacy.pseudonym_key_env if privacy else None) or PSEUDONYM_ENV_DEFAULT
    if os.environ.get(env):
        return os.environ[env].encode()
    path = spec.resolve((privacy.pseudonym_key_file if privacy else None) or "pseudonym.key")
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip().encode()


@dataclass(frozen=True)
class IngestResult:
    """Validated, pseudonymised responses and everything that was set aside."""

    validation: ValidationResult
    participants: pl.DataFrame
    file_issues: pl.DataFrame
    identifiers: pl.DataFrame


def ingest_study(study: Study) -> IngestResult:
    """Read every survey file and the participants table, pseudonymise ids, validate.

    Direct identifiers (emails, phones, names, IPs) are dropped before anything is stored.
    """
    key = load_pseudonym_key(study.spec)
    participants = read_participants(study.spec)
    participants, id_report_p = drop_direct_identifiers(participants, protect=["participant_id"])
    participants = pseudonymise_ids(participants, "participant_id", key)
    raw = read_surveys(study.spec, study.library)
    rows = pseudonymise_ids(raw.rows, "participant_id", key)
    validation = validate_responses(rows, participants, study.library)
    coercions = pl.concat(
        [c for c in (raw.coercions, validation.coercions) if c is not None and c.height],
        how="diagonal_relaxed",
    ) if any(c is not None and c.height for c in (raw.coercions, validation.coercions)) else (
        validation.coercions
    )
    validation = validation.with_coercions(coercions) if hasattr(validation, "with_coercions") else validation
    return IngestResult(
        validation=validation,
        participants=participants,
        file_issues=raw.file_issues,
        identifiers=id_report_p.to_frame(),
    )


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
    paths["validation_summary"].write_text(json.dumps(summary, indent=2, default=str))
    return paths


def score_study(study: Study, responses: pl.DataFrame) -> pl.DataFrame:
    """Score every scale of every instrument present in the responses."""
    return score_responses(responses, study.library)


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
