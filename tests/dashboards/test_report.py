"""The public report: leads with the answer, shows only ledger-stamped DP figures, opens offline.

Releases are built by hand (released and withheld figures, positive, negative and
interval-crossing effects) so every sentence and number can be checked against the objects.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from dashboards import report as report_mod
from dashboards.report import (
    HEAD_META,
    WITHHELD_TEXT,
    PlanStatusNote,
    describe_effect,
    describe_threshold,
    important_difference,
    render_public_report,
)
from privacy.ledger import LedgerSummary
from privacy.objects import DPFigure, DPRelease, LedgerStamp, StoredRelease

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LEDGER_ID = "a1" * 32
DOMAINS = {
    "happiness_life_satisfaction": "Happiness and life satisfaction",
    "mental_physical_health": "Mental and physical health",
    "meaning_purpose": "Meaning and purpose",
    "character_virtue": "Character and virtue",
    "close_social_relationships": "Close social relationships",
    "financial_material_stability": "Financial and material stability",
}
# (estimate, ci_low, ci_high) per domain; None = withheld
DOMAIN_EFFECTS = {
    "happiness_life_satisfaction": (0.62, 0.21, 1.03),   # clearly higher
    "mental_physical_health": (-0.35, -0.71, 0.01),      # crosses zero
    "meaning_purpose": None,                             # withheld
    "character_virtue": (0.12, -0.3, 0.54),              # crosses zero
    "close_social_relationships": (-0.8, -1.2, -0.4),    # clearly lower
    "financial_material_stability": None,                # withheld
}
PRIVACY = {"definition": "pure epsilon-differential privacy", "unit": "one participant",
           "mechanism": "Laplace noise on clipped sums and counts (OpenDP)",
           "accounting": "sequential composition over the suite's figures"}


def _effect(outcome: str, inst: str, scale: str, lo: float, hi: float, mid: float, role: str,
            values: tuple[float, float, float] | None, eps: float = 0.1) -> DPFigure:
    base = dict(id=f"effect:{outcome}@4", kind="effect", outcome=outcome, instrument_title=inst,
                scale_title=scale, units=f"points on the {lo:g}\u2013{hi:g} scale", lo=lo, hi=hi, role=role,
                hypothesis=None, wave=4, threshold=mid, planned_margin=mid * 0.6)
    if values is None:
        return DPFigure(**base, epsilon=0.0, status="withheld",
                        reason=f"expected margin {mid * 1.7:.2f} is wider than the threshold {mid:g}")
    est, lo_ci, hi_ci = values
    row = {"estimate": est, "ci_low": lo_ci, "ci_high": hi_ci, "std_error": (hi_ci - lo_ci) / 3.92,
           "se_sampling": 0.1, "se_noise": 0.05, "noise_margin": 0.1, "n_treatment": 298,
           "n_control": 301, "mean_change_treatment": est + 0.2, "mean_change_control": 0.2}
    return DPFigure(**base, epsilon=eps, status="released", values=(row,))


def _means(shift: float = 0.0) -> DPFigure:
    rows = []
    for arm, slope in (("control", 0.8), ("treatment", 2.6)):
        for w in range(5):
            rows.append({"arm": arm, "wave": w, "mean": round(52.0 + shift + slope * w, 3),
                         "margin": 1.4 + 0.1 * w, "n": 300 - 12 * w})
    return DPFigure(id="means:who5.total", kind="means", outcome="who5.total",
                    instrument_title="WHO-5 Well-Being Index", scale_title="WHO-5 percentage score",
                    units="points on the 0\u2013100 scale", lo=0, hi=100, role="descriptive", hypothesis=None,
                    wave=None, threshold=10.0, epsilon=0.2, planned_margin=1.5, status="released",
                    values=tuple(rows))


def make_release(primary: tuple[float, float, float] | None, *, tag: str,
                 created: str = "2025-03-01T10:00:00+00:00") -> DPRelease:
    """A demo-like suite: WHO-5 primary effect, six domains, the index and WHO-5 means."""
    figs = [_effect("who5.total", "WHO-5 Well-Being Index", "WHO-5 percentage score", 0, 100, 10.0,
                    "primary", primary)]
    for d, title in DOMAINS.items():
        role = "guardrail" if d == "mental_physical_health" else "secondary"
        figs.append(_effect(f"flourish12.{d}", "Flourish Measure", title, 0, 10, 0.5, role,
                            DOMAIN_EFFECTS[d]))
    figs.append(_effect("flourish12.flourish_index", "Flourish Measure", "Flourish index", 0, 10,
                        0.5, "secondary", (0.3, 0.05, 0.55)))
    figs.append(_means(shift=1.0 if tag == "old" else 0.0))
    eps = round(sum(f.epsilon for f in figs), 6)
    rid = hashlib.sha256(tag.encode()).hexdigest()
    return DPRelease(release_id=rid, study="Flourish demo trial", data_version="dv-" + tag,
                     created_at=created, epsilon=eps, privacy=PRIVACY, alpha=0.05,
                     arms={"control": "control", "treatment": "treatment"}, waves=(0, 1, 2, 3, 4),
                     figures=tuple(figs))


def make_ledger(releases: list[DPRelease], budget: float = 3.0) -> tuple[list[StoredRelease],
                                                                           LedgerSummary]:
    """Stamp releases as ledger entries 1..n and summarise that ledger."""
    stored, prev = [], "genesis"
    for seq, rel in enumerate(releases, start=1):
        prev = hashlib.sha256(f"{prev}|{seq}|{rel.release_id}".encode()).hexdigest()
        stored.append(StoredRelease(rel, LedgerStamp(LEDGER_ID, seq, prev)))
    spent = sum(r.epsilon for r in releases)
    summary = LedgerSummary(
        budget=budget, spent=spent, remaining=budget - spent, n_releases=len(releases),
        head_hash=prev if releases else "", verified=True,
        releases=tuple({"release_id": r.release_id, "kind": r.kind, "epsilon": r.epsilon,
                        "created_at": r.created_at} for r in releases),
        ledger_id=LEDGER_ID, head=stored[-1].stamp if stored else None,
    )
    return stored, summary


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> dict:
    old = make_release((2.0, -3.0, 7.0), tag="old", created="2025-01-10T09:00:00+00:00")
    new = make_release((7.1, 2.0, 12.2), tag="new")
    stored, summary = make_ledger([old, new])
    out = tmp_path_factory.mktemp("report")
    path = render_public_report(stored, summary, out,
                                plan_status=PlanStatusNote("locked", "cd" * 32))
    return {"stored": stored, "summary": summary, "path": path, "out": out, "new": new,
            "old": old, "text": path.read_text()}


def _visible(text: str) -> str:
    """The page's text without tags, entities decoded, whitespace collapsed."""
    body = re.sub(r"<style>.*?</style>", " ", text, flags=re.S)
    body = re.sub(r"</?(code|strong|em|span)\b[^>]*>", "", body)  # inline: no word break
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


