"""The public tier: declared DP releases through the ledger, and the public report.

``privacy.release.release_public`` is the one door from participant data to anything
public; this module gathers its inputs (the sealed plan's declaration, the participant-level
table, the ledger and every ledger head already published), writes what it returns
atomically, and renders the report from verified releases only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from orchestration.spec import load_study_spec

if TYPE_CHECKING:  # the pipeline (pandera, instruments) is imported only where a study is read
    from orchestration.pipeline import Study
from privacy.figures import FigureSpec, PublicDeclaration, ReleasePlan, plan_release
from privacy.files import write_atomic
from privacy.ledger import LedgerError
from privacy.objects import (
    DPRelease,
    LedgerStamp,
    StoredRelease,
    read_release_files,
    verify_release_files,
)

REPORT_HEAD_META = "flourish-ledger-head"


class ReleaseRefused(RuntimeError):
    """Nothing was released: the budget, the ledger or the plan does not allow it (exit 1)."""


class NothingDeclared(ReleaseRefused):
    """The study declares nothing public (no privacy section, no plan, or an unsealed plan)."""


# ---------------------------------------------------------------------- declaration


def _mid(plan: object, library: object, outcome: str) -> float | None:
    for h in plan.hypotheses:  # type: ignore[attr-defined]
        if h.outcome == outcome and h.minimum_important_difference is not None:
            return float(h.minimum_important_difference)
    inst, scale = outcome.split(".", 1)
    mid = library[inst].minimal_important_difference.get(scale)  # type: ignore[index]
    return float(mid) if mid is not None else None


def declare_public(plan: object, library: object, *, study_name: str, budget: float
                   ) -> PublicDeclaration:
    """The public declaration from the sealed plan and the instrument definitions only.

    Keys are the plan's arms and waves; figures are the ``public`` section's (or the
    defaults documented on :class:`models.plan.PublicSpec`); ranges, titles and MIDs come
    from the instrument library. No data are read.

    Raises
    ------
    models.plan.PlanError
        When the plan declares too little to plan accuracy (no expected sample size).
    """
    from models.plan import PlanError, PublicSpec

    pub = plan.public or PublicSpec()  # type: ignore[attr-defined]
    hyps = [h for h in plan.hypotheses if h.role in ("primary", "secondary", "guardrail")]  # type: ignore[attr-defined]
    primary = next((h for h in hyps if h.role == "primary"), None)
    waves = sorted(pub.waves if pub.waves is not None else plan.wave_schedule)  # type: ignore[attr-defined]
    if len(waves) < 2:
        raise PlanError("<plan>", "public.waves", "declare at least a baseline and one follow-up wave")
    effect_outcomes = pub.outcomes if pub.outcomes is not None else list(dict.fromkeys(
        h.outcome for h in hyps if h.role in ("primary", "secondary")))
    trajectories = pub.trajectories if pub.trajectories is not None else (
        [primary.outcome] if primary else [])
    figures: list[FigureSpec] = []

    def spec_of(kind: str, outcome: str, breakdown: str | None = None) -> FigureSpec:
        inst_id, scale_id = outcome.split(".", 1)
        inst = library[inst_id]  # type: ignore[index]
        lo, hi = inst.scale_range(scale_id)
        scale_title = inst.scale(scale_id).name
        hyp = next((h for h in hyps if h.outcome == outcome), None)
        is_primary = primary is not None and outcome == primary.outcome
        if kind == "effect":
            wave = hyp.wave if hyp is not None and hyp.wave in waves[1:] else waves[-1]
            fid = f"effect:{outcome}@{wave}" + (f"|by:{breakdown}" if breakdown else "")
        else:
            wave, fid = None, f"means:{outcome}"
        mid = _mid(plan, library, outcome)
        default = (mid if mid is not None else (hi - lo) / 10.0)
        if kind == "means" or is_primary:
            default /= 2.0
        tier = (0 if kind == "effect" else 1) if is_primary else (2 if kind == "effect" else 3)
        role = ("primary" if is_primary else hyp.role if hyp is not None else "descriptive")
        cats: tuple[str, ...] = ()
        shares: tuple[float, ...] = ()
        if breakdown is not None:
            declared = pub.categories[breakdown]
            cats = tuple(str(c) for c in declared)
            raw = ([float(declared[c]) for c in declared] if isinstance(declared, dict)
                   else [1.0] * len(cats))
            shares = tuple(v / sum(raw) for v in raw)
            tier, role = 4, "subgroup"  # after every overall figure
            default = mid if mid is not None else (hi - lo) / 10.0
        threshold = float(pub.usefulness.get(fid, pub.usefulness.get(outcome, default)))
        return FigureSpec(
            id=fid, kind=kind, outcome=outcome, instrument_title=inst.name,  # type: ignore[arg-type]
            scale_title=scale_title, units=f"points on the {lo:g}–{hi:g} scale", lo=float(lo),
            hi=float(hi), role=role, hypothesis=hyp.id if hyp is not None else None, wave=wave,
            threshold=threshold, tier=tier,
            weight=pub.split.get(fid) if isinstance(pub.split, dict) else None, mid=mid,
            breakdown=breakdown, categories=cats, category_shares=shares,
        )

    figures += [spec_of("effect", o) for o in effect_outcomes]
    figures += [spec_of("means", o) for o in trajectories]
    covariates = [b for b in pub.breakdowns if b not in ("arm", "wave")]
    if covariates and primary is None:
        raise PlanError("<plan>", "public.breakdowns", "a covariate breakdown needs a primary "
                        "hypothesis (it breaks the primary effect down)")
    figures += [spec_of("effect", primary.outcome, b) for b in covariates]  # type: ignore[union-attr]
    n_total = pub.expected_n or plan.planned_sample_size  # type: ignore[attr-defined]
    if n_total is None:
        raise PlanError("<plan>", "public.expected_n", "declare the expected number of "
                        "participants (or planned_sample_size) so accuracy can be planned "
                        "before any data are read")
    arms = (plan.control_arm, plan.treatment_arm)  # type: ignore[attr-defined]
    shares = plan.allocation_shares or {a: 0.5 for a in arms}  # type: ignore[attr-defined]
    within = sum(shares.get(a, 0.0) for a in arms) or 1.0
    expected = {a: n_total * shares.get(a, 0.5) / within for a in arms}
    return PublicDeclaration(
        study=study_name, control_arm=arms[0], treatment_arm=arms[1], waves=tuple(waves),
        figures=tuple(figures), epsilon=float(pub.epsilon or budget), expected_n=expected,
        alpha=pub.alpha, expected_retention=pub.expected_retention,
        change_bound=pub.change_bound, split=pub.split,
    )


def load_public_declaration(study: Study) -> tuple[PublicDeclaration, object]:
    """The study's public declaration and its plan's seal (no data read).

    Raises
    ------
    ReleaseRefused
        No plan, no ``[privacy]``, or the plan is not sealed or deviated from its seal.
    """
    from models.plan import load_analysis_plan, verify_plan
    from orchestration.pipeline import known_outcomes, plan_path

    if study.spec.privacy is None:
        raise NothingDeclared(f"{study.spec.spec_path}: no [privacy] section: no budget to spend")
    path = plan_path(study)
    if path is None:
        raise NothingDeclared(f"{study.spec.spec_path}: no [analysis] plan: nothing is declared "
                             "public (the public tier releases only what a sealed plan declares)")
    plan = load_analysis_plan(path, known_outcomes=known_outcomes(study.library))
    check = verify_plan(path)
    if check.status == "unlocked":
        raise NothingDeclared(f"{path}: the plan is not sealed, so nothing is declared public yet; "
                             f"seal it with `flourish prereg lock {path}`")
    if check.status == "deviated":
        raise ReleaseRefused(f"{path}: the plan deviates from its seal; the public declaration "
                             "must be the sealed one (see `flourish prereg verify`)")
    decl = declare_public(plan, study.library, study_name=study.spec.name,
                          budget=study.spec.privacy.epsilon)
    return decl, check


# ---------------------------------------------------------------------- anchors


_META = re.compile(r'<meta name="' + REPORT_HEAD_META + r'" content="([0-9a-f]+):(\d+):([0-9a-f]+)"')


def collect_anchors(out: Path) -> list[tuple[str, LedgerStamp]]:
    """Every ledger head found in published files: ``releases/*.json`` and the report."""
    # a file that is not a stored release carries no head (and is never shown)
    anchors = [(str(path), item.stamp) for path, item in read_release_files(out / "releases")
               if not isinstance(item, str)]
    report = out / "report" / "index.html"
    if report.exists():
        for m in _META.finditer(report.read_text(encoding="utf-8", errors="replace")):
            anchors.append((str(report), LedgerStamp(m.group(1), int(m.group(2)), m.group(3))))
    return anchors


def release_path(out: Path, release_id: str) -> Path:
    """Where a stored release is written."""
    return out / "releases" / f"{release_id[:16]}.json"


# ---------------------------------------------------------------------- release


@dataclass(frozen=True)
class ReleaseOutcome:
    """What a release run did, for the CLI and the Dagster asset."""

    status: str
    release: DPRelease
    plan: ReleasePlan
    spent_now: float
    spent: float
    remaining: float
    budget: float
    report: Path
    dropped: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        shown = [f for f in self.release.figures if f.released]
        held = [f for f in self.release.figures if not f.released]
        lines = [
            f"release {self.release.release_id[:16]} ({self.status}): {len(shown)} figures "
            f"released, {len(held)} withheld; ε spent now {self.spent_now:.4g}",
            f"budget: {self.spent:.4g} of {self.budget:.4g} spent, "
            f"{0.0 if self.remaining < 1e-9 else self.remaining:.4g} left",
        ]
        for f in held:
            lines.append(f"  withheld {f.id}: {f.reason}")
        dropped = {k: v for k, v in self.dropped.items() if v}
        if dropped:
            lines.append("kept out of the public queries (not declared public): "
                         + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in dropped.items()))
        lines.append(f"public report: {self.report}")
        return "\n".join(lines)


def format_plan(plan: ReleasePlan, *, remaining: float | None = None) -> str:
    """The dry run: each declared figure's ε and expected 95 % accuracy, nothing spent."""
    d = plan.declaration
    lines = [
        f"dry run: nothing spent. Suite ε = {plan.epsilon:.4g} (declared {d.epsilon:g}), "
        "privacy unit: one participant; expected n per arm "
        f"{', '.join(f'{a} {n:g}' for a, n in d.expected_n.items())}, "
        f"retention at wave {d.waves[-1]}: {d.expected_retention:g}",
    ]
    if remaining is not None:
        lines.append(f"ledger: {remaining:.4g} of the study's budget left"
                     + ("" if remaining + 1e-9 >= plan.epsilon else " — NOT enough for this suite"))
    lines.append(f"  {'figure':<48} {'status':<9} {'ε':>7} {'±95% (expected)':>16} {'threshold':>10}")
    for f in plan.figures:
        lines.append(f"  {f.spec.id:<48} {f.status:<9} {f.epsilon:>7.3f} "
                     f"{f.planned_margin:>16.3g} {f.spec.threshold:>10.3g}  {f.spec.units}")
        if f.reason:
            lines.append(f"      {f.reason}")
    return "\n".join(lines)


def dry_run(spec_path: Path | Study) -> str:
    """``flourish release --dry-run``: the plan of the next release, spending nothing."""
    from orchestration.pipeline import Study, load_study

    study = spec_path if isinstance(spec_path, Study) else load_study(spec_path)
    decl, _ = load_public_declaration(study)
    plan = plan_release(decl)
    remaining = None
    try:
        from orchestration.keys import open_study_ledger

        remaining = open_study_ledger(study.spec, create=False).summary().remaining
    except (LedgerError, ValueError):
        remaining = None if study.spec.ledger_path.exists() else study.spec.privacy.epsilon  # type: ignore[union-attr]
    return format_plan(plan, remaining=remaining)


def release_and_report(spec_path: Path | Study) -> ReleaseOutcome:
    """Make (or serve) the study's DP release suite, store it, render ``report/index.html``.

    Raises
    ------
    ReleaseRefused
        Over budget, a ledger that does not verify or does not extend a published head,
        or an unsealed plan; nothing was released.
    """
    from orchestration.keys import open_study_ledger
    from orchestration.pipeline import Study, load_study
    from privacy.ledger import BudgetExceededError, LedgerIntegrityError, LedgerMissingError
    from privacy.release import release_public
    from privacy.table import build_public_table

    study = spec_path if isinstance(spec_path, Study) else load_study(spec_path)
    decl, check = load_public_declaration(study)
    out = study.out
    scores = pl.read_parquet(out / "scores.parquet")
    breakdowns = sorted({f.breakdown for f in decl.figures if f.breakdown is not None})
    participants = pl.read_parquet(out / "participants.parquet")
    missing = [b for b in breakdowns if b not in participants.columns]
    if missing:
        raise ReleaseRefused(f"the plan breaks public figures down by {missing}, which the "
                             "participants table does not have; nothing was released")
    participants = participants.select("participant_id", "arm", *breakdowns)
    table = build_public_table(scores, participants, decl)
    anchors = collect_anchors(out)
    published = bool(anchors) or study.spec.ledger_anchor_path.exists()
    try:
        # a ledger is created only for a study that has never published: a missing ledger
        # after a release is a deletion or a move, never a fresh budget
        ledger = open_study_ledger(study.spec, create=not published)
    except LedgerMissingError:
        where = ", ".join(sorted({a for a, _ in anchors})) or str(study.spec.ledger_anchor_path)
        raise ReleaseRefused(
            f"the privacy ledger {study.spec.ledger_path} is missing, but releases were "
            f"published under a ledger ({where}); it was deleted or moved, so nothing was "
            "released. Recovery: restore it (and ledger.key) from backup (README, 'Recovering "
            "a refused ledger'); a lost ledger cannot be recreated.") from None
    try:
        result = release_public(declaration=decl, table=table, ledger=ledger, anchors=anchors)
    except BudgetExceededError as exc:
        raise ReleaseRefused(str(exc)) from None
    except LedgerIntegrityError as exc:
        raise ReleaseRefused(_integrity_message(study, exc)) from None
    stored = StoredRelease(result.release, result.stamp)
    write_atomic(release_path(out, result.release.release_id), stored.to_json())
    summary = ledger.summary()
    report = render_report(study, ledger, plan_status=check)
    return ReleaseOutcome(
        status=result.status, release=result.release, plan=result.plan,
        spent_now=result.release.epsilon if result.status == "charged" else 0.0,
        spent=summary.spent, remaining=summary.remaining, budget=summary.budget,
        report=report, dropped=table.dropped,
    )


def render_report(study: Study, ledger: object, *, plan_status: object = None) -> Path:
    """Render ``report/index.html`` from the releases that verify against the ledger."""
    from dashboards.report import PlanStatusNote, render_public_report

    good, _ = verify_release_files(study.out / "releases", ledger)
    note = None
    if plan_status is not None:
        note = PlanStatusNote(status=plan_status.plan_status, sha256=plan_status.sha256)  # type: ignore[attr-defined]
    return render_public_report(good, ledger.summary(), study.out, plan_status=note)  # type: ignore[attr-defined]


def _integrity_message(study: Study, exc: Exception) -> str:
    problems = getattr(exc, "problems", None) or [str(exc)]
    return (f"the privacy ledger {study.spec.ledger_path} cannot be trusted, so nothing was "
            "released:\n  - " + "\n  - ".join(problems) + "\nRecovery: restore the ledger "
            "(and ledger.key) from backup to a state that includes every published release; a "
            "lost ledger cannot be recreated (README, 'Recovering a refused ledger').")


# ---------------------------------------------------------------------- ledger view


def format_ledger(spec_path: Path) -> tuple[str, bool]:
    """What the ledger holds and whether it verifies (with every published head).

    Returns the text and ``ok``; ``flourish ledger`` exits 1 when not ok.
    """
    from orchestration.keys import open_study_ledger
    from privacy.ledger import LedgerMissingError

    spec = load_study_spec(spec_path)  # the spec alone: `ledger` imports no pipeline
    if spec.privacy is None:
        return f"{spec_path}: no [privacy] section: no budget", True
    anchors = collect_anchors(spec.output_path)
    try:
        ledger = open_study_ledger(spec, create=False)
    except LedgerMissingError:
        if anchors or spec.ledger_anchor_path.exists():
            where = ", ".join(sorted({a for a, _ in anchors})) or str(spec.ledger_anchor_path)
            return (f"ledger {spec.ledger_path}: MISSING, but releases were published "
                    f"under a ledger ({where}).\nThe ledger was deleted or moved: restore it from "
                    "backup (README, 'Recovering a refused ledger'). No release is possible "
                    "until then."), False
        return (f"ledger {spec.ledger_path}: none yet; budget ε = "
                f"{spec.privacy.epsilon:g}, nothing spent"), True
    check = ledger.verify(anchors)
    summary = ledger.summary()
    left = 0.0 if summary.remaining < 1e-9 else summary.remaining
    lines = [f"ledger {spec.ledger_path}",
             f"budget ε = {summary.budget:.4g}; spent {summary.spent:.4g}; "
             f"left {left:.4g}; {summary.n_releases} release suites",
             "verification: " + ("ok (keyed chain intact; extends every published head)"
                                 if check.ok else "FAILED")]
    lines += [f"  - {p}" for p in check.problems]
    for e in ledger.entries():
        lines.append(f"  #{e.seq:<3} {e.created_at}  {e.kind:<14} ε={e.epsilon:.4g}  "
                     f"{e.release_id[:16]}  data {e.data_version[:12]}")
    if not check.ok:
        lines.append("Recovery: restore the ledger file (and its key) from backup; see README, "
                     "'Recovering a refused ledger'.")
    return "\n".join(lines), check.ok
