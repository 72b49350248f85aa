"""The public report renders DP releases only, traces every figure, opens offline."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dashboards.report import render_public_report
from privacy.ledger import PrivacyLedger
from privacy.pseudonymise import pseudonymise_ids
from privacy.release import ReleasePlanInfo, release_study

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
KEY = b"report-test-key-0123456789"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(7)
    n, waves = 600, np.array([0, 1, 2, 3])
    pid = np.repeat(np.arange(n), len(waves))
    wave = np.tile(waves, n)
    arm = np.where(pid % 2 == 0, "control", "treatment")
    base = rng.normal(55, 15, n)[pid]
    who5 = np.clip(base + np.where(arm == "treatment", 3 * wave, 0) + rng.normal(0, 8, pid.size),
                   0, 100)
    raw_ids = np.char.add("P", np.char.zfill(pid.astype(str), 5))
    scores = pl.concat(
        [
            pl.DataFrame({"participant_id": raw_ids, "arm": arm, "wave": wave,
                          "instrument": "who5", "scale": "total", "score": who5}),
            pl.DataFrame({"participant_id": raw_ids, "arm": arm, "wave": wave,
                          "instrument": "swls", "scale": "total",
                          "score": np.clip(20 + (who5 - 55) / 6, 5, 35)}),
        ]
    )
    scores = pseudonymise_ids(scores, "participant_id", KEY)
    ledger = PrivacyLedger(tmp / "privacy_ledger.sqlite", 3.0)
    result = release_study(
        scores=scores, participants=None, ledger=ledger,
        bounds={("who5", "total"): (0, 100), ("swls", "total"): (5, 35)},
        plan_info=ReleasePlanInfo("control", "treatment", "who5.total", (0, 1, 2, 3)),
        data_version="test-v1", epsilon_per_release=0.5,
    )
    assert result.status == "ok"
    path = render_public_report(result.releases, ledger.summary(), tmp / "out")
    return {"path": path, "ledger": ledger, "result": result, "raw_ids": raw_ids,
            "scores": scores, "tmp": tmp}


def test_report_written_self_contained(study):
    path = study["path"]
    assert path == study["tmp"] / "out" / "report" / "index.html"
    text = path.read_text()
    assert "http://" not in text and "https://" not in text  # nothing to fetch
    assert "<script" not in text
    assert text.count("data:image/png;base64,") == 4
    assert "differentially private" in text and "remaining" in text


def test_no_participant_id_or_pseudonym_in_html(study):
    text = study["path"].read_text()
    for pid in set(study["raw_ids"].tolist()):
        assert pid not in text
    for pseudo in study["scores"]["participant_id"].unique().to_list():
        assert pseudo not in text


def test_every_figure_traces_to_a_ledger_release(study):
    text = study["path"].read_text()
    figures = re.findall(r"<figure data-release-id='([0-9a-f]{64})'", text)
    assert len(figures) == 4
    ledger_ids = {e.release_id for e in study["ledger"].entries()}
    for rid in figures:
        assert rid in ledger_ids
        assert study["ledger"].get(rid) is not None
    assert set(figures) == {r.release_id for r in study["result"].releases}


def test_only_dp_releases_are_accepted(study, tmp_path):
    summary = study["ledger"].summary()
    with pytest.raises(TypeError):
        render_public_report(study["scores"], summary, tmp_path)  # a polars frame
    with pytest.raises(TypeError):
        render_public_report([study["scores"]], summary, tmp_path)
    with pytest.raises(TypeError):
        render_public_report([{"release_id": "x"}], summary, tmp_path)
    with pytest.raises(TypeError):
        render_public_report(list(study["result"].releases), {"spent": 0}, tmp_path)
    assert not (tmp_path / "report").exists()


def test_release_missing_from_ledger_is_refused(study, tmp_path):
    other = PrivacyLedger(tmp_path / "other.sqlite", 3.0)
    with pytest.raises(ValueError, match="not in the ledger"):
        render_public_report(list(study["result"].releases), other.summary(), tmp_path)


@pytest.mark.browser
def test_report_opens_offline_in_headless_chromium(study):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "public_report.png"
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
            page.goto(study["path"].as_uri())
            page.wait_for_load_state("load")
            n_loaded = page.evaluate(
                "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
            )
            ids = page.eval_on_selector_all("figure", "els => els.map(e => e.dataset.releaseId)")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert n_loaded == 4
    assert set(ids) == {r.release_id for r in study["result"].releases}
    assert all(u.startswith(("file://", "data:")) for u in requests)
    assert shot.stat().st_size > 10_000
