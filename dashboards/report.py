"""The public report: differentially private releases only, one self-contained HTML page.

The renderer's input admits nothing but :class:`privacy.release.DPRelease` objects and the
ledger's :class:`privacy.ledger.LedgerSummary` (checked at run time), so no raw row or
participant id can reach it by construction. Every figure carries its release id in a
``data-release-id`` attribute, and a release that the ledger does not list is refused, so
every number on the page traces to a charged ledger entry. Plots are PNGs drawn with
matplotlib's Agg backend and embedded as base64: the page makes no network request.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from privacy.ledger import LedgerSummary  # noqa: E402
from privacy.release import DPRelease  # noqa: E402

_TITLES = {
    "participant_counts": "Participants with a primary-outcome score, per arm and wave",
    "scale_means": "Mean score per arm and wave",
    "primary_histogram": "Distribution of the primary outcome at baseline and final wave",
    "change_effects": "Treatment effect on change from baseline",
}
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1000px;
margin:2rem auto;padding:0 1rem;color:#1b1b1b;line-height:1.45}
h1{font-size:1.7rem}h2{font-size:1.3rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.6rem 0}
td,th{border:1px solid #ccc;padding:.2rem .45rem;text-align:right}
th{background:#f3f3f3}td.t{text-align:left}
figure{margin:1rem 0}figure img{max-width:100%}figcaption{font-size:.85rem;color:#555}
.meta{font-size:.8rem;color:#555;word-break:break-all}
.budget{background:#f6f8fa;padding:.6rem 1rem;border-radius:6px}
"""


