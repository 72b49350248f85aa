"""The public report: one self-contained page a member of the public reads.

The page leads with the answer for the newest release (a headline sentence about the
primary outcome and how it compares with the smallest difference that matters), then the
result on every declared dimension of wellbeing (dot-and-whisker profile on a common
scale), the average scores of each arm over the waves, and finally how the numbers were
made (privacy unit, ε, budget, mechanism, what was declared public, the ledger head).

By construction the renderer can only show differentially private numbers: it accepts
nothing but :class:`privacy.objects.StoredRelease` / :class:`privacy.objects.DPRelease`
objects and the ledger's :class:`privacy.ledger.LedgerSummary` (``TypeError`` otherwise),
and refuses a release whose ledger stamp is not among the summary's charged releases
(``ValueError``). Every number on the page is read from those objects; elements that
show a figure carry its id in ``data-figure-id``. Plots are inline SVG drawn here (no
script, no font or image fetched), so the page makes no network request, and the ledger
head is also given in ``<meta name="flourish-ledger-head">`` for tooling.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from privacy.files import write_atomic
from privacy.ledger import LedgerSummary
from privacy.objects import DPFigure, DPRelease, LedgerStamp, StoredRelease

WITHHELD_TEXT = "withheld: too uncertain at this privacy level"
"""What a withheld figure shows instead of a number."""
HEAD_META = "flourish-ledger-head"
"""``<meta name=...>`` whose content is ``<ledger_id>:<seq>:<entry_hash>``."""
ARM_STYLE = {
    # Okabe-Ito colours (distinguishable with the common colour-vision deficiencies),
    # doubled by line dash and marker shape so the arms never rely on colour alone.
    "treatment": {"colour": "#0072B2", "dash": "", "marker": "circle"},
    "control": {"colour": "#D55E00", "dash": "6 4", "marker": "square"},
}
# Profile dots: Okabe-Ito bluish green / reddish purple / grey, none of them an arm's colour.
_HIGHER, _LOWER, _UNCLEAR = "#009E73", "#CC79A7", "#555555"
_OTHER_ARM_COLOURS = ("#009E73", "#CC79A7", "#E69F00", "#56B4E9")
_EPS_TOL = 1e-9
_MINUS = "\u2212"
_ROLE_NOTE = {
    "primary": "main outcome",
    "guardrail": "safety check: should not get worse",
}

_VARS = "--ink:#1b1b1b;--muted:#5a5a5a;--line:#d9d9d9;--band:#eef2f6;--accent:#0072B2"
_COMPONENT_CSS = """
.withheld{color:var(--muted);font-style:italic}
.note{color:var(--muted);font-size:.9rem}
.profile{display:grid;grid-template-columns:minmax(11rem,15rem) 380px minmax(10rem,1fr);
column-gap:1rem;align-items:center;margin:1rem 0}
.profile .row{display:contents}
.profile .label{padding:.35rem 0;border-top:1px solid var(--line)}
.profile .label small{display:block;color:var(--muted);font-size:.8rem}
.profile .strip{border-top:1px solid var(--line);height:100%;display:flex;align-items:center}
.profile .value{border-top:1px solid var(--line);padding:.35rem 0;font-variant-numeric:tabular-nums;
font-size:.95rem;height:100%;display:flex;align-items:center}
.profile .value small{display:block;color:var(--muted);font-size:.8rem}
.profile .axis{grid-column:2}
.profile .axis-label{grid-column:2;text-align:center;font-size:.85rem;color:var(--muted)}
.key{display:flex;gap:1.2rem;flex-wrap:wrap;font-size:.88rem;color:var(--muted);margin:.3rem 0}
.key i{display:inline-block;width:.8rem;height:.8rem;border-radius:50%;margin-right:.35rem;
vertical-align:-.1rem}
.key i.band{border-radius:0;background:#dfe6ee;width:1.4rem}
.legend{display:flex;gap:1.4rem;flex-wrap:wrap;font-size:.9rem;margin:.4rem 0}
.legend span{display:inline-flex;align-items:center;gap:.4rem}
figure{margin:1rem 0}
figcaption{font-size:.88rem;color:var(--muted);max-width:44rem}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
table{border-collapse:collapse;font-size:.9rem;margin:.6rem 0;font-variant-numeric:tabular-nums}
td,th{border-bottom:1px solid var(--line);padding:.25rem .7rem;text-align:right}
th{font-weight:600}
td.t,th.t{text-align:left}
"""
_CSS = (":root{" + _VARS + "}" + """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:960px;
margin:2rem auto;padding:0 1.2rem;color:var(--ink);line-height:1.5;font-size:17px}
h1{font-size:1.75rem;margin:.2rem 0 1rem;line-height:1.25}
h2{font-size:1.3rem;margin-top:2.6rem;padding-bottom:.25rem;border-bottom:1px solid var(--line)}
h3{font-size:1.05rem;margin:1.4rem 0 .3rem}
.kicker{color:var(--muted);font-size:.9rem;margin:0}
.headline{font-size:1.3rem;line-height:1.45;margin:.4rem 0 .6rem;font-weight:600}
.mid{font-size:1.05rem;margin:.2rem 0 .8rem}
.read{background:var(--band);border-radius:6px;padding:.7rem 1rem;font-size:.95rem}
dl.how{display:grid;grid-template-columns:minmax(10rem,14rem) 1fr;gap:.5rem 1rem;margin:1rem 0}
dl.how dt{font-weight:600}
dl.how dd{margin:0}
code{font-size:.82rem;word-break:break-all;background:#f4f4f4;padding:0 .2rem;border-radius:3px}
.plan{padding:.5rem .8rem;border-radius:6px;background:var(--band)}
.plan-deviated{background:#fde8ea;color:#b00020;font-weight:bold;border:2px solid #b00020}
.ledger-bad{background:#fde8ea;color:#b00020;font-weight:bold;padding:.5rem .8rem;border-radius:6px}
footer{margin-top:3rem;color:var(--muted);font-size:.85rem}
""" + _COMPONENT_CSS)


def fragment_css(scope: str = ".flourish-public") -> str:
    """The profile and trajectory styles scoped under ``scope``, for embedding in another page.

    The dashboard wraps :func:`render_profile_html` / :func:`render_trajectory_svg` output in
    ``<div class="flourish-public">`` so these rules touch nothing else on its page.
    """
    rules = [r.strip() for r in _COMPONENT_CSS.replace("\n", "").split("}") if r.strip()]
    out = [f"{scope}{{{_VARS}}}"]
    for rule in rules:
        selectors, body = rule.split("{", 1)
        scoped = ",".join(f"{scope} {sel.strip()}" for sel in selectors.split(","))
        out.append(f"{scoped}{{{body}}}")
    return "\n".join(out)


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PlanStatusNote:
    """The analysis plan's seal status, shown in the report (public metadata only).

    Attributes
    ----------
    status
        ``locked`` (sealed and unchanged), ``deviated`` (changed after sealing) or
        ``unregistered`` (never sealed).
    sha256
        The plan's canonical hash (empty when unregistered).
    """

    status: str  # locked | deviated | unregistered
    sha256: str


@dataclass(frozen=True)
class _Shown:
    """A release accepted for the page, with the ledger stamp it was charged under."""

    release: DPRelease
    stamp: LedgerStamp


def _summary_ledger_id(summary: LedgerSummary) -> str | None:
    # ``ledger_id`` / ``head`` are being added to LedgerSummary; read them defensively.
    head = getattr(summary, "head", None)
    lid = getattr(summary, "ledger_id", None) or getattr(head, "ledger_id", None)
    return str(lid) if lid else None


def _check_inputs(releases: object, summary: object) -> list[_Shown]:
    """Admit only DP release objects that the ledger summary lists; raise otherwise."""
    if isinstance(releases, str | bytes | Mapping) or not isinstance(releases, Sequence):
        raise TypeError(
            "releases must be a sequence of StoredRelease (or DPRelease), "
            f"got {type(releases).__name__}"
        )
    items = list(releases)
    for r in items:
        if not isinstance(r, StoredRelease | DPRelease):
            raise TypeError(
                f"the public report accepts StoredRelease/DPRelease only, got {type(r).__name__}"
            )
    if not isinstance(summary, LedgerSummary):
        raise TypeError(f"summary must be a LedgerSummary, got {type(summary).__name__}")
    ledger_id = _summary_ledger_id(summary)
    # Entries are listed oldest first, so an entry without its own seq is at position + 1.
    known = {
        str(e["release_id"]): {**e, "seq": int(e.get("seq", i))}
        for i, e in enumerate(summary.releases, start=1)
    }
    shown: dict[str, _Shown] = {}
    for r in items:
        rel = r.release if isinstance(r, StoredRelease) else r
        entry = known.get(rel.release_id)
        if entry is None:
            raise ValueError(
                f"release {rel.release_id[:16]} is not in the ledger and cannot be published"
            )
        if abs(float(entry.get("epsilon", rel.epsilon)) - rel.epsilon) > _EPS_TOL:
            raise ValueError(
                f"release {rel.release_id[:16]} claims epsilon={rel.epsilon:g} but the ledger "
                f"charged {float(entry['epsilon']):g}; it is not in the ledger as shown"
            )
        if isinstance(r, StoredRelease):
            stamp = r.stamp
            if ledger_id is not None and stamp.ledger_id != ledger_id:
                raise ValueError(
                    f"release {rel.release_id[:16]} was stamped by another ledger "
                    f"({stamp.ledger_id[:16]}); it is not in the ledger"
                )
            if stamp.seq != entry["seq"]:
                raise ValueError(
                    f"release {rel.release_id[:16]}: stamp seq {stamp.seq} is not its ledger "
                    f"entry (seq {entry['seq']}); it is not in the ledger as stamped"
                )
            expected_hash = entry.get("entry_hash")
            if expected_hash is None and stamp.seq == summary.n_releases:
                expected_hash = summary.head_hash
            if expected_hash is not None and stamp.entry_hash != expected_hash:
                raise ValueError(
                    f"release {rel.release_id[:16]}: stamp hash does not match ledger entry "
                    f"{stamp.seq}; it is not in the ledger as stamped"
                )
        else:
            stamp = LedgerStamp(ledger_id or "", entry["seq"], str(entry.get("entry_hash", "")))
        shown[rel.release_id] = _Shown(rel, stamp)
    return sorted(shown.values(), key=lambda s: s.stamp.seq)


def ledger_head(summary: LedgerSummary,
                shown_stamps: Sequence[LedgerStamp] = ()) -> LedgerStamp | None:
    """The ledger's head entry as a stamp (``ledger_id``, ``seq``, ``entry_hash``).

    Uses ``summary.head`` when the summary carries one; an empty ledger has no head to
    publish (None). Otherwise the head is entry ``n_releases`` with ``head_hash``, and the
    ledger id is the summary's or the stamps'.
    """
    head = getattr(summary, "head", None)
    if isinstance(head, LedgerStamp):
        return head
    if summary.n_releases == 0:
        return None
    lid = _summary_ledger_id(summary) or next((s.ledger_id for s in shown_stamps if s.ledger_id), "")
    return LedgerStamp(lid, int(summary.n_releases), str(summary.head_hash))


# ----------------------------------------------------------------------------- words


def _decimals(fig: DPFigure) -> int:
    """Decimals shown: one on wide scales (0-100), two on short ones (0-10)."""
    return 1 if (fig.hi - fig.lo) > 20 else 2


def format_number(x: float, decimals: int, *, signed: bool = False) -> str:
    """A number as shown on the page: fixed decimals, a real minus sign, optional plus.

    Examples
    --------
    >>> format_number(-2.04, 1), format_number(7.06, 1, signed=True), format_number(0.0, 2)
    ('−2.0', '+7.1', '0.00')
    """
    text = f"{x:.{decimals}f}"
    if text.lstrip("-").strip("0.") == "":  # -0.0 and friends
        text = text.lstrip("-")
    if text.startswith("-"):
        return _MINUS + text[1:]
    return ("+" + text) if signed and text.strip("0.") else text


def _plain(x: float) -> str:
    """A declared constant (a threshold) without trailing zeros: ``10``, ``0.5``."""
    return f"{x:g}".replace("-", _MINUS)


def unit_word(fig: DPFigure) -> str:
    """The unit of a figure in one word: ``points`` from ``points on the 0–100 scale``.

    Examples
    --------
    >>> unit_word(DPFigure("e", "effect", "a.b", "A", "B", "points on the 0–10 scale", 0, 10,
    ...                    "primary", None, 4, 1.0, 0.1, 0.5, "withheld"))
    'points'
    """
    m = re.match(r"[^\s,;(]+", fig.units.strip()) if fig.units else None
    return m.group(0) if m else "points"


def important_difference(fig: DPFigure) -> float:
    """The smallest difference that matters (MID) of a figure's outcome, in outcome units.

    A figure that carries its MID (``mid`` / ``minimal_important_difference``) gives it;
    otherwise its usefulness ``threshold`` stands in, which is the MID unless the plan
    declared a stricter threshold for the figure.
    """
    for name in ("mid", "minimal_important_difference"):
        value = getattr(fig, name, None)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return float(fig.threshold)


def _range_text(fig: DPFigure) -> str:
    return f"{fig.lo:g}\u2013{fig.hi:g}"


def outcome_name(fig: DPFigure) -> str:
    """The outcome as a reader knows it, with its range.

    A whole-instrument score (``who5.total``) is named by the instrument; a subscale by
    its own name with the instrument: ``Meaning and purpose (Flourish Measure, 0–10)``.
    """
    scale_id = fig.outcome.split(".", 1)[-1]
    if scale_id == "total" or not fig.scale_title:
        return f"the {fig.instrument_title} ({_range_text(fig)})"
    return f"\u201c{fig.scale_title}\u201d ({fig.instrument_title}, {_range_text(fig)})"


def short_label(fig: DPFigure) -> str:
    """The outcome's short name: the instrument for a total score, else the subscale."""
    scale_id = fig.outcome.split(".", 1)[-1]
    return fig.instrument_title if scale_id == "total" or not fig.scale_title else fig.scale_title


def _conf(release: DPRelease) -> str:
    return f"{100 * (1 - release.alpha):g} %"


def _arm(release: DPRelease, key: str) -> str:
    return str(release.arms.get(key, key))


def _baseline(release: DPRelease) -> int:
    return min(release.waves) if release.waves else 0


def _effect_row(fig: DPFigure) -> dict[str, Any] | None:
    if not fig.released or not fig.values:
        return None
    row = fig.values[0]
    if any(row.get(k) is None for k in ("estimate", "ci_low", "ci_high")):
        return None
    return row


def describe_effect(fig: DPFigure, release: DPRelease) -> str:
    """The headline sentence for an effect figure, in plain words (numbers from ``fig``).

    Direction is stated only when the interval excludes zero; an interval that crosses
    zero is "no clear difference". A withheld figure says so and shows no number.
    """
    name = outcome_name(fig)
    if not fig.released:
        return f"The result for {name} is {WITHHELD_TEXT}."
    row = _effect_row(fig)
    if row is None:
        return f"The result for {name} could not be estimated from the released data."
    d, u = _decimals(fig), unit_word(fig)
    est, lo, hi = float(row["estimate"]), float(row["ci_low"]), float(row["ci_high"])
    treat = f"people offered the {_arm(release, 'treatment')}"
    ctrl = f"the {_arm(release, 'control')} group"
    when = f"From the first survey (wave {_baseline(release)}) to wave {fig.wave}"
    bounds = f"{format_number(lo, d)} to {format_number(hi, d)} {u}"
    if lo > 0 or hi < 0:
        word = "higher" if est > 0 else "lower"
        return (f"{when}, {treat} scored {format_number(abs(est), d)} {u} {word} on {name} "
                f"than {ctrl}, relative to where each group started ({_conf(release)} interval "
                f"{bounds}, differentially private).")
    if round(abs(est), d) == 0:
        best = "no difference"
    else:
        best = f"{format_number(abs(est), d)} {u} {'higher' if est > 0 else 'lower'} with the treatment"
    return (f"{when}, there was no clear difference on {name} between {treat} and {ctrl}: "
            f"the best estimate is {best}, but the {_conf(release)} interval ({bounds}, "
            "differentially private) includes no difference at all.")


def describe_threshold(fig: DPFigure) -> str:
    """How an effect's interval compares with the smallest difference that matters (MID)."""
    row = _effect_row(fig)
    if row is None or not important_difference(fig) > 0:
        return ""
    u = unit_word(fig)
    t, lo, hi = important_difference(fig), float(row["ci_low"]), float(row["ci_high"])
    mid = f"{_plain(t)} {u}"
    lead = f"The smallest difference that matters on this scale is {mid}"
    if lo >= t:
        return f"{lead}; the whole interval is above it, so the difference is large enough to matter."
    if hi <= -t:
        return (f"{lead}; the whole interval is below {_plain(-t)} {u}, so the "
                "difference is large enough to matter.")
    if lo > -t and hi < t:
        return (f"{lead}; the whole interval lies within {mid} either way, so any difference "
                "is smaller than one that matters.")
    return (f"{lead}; the interval includes differences both smaller and larger than that, so "
            "it is not clear whether the difference is large enough to matter.")


# ----------------------------------------------------------------------------- drawing


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def nice_axis(lo: float, hi: float, target: int = 5) -> tuple[float, float, list[float]]:
    """Axis limits rounded outwards to a round step, and the ticks between them.

    Examples
    --------
    >>> nice_axis(43.2, 61.7)
    (40.0, 65.0, [40.0, 45.0, 50.0, 55.0, 60.0, 65.0])
    """
    if not hi > lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = float(_nice_step(hi - lo, target))
    a, b = math.floor(lo / step) * step, math.ceil(hi / step) * step
    n = round((b - a) / step)
    return float(a), float(b), [round(a + i * step, 10) for i in range(n + 1)]


def _tick_text(v: float) -> str:
    return format_number(v, 0 if float(v).is_integer() else (1 if (v * 10).is_integer() else 2))


_STRIP_W, _STRIP_H, _PAD = 380, 34, 14


def _x_of(v: float, lo: float, hi: float) -> float:
    return _PAD + (v - lo) / (hi - lo) * (_STRIP_W - 2 * _PAD)


def _profile_strip(lo: float, hi: float, est: float | None, ci: tuple[float, float] | None,
                   colour: str) -> str:
    """One row of the profile: MID band, zero line, and (when released) dot and whisker."""
    x0, xm, xp = _x_of(0, lo, hi), _x_of(-1, lo, hi), _x_of(1, lo, hi)
    y = _STRIP_H / 2
    parts = [f'<svg width="{_STRIP_W}" height="{_STRIP_H}" viewBox="0 0 {_STRIP_W} {_STRIP_H}" '
             'aria-hidden="true">',
             f'<rect x="{xm:.1f}" y="0" width="{xp - xm:.1f}" height="{_STRIP_H}" fill="#eef2f6"/>',
             f'<line x1="{x0:.1f}" x2="{x0:.1f}" y1="0" y2="{_STRIP_H}" stroke="#888" '
             'stroke-width="1"/>']
    if est is not None and ci is not None:
        a, b = (_x_of(max(min(v, hi), lo), lo, hi) for v in ci)
        parts += [f'<line x1="{a:.1f}" x2="{b:.1f}" y1="{y}" y2="{y}" stroke="{colour}" '
                  'stroke-width="3" stroke-linecap="round"/>',
                  f'<circle cx="{_x_of(est, lo, hi):.1f}" cy="{y}" r="6" fill="{colour}" '
                  'stroke="#fff" stroke-width="1.5"/>']
    parts.append("</svg>")
    return "".join(parts)


def _profile_axis(lo: float, ticks: list[float], hi: float) -> str:
    h = 40
    parts = [f'<svg width="{_STRIP_W}" height="{h}" viewBox="0 0 {_STRIP_W} {h}" '
             'role="img" aria-label="Scale: multiples of the smallest difference that matters">',
             f'<line x1="{_PAD}" x2="{_STRIP_W - _PAD}" y1="1" y2="1" stroke="#555"/>']
    for t in ticks:
        x = _x_of(t, lo, hi)
        label = "0" if t == 0 else f"{_tick_text(t)}\u00d7"
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="1" y2="6" stroke="#555"/>'
                     f'<text x="{x:.1f}" y="20" font-size="12" text-anchor="middle" '
                     f'fill="#333">{label}</text>')
    parts.append(f'<text x="{_PAD}" y="36" font-size="11" fill="#5a5a5a">\u2190 lower with '
                 'treatment</text>'
                 f'<text x="{_STRIP_W - _PAD}" y="36" font-size="11" fill="#5a5a5a" '
                 'text-anchor="end">higher with treatment \u2192</text></svg>')
    return "".join(parts)


def _profile_order(figs: Sequence[DPFigure]) -> list[DPFigure]:
    rank = {"primary": 0, "secondary": 1, "descriptive": 2, "guardrail": 3}
    return sorted(figs, key=lambda f: rank.get(f.role, 2))  # stable: declaration order within


def _profile_intro(release: DPRelease, effects: Sequence[DPFigure]) -> str:
    waves = sorted({f.wave for f in effects if f.wave is not None})
    when = (f"from the first survey to wave {waves[0]}" if len(waves) == 1
            else "from the first survey to each outcome's final wave")
    return (
        "<p>Each dot is the best estimate of how much more the scores of people offered the "
        f"{html.escape(_arm(release, 'treatment'))} changed, {when}, than those of the "
        f"{html.escape(_arm(release, 'control'))} group; the line through it is its "
        f"{_conf(release)} interval. The outcomes use different scales, so each is drawn "
        "relative to its own <em>smallest difference that matters</em> (1\u00d7); the numbers on "
        "the right are in the scale's own points.</p>"
        f'<p class="key"><span><i style="background:{_HIGHER}"></i>clearly higher with the treatment'
        f'</span><span><i style="background:{_LOWER}"></i>clearly lower with the treatment</span>'
        f'<span><i style="background:{_UNCLEAR}"></i>no clear difference</span>'
        '<span><i class="band"></i>smaller than the smallest difference that matters</span></p>'
    )


def render_profile_html(release: DPRelease) -> str:
    """The per-dimension profile of a release (intro, colour key, rows, shared axis) as HTML.

    Every effect figure is one row tagged ``data-figure-id``; a withheld one says
    :data:`WITHHELD_TEXT` and shows no number.
    """
    effects = _overall_effects(release)
    return _profile_intro(release, effects) + _profile(release)


def _overall_effects(release: DPRelease) -> list[DPFigure]:
    return [f for f in release.figures if f.kind == "effect" and f.breakdown is None]


def _subgroup_rows(fig: DPFigure) -> list[DPFigure]:
    """One profile row per declared category of a breakdown figure (released values only)."""
    inst = fig.outcome.split(".", 1)[0]
    return [replace(fig, id=f"{fig.id}#{v['category']}", outcome=f"{inst}.subgroup",
                    scale_title=f"{fig.breakdown}: {v['category']}", role="subgroup",
                    values=(v,), breakdown=None)
            for v in fig.values]


def render_subgroups_html(release: DPRelease, fig: DPFigure) -> str:
    """A breakdown figure (the effect by a declared covariate) as profile rows, one per category.

    Withheld: the standard wording and no number.
    """
    fid = html.escape(fig.id, quote=True)
    if not fig.released:
        return (f'<p class="withheld" data-figure-id="{fid}" data-status="withheld">'
                f"{html.escape(short_label(fig))} by {html.escape(str(fig.breakdown))}: "
                f"{WITHHELD_TEXT}.</p>")
    rows = _profile(replace(release, figures=tuple(_subgroup_rows(fig))))
    return (f'<div data-figure-id="{fid}"><p class="note">The effect on '
            f"{html.escape(outcome_name(fig))} within each declared {html.escape(str(fig.breakdown))}"
            " group. These are descriptive: a trial is rarely large enough to tell subgroups "
            f"apart, so read the intervals, not the dots.</p>{rows}</div>")


def primary_effect(release: DPRelease) -> DPFigure | None:
    """The effect figure the page leads with: the primary one, else the first effect."""
    effects = _overall_effects(release)
    return next((f for f in effects if f.role == "primary"), effects[0] if effects else None)


def _profile(release: DPRelease) -> str:
    figs = _profile_order(_overall_effects(release))
    if not figs:
        return "<p>This release declares no effect figures.</p>"
    ratios: list[float] = [-1.5, 1.5]
    for f in figs:
        row = _effect_row(f)
        if row is not None and important_difference(f) > 0:
            t = important_difference(f)
            ratios += [float(row["ci_low"]) / t, float(row["ci_high"]) / t]
    lo, hi, ticks = nice_axis(min(ratios), max(ratios), target=6)
    rows = []
    for f in figs:
        row = _effect_row(f)
        note = _ROLE_NOTE.get(f.role, "")
        sub = f"{html.escape(f.instrument_title)}, {_range_text(f)}" + (f" \u00b7 {note}" if note else "")
        label = (f'<div class="label"><strong>{html.escape(short_label(f))}</strong>'
                 f"<small>{sub}</small></div>")
        fid = html.escape(f.id, quote=True)
        if row is None or not important_difference(f) > 0:
            reason = html.escape(f.reason or "")
            text = WITHHELD_TEXT if not f.released else "not estimable from the released data"
            rows.append(
                f'<div class="row" data-figure-id="{fid}" data-status="{html.escape(f.status)}">'
                f"{label}<div class=\"strip\">{_profile_strip(lo, hi, None, None, '#000')}</div>"
                f'<div class="value withheld" title="{reason}">{text}</div></div>'
            )
            continue
        d, t = _decimals(f), important_difference(f)
        est, a, b = float(row["estimate"]), float(row["ci_low"]), float(row["ci_high"])
        colour = _HIGHER if a > 0 else (_LOWER if b < 0 else _UNCLEAR)
        strip = _profile_strip(lo, hi, est / t, (a / t, b / t), colour)
        value = (f"<span><strong>{format_number(est, d, signed=True)}</strong> {unit_word(f)} "
                 f"<span class=\"note\">({format_number(a, d)} to {format_number(b, d)})</span>"
                 f"<small>smallest that matters: {_plain(t)}</small></span>")
        rows.append(
            f'<div class="row" data-figure-id="{fid}" data-status="released">{label}'
            f'<div class="strip">{strip}</div><div class="value">{value}</div></div>'
        )
    return (
        f'<div class="profile" data-section="profile">{"".join(rows)}'
        f'<div></div><div class="axis">{_profile_axis(lo, ticks, hi)}</div><div></div>'
        '<div></div><div class="axis-label">difference, as a multiple of the smallest difference '
        "that matters</div><div></div></div>"
    )


def _arm_style(arm: str, i: int) -> dict[str, str]:
    return ARM_STYLE.get(arm, {"colour": _OTHER_ARM_COLOURS[i % len(_OTHER_ARM_COLOURS)],
                               "dash": "2 3", "marker": "circle"})


def _marker(shape: str, x: float, y: float, colour: str) -> str:
    if shape == "square":
        return (f'<rect x="{x - 4.5:.1f}" y="{y - 4.5:.1f}" width="9" height="9" fill="{colour}" '
                'stroke="#fff" stroke-width="1"/>')
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}" stroke="#fff" stroke-width="1"/>'


def _means_by_arm(fig: DPFigure) -> dict[str, list[dict[str, Any]]]:
    arms: dict[str, list[dict[str, Any]]] = {}
    for v in fig.values:
        if v.get("mean") is None or v.get("wave") is None:
            continue
        arms.setdefault(str(v["arm"]), []).append(v)
    for rows in arms.values():
        rows.sort(key=lambda r: int(r["wave"]))
    # treatment first in the legend, then the control arm, then any other in order
    order = {"treatment": 0, "control": 1}
    return dict(sorted(arms.items(), key=lambda kv: order.get(kv[0], 2)))


def render_trajectory_svg(fig: DPFigure, release: DPRelease) -> str:
    """Mean per arm over the waves: a line per arm with its noise-margin band (inline SVG).

    The y-axis is fitted to the released means and margins (not the whole scale range),
    and labelled with the outcome's name and units.
    """
    arms = _means_by_arm(fig)
    waves = sorted({int(r["wave"]) for rows in arms.values() for r in rows})
    if not arms or not waves:
        return '<p class="withheld">No means were released.</p>'
    w, h, left, right, top, bottom = 640, 320, 64, 110, 16, 52
    lows = [float(r["mean"]) - float(r.get("margin") or 0) for rs in arms.values() for r in rs]
    highs = [float(r["mean"]) + float(r.get("margin") or 0) for rs in arms.values() for r in rs]
    y0, y1, yticks = nice_axis(min(lows), max(highs), target=5)
    x0w, x1w = waves[0], waves[-1]

    def px(wave: float) -> float:
        return left + (0.5 if x1w == x0w else (wave - x0w) / (x1w - x0w)) * (w - left - right)

    def py(v: float) -> float:
        return top + (y1 - v) / (y1 - y0) * (h - top - bottom)

    d = _decimals(fig)
    ylabel = f"{short_label(fig)} ({unit_word(fig)}, {_range_text(fig)})"
    title = f"Average {short_label(fig)} score by group at each survey wave"
    out = [f'<svg width="100%" viewBox="0 0 {w} {h}" role="img" aria-label="{html.escape(title)}" '
           f'style="max-width:{w}px">']
    for t in yticks:
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
                   'stroke="#e6e6e6"/>'
                   f'<text x="{left - 8}" y="{py(t) + 4:.1f}" font-size="12" text-anchor="end" '
                   f'fill="#333">{_tick_text(t)}</text>')
    for wv in waves:
        out.append(f'<text x="{px(wv):.1f}" y="{h - bottom + 18}" font-size="12" '
                   f'text-anchor="middle" fill="#333">{wv}</text>')
    out.append(f'<line x1="{left}" x2="{w - right}" y1="{h - bottom}" y2="{h - bottom}" '
               'stroke="#555"/>'
               f'<text x="{(left + w - right) / 2:.0f}" y="{h - 10}" font-size="13" '
               f'text-anchor="middle" fill="#333">survey wave ({x0w} = start of the study)</text>'
               f'<text transform="translate(16 {(top + h - bottom) / 2:.0f}) rotate(-90)" '
               f'font-size="13" text-anchor="middle" fill="#333">{html.escape(ylabel)}</text>')
    label_y: list[float] = []
    for i, (arm, rows) in enumerate(arms.items()):
        st = _arm_style(arm, i)
        pts = [(px(int(r["wave"])), float(r["mean"]), float(r.get("margin") or 0)) for r in rows]
        upper = " ".join(f"{x:.1f},{py(m + e):.1f}" for x, m, e in pts)
        lower = " ".join(f"{x:.1f},{py(m - e):.1f}" for x, m, e in reversed(pts))
        line = " ".join(f"{x:.1f},{py(m):.1f}" for x, m, _ in pts)
        dash = f' stroke-dasharray="{st["dash"]}"' if st["dash"] else ""
        out.append(f'<g data-arm="{html.escape(arm)}">'
                   f'<polygon points="{upper} {lower}" fill="{st["colour"]}" fill-opacity="0.15"/>'
                   f'<polyline points="{line}" fill="none" stroke="{st["colour"]}" '
                   f'stroke-width="2.5"{dash}/>')
        out += [_marker(st["marker"], x, py(m), st["colour"]) for x, m, _ in pts]
        # direct label at the end of the line, nudged apart from the other arm's label
        ly = py(pts[-1][1]) + 4
        for other in label_y:
            if abs(ly - other) < 16:
                ly = other + (16 if ly >= other else -16)
        label_y.append(ly)
        out.append(f'<text x="{pts[-1][0] + 10:.1f}" y="{ly:.1f}" font-size="13" font-weight="600" '
                   f'fill="{st["colour"]}">{html.escape(_arm(release, arm))}</text></g>')
    out.append("</svg>")
    legend = "".join(
        f'<span><svg width="34" height="12" aria-hidden="true"><line x1="1" x2="33" y1="6" y2="6" '
        f'stroke="{_arm_style(a, i)["colour"]}" stroke-width="2.5"'
        + (f' stroke-dasharray="{_arm_style(a, i)["dash"]}"' if _arm_style(a, i)["dash"] else "")
        + f"/></svg>{html.escape(_arm(release, a))}</span>"
        for i, a in enumerate(arms)
    )
    conf = _conf(release)
    caption = (f"Lines: average score of each group (differentially private). Shaded band: the "
               f"{conf} range of the random noise added for privacy. Each wave's average is of "
               "the people who answered that wave.")
    head = "".join(f'<th>{html.escape(_arm(release, a))}</th>' for a in arms)
    body = []
    for wv in waves:
        cells = []
        for rows in arms.values():
            r = next((r for r in rows if int(r["wave"]) == wv), None)
            cells.append("<td>\u2014</td>" if r is None else
                         f"<td>{format_number(float(r['mean']), d)} \u00b1 "
                         f"{format_number(float(r.get('margin') or 0), d)}</td>")
        body.append(f'<tr><td class="t">wave {wv}</td>{"".join(cells)}</tr>')
    table = (f'<table><thead><tr><th class="t">average ({unit_word(fig)})</th>{head}</tr></thead>'
             f'<tbody>{"".join(body)}</tbody></table>')
    return (f'<div class="legend">{legend}</div>{"".join(out)}<figcaption>{caption}</figcaption>'
            f"{table}")


