"""Silent input mistakes through the CLI (issue 13): each is refused or reported, never read
as 0 rows that "add up" with exit 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestration.cli import main

KEY = "cd" * 32
LONG = ("participant_id,wave,timestamp,instrument,item,value\n"
        "P1,0,2024-01-01T09:00:00,who5,who5_1,3\nP2,0,2024-01-01T09:00:00,who5,who5_1,4\n")


def _study(root: Path, survey: str = LONG, layout: str = "long",
           output_dir: str = "out") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "participants.csv").write_text("participant_id,arm\nP1,control\nP2,treatment\n")
    (root / "survey").mkdir(exist_ok=True)
    (root / "survey" / "wave_0.csv").write_text(survey)
    (root / "pseudonym.key").write_text(KEY)
    spec = root / "study.toml"
    spec.write_text(
        f'name = "inputs"\noutput_dir = "{output_dir}"\n[participants]\n'
        f'path = "participants.csv"\n[[survey]]\npath = "survey/*.csv"\nlayout = "{layout}"\n'
        'instruments = ["who5"]\n')
    return spec


def _validate(spec: Path, capsys) -> tuple[int, str, str]:
    code = main(["validate", str(spec)])
    got = capsys.readouterr()
    return code, got.out, got.err


def test_long_file_declared_wide_exits_2_naming_columns_and_layout(tmp_path, capsys) -> None:
    spec = _study(tmp_path / "s", layout="wide")
    code, _, err = _validate(spec, capsys)
    assert code == 2
    assert "layout 'wide'" in err and "'item'" in err and "'value'" in err
    assert "Traceback" not in err
    assert not (spec.parent / "out" / "responses.parquet").exists()


@pytest.mark.parametrize("output_dir", [".", "../.."])
def test_output_dir_over_the_study_exits_2_and_writes_nothing(tmp_path, capsys,
                                                              output_dir) -> None:
    spec = _study(tmp_path / "a" / "b" / "s", output_dir=output_dir)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, _, err = _validate(spec, capsys)
    assert code == 2 and "output_dir" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_missing_timestamp_column_is_reported_not_silent(tmp_path, capsys) -> None:
    spec = _study(tmp_path / "s", survey="participant_id,wave,instrument,item,value\n"
                                          "P1,0,who5,who5_1,3\n")
    code, out, _ = _validate(spec, capsys)
    assert code == 0
    assert "no_timestamp_column" in out
    summary = json.loads((spec.parent / "out" / "validation_summary.json").read_text())
    assert [i["reason"] for i in summary["file_issues"]] == ["no_timestamp_column"]


def test_header_only_survey_file_is_a_blocking_file_issue(tmp_path) -> None:
    from orchestration import pipeline

    spec = _study(tmp_path / "s")
    (spec.parent / "survey" / "wave_1.csv").write_text(LONG.splitlines()[0] + "\n")
    result = pipeline.ingest_study(pipeline.load_study(spec))
    assert result.validation.summary.quarantined == 0
    assert result.blocking_file_issues.select("source", "reason").rows() == [
        ("survey/wave_1.csv", "no_data_rows")]
    assert result.needs_attention


def test_header_only_survey_file_makes_validate_exit_3(tmp_path, capsys) -> None:
    spec = _study(tmp_path / "s")
    (spec.parent / "survey" / "wave_1.csv").write_text(LONG.splitlines()[0] + "\n")
    code, out, _ = _validate(spec, capsys)
    assert "no_data_rows" in out
    assert code == 3
