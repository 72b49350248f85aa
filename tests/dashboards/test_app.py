"""Every dashboard page renders on the demo outputs (streamlit.testing AppTest)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

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