_SVG = re.compile(r"<svg\b(.*?)>(.*?)</svg>", re.S)


def svg_as_images(fragment: str) -> str:
    """Replace each inline ``<svg>`` of an HTML fragment by an ``<img>`` with a data URI.

    For hosts that sanitise inline SVG away (Streamlit's ``st.html``); the public report
    itself keeps inline SVG. Each image keeps the SVG's size and its ``aria-label``.
    """

    def one(m: re.Match[str]) -> str:
        attrs, body = m.group(1), m.group(2)
        doc = f'<svg xmlns="http://www.w3.org/2000/svg"{attrs}>{body}</svg>'
        uri = "data:image/svg+xml;base64," + base64.b64encode(doc.encode("utf-8")).decode("ascii")
        label = re.search(r'aria-label="([^"]*)"', attrs)
        size = "".join(f' {k}="{v}"' for k, v in re.findall(r'\b(width|height)="([^"]*)"', attrs))
        style = re.search(r'style="([^"]*)"', attrs)
        return (f'<img src="{uri}" alt="{label.group(1) if label else ""}"{size}'
                + (f' style="{style.group(1)}"' if style else "") + ">")

    return _SVG.sub(one, fragment)


# ----------------------------------------------------------------------------- sections


def _plan_block(note: PlanStatusNote | None) -> str:
    """The plan's seal status as one paragraph (a deviation is shown in red, never hidden)."""
    if note is None:
        return ""
    if note.status == "locked":
        text = (f"The analysis plan was pre-registered and is unchanged since it was sealed "
                f"(sha256 {html.escape(note.sha256[:16])}…).")
        return f"<p class='plan plan-locked'>{text}</p>"
    if note.status == "deviated":
        text = ("DEVIATION: the analysis plan was changed after it was sealed; these results "
                f"are not the pre-registered analysis (plan sha256 {html.escape(note.sha256[:16])}…).")
        return f"<p class='plan plan-deviated'>{text}</p>"
    return "<p class='plan'>The analysis plan was not sealed (not pre-registered).</p>"


