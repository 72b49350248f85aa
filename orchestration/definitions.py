"""Dagster Definitions for one study: assets, checks, a daily schedule and a survey-folder sensor.

``flourish run STUDY.toml`` materialises them in-process on an embedded instance under the
study's ``output_dir``. To browse the same Definitions in Dagster's UI::

    FLOURISH_STUDY=path/to/study.toml uv run dagster dev -m orchestration.definitions

(this module's ``defs`` is the one place that reads ``FLOURISH_STUDY``).
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

import dagster as dg

from orchestration import assets as foundation_assets
from orchestration import assets_analysis
from orchestration.resources import build_resources
from orchestration.spec import load_study_spec

ALL_ASSETS_JOB = "study_job"


def _survey_fingerprint(spec_path: Path) -> str:
    """A cursor over the survey files: names, sizes and modification times."""
    spec = load_study_spec(spec_path)
    parts: list[str] = []
    for survey in spec.survey:
        for f in sorted(glob.glob(str(spec.resolve(survey.path)))):
            st = os.stat(f)
            parts.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def asset_modules() -> list[object]:
    """The modules whose assets and checks make up a study's pipeline."""
    mods: list[object] = [foundation_assets, assets_analysis]
    return mods


def build_definitions(spec_path: Path | str) -> dg.Definitions:
    """Definitions for the study described by ``spec_path``."""
    spec_path = Path(spec_path).resolve()
    modules = asset_modules()
    assets = dg.load_assets_from_modules(modules)
    checks = dg.load_asset_checks_from_modules(modules)
    job = dg.define_asset_job(ALL_ASSETS_JOB, selection=dg.AssetSelection.all(),
                              description="Materialise every asset of the study.")
    schedule = dg.ScheduleDefinition(
        name="daily_study_refresh", job=job, cron_schedule="0 6 * * *",
        execution_timezone="UTC", description="Re-run the whole study every morning.",
    )

    @dg.sensor(job=job, minimum_interval_seconds=60, name="new_survey_files",
               description="Requests a run when files in the survey folder are added or change.")
    def new_survey_files(context: dg.SensorEvaluationContext):
        fingerprint = _survey_fingerprint(spec_path)
        if fingerprint == context.cursor:
            return dg.SkipReason("no new or changed survey files")
        context.update_cursor(fingerprint)
        return dg.RunRequest(run_key=fingerprint)

    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[job],
        schedules=[schedule],
        sensors=[new_survey_files],
        resources=build_resources(spec_path),
    )


def _defs_from_environment() -> dg.Definitions | None:
    study = os.environ.get("FLOURISH_STUDY")
    return build_definitions(study) if study else None


defs = _defs_from_environment()
