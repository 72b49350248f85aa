"""Every dashboard page renders on the demo outputs (streamlit.testing AppTest); the public
pages show only releases that verify against the ledger (checked with a fake ledger)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from dashboards import data as data_mod
from dashboards.data import (
    compute_budget,
    compute_figure_table,
    compute_release_table,
    load_public_releases,
)
from privacy.objects import StoredRelease

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")
PAGES = [
    ("pages/overview.py", "Overview"),
    ("pages/data_quality.py", "Data quality"),
    ("pages/instruments_page.py", "Instruments"),
    ("pages/trial_results.py", "Trial results"),
    ("pages/bayesian.py", "Bayesian growth model"),
    ("pages/engagement.py", "Engagement vs wellbeing"),
    ("pages/privacy_page.py", "Privacy"),
    ("pages/public.py", "Public results (differentially private)"),
]


@pytest.mark.parametrize(("page", "title"), PAGES)
def test_page_renders_without_exception(demo_run: dict, monkeypatch: pytest.MonkeyPatch,
                                        page: str, title: str) -> None:
    monkeypatch.setenv("FLOURISH_STUDY", str(demo_run["study"]))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    assert any(t.value == title for t in at.title), [t.value for t in at.title]


def test_trial_page_shows_locked_plan_and_no_srm(demo_run: dict,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOURISH_STUDY", str(demo_run["study"]))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/trial_results.py")
    at.run()
    texts = [s.value for s in at.success]
    assert any("locked" in t for t in texts)
    assert any("No sample-ratio mismatch" in t for t in texts)


def test_missing_study_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOURISH_STUDY", raising=False)
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    assert not at.exception
    assert at.error and "Cannot open the study" in at.error[0].value


# ----------------------------------------------------------------------------- public tier


class FakeLedger:
    """Stands in for the study's PrivacyLedger: verifies the stamps it issued, nothing else."""

    def __init__(self, stored: list, summary: object) -> None:
        self._ok = {(s.stamp, hashlib.sha256(s.release.to_json().encode()).hexdigest())
                    for s in stored}
        self._summary = summary
        self.calls: list[int] = []

    def verify_stored(self, stamp: object, payload_json: str) -> bool:
        self.calls.append(getattr(stamp, "seq", -1))
        return (stamp, hashlib.sha256(payload_json.encode()).hexdigest()) in self._ok

    def summary(self) -> object:
        return self._summary


@pytest.fixture
def public_folder(tmp_path: Path) -> dict:
    """``releases/`` with two verifying files, a forged one, an unstamped one and junk."""
    from test_report import make_ledger, make_release

    old, new = make_release((2.0, -3.0, 7.0), tag="old"), make_release((7.1, 2.0, 12.2), tag="new")
    stored, summary = make_ledger([old, new])
    folder = tmp_path / "out" / "releases"
    folder.mkdir(parents=True)
    for s in stored:
        (folder / f"{s.release.release_id[:16]}.json").write_text(s.to_json())
    # same stamp, edited numbers: the ledger's hash no longer matches
    forged = StoredRelease(replace(new, study="Edited after release"), stored[1].stamp)
    (folder / "forged.json").write_text(forged.to_json())
    (folder / "bare.json").write_text(new.to_json())  # a release without a ledger stamp
    (folder / "junk.json").write_text("{not json")
    spec = SimpleNamespace(output_path=tmp_path / "out", name="fake")
    return {"stored": stored, "summary": summary, "spec": spec,
            "ledger": FakeLedger(stored, summary), "folder": folder}


def test_only_verifying_releases_are_loaded(public_folder: dict) -> None:
    view = load_public_releases(public_folder["spec"], ledger=public_folder["ledger"])
    assert view.problem is None and view.summary is public_folder["summary"]
    assert [s.stamp.seq for s in view.releases] == [1, 2]
    assert view.newest is not None and view.newest.to_json() == public_folder["stored"][1].to_json()
    rejected = dict((Path(f).name, why) for f, why in view.rejected)
    assert set(rejected) == {"forged.json", "bare.json", "junk.json"}
    assert "does not verify" in rejected["forged.json"]
    assert "not a stored Flourish release" in rejected["bare.json"]
    assert "not a stored Flourish release" in rejected["junk.json"]
    table = compute_release_table(view)
    assert table["ledger_entry"].to_list() == [2, 1]  # newest first
    assert table["epsilon"].to_list() == [s.release.epsilon for s in reversed(view.releases)]
    budget = compute_budget(view.summary)
    assert budget == {"budget": 3.0, "spent": public_folder["summary"].spent,
                      "remaining": public_folder["summary"].remaining, "n_releases": 2}