def _lead(release: DPRelease) -> str:
    fig = primary_effect(release)
    if fig is None:
        return "<p class='headline'>This release declares no treatment-effect figure.</p>"
    fid = html.escape(fig.id, quote=True)
    mid = describe_threshold(fig)
    return (f'<p class="headline" data-figure-id="{fid}">{html.escape(describe_effect(fig, release))}'
            "</p>" + (f'<p class="mid" data-figure-id="{fid}">{html.escape(mid)}</p>' if mid else ""))


def _how_to_read(release: DPRelease) -> str:
    return (
        '<p class="read"><strong>How to read this.</strong> Participants were randomly assigned '
        f"to be offered the {html.escape(_arm(release, 'treatment'))} or to a "
        f"{html.escape(_arm(release, 'control'))} group. Each result compares how much the two "
        "groups' scores changed since the start. Random noise was added to every number to "
        f"protect the privacy of each participant; the {_conf(release)} intervals include both "
        "that noise and the ordinary uncertainty of a study of this size.</p>"
    )


def _declared(release: DPRelease) -> str:
    outcomes: dict[str, DPFigure] = {}
    for f in release.figures:
        outcomes.setdefault(f.outcome, f)
    items = ", ".join(
        f"{html.escape(short_label(f))}"
        + (f" ({html.escape(f.role)})" if f.role in ("primary", "guardrail") else "")
        for f in outcomes.values()
    )
    arms = ", ".join(html.escape(str(v)) for v in release.arms.values())
    waves = ", ".join(str(w) for w in release.waves)
    n_rel = sum(f.released for f in release.figures)
    return (f"{len(release.figures)} figures declared in the sealed plan before any data were "
            f"read ({n_rel} released, {len(release.figures) - n_rel} withheld). Outcomes: {items}. "
            f"Groups: {arms}. Waves: {waves}. Nothing else about the data is public.")


