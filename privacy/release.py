"""Differentially private releases: the one door from participant data to anything public.

Privacy definition
------------------
Pure ε-differential privacy (Dwork, McSherry, Nissim & Smith 2006; OpenDP's
``max_divergence``) with **one participant** as the privacy unit: two public tables are
neighbours when one has a participant's row (all their waves and outcomes) and the other
does not. Every query runs on the participant-level table (:mod:`privacy.table`), one row
per participant, so this bound holds by construction and OpenDP is told it
(``Bound(per_group=1)``). Noise is OpenDP's discrete Laplace on fixed-point integer sums,
drawn through its polars API (``dp.m.make_private_lazyframe``). A release suite's ε is the
sum of its figures' ε (sequential composition), charged to the study's ledger as **one**
entry: all figures or none.

Why pure ε-DP and not zCDP: at the budgets studies declare (ε ≈ 1-5) a suite has a few
dozen aggregates (7 figures x 3-10 sums); below roughly 15-20 equally weighted sums,
Laplace noise under pure ε-DP is more accurate than Gaussian noise under ρ-zCDP converted
to (ε, δ) with a δ small enough to mean something (1e-6): at ε = 3 a single sum has Laplace
sd 0.47 against Gaussian sd 1.85 (sensitivity 1), and the two meet at about 16 sums. Pure
ε-DP also keeps one number, ε, with no δ for readers to interpret. (A study that declares
hundreds of figures should move to zCDP; the figure registry keeps that a local change.)

What is public is declared, never read from the data: arms, waves, outcomes, ε and the
usefulness thresholds come from the sealed plan (:class:`privacy.figures.PublicDeclaration`).
The accuracy of every figure is planned before any data are read
(:func:`privacy.figures.plan_release`); a figure that would be too uncertain is withheld
and its ε goes to the others.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import opendp.prelude as dp
import polars as pl

from privacy.figures import (
    FIGURE_KINDS,
    PlannedFigure,
    PublicDeclaration,
    ReleasePlan,
    plan_release,
)
from privacy.objects import DPFigure, DPRelease, LedgerStamp, canonical_json
from privacy.table import PublicTable, group_column, value_column

dp.enable_features("contrib")

PRIVACY_DEFINITION = "pure ε-differential privacy (OpenDP max_divergence)"
PRIVACY_UNIT = "one participant (all their waves and outcomes)"
MECHANISM = (
    "discrete Laplace noise on fixed-point sums, through OpenDP's polars API; one row per "
    "participant; clipping bounds from the instrument definitions"
)
ACCOUNTING = "sequential composition: the suite's ε is the sum of its figures' ε"
LARGE_EPSILON = 5.0
MAX_ROWS_PUBLIC = 2**31
"""Public upper bound on table length that OpenDP needs for integer sums (overflow check)."""

ChargeStatus = Literal["charged", "cached"]


class LargeEpsilonWarning(UserWarning):
    """A release suite spends ε above 5, where the privacy guarantee is weak."""


# ---------------------------------------------------------------------- OpenDP plumbing


@dataclass(frozen=True)
class _FigureQuery:
    """A figure's OpenDP measurement, the columns it reads and its noise scales."""

    planned: PlannedFigure
    measurement: Any
    epsilon: float
    scales: dict[str, float]
    columns: dict[str, pl.Expr]
    groups: list[str]


def _domain(columns: Iterable[str], groups: Iterable[str] = ()) -> Any:
    series = [dp.series_domain("arm", dp.atom_domain(T=dp.i32))]
    series += [dp.series_domain(g, dp.atom_domain(T=dp.i32)) for g in groups]
    series += [dp.series_domain(c, dp.atom_domain(T=dp.i64)) for c in columns]
    return dp.with_margin(
        dp.lazyframe_domain(series), dp.polars.Margin(by=[], max_length=MAX_ROWS_PUBLIC)
    )


def _d_in(by: list[str]) -> list[Any]:
    """One participant: one row in all, hence at most one row in any group."""
    return [dp.polars.Bound(per_group=1),
            dp.polars.Bound(by=[pl.col(c) for c in by], per_group=1)]


def _keys(fig: Any) -> pl.DataFrame:
    """Group keys from declarations only: the two arms (x the declared categories)."""
    arms = pl.DataFrame({"arm": pl.Series([0, 1], dtype=pl.Int32)})
    if fig.breakdown is None:
        return arms
    cats = pl.DataFrame({group_column(fig.breakdown): pl.Series(
        range(len(fig.categories)), dtype=pl.Int32)})
    return arms.join(cats, how="cross")


