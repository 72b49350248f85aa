"""Analysis plans: parsing, validation errors naming keys, sealing and verification."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from models.plan import (
    PlanError,
    load_analysis_plan,
    lock_path_for,
    lock_plan,
    parse_analysis_plan,
    plan_sha256,
    verify_plan,
)

# Exactly the keys the demo writer emits (issue text).
DEMO_PLAN = {
    "title": "Demo trial",
    "control_arm": "control",
    "treatment_arm": "treatment",
    "multiplicity": "holm",
    "allocation": {"control": 0.5, "treatment": 0.5},
    "planned_sample_size": 400,
    "hypotheses": [
        {
            "id": "H1", "role": "primary", "family": "primary", "outcome": "who5.total",
            "method": "ancova", "wave": 4, "alpha": 0.05, "sided": "two",
            "minimum_important_difference": 10,
        },
        {
            "id": "H2", "role": "secondary", "family": "domains",
            "outcome": "flourish12.meaning_purpose", "method": "mmrm", "wave": 4,
            "alpha": 0.05, "sided": "two", "minimum_important_difference": 1.0,
        },
        {
            "id": "H3", "role": "guardrail", "family": "guardrails", "outcome": "who5.total",
            "method": "bayes_growth", "wave": 4, "alpha": 0.05, "sided": "two",
            "minimum_important_difference": 10,
        },
    ],
}

DESIGN_MINIMAL = """
title: Example trial
control_arm: control
treatment_arm: treatment
multiplicity: holm
hypotheses:
  - id: H1
    role: primary
    family: primary
    outcome: who5.total
    method: ancova
    wave: 4
    alpha: 0.05
    sided: two
  - id: H2
    role: secondary
    family: domains
    outcome: flourish12.meaning_purpose
    method: mmrm