def _how_made(shown: _Shown, summary: LedgerSummary, head: LedgerStamp | None,
              plan: PlanStatusNote | None, older: Sequence[_Shown]) -> str:
    rel, stamp = shown.release, shown.stamp
    p = rel.privacy
    unit = p.get("unit", "one participant")
    rows = [
        ("Privacy unit", f"{html.escape(unit)}: the page is essentially the same whether or not any "
                         "one person took part, with all of their answers in every wave."),
        ("Privacy guarantee", html.escape(p.get("definition", "differential privacy"))),
        ("This release", f"used \u03b5 = {rel.epsilon:.4g} (smaller \u03b5 is more private)"),
        ("Study budget", f"\u03b5 spent {summary.spent:.4g} of {summary.budget:.4g} in total; "
                         f"{summary.remaining:.4g} left ({summary.n_releases} release"
                         f"{'s' if summary.n_releases != 1 else ''} so far). Nothing more is "
                         "published once it is spent."),
        ("Mechanism", html.escape(p.get("mechanism", "")) or "\u2014"),
    ]
    if p.get("accounting"):
        rows.append(("Accounting", html.escape(p["accounting"])))
    rows += [
        ("Public by declaration", _declared(rel)),
        ("Ledger head", "\u2014" if head is None else
                        f"ledger <code>{html.escape(head.ledger_id or 'unknown')}</code>, entry "
                        f"{head.seq}, hash <code>{html.escape(head.entry_hash)}</code>. "
                        "Keep this: a later copy of the ledger must still contain it."),
        ("This release in the ledger", f"entry {stamp.seq}, hash "
                                       f"<code>{html.escape(stamp.entry_hash)}</code>; release "
                                       f"<code>{html.escape(rel.release_id[:16])}</code>, "
                                       f"drawn {html.escape(rel.created_at[:19].replace('T', ' '))} UTC"),
        ("Analysis plan", _plan_block(plan) or "not stated"),
    ]
    if not summary.verified:
        problems = "; ".join(str(x) for x in getattr(summary, "problems", ()) or ())
        rows.insert(0, ("Ledger check", '<span class="ledger-bad">the ledger failed its integrity '
                                        f"check{': ' + html.escape(problems) if problems else ''}"
                                        "</span>"))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    earlier = ""
    if older:
        items = "".join(
            f"<tr><td>{s.stamp.seq}</td><td class='t'>{html.escape(s.release.created_at[:10])}</td>"
            f"<td>{s.release.epsilon:.4g}</td><td class='t'><code>{html.escape(s.release.release_id[:16])}"
            "</code></td></tr>"
            for s in list(reversed(older))[:12]
        )
        more = f"<p class='note'>and {len(older) - 12} older.</p>" if len(older) > 12 else ""
        earlier = ("<h3>Earlier releases</h3><p class='note'>This page shows the newest release; "
                   "earlier ones stay charged against the budget.</p>"
                   "<table><thead><tr><th>entry</th><th class='t'>date</th><th>\u03b5</th>"
                   f"<th class='t'>release</th></tr></thead><tbody>{items}</tbody></table>{more}")
    return f'<dl class="how">{dl}</dl>{earlier}'