def _compile_figure(pf: PlannedFigure, decl: PublicDeclaration) -> _FigureQuery:
    """Build one figure's measurement at exactly its planned ε (never above it)."""
    kind = FIGURE_KINDS[pf.spec.kind]
    x = {w: pl.col(value_column(pf.spec.outcome, w)) for w in decl.waves}
    columns = kind.columns(pf.spec, decl, x)
    aggs = kind.aggregates(pf.spec, decl)
    groups = [] if pf.spec.breakdown is None else [group_column(pf.spec.breakdown)]
    by = ["arm", *groups]
    keys = _keys(pf.spec)
    schema = {"arm": pl.Int32, **dict.fromkeys(groups, pl.Int32),
              **dict.fromkeys(columns, pl.Int64)}
    d_in = _d_in(by)

    def make(factor: float) -> tuple[Any, dict[str, float]]:
        scales = {a.name: factor * a.sensitivity / (a.share * pf.epsilon) for a in aggs}
        exprs = [pl.col(a.column).dp.sum((a.lower, a.upper), scale=scales[a.name]).alias(a.name)
                 for a in aggs]
        inner = pl.LazyFrame(schema=schema).group_by(by).agg(exprs)
        # the declared keys only: a group the data hold but the plan does not is never output
        plan = keys.lazy().join(inner, on=by, how="left")
        m = dp.m.make_private_lazyframe(_domain(columns, groups), dp.frame_distance(
            dp.symmetric_distance()), dp.max_divergence(), plan)
        return m, scales

    factor = 1.0
    m, scales = make(factor)
    eps = float(m.map(d_in))
    while eps > pf.epsilon * (1 + 1e-12):  # float rounding in the privacy map: never overspend
        factor *= (eps / pf.epsilon) * (1 + 1e-9)
        m, scales = make(factor)
        eps = float(m.map(d_in))
    return _FigureQuery(pf, m, eps, scales, columns, groups)


@dataclass(frozen=True)
class CompiledSuite:
    """The suite's measurements, built once from the plan (no data); :meth:`draw` runs them."""

    plan: ReleasePlan
    queries: tuple[_FigureQuery, ...]

    @property
    def epsilon(self) -> float:
        """ε the suite spends, as OpenDP's privacy maps compute it (sum over figures)."""
        return float(sum(q.epsilon for q in self.queries))

    def draw(self, frame: pl.DataFrame) -> tuple[DPFigure, ...]:
        """Draw every figure's noise over the participant-level table; withheld ones stay empty.

        The table goes to OpenDP as a scan of a temporary Arrow IPC file: OpenDP serialises
        its input plan across its FFI, and a scan serialises as a path where an in-memory
        frame serialises as all of its bytes (seconds at 10^5-10^6 rows).
        """
        with tempfile.TemporaryDirectory(prefix="flourish-dp-") as tmp:
            path = Path(tmp) / "public_table.arrow"
            frame.write_ipc(path)
            return self._draw(pl.scan_ipc(path))

    def _draw(self, source: pl.LazyFrame) -> tuple[DPFigure, ...]:
        decl = self.plan.declaration
        by_id = {q.planned.spec.id: q for q in self.queries}
        out = []
        for pf in self.plan.figures:
            s = pf.spec
            common = dict(
                id=s.id, kind=s.kind, outcome=s.outcome, instrument_title=s.instrument_title,
                scale_title=s.scale_title, units=s.units, lo=s.lo, hi=s.hi, role=s.role,
                hypothesis=s.hypothesis, wave=s.wave, threshold=s.threshold,
                planned_margin=pf.planned_margin, mid=s.mid, breakdown=s.breakdown,
            )
            q = by_id.get(s.id)
            if q is None:
                out.append(DPFigure(**common, epsilon=0.0, status="withheld", reason=pf.reason))
                continue
            data = source.select("arm", *q.groups,
                                       *[e.alias(n) for n, e in q.columns.items()])
            noisy = q.measurement(data).collect()
            kind = FIGURE_KINDS[s.kind]
            if s.breakdown is None:
                values = kind.values(s, decl, noisy, q.scales)
            else:  # the kind's rule per declared category; each row names its category
                g = q.groups[0]
                values = [
                    {"breakdown": s.breakdown, "category": cat, **row}
                    for k, cat in enumerate(s.categories)
                    for row in kind.values(s, decl, noisy.filter(pl.col(g) == k).drop(g),
                                           q.scales)
                ]
            out.append(DPFigure(**common, epsilon=q.epsilon, status="released",
                                values=tuple(values)))
        return tuple(out)