def _block(text: str, figure_id: str) -> str:
    m = re.search(rf'<div class="row" data-figure-id="{re.escape(figure_id)}"'
                  r'.*?(?=<div class="row"|<div></div>)', text, flags=re.S)
    assert m, figure_id
    return _visible(m.group(0))


def _n(x: float, d: int) -> str:
    return f"{x:.{d}f}".replace("-", "\u2212")


# ----------------------------------------------------------------------------- the page


def test_written_where_expected_and_self_contained(suite: dict) -> None:
    text = suite["text"]
    assert suite["path"] == suite["out"] / "report" / "index.html"
    assert "http://" not in text and "https://" not in text and "//" not in text.replace("://", "")
    assert "<script" not in text and "<link" not in text and "<img" not in text
    assert "<svg" in text


def test_headline_leads_with_the_newest_primary_effect(suite: dict) -> None:
    text = suite["text"]
    fig = suite["new"].figure("effect:who5.total@4")
    m = re.search(r'<p class="headline" data-figure-id="effect:who5.total@4">(.*?)</p>', text, re.S)
    assert m
    sentence = html.unescape(m.group(1))
    assert sentence == describe_effect(fig, suite["new"])
    row = fig.values[0]
    assert (f"people offered the treatment scored {row['estimate']:.1f} points higher on the "
            "WHO-5 Well-Being Index (0\u2013100) than the control group") in sentence
    assert f"95 % interval {row['ci_low']:.1f} to {row['ci_high']:.1f} points" in sentence
    assert "differentially private" in sentence
    # the headline comes before everything else on the page
    assert text.index('class="headline"') < text.index("id='profile'") < text.index("id='how'")
    # the older release's primary estimate (2.0, -3.0 to 7.0) is not the headline
    assert "\u22123.0 to 7.0" not in sentence