def _page(shown: list[_Shown], summary: LedgerSummary, plan: PlanStatusNote | None) -> str:
    head = ledger_head(summary, [s.stamp for s in shown])
    meta = "" if head is None else html.escape(f"{head.ledger_id}:{head.seq}:{head.entry_hash}",
                                                quote=True)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">",
        f'<meta name="{HEAD_META}" content="{meta}">',
    ]
    if not shown:
        parts += [f"<title>Public results</title><style>{_CSS}</style></head><body>",
                  "<h1>Public results</h1><p>No results have been released yet.</p>",
                  f"<p class='note'>Privacy budget: \u03b5 spent {summary.spent:.4g} of "
                  f"{summary.budget:.4g}.</p>", _plan_block(plan), "</body></html>"]
        return "\n".join(parts)
    newest, older = shown[-1], shown[:-1]
    rel = newest.release
    title = f"{rel.study}: public results"
    deviated = _plan_block(plan) if plan is not None and plan.status == "deviated" else ""
    bad = ("" if summary.verified else
           "<p class='ledger-bad'>Warning: the privacy ledger failed its integrity check; see "
           "\u201cHow this was made\u201d.</p>")
    effects = [f for f in rel.figures if f.kind == "effect"]
    means = [f for f in rel.figures if f.kind == "means"]
    parts += [f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
              f"<header data-release-id='{html.escape(rel.release_id)}'>",
              f"<p class='kicker'>Public results \u00b7 released "
              f"{html.escape(rel.created_at[:10])} \u00b7 differentially private</p>",
              f"<h1>{html.escape(rel.study)}: did the {html.escape(_arm(rel, 'treatment'))} "
              "help people flourish?</h1>",
              deviated, bad, _lead(rel), _how_to_read(rel), "</header>"]
    if _overall_effects(rel):
        parts += ["<section id='profile'><h2>Result on each part of wellbeing</h2>",
                  render_profile_html(rel), "</section>"]
    for f in (f for f in effects if f.breakdown is not None):
        parts += [f"<section class='subgroups'><h2>For whom: {html.escape(short_label(f))} by "
                  f"{html.escape(str(f.breakdown))}</h2>", render_subgroups_html(rel, f),
                  "</section>"]
    for f in means:
        fid = html.escape(f.id, quote=True)
        parts.append(f"<section class='trajectory'><h2>Average {html.escape(short_label(f))} "
                     "score over time</h2>")
        if f.released:
            parts.append(f'<figure data-figure-id="{fid}">{render_trajectory_svg(f, rel)}</figure>')
        else:
            parts.append(f'<p class="withheld" data-figure-id="{fid}" data-status="withheld">'
                         f"{html.escape(short_label(f))} averages: {WITHHELD_TEXT}.</p>")
        parts.append("</section>")
    parts += ["<section id='how'><h2>How this was made</h2>",
              _how_made(newest, summary, head, plan, older), "</section>",
              "<footer>Every number on this page comes from the differentially private release "
              "listed above; no participant's individual answers are published.</footer>",
              "</body></html>"]
    return "\n".join(p for p in parts if p)


