"""The whole pipeline on a synthetic study with known truth."""

from __future__ import annotations

import re

import polars as pl


def test_run_succeeds_and_every_output_exists(demo_run: dict) -> None:
    assert demo_run["outcome"].success, demo_run["outcome"].summary_text
    out = demo_run["out"]
    for stem in ("responses", "quarantine", "scores", "panel", "effects", "reliability",
                 "retest", "invariance", "posterior", "engagement", "divergence"):
        assert (out / f"{stem}.parquet").exists(), stem
    assert (out / "quarantine.csv").exists()
    assert (out / "posterior.nc").exists()
    assert (out / "report" / "index.html").exists()
    # the ledger lives with the study, never in the disposable output_dir
    assert (demo_run["study"].parent / "privacy_ledger.sqlite").exists()
    assert not list(out.rglob("*.sqlite*"))


def test_row_accounting_adds_up(demo_run: dict) -> None:
    out = demo_run["out"]
    responses = pl.read_parquet(out / "responses.parquet")
    quarantine = pl.read_parquet(out / "quarantine.parquet")
    rows_in = demo_run["truth"]["sample"]["response_rows"]
    assert responses.height + quarantine.height == rows_in


def test_participant_ids_are_pseudonymised(demo_run: dict) -> None:
    raw_ids = set(pl.read_csv(demo_run["study"].parent / "participants.csv")["participant_id"])
    stored = set(pl.read_parquet(demo_run["out"] / "scores.parquet")["participant_id"])
    assert not raw_ids & stored
    assert all(re.fullmatch(r"[0-9a-f]{64}", p) for p in list(stored)[:50])


def _truth_effect(truth: dict, outcome: str, wave: int) -> float:
    rows = [r for r in truth["effects"] if r["outcome"] == outcome and r["wave"] == wave]
    assert len(rows) == 1
    return rows[0]["effect"]


def test_primary_interval_covers_truth_and_null_domains_stay_null(demo_run: dict) -> None:
    effects = pl.read_parquet(demo_run["out"] / "effects.parquet")
    truth = demo_run["truth"]
    ancova = effects.filter((pl.col("method") == "ancova") & (pl.col("role") != "exploratory"))
    assert ancova.height >= 7
    for row in ancova.iter_rows(named=True):
        true = _truth_effect(truth, f"{row['instrument']}.{row['scale']}", 4)
        if true == 0.0:
            assert row["p_adjusted"] > 0.05, row  # a null domain is not declared an effect
        if row["role"] == "primary":
            assert row["ci_low"] <= true <= row["ci_high"], (row, true)
    assert set(ancova["plan_status"]) == {"locked"}


def test_posterior_passes_gate_and_agrees_with_truth(demo_run: dict) -> None:
    post = pl.read_parquet(demo_run["out"] / "posterior.parquet")
    slope = post.filter(pl.col("parameter") == "slope_effect").row(0, named=True)
    assert slope["gate"] == "pass"
    truth = [r for r in demo_run["truth"]["slope_effects"] if r["outcome"] == "who5.total"]
    true = truth[0]["slope_effect_per_wave"]
    # 95% HDI widened to 4 SD: the GRM makes the score-scale slope only approximately linear
    assert abs(slope["mean"] - true) < 4 * slope["sd"], (slope, true)


def test_report_holds_no_identifier(demo_run: dict) -> None:
    html = (demo_run["out"] / "report" / "index.html").read_text()
    ids = pl.read_parquet(demo_run["out"] / "participants.parquet")["participant_id"].to_list()
    raw = pl.read_csv(demo_run["study"].parent / "participants.csv")["participant_id"].to_list()
    assert not any(p in html for p in ids[:200] + raw[:200])


def test_divergence_flag_silent_on_plain_demo(demo_run: dict) -> None:
    div = pl.read_parquet(demo_run["out"] / "divergence.parquet")
    assert div.height > 0
    assert not div["flag"].any()


def test_invariance_holds_on_the_plain_demo(demo_run: dict) -> None:
    inv = pl.read_parquet(demo_run["out"] / "invariance.parquet")
    assert set(inv["level"]) == {"configural", "metric", "scalar"}
    assert inv["holds"].all(), inv.select("instrument", "level", "cfi", "rmsea", "decision")


def test_report_states_the_plan_seal(demo_run: dict) -> None:
    html = (demo_run["out"] / "report" / "index.html").read_text()
    assert "pre-registered and is unchanged" in html


def test_posterior_slope_effect_agrees_with_statsmodels_mixedlm(demo_run: dict) -> None:
    """Issue acceptance: the growth model's slope effect lies within 2 posterior SDs of
    statsmodels MixedLM's REML estimate on the same demo data."""
    from models.mixed import MixedModelConfig, fit_mixed_model

    panel = pl.read_parquet(demo_run["out"] / "panel.parquet").filter(
        (pl.col("instrument") == "who5") & (pl.col("scale") == "total")
        & pl.col("score").is_not_null()
    ).with_columns(
        pl.col("wave").cast(pl.Float64),
        (pl.col("arm") == "treatment").cast(pl.Float64).alias("treat"),
    ).with_columns((pl.col("treat") * pl.col("wave")).alias("treat_x_wave"))
    reml = fit_mixed_model(panel, MixedModelConfig(fixed=("wave", "treat", "treat_x_wave"),
                                                   engine="statsmodels"))
    estimate, _ = reml.coefficient("treat_x_wave")
    post = pl.read_parquet(demo_run["out"] / "posterior.parquet")
    slope = post.filter(pl.col("parameter") == "slope_effect").row(0, named=True)
    assert abs(slope["mean"] - estimate) < 2 * slope["sd"], (slope["mean"], slope["sd"], estimate)
