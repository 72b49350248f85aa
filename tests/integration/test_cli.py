"""The `flourish` CLI: exit codes, messages without tracebacks, dirty input fully reported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from orchestration.cli import main


def _flourish(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestration.cli", *args],
                          capture_output=True, text=True, cwd=cwd)


def test_missing_spec_is_a_clear_error_without_traceback(tmp_path: Path) -> None:
    proc = _flourish("validate", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2
    assert "nope.toml" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_bad_spec_key_is_named(tmp_path: Path) -> None:
    spec = tmp_path / "study.toml"
    spec.write_text('name = "x"\n[participants]\npath = "p.csv"\n[[survey]]\npath = "s.csv"\n'
                    'layout = "sideways"\n')
    proc = _flourish("validate", str(spec))
    assert proc.returncode == 2
    assert "survey.0.layout" in proc.stderr and "Traceback" not in proc.stderr


def test_instruments_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["instruments", "list"]) == 0
    listing = capsys.readouterr().out
    for inst in ("who5", "flourish12", "swls", "dfs", "perma"):
        assert inst in listing
    assert main(["instruments", "show", "who5"]) == 0
    assert "likely_depression" in capsys.readouterr().out
    assert main(["instruments", "show", "nope"]) == 2


@pytest.fixture(scope="module")
def dirty_study(tmp_path_factory: pytest.TempPathFactory):
    from orchestration.demo import DemoStudyConfig, write_demo_study

    out = tmp_path_factory.mktemp("dirty")
    return write_demo_study(out, DemoStudyConfig(n_participants=120, seed=3), dirty=True)


def test_dirty_study_every_defect_reported_and_counts_add_up(dirty_study) -> None:
    proc = _flourish("validate", str(dirty_study.study_path))
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    truth = json.loads(Path(dirty_study.truth_path).read_text())["defects"]
    out = Path(dirty_study.study_path).parent / "out"
    summary = json.loads((out / "validation_summary.json").read_text())
    assert summary["rows_in"] == summary["accepted"] + summary["quarantined"]
    quarantine = pl.read_parquet(out / "quarantine.parquet")
    responses = pl.read_parquet(out / "responses.parquet")
    assert responses.height + quarantine.height == summary["rows_in"]
    # every defect kind the generator injected shows up under a reason, and the CLI prints it
    reasons = {r for r, n in summary["by_reason"].items() if n}
    for reason in ("unknown_item", "out_of_range", "non_integer_value", "non_numeric_value",
                   "duplicate_conflict", "duplicate_row", "unknown_participant",
                   "invalid_timestamp", "invalid_wave"):
        assert reason in reasons, reason
        assert reason in proc.stdout
    assert any(i["reason"] in ("empty_file", "no_data_rows") for i in summary["file_issues"])
    assert summary["coerced_by_kind"]["value_whitespace"] > 0
    assert truth["injected"]


def test_prereg_verify_detects_an_edit_and_effects_mark_it_deviated(demo_run: dict,
                                                                   tmp_path: Path) -> None:
    study_dir = tmp_path / "study"
    shutil.copytree(demo_run["study"].parent, study_dir,
                    ignore=shutil.ignore_patterns("out", "*.sqlite*"))
    plan = study_dir / demo_run["plan"].name
    assert _flourish("prereg", "verify", str(plan)).returncode == 0
    plan.write_text(plan.read_text().replace("alpha: 0.05", "alpha: 0.1", 1))
    proc = _flourish("prereg", "verify", str(plan))
    assert proc.returncode == 4
    assert "alpha" in proc.stdout

    from orchestration import pipeline

    study = pipeline.load_study(study_dir / "study.toml")
    out = demo_run["out"]
    effects = pipeline.fit_effects(study, pl.read_parquet(out / "panel.parquet"),
                                   pl.read_parquet(out / "participants.parquet"))
    registered = effects.filter(pl.col("role") != "exploratory")
    assert set(registered["plan_status"]) == {"deviated"}


def test_ragged_csv_row_is_quarantined_by_row_without_traceback(tmp_path: Path) -> None:
    """One ragged row no longer rejects the file: it is quarantined by its row (exit 3)."""
    (tmp_path / "survey").mkdir()
    (tmp_path / "participants.csv").write_text("participant_id,arm\nP1,control\n")
    (tmp_path / "survey" / "w0.csv").write_text(
        "participant_id,wave,timestamp,instrument,item,value\n"
        "P1,0,,who5,who5_1,3\nP1,0,,who5,who5_2,3,9,9\n"
    )
    (tmp_path / "study.toml").write_text(
        'name = "bad"\n[participants]\npath = "participants.csv"\n[[survey]]\n'
        'path = "survey/*.csv"\nlayout = "long"\ninstruments = ["who5"]\n'
    )
    proc = _flourish("validate", str(tmp_path / "study.toml"))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "malformed_row" in proc.stdout and "2 = 1 + 1 (adds up)" in proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"flourish {version('flourish')}"


def test_every_subcommand_option_has_a_help_string() -> None:
    import argparse

    from orchestration.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, p in sub.choices.items() for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not missing


def test_piping_into_head_exits_quietly(tmp_path: Path) -> None:
    """`flourish instruments show who5 | head -1`: no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "instruments", "show",
                             "who5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first write
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.parametrize("argv", [["instruments", "list"], ["instruments", "show", "who5"],
                                  ["prereg", "verify", "{plan}"], ["--help"]])
def test_light_commands_import_no_heavy_library(argv: list[str], tmp_path: Path) -> None:
    """`instruments`, `prereg` and `--help` start fast: no dagster, pymc, arviz, opendp."""
    plan = tmp_path / "plan.yaml"
    shutil.copy(Path(__file__).resolve().parents[2] / "examples" / "demo" / "analysis_plan.yaml",
                plan)
    args = [a.replace("{plan}", str(plan)) for a in argv]
    code = "\n".join([
        "import sys", "from orchestration.cli import main", "try:", f"    main({args!r})",
        "except SystemExit:", "    pass",
        "heavy = [m for m in ('dagster', 'pymc', 'arviz', 'opendp', 'pandas', 'pandera')",
        "         if m in sys.modules]", "print('HEAVY', heavy)"])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_demo_hint_runs_as_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil as sh

    from orchestration.cli import _dashboard_hint

    monkeypatch.setattr(sh, "which", lambda name: None)
    assert _dashboard_hint(Path("x/study.toml")).startswith("uv run flourish dashboard ")
    monkeypatch.setattr(sh, "which", lambda name: "/usr/bin/flourish")
    assert _dashboard_hint(Path("x/study.toml")) == "flourish dashboard x/study.toml"