def render_public_report(
    releases: Sequence[StoredRelease],
    summary: LedgerSummary,
    out_dir: Path | str,
    *,
    plan_status: PlanStatusNote | None = None,
) -> Path:
    """Write the public report ``out_dir/report/index.html`` (atomically) from DP releases only.

    Parameters
    ----------
    releases
        The stored releases to publish (:class:`~privacy.objects.StoredRelease`; a bare
        :class:`~privacy.objects.DPRelease` is accepted and stamped from the summary).
        The page leads with the newest (highest ledger seq); older ones are listed.
        Anything else raises ``TypeError``.
    summary
        The ledger's :class:`~privacy.ledger.LedgerSummary`. Every release must be one of
        its charged entries (same id, ε, seq, hash and ledger); ``ValueError`` otherwise.
    out_dir
        The study's output directory.
    plan_status
        Public facts about the analysis plan (its seal status and sha256); a deviated plan
        is shown at the top, never hidden.

    Returns
    -------
    Path
        The written ``index.html``: self-contained (inline CSS and SVG, no script, no
        network request), head of the ledger in ``<meta name="flourish-ledger-head">``.
    """
    shown = _check_inputs(releases, summary)
    assert isinstance(summary, LedgerSummary)  # checked above; narrows the type
    text = _page(shown, summary, plan_status)
    return write_atomic(Path(out_dir) / "report" / "index.html", text)