def test_headline_relates_to_the_smallest_difference_that_matters(suite: dict) -> None:
    mid = re.search(r'<p class="mid" data-figure-id="effect:who5.total@4">(.*?)</p>',
                    suite["text"], re.S)
    assert mid
    # 2.0 to 12.2 straddles the MID of 10
    assert "smallest difference that matters on this scale is 10 points" in html.unescape(mid.group(1))
    assert "not clear whether" in mid.group(1)


@pytest.mark.parametrize(
    ("values", "must", "must_not"),
    [
        ((-4.3, -8.1, -0.5), ["scored 4.3 points lower", "\u22128.1 to \u22120.5 points"], ["higher"]),
        ((1.2, -2.0, 4.4), ["no clear difference", "1.2 points higher with the treatment",
                            "\u22122.0 to 4.4 points", "includes no difference"], ["scored"]),
        ((0.01, -2.0, 2.0), ["no clear difference", "best estimate is no difference"], ["scored"]),
        ((15.0, 11.0, 19.0), ["scored 15.0 points higher"], ["lower"]),
    ],
)
def test_headline_direction(values: tuple[float, float, float], must: list[str],
                            must_not: list[str]) -> None:
    rel = make_release(values, tag="x")
    sentence = describe_effect(rel.figure("effect:who5.total@4"), rel)
    for s in must:
        assert s in sentence, sentence
    for s in must_not:
        assert s not in sentence, sentence


@pytest.mark.parametrize(
    ("values", "phrase"),
    [
        ((15.0, 11.0, 19.0), "whole interval is above it"),
        ((-15.0, -19.0, -11.0), "whole interval is below \u221210 points"),
        ((1.0, -4.0, 6.0), "smaller than one that matters"),
        ((7.1, 2.0, 12.2), "not clear whether"),
    ],
)
def test_threshold_sentence(values: tuple[float, float, float], phrase: str) -> None:
    rel = make_release(values, tag="x")
    assert phrase in describe_threshold(rel.figure("effect:who5.total@4"))


def test_mid_carried_by_the_figure_wins_over_the_threshold() -> None:
    rel = make_release((7.1, 2.0, 12.2), tag="x")
    fig = rel.figure("effect:who5.total@4")
    stricter = replace(fig, threshold=5.0, mid=10.0)  # usefulness stricter than the MID
    assert important_difference(stricter) == 10.0
    assert "matters on this scale is 10 points" in describe_threshold(stricter)
    assert important_difference(replace(fig, threshold=5.0, mid=None)) == 5.0


def test_empty_ledger_publishes_no_head(tmp_path: Path) -> None:
    _, summary = make_ledger([])
    text = render_public_report([], summary, tmp_path).read_text()
    assert f'<meta name="{HEAD_META}" content="">' in text


def test_withheld_primary_has_no_number(tmp_path: Path) -> None:
    rel = make_release(None, tag="w")
    stored, summary = make_ledger([rel])
    text = render_public_report(stored, summary, tmp_path).read_text()
    m = re.search(r'<p class="headline" data-figure-id="effect:who5.total@4">(.*?)</p>', text, re.S)
    assert m and WITHHELD_TEXT in m.group(1)
    assert not re.search(r"\d", html.unescape(m.group(1)).replace("WHO-5", "").replace("0\u2013100", ""))
    assert 'class="mid"' not in text