def compile_suite(plan: ReleasePlan) -> CompiledSuite:
    """Build the OpenDP measurement of every released figure of ``plan``."""
    return CompiledSuite(plan, tuple(_compile_figure(pf, plan.declaration)
                                     for pf in plan.released))


# ---------------------------------------------------------------------- the door


def release_id_of(decl: PublicDeclaration, data_version: str) -> str:
    """sha256 (hex) of the canonical declaration and the data version: the ledger key.

    Examples
    --------
    >>> from privacy.figures import FigureSpec
    >>> f = FigureSpec("means:a.b", "means", "a.b", "A", "B", "pts", 0, 10, "primary",
    ...                None, None, 1.0, 0)
    >>> d = PublicDeclaration("S", "c", "t", (0, 1), (f,), 1.0, {"c": 1, "t": 1})
    >>> release_id_of(d, "v1") == release_id_of(d, "v1") != release_id_of(d, "v2")
    True
    """
    text = canonical_json({"declaration": decl.canonical(), "data_version": data_version})
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class PublicReleaseResult:
    """What :func:`release_public` did: ``charged`` now or ``cached`` (served as stored)."""

    status: ChargeStatus
    release: DPRelease
    stamp: LedgerStamp
    plan: ReleasePlan
    payload: str


def draw_release(plan: ReleasePlan, table: PublicTable, *, now: datetime | None = None
                 ) -> DPRelease:
    """Draw the suite's noise now (no ledger: callers charge before calling this)."""
    decl = plan.declaration
    suite = compile_suite(plan)
    figures = suite.draw(table.frame)
    return DPRelease(
        release_id=release_id_of(decl, table.data_version),
        study=decl.study,
        data_version=table.data_version,
        created_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        epsilon=suite.epsilon,
        privacy={"definition": PRIVACY_DEFINITION, "unit": PRIVACY_UNIT,
                 "mechanism": MECHANISM, "accounting": ACCOUNTING},
        alpha=decl.alpha,
        arms={"control": decl.control_arm, "treatment": decl.treatment_arm},
        waves=decl.waves,
        figures=figures,
        spec=decl.canonical(),
    )


def release_public(
    *,
    declaration: PublicDeclaration,
    table: PublicTable,
    ledger: Any,
    anchors: Iterable[tuple[str, LedgerStamp]] = (),
    on_plan: Callable[[ReleasePlan], None] | None = None,
) -> PublicReleaseResult:
    """Make (or serve from the ledger) the study's DP release suite.

    The suite is keyed by the canonical declaration and the table's data version: asked
    again it is served as stored (no fresh noise, no charge). Otherwise the ledger verifies
    itself and every anchor, reserves the suite's whole ε and stores the drawn suite in one
    transaction; the noise is drawn inside that transaction, so a suite is charged
    all-or-nothing and concurrent releases never split one.

    Parameters
    ----------
    declaration
        The sealed public declaration (keys, figures, ε).
    table
        The participant-level table (:func:`privacy.table.build_public_table`).
    ledger
        The study's :class:`privacy.ledger.PrivacyLedger`.
    anchors
        ``(where found, stamp)`` of every ledger head found in published files; the ledger
        refuses unless it extends all of them.
    on_plan
        Called with the plan before anything is charged (the CLI prints it).

    Raises
    ------
    privacy.ledger.BudgetExceededError
        The suite's ε exceeds what remains; nothing was drawn or charged.
    privacy.ledger.LedgerIntegrityError
        The ledger does not verify or does not extend an anchor; nothing was charged.
    """
    plan = plan_release(declaration)
    if on_plan is not None:
        on_plan(plan)
    if plan.epsilon > LARGE_EPSILON:
        warnings.warn(f"the release suite spends ε = {plan.epsilon:g} > {LARGE_EPSILON:g}: a weak "
                      "privacy guarantee", LargeEpsilonWarning, stacklevel=2)
    rid = release_id_of(declaration, table.data_version)
    if not plan.released:
        raise ValueError("no declared figure is useful at this ε: nothing to release "
                         "(see the dry run)")

    def compute() -> str:
        return draw_release(plan, table).to_json()

    outcome = ledger.charge_and_record(rid, "public_suite", table.data_version, plan.epsilon,
                                       compute, anchors=list(anchors))
    payload = outcome.entry.payload
    return PublicReleaseResult(
        status="charged" if outcome.status == "charged" else "cached",
        release=DPRelease.from_json(payload), stamp=outcome.stamp, plan=plan, payload=payload,
    )