def test_real_ledger_verifies_stored_files(tmp_path: Path) -> None:
    """With the real PrivacyLedger, a charged file loads and an edited copy is rejected."""
    from test_report import make_release

    from privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", 3.0, secret=b"k" * 32,
                           key_fingerprint="0123456789abcdef")
    rel = make_release((7.1, 2.0, 12.2), tag="new")
    out = ledger.charge_and_record(rel.release_id, rel.kind, rel.data_version, rel.epsilon,
                                   rel.to_json)
    stored = StoredRelease(rel, ledger.stamp_of(out.entry))
    folder = tmp_path / "out" / "releases"
    folder.mkdir(parents=True)
    (folder / "good.json").write_text(stored.to_json())
    (folder / "edited.json").write_text(StoredRelease(replace(rel, epsilon=0.01), stored.stamp).to_json())
    view = load_public_releases(SimpleNamespace(output_path=tmp_path / "out"), ledger=ledger)
    assert [s.stamp for s in view.releases] == [stored.stamp]
    assert [Path(f).name for f, _ in view.rejected] == ["edited.json"]
    assert view.summary is not None and view.summary.spent == pytest.approx(rel.epsilon)


def test_figure_table_never_shows_a_withheld_value(public_folder: dict) -> None:
    rel = public_folder["stored"][1].release
    table = compute_figure_table(rel)
    assert table.height == len(rel.figures) <= 15
    withheld = table.filter(pl.col("status") == "withheld")
    assert withheld.height == 2
    assert all(r.startswith("withheld") for r in withheld["result"].to_list())
    primary = table.filter(pl.col("figure") == "effect:who5.total@4").row(0, named=True)
    assert primary["result"] == "+7.10 (2.00 to 12.20)"


def test_no_ledger_means_nothing_is_shown(public_folder: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from privacy import ledger as ledger_mod

    missing = getattr(ledger_mod, "LedgerMissingError", FileNotFoundError)

    def no_ledger(spec: object) -> None:
        raise missing("no ledger beside study.toml")

    monkeypatch.setattr(data_mod, "_open_ledger", no_ledger)
    view = load_public_releases(public_folder["spec"])
    assert view.releases == [] and view.summary is None
    assert view.problem and "no privacy ledger" in view.problem
    assert len(view.rejected) == 5

    def broken(spec: object) -> None:
        raise ledger_mod.LedgerError("not a Flourish privacy ledger")

    monkeypatch.setattr(data_mod, "_open_ledger", broken)
    view = load_public_releases(public_folder["spec"])
    assert view.releases == [] and "cannot be opened" in (view.problem or "")


def test_ledger_failing_its_check_shows_nothing(public_folder: dict) -> None:
    bad = replace(public_folder["summary"], verified=False)
    view = load_public_releases(public_folder["spec"],
                                ledger=FakeLedger(public_folder["stored"], bad))
    assert view.releases == [] and "integrity" in (view.problem or "")


@pytest.mark.parametrize("page", ["pages/public.py", "pages/privacy_page.py"])
def test_public_pages_show_verified_releases(demo_run: dict, public_folder: dict,
                                             monkeypatch: pytest.MonkeyPatch, page: str) -> None:
    """The pages draw the fake ledger's verified releases of a folder, and list the rejects."""
    monkeypatch.setenv("FLOURISH_STUDY", str(demo_run["study"]))
    monkeypatch.setattr(data_mod, "_open_ledger", lambda spec: public_folder["ledger"])
    monkeypatch.setattr(data_mod, "_releases_folder", lambda spec: public_folder["folder"])
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    summary = public_folder["summary"]
    if page == "pages/public.py":
        texts = " ".join(m.value for m in at.markdown)
        assert "scored 7.1 points higher" in texts  # the newest release's headline
        labels = {m.label: m.value for m in at.metric}
        assert labels["ε spent"] == f"{summary.spent:.3g}"
        assert labels["ε left"] == f"{summary.remaining:.3g}"
        assert labels["ε total budget"] == f"{summary.budget:.3g}"
    else:
        labels = {m.label: m.value for m in at.metric}
        assert labels["ε spent"] == f"{summary.spent:.3g}"
        assert labels["releases charged"] == "2"
        frames = [d.value for d in at.dataframe]
        assert any("file" in f.columns and len(f) == 3 for f in frames)  # the rejects