def test_profile_lists_every_effect_with_its_interval(suite: dict) -> None:
    text, rel = suite["text"], suite["new"]
    effects = [f for f in rel.figures if f.kind == "effect"]
    ids = re.findall(r'<div class="row" data-figure-id="([^"]+)"', text)
    assert sorted(ids) == sorted(f.id for f in effects)
    assert len(ids) == 8  # primary + six domains + index: no single collapsed score
    for f in effects:
        shown = _block(text, f.id)
        assert (f.scale_title if f.outcome != "who5.total" else f.instrument_title) in shown
        if f.released:
            d = 1 if f.hi - f.lo > 20 else 2
            row = f.values[0]
            est = _n(row["estimate"], d)
            assert (("+" + est) if row["estimate"] > 0 else est) in shown
            assert f"({_n(row['ci_low'], d)} to {_n(row['ci_high'], d)})" in shown
            assert f"smallest that matters: {f.threshold:g}" in shown
            assert WITHHELD_TEXT not in shown
        else:
            assert WITHHELD_TEXT in shown
            assert not re.search(r"[+\u2212]?\d+\.\d", shown)  # never a number
    assert "Safety check" in _visible(text) or "safety check" in _visible(text)


def test_withheld_figures_have_no_values_anywhere(suite: dict) -> None:
    withheld = [f for f in suite["new"].figures if not f.released]
    assert {f.id for f in withheld} == {"effect:flourish12.meaning_purpose@4",
                                        "effect:flourish12.financial_material_stability@4"}
    for f in withheld:
        assert re.search(rf'data-figure-id="{re.escape(f.id)}" data-status="withheld"', suite["text"])


def test_trajectories_by_arm_fitted_and_labelled(suite: dict) -> None:
    text, fig = suite["text"], suite["new"].figure("means:who5.total")
    m = re.search(r'<figure data-figure-id="means:who5.total">(.*?)</figure>', text, re.S)
    assert m
    block = m.group(1)
    assert block.count("<polyline") == 2 and block.count("<polygon") == 2  # line + band per arm
    assert 'data-arm="treatment"' in block and 'data-arm="control"' in block
    assert "#0072B2" in block and "#D55E00" in block  # Okabe-Ito blue / vermillion
    assert "WHO-5 Well-Being Index (points, 0\u2013100)" in html.unescape(block)
    # y-axis fitted to the data: ticks lie near the means, not 0..100
    lows = min(r["mean"] - r["margin"] for r in fig.values)
    highs = max(r["mean"] + r["margin"] for r in fig.values)
    ticks = [float(t.replace("\u2212", "-")) for t in
             re.findall(r'text-anchor="end" fill="#333">([^<]+)</text>', block)]
    assert min(ticks) <= lows and max(ticks) >= highs
    assert min(ticks) > 0 and max(ticks) < 100 and max(ticks) - min(ticks) < 30
    # the small table holds each released mean and margin
    for r in fig.values:
        assert f"{r['mean']:.1f} \u00b1 {r['margin']:.1f}" in block


def test_how_this_was_made(suite: dict) -> None:
    text, rel, summary = suite["text"], suite["new"], suite["summary"]
    how = _visible(text[text.index("id='how'"):])
    assert "one participant" in how
    assert f"used \u03b5 = {rel.epsilon:.4g}" in how
    assert (f"\u03b5 spent {summary.spent:.4g} of {summary.budget:.4g} in total; "
            f"{summary.remaining:.4g} left") in how
    assert PRIVACY["mechanism"] in how
    assert "Groups: control, treatment" in how and "Waves: 0, 1, 2, 3, 4" in how
    head = suite["stored"][-1].stamp
    assert f"ledger {LEDGER_ID}, entry {head.seq}, hash {head.entry_hash}" in how
    assert "pre-registered and is unchanged" in how
    assert "Earlier releases" in how and suite["old"].release_id[:16] in how


def test_meta_carries_the_ledger_head(suite: dict) -> None:
    head = suite["stored"][-1].stamp
    m = re.search(rf'<meta name="{HEAD_META}" content="([^"]+)">', suite["text"])
    assert m and m.group(1) == f"{LEDGER_ID}:{head.seq}:{head.entry_hash}"
    assert head.entry_hash == suite["summary"].head_hash


def test_head_without_summary_head_falls_back_to_the_chain(tmp_path: Path) -> None:
    stored, summary = make_ledger([make_release((7.1, 2.0, 12.2), tag="n")])
    text = render_public_report(stored, replace(summary, head=None), tmp_path).read_text()
    assert f'content="{LEDGER_ID}:1:{stored[0].stamp.entry_hash}"' in text
    with pytest.raises(ValueError, match="another ledger"):
        render_public_report(stored, replace(summary, ledger_id="b2" * 32), tmp_path)


