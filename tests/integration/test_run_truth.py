"""`flourish run` tells the truth (GitHub issue 13): exit 0 only when every step ran and
nothing blocks trust in the results; 5 when results were produced but are not trustworthy;
2 with ``validate``'s own message on a user mistake; never a previous run's summary."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from orchestration.cli import main

EXIT_UNTRUSTED = 5  # results produced but not trustworthy

N = 80


def _drop_bayes(plan: Path) -> None:
    """Remove the plan's bayes_growth hypotheses (the slow step; also defect 1's trigger)."""
    import yaml

    doc = yaml.safe_load(plan.read_text())
    kept = [h for h in doc["hypotheses"] if h["method"] != "bayes_growth"]
    assert len(kept) < len(doc["hypotheses"])
    doc["hypotheses"] = kept
    plan.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo study, sealed, without bayes_growth and without a privacy section."""
    from models.plan import lock_plan
    from orchestration.demo import DemoStudyConfig, write_demo_study

    root = tmp_path_factory.mktemp("tiny")
    demo = write_demo_study(root, DemoStudyConfig(n_participants=N, seed=11))
    _drop_bayes(Path(demo.plan_path))
    lock_plan(demo.plan_path, outcome_rows=0)
    spec = Path(demo.study_path)
    spec.write_text(spec.read_text().split("[privacy]")[0])
    return spec.parent


def _copy(tiny: Path, tmp_path: Path, *, with_outputs: bool = False) -> Path:
    dst = tmp_path / "study"
    ignore = None if with_outputs else shutil.ignore_patterns("out")
    shutil.copytree(tiny, dst, ignore=ignore)
    return dst


def _run(study: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["run", "--quiet", str(study / "study.toml")])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def tiny_ran(tiny: Path) -> Path:
    """The tiny study, run once (its outputs are the 'previous run' of the stale tests)."""
    from orchestration.run import run_study

    outcome = run_study(tiny / "study.toml", progress=False)
    assert outcome.trustworthy, outcome.summary_text
    return tiny


def test_run_without_bayes_hypothesis_exits_0_with_effects(tiny_ran: Path, tmp_path: Path,
                                                           capsys) -> None:
    study = _copy(tiny_ran, tmp_path, with_outputs=True)
    assert pl.read_parquet(study / "out" / "posterior.parquet").width == 0
    code, out, err = _run(study, capsys)
    assert code == 0, out + err
    assert "(ok)" in out and "Trial effects" in out and "H1" in out
    assert "Traceback" not in out + err and "ColumnNotFound" not in out + err


def test_summary_reads_zero_column_outputs(tiny: Path, tmp_path: Path) -> None:
    """No plan / no bayes_growth hypothesis: effects and posterior are zero-column files."""
    from orchestration.report_text import format_run_summary
    from orchestration.spec import load_study_spec

    study = _copy(tiny, tmp_path)
    out = study / "out"
    out.mkdir()
    for name in ("effects", "posterior", "scores", "participants"):
        pl.DataFrame().write_parquet(out / f"{name}.parquet")
    text = format_run_summary(load_study_spec(study / "study.toml"), success=True,
                              failed_steps=[])
    assert "(ok)" in text and "Trial effects" not in text


def test_unplanned_arm_and_relabelled_final_wave_exit_5_saying_why(tiny: Path, tmp_path: Path,
                                                                   capsys) -> None:
    study = _copy(tiny, tmp_path)
    parts = pl.read_csv(study / "participants.csv")
    parts = parts.with_columns(
        pl.when(pl.int_range(pl.len()) % 4 == 0).then(pl.lit("placebo"))
        .otherwise(pl.col("arm")).alias("arm"))
    parts.write_csv(study / "participants.csv")
    final = sorted((study / "survey").glob("wave_*.csv"))[-1]
    last = final.stem.split("_")[1]
    text = final.read_text().splitlines()
    final.write_text("\n".join([text[0]] + [re.sub(rf"^([^,]+),{last},", rf"\1,{int(last) + 5},", t)
                                            for t in text[1:]]) + "\n")
    code, out, err = _run(study, capsys)
    assert code == EXIT_UNTRUSTED, out + err
    assert "(ok)" not in out
    both = out + err
    assert "sample_ratio_mismatch" in both
    assert "placebo not in the plan's allocation" in both
    assert re.search(r"primary hypothesis H1 .* no estimate", both), both
    assert "not trustworthy" in err


