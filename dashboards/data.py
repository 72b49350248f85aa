"""What the dashboard pages show, computed without Streamlit (so tests reach every number).

Pages read a study's outputs through :class:`StudyOutputs` and draw; every table they draw
comes from a function here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from privacy.ledger import LedgerSummary
from privacy.objects import DPRelease, StoredRelease, verify_release_files

if TYPE_CHECKING:
    from orchestration.spec import StudySpec

STUDY_ENV = "FLOURISH_STUDY"


@dataclass(frozen=True)
class StudyOutputs:
    """A study's output directory, with each table loaded on first use (None if absent)."""

    output_dir: Path
    name: str = "study"
    spec: StudySpec | None = field(default=None, compare=False, repr=False)

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
    return StudyOutputs(output_dir=spec.output_path, name=spec.name, spec=spec)


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


# ----------------------------------------------------------------------------- public tier


@dataclass(frozen=True)
class PublicView:
    """What the public and privacy pages may show: releases that verify against the ledger.

    Attributes
    ----------
    releases
        Stored releases whose ledger stamp verifies, oldest first (by ledger seq).
    rejected
        ``(file, reason)`` for every file in ``releases/`` that is not a stored release or
        does not verify; never shown as DP results.
    summary
        The ledger's summary (budget, spent, remaining, head), or None without a ledger.
    problem
        Why nothing can be verified (no ledger, a ledger that fails its check, ...), or None.
    """

    releases: list[StoredRelease]
    rejected: list[tuple[str, str]]
    summary: LedgerSummary | None
    problem: str | None

    @property
    def newest(self) -> StoredRelease | None:
        """The release with the highest ledger seq (what the public report leads with)."""
        return self.releases[-1] if self.releases else None


def _releases_folder(spec: StudySpec) -> Path:
    return spec.output_path / "releases"


def _open_ledger(spec: StudySpec) -> Any:
    from orchestration.keys import open_study_ledger  # the study's keyed ledger

    return open_study_ledger(spec, create=False)


def load_public_releases(spec: StudySpec, *, ledger: Any = None) -> PublicView:
    """The study's stored releases that verify against its ledger, and the files that do not.

    Parameters
    ----------
    spec
        The study (its ``output_path / "releases"`` is read; its ledger is opened read-only
        with ``orchestration.keys.open_study_ledger(spec, create=False)``).
    ledger
        An already open ledger (anything with ``verify_stored(stamp, payload_json)`` and
        ``summary()``); tests pass a fake one.

    Returns
    -------
    PublicView
        Only files that parse as :class:`~privacy.objects.StoredRelease` *and* whose stamp
        the ledger verifies are in ``releases``; every other file is in ``rejected`` with
        the reason. Without a trustworthy ledger nothing is shown and ``problem`` says why.
    """
    from privacy import ledger as ledger_mod

    folder = _releases_folder(spec)
    files = sorted(folder.glob("*.json"))
    missing_error = getattr(ledger_mod, "LedgerMissingError", FileNotFoundError)
    if ledger is None:
        try:
            ledger = _open_ledger(spec)
        except missing_error as exc:
            reason = "no privacy ledger to verify it against"
            return PublicView([], [(str(p), reason) for p in files], None,
                              f"no privacy ledger ({exc}); nothing can be verified")
        except (ledger_mod.LedgerError, ImportError, OSError, ValueError) as exc:
            reason = "the privacy ledger cannot be opened"
            return PublicView([], [(str(p), reason) for p in files], None,
                              f"the privacy ledger cannot be opened: {exc}")
    try:
        summary = ledger.summary()
    except (ledger_mod.LedgerError, OSError) as exc:
        return PublicView([], [(str(p), "the privacy ledger cannot be read") for p in files], None,
                          f"the privacy ledger cannot be read: {exc}")
    if not summary.verified:
        problems = "; ".join(str(x) for x in getattr(summary, "problems", ()) or ())
        detail = f": {problems}" if problems else ""
        return PublicView([], [(str(p), "the privacy ledger failed its integrity check")
                               for p in files], summary,
                          f"the privacy ledger failed its integrity check{detail}")
    unique, rejected = verify_release_files(folder, ledger)
    return PublicView(unique, rejected, summary, None)


def compute_budget(summary: LedgerSummary) -> dict[str, float | int]:
    """ε spent, left and in total (the ledger's numbers), and the number of releases."""
    return {"budget": float(summary.budget), "spent": float(summary.spent),
            "remaining": float(summary.remaining), "n_releases": int(summary.n_releases)}


def compute_release_table(view: PublicView) -> pl.DataFrame:
    """One row per verified release, newest first: ledger entry, date, ε, figures shown."""
    rows = [
        {"ledger_entry": s.stamp.seq, "created_at": s.release.created_at[:19].replace("T", " "),
         "epsilon": float(s.release.epsilon),
         "released": sum(f.released for f in s.release.figures),
         "withheld": sum(not f.released for f in s.release.figures),
         "release_id": s.release.release_id[:16], "entry_hash": s.stamp.entry_hash[:16]}
        for s in reversed(view.releases)
    ]
    schema = {"ledger_entry": pl.Int64, "created_at": pl.String, "epsilon": pl.Float64,
              "released": pl.Int64, "withheld": pl.Int64, "release_id": pl.String,
              "entry_hash": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row")


def compute_figure_table(release: DPRelease) -> pl.DataFrame:
    """One row per declared figure of a release: status, ε, planned accuracy, result in words.

    A withheld figure shows its reason and no value; an effect shows estimate and interval,
    a means figure its number of cells.
    """
    rows = []
    for f in release.figures:
        result = "withheld: too uncertain at this privacy level"
        if f.released and f.kind == "effect" and f.values:
            v = f.values[0]
            if v.get("estimate") is not None:
                result = f"{v['estimate']:+.2f} ({v['ci_low']:.2f} to {v['ci_high']:.2f})"
        elif f.released:
            result = f"{len(f.values)} means (arm × wave)"
        margin = None if f.planned_margin is None else float(f.planned_margin)
        rows.append({"figure": f.id, "role": f.role, "status": f.status, "epsilon": float(f.epsilon),
                     "planned_margin": margin, "threshold": float(f.threshold),
                     "result": result, "reason": f.reason})
    schema = {"figure": pl.String, "role": pl.String, "status": pl.String, "epsilon": pl.Float64,
              "planned_margin": pl.Float64, "threshold": pl.Float64, "result": pl.String,
              "reason": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row")
