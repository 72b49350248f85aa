"""What the dashboard pages show, computed without Streamlit (so tests reach every number).

Pages read a study's outputs through :class:`StudyOutputs` and draw; every table they draw
comes from a function here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import polars as pl

STUDY_ENV = "FLOURISH_STUDY"


@dataclass(frozen=True)
class StudyOutputs:
    """A study's output directory, with each table loaded on first use (None if absent)."""

    output_dir: Path
    name: str = "study"

    def _read(self, stem: str) -> pl.DataFrame | None:
        path = self.output_dir / f"{stem}.parquet"
        return pl.read_parquet(path) if path.exists() else None

    @cached_property
    def participants(self) -> pl.DataFrame | None:  # noqa: D102
        return self._read("participants")

    @cached_property
    def responses(self) -> pl.DataFrame | None:  # noqa: D102
        return self._read("responses")

    @cached_property
    def quarantine(self) -> pl.DataFrame | None:  # noqa: D102
        return self._read("quarantine")

    @cached_property
    def scores(self) -> pl.DataFrame | None:  # noqa: D102
        return self._read("scores")

    def table(self, stem: str) -> pl.DataFrame | None:
        """Any other output table by file stem (``effects``, ``posterior``, ...)."""
        return self._read(stem)

    @cached_property
    def validation_summary(self) -> dict:  # noqa: D102
        path = self.output_dir / "validation_summary.json"
        return json.loads(path.read_text()) if path.exists() else {}


def locate_outputs(spec_path: str | None = None) -> StudyOutputs:
    """The outputs of the study named by ``spec_path`` or the ``FLOURISH_STUDY`` variable."""
    from orchestration.spec import load_study_spec

    spec_path = spec_path or os.environ.get(STUDY_ENV)
    if not spec_path:
        raise FileNotFoundError(f"no study given: set {STUDY_ENV} or run `flourish dashboard`")
    spec = load_study_spec(spec_path)
    return StudyOutputs(output_dir=spec.output_path, name=spec.name)


def compute_participation(scores: pl.DataFrame, participants: pl.DataFrame) -> pl.DataFrame:
    """Participants with any score per arm × wave, with the response rate over randomised."""
    randomised = participants.group_by("arm").agg(pl.len().alias("randomised"))
    return (
        scores.select("participant_id", "wave").unique()
        .join(participants.select("participant_id", "arm"), on="participant_id")
        .group_by("arm", "wave").agg(pl.len().alias("participants"))
        .join(randomised, on="arm")
        .with_columns((pl.col("participants") / pl.col("randomised")).alias("response_rate"))
        .sort("arm", "wave")
    )


def compute_attrition_funnel(scores: pl.DataFrame, participants: pl.DataFrame) -> pl.DataFrame:
    """Participants still responding at each wave or later (monotone funnel), per arm."""
    last = (
        scores.group_by("participant_id").agg(pl.col("wave").max().alias("last_wave"))
        .join(participants.select("participant_id", "arm"), on="participant_id", how="right")
    )
    waves = scores.select(pl.col("wave").unique().sort()).to_series().to_list()
    frames = [
        last.group_by("arm").agg(
            (pl.col("last_wave").fill_null(-1) >= w).sum().alias("retained"),
            pl.len().alias("randomised"),
        ).with_columns(pl.lit(w, dtype=pl.Int32).alias("wave"))
        for w in waves
    ]
    if not frames:
        return pl.DataFrame(schema={"arm": pl.String, "wave": pl.Int32, "retained": pl.UInt32,
                                    "randomised": pl.UInt32, "retained_share": pl.Float64})
    return (
        pl.concat(frames)
        .with_columns((pl.col("retained") / pl.col("randomised")).alias("retained_share"))
        .select("arm", "wave", "retained", "randomised", "retained_share")
        .sort("arm", "wave")
    )


def compute_score_summary(scores: pl.DataFrame, participants: pl.DataFrame) -> pl.DataFrame:
    """Mean, SD and n of every scale per arm × wave, with a normal 95% interval of the mean."""
    return (
        scores.join(participants.select("participant_id", "arm"), on="participant_id")
        .group_by("instrument", "scale", "arm", "wave")
        .agg(pl.col("score").mean().alias("mean"), pl.col("score").std().alias("sd"),
             pl.col("score").count().alias("n"))
        .with_columns((1.959964 * pl.col("sd") / pl.col("n").sqrt()).alias("half_width"))
        .with_columns((pl.col("mean") - pl.col("half_width")).alias("ci_low"),
                      (pl.col("mean") + pl.col("half_width")).alias("ci_high"))
        .drop("half_width")
        .sort("instrument", "scale", "arm", "wave")
    )


def compute_quarantine_by_reason(quarantine: pl.DataFrame) -> pl.DataFrame:
    """Quarantined rows per reason and per source file."""
    return (
        quarantine.group_by("reason", "source").agg(pl.len().alias("rows"))
        .sort("rows", descending=True)
    )


def load_posterior_draws(path: Path, parameter: str = "slope_effect") -> pl.DataFrame | None:
    """All posterior draws of one parameter (column ``value``) from an ArviZ netCDF file."""
    if not path.exists():
        return None
    import arviz as az

    idata = az.from_netcdf(path)
    if parameter not in idata.posterior:
        return None
    return pl.DataFrame({"value": idata.posterior[parameter].values.ravel()})


def compute_raw_country_slopes(outputs: StudyOutputs, outcome: str = "who5.total") -> pl.DataFrame | None:
    """Unpooled per-country slope effect: OLS slope of score on wave, treatment − control.

    The "raw" side of the shrinkage plot: what each country's data say on their own.
    """
    panel = outputs.table("panel")
    if panel is None or "country" not in panel.columns:
        return None
    inst, scale = outcome.split(".", 1)
    slopes = (
        panel.filter((pl.col("instrument") == inst) & (pl.col("scale") == scale))
        .drop_nulls("score")
        .group_by("country", "arm")
        .agg((pl.cov("wave", "score") / pl.col("wave").var()).alias("slope"))
    )
    return (
        slopes.pivot(on="arm", index="country", values="slope")
        .select("country", (pl.col("treatment") - pl.col("control")).alias("raw_estimate"))
        if {"treatment", "control"} <= set(slopes["arm"].unique().to_list())
        else None
    )


def load_public_releases(folder: Path) -> list:
    """The DP release objects stored in ``releases/`` (the only input of public views)."""
    from privacy.release import DPRelease

    if not folder.exists():
        return []
    return [DPRelease.from_json(p.read_text()) for p in sorted(folder.glob("*.json"))]