def _no_arm(study: Path) -> None:
    p = study / "participants.csv"
    p.write_text(p.read_text().replace("arm", "group", 1))


def _semicolons(study: Path) -> None:
    p = study / "participants.csv"
    p.write_text(p.read_text().replace(",", ";"))


def _no_id_column(study: Path) -> None:
    p = study / "participants.csv"
    text = p.read_text()
    p.write_text(text.replace("participant_id", "pid", 1))


def _no_plan(study: Path) -> None:
    (study / "analysis_plan.yaml").unlink()


def _no_telemetry(study: Path) -> None:
    shutil.rmtree(study / "telemetry")


@pytest.mark.parametrize("mistake", [_no_arm, _no_id_column, _no_plan, _no_telemetry],
                         ids=["no-arm-column", "no-id-column", "missing-plan",
                              "missing-telemetry-folder"])
def test_user_mistake_prints_validates_message_exit_2_and_no_stale_summary(
        mistake, tiny_ran: Path, tmp_path: Path, capsys) -> None:
    study = _copy(tiny_ran, tmp_path, with_outputs=True)  # a previous run's outputs are there
    mistake(study)
    code, out, err = _run(study, capsys)
    assert code == 2, out + err
    assert main(["validate", str(study / "study.toml")]) in (0, 2, 3)
    validate_err = capsys.readouterr().err
    messages = [line for line in err.splitlines() if line.startswith("flourish: error: ")]
    assert messages, err
    if validate_err.strip():  # the same message validate gives
        assert validate_err.strip() in err
    for noise in ("Dagster", "Not executing", "Error occurred while executing", "Traceback"):
        assert noise not in out + err
    for stale in ("Trial effects", "Mean scores", "Validation\n"):
        assert stale not in out


def test_a_failed_run_never_shows_the_previous_runs_results(tiny_ran: Path) -> None:
    from orchestration.report_text import format_run_summary
    from orchestration.spec import load_study_spec

    spec = load_study_spec(tiny_ran / "study.toml")
    old = format_run_summary(spec, success=True, failed_steps=[])
    assert "Trial effects" in old
    fresh = format_run_summary(spec, success=False, failed_steps=["effects"],
                               since=(tiny_ran / "out" / "effects.parquet").stat().st_mtime + 60)
    assert "Trial effects" not in fresh and "Mean scores" not in fresh and "FAILED" in fresh


def test_runs_silence_arvizs_more_chains_than_draws_warning() -> None:
    import warnings

    import arviz as az
    import numpy as np

    from orchestration.run import quiet_warnings

    short = np.random.default_rng(0).normal(size=(8, 4))  # 8 "chains", 4 draws
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        az.convert_to_dataset(short)
    assert any("More chains" in str(w.message) for w in seen)  # what users saw on a run
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_warnings():
            az.convert_to_dataset(short)
    assert not any("More chains" in str(w.message) for w in seen)


def test_the_demo_run_is_trustworthy(demo_run: dict) -> None:
    """No false alarm: the seeded demo (every check planned to pass) is not flagged."""
    outcome = demo_run["outcome"]
    assert outcome.trustworthy, outcome.untrusted
    assert not outcome.errors and "(ok)" in outcome.summary_text


def test_semicolon_participants_file_is_read_not_a_mistake(tiny_ran: Path, tmp_path: Path,
                                                           capsys) -> None:
    """The delimiter is sniffed (issue 13 part 3), so a semicolon export runs like a comma one."""
    study = _copy(tiny_ran, tmp_path, with_outputs=False)
    _semicolons(study)
    code, out, err = _run(study, capsys)
    assert code == 0, out + err