def _check_inputs(releases: object, budget: object) -> list[DPRelease]:
    if isinstance(releases, DPRelease) or not isinstance(releases, Sequence) or isinstance(
        releases, str | bytes
    ):
        raise TypeError(
            f"releases must be a sequence of DPRelease, got {type(releases).__name__}"
        )
    out: list[DPRelease] = []
    for r in releases:
        if not isinstance(r, DPRelease):
            raise TypeError(f"the public report accepts DPRelease only, got {type(r).__name__}")
        out.append(r)
    if not isinstance(budget, LedgerSummary):
        raise TypeError(f"budget must be a LedgerSummary, got {type(budget).__name__}")
    known = {str(e["release_id"]) for e in budget.releases}
    unknown = [r.release_id for r in out if r.release_id not in known]
    if unknown:
        raise ValueError(f"releases not in the ledger cannot be published: {unknown}")
    return out


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: object) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) >= 1 or v == 0 else f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(frame: pl.DataFrame, columns: Sequence[str] | None = None) -> str:
    cols = list(columns or frame.columns)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = []
    for rec in frame.select(cols).iter_rows(named=True):
        cells = "".join(
            f'<td class="{"t" if isinstance(rec[c], str) else ""}">{html.escape(_fmt(rec[c]))}</td>'
            for c in cols
        )
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _plot_counts(f: pl.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    arms = f["arm"].unique(maintain_order=True).to_list()
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        g = f.filter(pl.col("arm") == arm).sort("wave")
        x = [w + (i - (len(arms) - 1) / 2) * width for w in g["wave"].to_list()]
        ax.bar(x, g["n_participants"].to_list(), width=width, label=arm,
               yerr=g["noise_bound"].to_list(), capsize=3)
    ax.set_xticks(sorted(set(f["wave"].to_list())))
    ax.set_xlabel("wave")
    ax.set_ylabel("participants (noisy)")
    ax.legend(frameon=False)
    return fig


def _plot_means(f: pl.DataFrame) -> plt.Figure:
    scales = f.select("instrument", "scale").unique(maintain_order=True).rows()
    fig, axes = plt.subplots(1, len(scales), figsize=(3.4 * len(scales), 3.0), squeeze=False)
    for ax, (inst, sc) in zip(axes[0], scales, strict=True):
        g = f.filter((pl.col("instrument") == inst) & (pl.col("scale") == sc))
        for arm in g["arm"].unique(maintain_order=True).to_list():
            a = g.filter(pl.col("arm") == arm).sort("wave").drop_nulls("mean")
            ax.errorbar(a["wave"].to_list(), a["mean"].to_list(), yerr=a["noise_moe"].to_list(),
                        marker="o", capsize=3, label=arm)
        ax.set_title(f"{inst}.{sc}", fontsize=9)
        ax.set_xticks(sorted(set(g["wave"].to_list())))
        ax.set_xlabel("wave")
    axes[0][0].set_ylabel("mean (noisy)")
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def _plot_hist(f: pl.DataFrame) -> plt.Figure:
    waves = sorted(f["wave"].unique().to_list())
    fig, axes = plt.subplots(1, len(waves), figsize=(3.6 * len(waves), 3.0), squeeze=False,
                             sharey=True)
    for ax, w in zip(axes[0], waves, strict=True):
        g = f.filter(pl.col("wave") == w)
        arms = g["arm"].unique(maintain_order=True).to_list()
        for i, arm in enumerate(arms):
            a = g.filter(pl.col("arm") == arm).sort("bin")
            width = (a["bin_high"] - a["bin_low"]).to_list()
            off = [(i - (len(arms) - 1) / 2) * wd / max(len(arms), 1) for wd in width]
            mids = [(lo + hi) / 2 + o for lo, hi, o in
                    zip(a["bin_low"].to_list(), a["bin_high"].to_list(), off, strict=True)]
            ax.bar(mids, a["n"].to_list(), width=[wd / max(len(arms), 1) for wd in width],
                   yerr=a["noise_bound"].to_list(), capsize=2, label=arm)
        ax.set_title(f"wave {w}", fontsize=9)
        ax.set_xlabel("score")
    axes[0][0].set_ylabel("participants (noisy)")
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def _plot_effects(f: pl.DataFrame) -> plt.Figure:
    g = f.drop_nulls("estimate")
    labels = [f"{i}.{s}" for i, s in g.select("instrument", "scale").rows()]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * max(len(labels), 1)))
    est = g["estimate"].to_list()
    lo = [e - c for e, c in zip(est, g["ci_low"].to_list(), strict=True)]
    hi = [c - e for e, c in zip(est, g["ci_high"].to_list(), strict=True)]
    ax.errorbar(est, range(len(labels)), xerr=[lo, hi], fmt="o", capsize=3)
    ax.axvline(0, color="#888", lw=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("difference in mean change (treatment − control), scale units")
    return fig


_PLOTS = {
    "participant_counts": _plot_counts,
    "scale_means": _plot_means,
    "primary_histogram": _plot_hist,
    "change_effects": _plot_effects,
}
_CAPTIONS = {
    "participant_counts": "Error bars: 95% bound of the added noise.",
    "scale_means": "Error bars: 95% margin of the added noise (sampling error not included).",
    "primary_histogram": "Error bars: 95% bound of the added noise per bar.",
    "change_effects": "Bars: 95% confidence interval including sampling error and added noise.",
}


def _method_statement(budget: LedgerSummary) -> str:
    return (
        "<p>Every number on this page is a <em>differentially private</em> release. Before "
        "publication, calibrated random noise was added to each statistic, so that the "
        "page would be essentially the same whether or not any one participant had taken "
        "part &mdash; with all of their answers, in every wave. The strength of this "
        "guarantee is measured by a privacy loss &epsilon; (pure &epsilon;-differential "
        "privacy, Laplace-type noise drawn with the OpenDP library); smaller is more "
        "private. Each participant's contribution was limited to one row per wave and "
        "scale, and each score was clipped to its instrument's range. The study has a "
        f"fixed total budget of &epsilon; = {budget.budget:g}; every release is charged "
        "against it in an append-only ledger, a release already made is shown again rather "
        "than re-drawn, and nothing is published once the budget is spent.</p>"
        "<p>Because of the noise, small counts can be off by a few participants and can "
        "even be negative; the error bars and the noise bounds in each table say by how "
        "much. Confidence intervals for the treatment effect include both the usual "
        "sampling uncertainty and the added noise.</p>"
    )


def _budget_block(budget: LedgerSummary) -> str:
    rows = pl.DataFrame(
        list(budget.releases),
        schema={"release_id": pl.String, "kind": pl.String, "epsilon": pl.Float64,
                "created_at": pl.String},
        orient="row",
    )
    status = "intact" if budget.verified else "FAILED VERIFICATION"
    return (
        '<div class="budget">'
        f"<p><strong>Privacy budget:</strong> &epsilon; spent {budget.spent:.3g} of "
        f"{budget.budget:.3g}; remaining {budget.remaining:.3g} "
        f"({budget.n_releases} releases). Ledger hash chain: {status}.</p>"
        f'<p class="meta">Ledger head hash: <code>{budget.head_hash}</code></p>'
        f"{_table(rows)}</div>"
    )


@dataclass(frozen=True)
class PlanStatusNote:
    """The analysis plan's seal status, shown in the report (public metadata only)."""

    status: str  # locked | deviated | unregistered
    sha256: str


def _plan_block(note: PlanStatusNote | None) -> str:
    if note is None:
        return ""
    if note.status == "locked":
        text = (f"The analysis plan was pre-registered and is unchanged since it was sealed "
                f"(sha256 {html.escape(note.sha256[:16])}…).")
        return f"<p class='plan plan-locked'>{text}</p>"
    if note.status == "deviated":
        text = ("DEVIATION: the analysis plan was changed after it was sealed; these results "
                f"are not the pre-registered analysis (plan sha256 {html.escape(note.sha256[:16])}…).")
        return f"<p class='plan plan-deviated' style='color:#b00020;font-weight:bold'>{text}</p>"
    return "<p class='plan'>The analysis plan was not sealed (not pre-registered).</p>"


def render_public_report(
    releases: Sequence[DPRelease],
    budget: LedgerSummary,
    out_dir: Path | str,
    *,
    plan_status: PlanStatusNote | None = None,
) -> Path:
    """Write the public report ``out_dir/report/index.html`` from DP releases only.

    Parameters
    ----------
    releases
        Released :class:`~privacy.release.DPRelease` objects (from ``release_study`` or
        the ledger). Anything else raises ``TypeError``.
    budget
        The ledger's :class:`~privacy.ledger.LedgerSummary`; every release must be listed
        in it (``ValueError`` otherwise).
    out_dir
        The study's output directory.
    plan_status
        Public facts about the analysis plan (its seal status and sha256 — no participant
        data); a deviated plan is shown prominently, never hidden.

    Returns
    -------
    Path
        The written ``index.html`` (self-contained: CSS inline, plots as base64 PNG).
    """
    rels = _check_inputs(releases, budget)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">",
        f"<title>Public report</title><style>{_CSS}</style></head><body>",
        "<h1>Public report: differentially private results</h1>",
        _plan_block(plan_status),
        _method_statement(budget),
        _budget_block(budget),
    ]
    for rel in rels:
        frame = rel.to_frame()
        title = _TITLES.get(rel.kind, rel.kind)
        parts.append(f"<section data-release-id='{html.escape(rel.release_id)}'>")
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(
            f"<p class='meta'>Release <code>{html.escape(rel.release_id)}</code> &middot; "
            f"&epsilon; = {rel.epsilon:g} &middot; {html.escape(rel.mechanism)} &middot; "
            f"drawn {html.escape(rel.created_at)}</p>"
        )
        plot = _PLOTS.get(rel.kind)
        if plot is not None and frame.height:
            img = _png(plot(frame))
            parts.append(
                f"<figure data-release-id='{html.escape(rel.release_id)}'>"
                f"<img alt='{html.escape(title)}' src='data:image/png;base64,{img}'>"
                f"<figcaption>{html.escape(_CAPTIONS.get(rel.kind, ''))}</figcaption></figure>"
            )
        estimand = rel.accuracy.get("estimand")
        if estimand:
            parts.append(f"<p class='meta'>Estimand: {html.escape(str(estimand))}</p>")
        parts.append(_table(frame))
        parts.append("</section>")
    parts.append("</body></html>")
    path = Path(out_dir) / "report" / "index.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