def test_no_table_longer_than_a_screen(suite: dict) -> None:
    for body in re.findall(r"<tbody>(.*?)</tbody>", suite["text"], re.S):
        assert body.count("<tr") <= 15


def test_deviated_plan_is_at_the_top(tmp_path: Path) -> None:
    stored, summary = make_ledger([make_release((7.1, 2.0, 12.2), tag="n")])
    text = render_public_report(stored, summary, tmp_path,
                                plan_status=PlanStatusNote("deviated", "ef" * 32)).read_text()
    assert text.index("plan-deviated") < text.index('class="headline"')


def test_no_releases_yet(tmp_path: Path) -> None:
    _, summary = make_ledger([])
    text = render_public_report([], summary, tmp_path).read_text()
    assert "No results have been released yet" in text
    assert f'<meta name="{HEAD_META}"' in text


def test_failed_ledger_check_is_shown(tmp_path: Path) -> None:
    stored, summary = make_ledger([make_release((7.1, 2.0, 12.2), tag="n")])
    text = render_public_report(stored, replace(summary, verified=False), tmp_path).read_text()
    assert "failed its integrity check" in text


def test_real_ledger_round_trip(tmp_path: Path) -> None:
    """Releases charged in a real PrivacyLedger render, and the page's head is the ledger's."""
    from privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", 3.0, secret=b"k" * 32,
                           key_fingerprint="0123456789abcdef", anchor_path=tmp_path / "a.json")
    stored = []
    for rel in (make_release((2.0, -3.0, 7.0), tag="old"), make_release((7.1, 2.0, 12.2), tag="new")):
        out = ledger.charge_and_record(rel.release_id, rel.kind, rel.data_version, rel.epsilon,
                                       rel.to_json)
        stored.append(StoredRelease(rel, ledger.stamp_of(out.entry)))
    summary = ledger.summary()
    text = render_public_report(stored, summary, tmp_path / "out").read_text()
    head = summary.head
    assert head is not None and head == stored[-1].stamp
    m = re.search(r'<meta name="flourish-ledger-head" content="([0-9a-f]+):(\d+):([0-9a-f]+)"', text)
    assert m and LedgerStamp(m.group(1), int(m.group(2)), m.group(3)) == head
    assert "scored 7.1 points higher" in html.unescape(text)
    other = PrivacyLedger(tmp_path / "other.sqlite", 3.0, secret=b"j" * 32,
                          key_fingerprint="0123456789abcdef")
    with pytest.raises(ValueError, match="not in the ledger"):
        render_public_report(stored, other.summary(), tmp_path / "out2")


def test_svg_as_images_for_sanitising_hosts(suite: dict) -> None:
    fig = suite["new"].figure("means:who5.total")
    fragment = report_mod.svg_as_images(report_mod.render_trajectory_svg(fig, suite["new"]))
    assert "<svg" not in fragment and fragment.count('<img src="data:image/svg+xml;base64,') == 3
    assert 'alt="Average WHO-5 Well-Being Index score by group at each survey wave"' in fragment


# ----------------------------------------------------------------------------- refusals


