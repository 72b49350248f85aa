"""The public tier: DP releases through the ledger, and the public report rendered from them.

``release_study`` (privacy/) is the one door from participant data to anything public; this
module only gathers its inputs from the study and writes what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from dashboards.report import PlanStatusNote, render_public_report
from orchestration.pipeline import Study, load_plan_for, load_study
from privacy.ledger import LedgerError, PrivacyLedger
from privacy.release import (
    DPRelease,
    ReleasePlanInfo,
    compute_data_version,
    release_study,
)

SUITES_PER_BUDGET = 2  # each data version's suite spends 1/2 of the study's total ε
RELEASES_PER_SUITE = 4


class BudgetRefused(RuntimeError):
    """A release would overspend the study's privacy budget; nothing was released."""


@dataclass(frozen=True)
class ReleaseOutcome:
    """What a release run did, for the CLI and the Dagster asset."""

    status: str
    spent_now: float
    spent: float
    remaining: float
    budget: float
    releases: tuple[DPRelease, ...]
    report: Path

    def __str__(self) -> str:
        lines = [f"releases: {len(self.releases)} ({self.status}); ε spent now {self.spent_now:.4g}",
                 f"budget: {self.spent:.4g} of {self.budget:.4g} spent, {self.remaining:.4g} left",
                 f"public report: {self.report}"]
        return "\n".join(lines)


def open_ledger(study: Study) -> PrivacyLedger:
    """The study's ledger (beside study.toml unless the spec names another path)."""
    if study.spec.privacy is None:
        raise LedgerError(f"{study.spec.spec_path}: no [privacy] section: no budget to spend")
    return PrivacyLedger(study.spec.ledger_path, budget=study.spec.privacy.epsilon)


def stored_releases(ledger: PrivacyLedger) -> list[DPRelease]:
    """Every release the ledger holds (the report shows them all, never re-drawn)."""
    return [DPRelease.from_json(e.payload) for e in ledger.entries()]


def release_and_report(spec_path: Path | Study) -> ReleaseOutcome:
    """Make (or serve) the study's DP releases, store them, render ``report/index.html``."""
    study = spec_path if isinstance(spec_path, Study) else load_study(spec_path)
    out = study.out
    scores = pl.read_parquet(out / "scores.parquet")
    participants = pl.read_parquet(out / "participants.parquet")
    plan, check = load_plan_for(study, participants)
    arms = sorted(participants["arm"].unique().to_list())
    control = plan.control_arm if plan else arms[0]
    treatment = plan.treatment_arm if plan else arms[-1]
    primary = next((h.outcome for h in plan.hypotheses if h.role == "primary"), None) if plan else None
    if primary is None:
        first = scores.select("instrument", "scale").row(0)
        primary = f"{first[0]}.{first[1]}"
    waves = tuple(sorted(int(w) for w in scores["wave"].unique().to_list()))
    bounds = {
        (inst.id, s.id): inst.scale_range(s.id) for inst in study.library for s in inst.scales
    }
    ledger = open_ledger(study)
    epsilon = ledger.summary().budget / (SUITES_PER_BUDGET * RELEASES_PER_SUITE)
    suite = release_study(
        scores=scores.select("participant_id", "wave", "instrument", "scale", "score"),
        participants=participants.select("participant_id", "arm"),
        ledger=ledger,
        bounds=bounds,
        plan_info=ReleasePlanInfo(control_arm=control, treatment_arm=treatment,
                                  primary_outcome=primary, waves=waves),
        data_version=compute_data_version(scores),
        epsilon_per_release=epsilon,
    )
    if suite.status == "refused":
        raise BudgetRefused(suite.detail or suite.message)
    releases_dir = out / "releases"
    releases_dir.mkdir(exist_ok=True)
    for rel in suite.releases:
        (releases_dir / f"{rel.kind}-{rel.release_id[:16]}.json").write_text(rel.to_json())
    summary = ledger.summary()
    note = PlanStatusNote(status=check.plan_status, sha256=check.sha256) if check else None
    report = render_public_report(stored_releases(ledger), summary, out, plan_status=note)
    return ReleaseOutcome(status=suite.status, spent_now=suite.epsilon_spent_now,
                          spent=summary.spent, remaining=summary.remaining,
                          budget=summary.budget, releases=suite.releases, report=report)


def format_ledger(spec_path: Path) -> str:
    """What the ledger holds: budget, spent, left, and every release with its ε and time."""
    study = load_study(spec_path)
    ledger = open_ledger(study)
    summary = ledger.summary()
    check = ledger.verify()
    lines = [f"ledger {study.spec.ledger_path}",
             f"budget ε = {summary.budget:.4g}; spent {summary.spent:.4g}; "
             f"left {summary.remaining:.4g}; {summary.n_releases} releases",
             f"hash chain: {'intact' if check.ok else 'TAMPERED: ' + '; '.join(check.problems)}"]
    for e in ledger.entries():
        lines.append(f"  #{e.seq:<3} {e.created_at}  {e.kind:<20} ε={e.epsilon:.4g}  "
                     f"{e.release_id[:16]}  data {e.data_version[:12]}")
    return "\n".join(lines)