"""

KNOWN = {"who5.total", "flourish12.meaning_purpose"}


def _write(tmp_path: Path, data: dict | str, name: str = "analysis_plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def test_demo_writer_keys_are_accepted(tmp_path: Path) -> None:
    plan = load_analysis_plan(
        _write(tmp_path, DEMO_PLAN), known_outcomes=KNOWN, known_arms={"control", "treatment"}
    )
    assert [h.id for h in plan.hypotheses] == ["H1", "H2", "H3"]
    assert plan.allocation_shares == {"control": 0.5, "treatment": 0.5}
    assert plan.hypotheses[0].minimum_important_difference == 10
    assert plan.hypotheses[1].instrument == "flourish12"
    assert plan.hypotheses[1].scale == "meaning_purpose"
    assert plan.planned_sample_size == 400


def test_design_minimal_plan_is_accepted_with_defaults(tmp_path: Path) -> None:
    plan = load_analysis_plan(_write(tmp_path, DESIGN_MINIMAL), known_outcomes=KNOWN)
    assert plan.hypotheses[1].wave is None  # mmrm uses all waves
    assert plan.robust_se == "HC1"
    assert plan.missing_data.strategy == "complete_case"
    assert plan.hypotheses[0].family_name == "primary"


def test_extended_sap_keys_parse() -> None:
    data = json.loads(json.dumps(DEMO_PLAN))
    data.update(
        covariates=["cohort"],
        cluster="site",
        robust_se="HC3",
        missing_data={"strategy": "baseline_mean_imputation", "sensitivity": ["MAR by arm"]},
        interim={"information_fractions": [0.5, 1.0], "spending": "pocock"},
        subgroups=["cohort"],
    )
    data["hypotheses"][0]["estimand"] = {
        "population": "adults randomised",
        "intercurrent_events": [{"event": "discontinued app", "strategy": "treatment_policy"}],
    }
    data["hypotheses"][0]["direction"] = "higher_is_better"
    plan = parse_analysis_plan(data)
    assert plan.interim is not None and plan.interim.spending == "pocock"
    assert plan.hypotheses[0].estimand.intercurrent_events[0].strategy == "treatment_policy"
    assert plan.missing_data.strategy == "baseline_mean_imputation"


@pytest.mark.parametrize(
    ("mutate", "key", "fragment"),
    [
        (lambda d: d["hypotheses"][0].update(aplha=0.05), "hypotheses[0].aplha", "unknown key"),
        (lambda d: d["hypotheses"][1].update(alpha=1.5), "hypotheses[1].alpha", "less than 1"),
        (lambda d: d["hypotheses"][0].pop("wave"), "hypotheses[0]", "needs 'wave'"),
        (lambda d: d.update(multiplicity="bonferroni"), "multiplicity", "holm"),
        (lambda d: d.pop("treatment_arm"), "treatment_arm", "required"),
        (lambda d: d["hypotheses"][2].update(method="gee"), "hypotheses[2].method", "ancova"),
        (lambda d: d["hypotheses"][1].update(outcome="who5"), "hypotheses[1].outcome", "pattern"),
        (lambda d: d["hypotheses"][1].update(id="H1"), "<plan>", "repeat"),
        (lambda d: d.update(allocation={"control": 1.0}), "<plan>", "lacks arm 'treatment'"),
        (
            lambda d: d.update(interim={"information_fractions": [0.6, 0.4]}),
            "interim",
            "increasing",
        ),
    ],
)
def test_invalid_plans_name_the_key(mutate, key: str, fragment: str) -> None:
    data = json.loads(json.dumps(DEMO_PLAN))
    mutate(data)
    with pytest.raises(PlanError) as info:
        parse_analysis_plan(data, source="plan.yaml")
    assert info.value.key == key
    assert fragment in str(info.value)
    assert str(info.value).startswith("plan.yaml: key ")


def test_unknown_outcome_and_arm_are_errors() -> None:
    with pytest.raises(PlanError) as info:
        parse_analysis_plan(DEMO_PLAN, known_outcomes={"who5.total"})
    assert info.value.key == "hypotheses[1].outcome"
    assert "flourish12.meaning_purpose" in str(info.value)
    with pytest.raises(PlanError) as info:
        parse_analysis_plan(DEMO_PLAN, known_arms={"control", "active"})
    assert info.value.key == "treatment_arm"


def test_unreadable_plan_files(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read"):
        load_analysis_plan(tmp_path / "missing.yaml")
    with pytest.raises(PlanError, match="mapping"):
        load_analysis_plan(_write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(PlanError, match="not valid YAML"):
        load_analysis_plan(_write(tmp_path, "title: [unclosed\n"))


def test_sha_is_key_order_and_whitespace_insensitive(tmp_path: Path) -> None:
    a = _write(tmp_path, DESIGN_MINIMAL, "a.yaml")
    reordered = yaml.safe_load(DESIGN_MINIMAL)
    reordered = dict(reversed(list(reordered.items())))
    reordered["hypotheses"] = [dict(reversed(list(h.items()))) for h in reordered["hypotheses"]]
    text = "# a comment\n" + yaml.safe_dump(reordered, sort_keys=False, indent=4)
    b = _write(tmp_path, text, "b.yaml")
    assert plan_sha256(a) == plan_sha256(b)
    # Independent reference: sha256 of sorted-key JSON of the parsed YAML.
    expected = hashlib.sha256(
        (json.dumps(yaml.safe_load(DESIGN_MINIMAL), sort_keys=True, indent=2) + "\n").encode()
    ).hexdigest()
    assert plan_sha256(a) == expected
    changed = _write(tmp_path, DESIGN_MINIMAL.replace("alpha: 0.05", "alpha: 0.1"), "c.yaml")
    assert plan_sha256(changed) != plan_sha256(a)


def test_lock_then_verify_intact(tmp_path: Path) -> None:
    path = _write(tmp_path, DESIGN_MINIMAL)
    assert verify_plan(path).status == "unlocked"
    assert verify_plan(path).plan_status == "unregistered"
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    lock = lock_plan(path, 0, now=when)
    lock_file = tmp_path / "analysis_plan.lock.json"
    assert lock_path_for(path) == lock_file and lock_file.exists()
    stored = json.loads(lock_file.read_text())
    assert stored["sha256"] == lock.sha256 == plan_sha256(path)
    assert stored["locked_at"] == "2026-01-02T03:04:05+00:00"
    assert stored["outcome_rows"] == 0
    check = verify_plan(path)
    assert (check.status, check.plan_status, check.diff) == ("intact", "locked", "")
    assert check.locked_sha256 == lock.sha256 and check.outcome_rows == 0
    # Reformatting is not a deviation.
    path.write_text("# reformatted\n" + yaml.safe_dump(yaml.safe_load(DESIGN_MINIMAL), indent=4))
    assert verify_plan(path).status == "intact"
    # Re-locking an unchanged plan keeps the original seal.
    again = lock_plan(path, 999)
    assert again.locked_at == lock.locked_at and again.outcome_rows == 0


def test_verify_detects_change_with_diff(tmp_path: Path) -> None:
    path = _write(tmp_path, DESIGN_MINIMAL)
    lock_plan(path, 12)
    path.write_text(DESIGN_MINIMAL.replace("wave: 4", "wave: 3"))
    check = verify_plan(path)
    assert check.status == "deviated" and check.plan_status == "deviated"
    assert check.sha256 != check.locked_sha256
    assert '-      "wave": 4' in check.diff
    assert '+      "wave": 3' in check.diff
    assert check.diff.startswith("--- analysis_plan.yaml (locked ")
    with pytest.raises(PlanError, match="different hash"):
        lock_plan(path, 12)
    relocked = lock_plan(path, 40, overwrite=True)
    assert verify_plan(path).status == "intact" and relocked.outcome_rows == 40


def test_lock_refuses_invalid_plan_and_negative_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, DESIGN_MINIMAL.replace("method: mmrm", "method: magic"))
    with pytest.raises(PlanError) as info:
        lock_plan(path, 0)
    assert info.value.key == "hypotheses[1].method"
    good = _write(tmp_path, DESIGN_MINIMAL, "good.yaml")
    with pytest.raises(PlanError, match="outcome_rows"):
        lock_plan(good, -1)


def test_tampered_lock_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, DESIGN_MINIMAL)
    lock_plan(path, 0)
    lock_path_for(path).write_text("{not json")
    with pytest.raises(PlanError, match="unreadable lock"):
        verify_plan(path)


def test_lock_with_edited_canonical_text_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, DESIGN_MINIMAL)
    lock_plan(path, 0)
    stored = json.loads(lock_path_for(path).read_text())
    stored["canonical"] = stored["canonical"].replace('"wave": 4', '"wave": 5')
    lock_path_for(path).write_text(json.dumps(stored))
    with pytest.raises(PlanError, match="tampered"):
        verify_plan(path)