def test_only_dp_release_objects_are_accepted(suite: dict, tmp_path: Path) -> None:
    stored, summary = suite["stored"], suite["summary"]
    with pytest.raises(TypeError):
        render_public_report(stored[0], summary, tmp_path)  # a single release, not a sequence
    with pytest.raises(TypeError):
        render_public_report("releases", summary, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        render_public_report([{"release_id": stored[0].release.release_id}], summary, tmp_path)
    with pytest.raises(TypeError):
        render_public_report([stored[0].release.figures[0]], summary, tmp_path)
    with pytest.raises(TypeError):
        render_public_report(stored, {"spent": 0.0}, tmp_path)  # type: ignore[arg-type]
    assert not (tmp_path / "report").exists()


def test_bare_dp_release_is_stamped_from_the_summary(suite: dict, tmp_path: Path) -> None:
    text = render_public_report([suite["new"]], suite["summary"], tmp_path).read_text()
    assert describe_effect(suite["new"].figure("effect:who5.total@4"), suite["new"]) in html.unescape(text)


def test_release_not_in_the_ledger_is_refused(suite: dict, tmp_path: Path) -> None:
    stranger = make_release((7.1, 2.0, 12.2), tag="stranger")
    (stamped,), _ = make_ledger([stranger])
    with pytest.raises(ValueError, match="not in the ledger"):
        render_public_report([stamped], suite["summary"], tmp_path)
    old, new = suite["stored"]
    with pytest.raises(ValueError, match="not in the ledger"):  # right id, wrong entry
        render_public_report([StoredRelease(new.release, old.stamp)], suite["summary"], tmp_path)
    with pytest.raises(ValueError, match="not in the ledger"):  # head hash forged
        render_public_report([StoredRelease(new.release, replace(new.stamp, entry_hash="0" * 64))],
                             suite["summary"], tmp_path)
    inflated = replace(new.release, epsilon=new.release.epsilon + 1)
    with pytest.raises(ValueError, match="not in the ledger"):
        render_public_report([StoredRelease(inflated, new.stamp)], suite["summary"], tmp_path)
    assert not (tmp_path / "report").exists()


def test_write_is_atomic(suite: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = render_public_report(suite["stored"], suite["summary"], tmp_path)
    before = path.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        render_public_report(suite["stored"][:1], suite["summary"], tmp_path)
    assert path.read_bytes() == before  # the old complete page, not a torn one
    assert [p.name for p in path.parent.iterdir()] == ["index.html"]  # no temporary left over
    assert report_mod.write_atomic.__module__ == "privacy.files"


# ----------------------------------------------------------------------------- browser


@pytest.mark.browser
def test_report_in_headless_chromium(suite: dict, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "public_report.png"
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )
        try:
            context = browser.new_context(offline=True, viewport={"width": 1100, "height": 900})
            page = context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(suite["path"].as_uri())
            page.wait_for_load_state("load")
            headline = page.locator("p.headline")
            assert headline.is_visible()
            assert "scored 7.1 points higher" in headline.inner_text()
            rows = page.locator(".profile .row .label")
            assert rows.count() == 8
            for title in DOMAINS.values():
                assert page.locator(".profile").get_by_text(title, exact=True).is_visible()
            withheld = page.locator('.profile [data-status="withheld"] .value')
            assert withheld.count() == 2 and withheld.first.is_visible()
            assert page.locator('figure[data-figure-id="means:who5.total"] svg[role=img]').is_visible()
            box = headline.bounding_box()
            assert box is not None and box["y"] < 900  # the answer is on the first screen
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert all(u.startswith(("file://", "data:")) for u in requests)
    assert shot.stat().st_size > 10_000
    shutil.copy(shot, "/tmp/report_screenshot.png")
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "public_report.png")


def test_breakdown_figure_is_a_for_whom_section_with_one_row_per_category(tmp_path: Path) -> None:
    rel = make_release((7.1, 2.0, 12.2), tag="b")
    primary = rel.figure("effect:who5.total@4")
    rows = ({"breakdown": "country", "category": "GB", **primary.values[0], "estimate": 9.5,
             "ci_low": 1.5, "ci_high": 17.5},
            {"breakdown": "country", "category": "DE", **primary.values[0], "estimate": -2.25,
             "ci_low": -12.0, "ci_high": 7.5})
    by = replace(primary, id="effect:who5.total@4|by:country", role="subgroup",
                 breakdown="country", values=rows)
    held = replace(by, id="effect:who5.total@4|by:cohort", breakdown="cohort", values=(),
                   status="withheld", epsilon=0.0, reason="withheld: too uncertain")
    rel = replace(rel, figures=(*rel.figures, by, held))
    stored, summary = make_ledger([rel])
    text = render_public_report(stored, summary, tmp_path).read_text()
    assert "For whom: WHO-5 Well-Being Index by country" in text
    for cat in ("GB", "DE"):
        assert f'data-figure-id="effect:who5.total@4|by:country#{cat}"' in text
        assert f"country: {cat}" in text
    assert "+9.5" in text
    # the lead and the profile stay on the overall primary effect
    lead = text.split("<section id='profile'>")[0]
    assert "7.1" in lead and "9.5" not in lead
    cohort = text.split('data-figure-id="effect:who5.total@4|by:cohort"')[1][:200]
    assert WITHHELD_TEXT in cohort
