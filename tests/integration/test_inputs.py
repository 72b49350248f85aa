"""Silent input mistakes through the CLI (issue 13): each is refused or reported, never read
as 0 rows that "add up" with exit 0."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
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


# --- input that is hard to get wrong (issue 13 part 3) ---------------------------------

def _summary(spec: Path) -> dict:
    return json.loads((spec.parent / "out" / "validation_summary.json").read_text())


def test_ragged_row_is_quarantined_by_row_and_the_rest_kept(tmp_path, capsys) -> None:
    spec = _study(tmp_path / "s", survey=LONG + "P2,0,2024-01-01T09:00:00,who5,who5_2,4,9\n"
                  + "P1,0,2024-01-01T09:00:00,who5,who5_2,2\n")
    code, out, err = _validate(spec, capsys)
    assert code == 3, err
    assert "malformed_row" in out and "malformed_rows" in out and "(adds up)" in out
    summary = _summary(spec)
    assert (summary["rows_in"], summary["accepted"], summary["quarantined"]) == (4, 3, 1)
    quarantine = pl.read_csv(spec.parent / "out" / "quarantine.csv")
    assert quarantine.select("source", "row", "column", "reason").rows() == [
        ("survey/wave_0.csv", 3, "(row)", "malformed_row")]
    assert quarantine["value"].item() == "7 fields where the header has 6"
    assert quarantine["participant_id"].item() != "P2"  # pseudonymised like any other row
    from instruments.schemas import QuarantineSchema

    QuarantineSchema.validate(pl.read_parquet(spec.parent / "out" / "quarantine.parquet"))


def test_file_in_another_encoding_exits_2_naming_file_and_option(tmp_path, capsys) -> None:
    text = LONG.replace("P1", "Pé").replace("P2", "Pè") * 3
    spec = _study(tmp_path / "s")
    (spec.parent / "survey" / "wave_0.csv").write_bytes(text.encode("latin-1"))
    code, _, err = _validate(spec, capsys)
    assert code == 2
    assert "wave_0.csv" in err and "byte offset" in err and 'encoding = "latin-1"' in err
    assert "invalid utf-8 sequence" not in err and "Traceback" not in err


def test_us_timestamps_hint_at_timestamp_format(tmp_path, capsys) -> None:
    spec = _study(tmp_path / "s", survey=LONG.replace("2024-01-01T09:00:00", "01/31/2024 09:00"))
    code, out, _ = _validate(spec, capsys)
    assert code == 3 and "timestamps_not_parsed" in out
    issue = [i for i in _summary(spec)["file_issues"] if i["reason"] == "timestamps_not_parsed"]
    assert issue[0]["column"] == "timestamp"
    assert "'01/31/2024 09:00'" in issue[0]["detail"]
    assert 'timestamp_format = "%m/%d/%Y %H:%M"' in issue[0]["detail"]
    quarantine = pl.read_csv(spec.parent / "out" / "quarantine.csv")
    assert set(quarantine.select("column", "value").rows()) == {("timestamp", "01/31/2024 09:00")}


def test_semicolon_csv_reads(tmp_path, capsys) -> None:
    spec = _study(tmp_path / "s", survey=LONG.replace(",", ";"))
    code, _, err = _validate(spec, capsys)
    assert code == 0, err
    assert _summary(spec)["accepted"] == 2


def test_ignored_and_identifier_columns_are_named(tmp_path, capsys) -> None:
    wide = ("participant_id,wave,timestamp,IPAddress,RecipientEmail,Status,who5_1\n"
            "P1,0,2024-01-01T09:00:00,10.0.0.1,a@b.org,0,3\n"
            "P2,0,2024-01-01T09:00:00,10.0.0.2,c@d.org,0,4\n")
    spec = _study(tmp_path / "s", survey=wide, layout="wide")
    code, _, err = _validate(spec, capsys)
    assert code == 0, err
    summary = _summary(spec)
    assert summary["ignored_columns"] == {"survey/wave_0.csv": ["Status"]}
    dropped = {(i["source"], i["column"], i["kind"]) for i in summary["identifiers_dropped"]}
    assert dropped == {("survey/wave_0.csv", "IPAddress", "ip_address"),
                       ("survey/wave_0.csv", "RecipientEmail", "email")}
