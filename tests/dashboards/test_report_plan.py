"""The public report never hides a deviated analysis plan."""

from __future__ import annotations

from dashboards.report import PlanStatusNote, _plan_block


def test_deviated_plan_is_shown_prominently() -> None:
    text = _plan_block(PlanStatusNote(status="deviated", sha256="ab" * 32))
    assert "DEVIATION" in text and "plan-deviated" in text


def test_locked_and_unregistered_plans_are_stated() -> None:
    assert "unchanged" in _plan_block(PlanStatusNote(status="locked", sha256="cd" * 32))
    assert "not sealed" in _plan_block(PlanStatusNote(status="unregistered", sha256=""))
    assert _plan_block(None) == ""
