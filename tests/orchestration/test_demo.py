"""The demo study generator: determinism, shapes, allocation, attrition, known truth, defects.

Sampling comparisons use 4.5 standard errors (false-alarm rate ~1e-5 each); everything
else is exact. Scores are recomputed here from the items (WHO-5: 4 × sum; Flourish
domains: mean of two items), independently of the scoring module.
"""

from __future__ import annotations

import csv
import filecmp
import math
import tomllib
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from instruments.definition import load_library
from orchestration.demo import (
    DEFECT_KINDS,
    DemoStudyConfig,
    build_analysis_plan,
    simulate_study_frames,
    write_demo_study,
)

Z = 4.5
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "demo"
EXAMPLE_CONFIG = DemoStudyConfig(n_participants=120)


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _who5_total(responses: pl.DataFrame) -> pl.DataFrame:
    """participant_id, wave, who5_total for complete WHO-5 sessions (4 × sum of 5 items)."""
    return (
        responses.filter(pl.col("instrument") == "who5")
        .group_by("participant_id", "wave")
        .agg((4 * pl.col("value").sum()).alias("score"), pl.col("value").null_count().alias("m"))
        .filter(pl.col("m") == 0)
        .drop("m")
    )


def _truth(truth: dict, outcome: str, arm: str, wave: int) -> float:
    (row,) = [r for r in truth["expected_scores"]
              if r["outcome"] == outcome and r["arm"] == arm and r["wave"] == wave]
    return row["expected_score"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small() -> object:
    return simulate_study_frames(DemoStudyConfig(n_participants=400, waves=4, seed=7))


@pytest.fixture(scope="module")
def dirty_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dirty")
    write_demo_study(root, DemoStudyConfig(n_participants=150, waves=3, seed=3), dirty=True)
    return root


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    cfg = DemoStudyConfig(n_participants=80, waves=3, seed=11)
    a = write_demo_study(tmp_path / "a", cfg, dirty=True)
    b = write_demo_study(tmp_path / "b", cfg, dirty=True)
    files = _files(a.root)
    assert files == _files(b.root)
    # 3 waves + 2 extra survey files + telemetry + participants, spec, plan, truth
    assert len(files) == 10 == a.to_frame().height
    _, mismatch, errors = filecmp.cmpfiles(a.root, b.root, [str(f) for f in files],
                                           shallow=False)
    assert mismatch == [] and errors == []
    c = write_demo_study(tmp_path / "c", DemoStudyConfig(n_participants=80, waves=3, seed=12))
    wave0 = "survey/wave_0.csv"
    assert (c.root / wave0).read_bytes() != (a.root / wave0).read_bytes()


def test_rewrite_with_fewer_waves_leaves_no_stale_files(tmp_path: Path) -> None:
    write_demo_study(tmp_path, DemoStudyConfig(n_participants=40, waves=4), dirty=True)
    demo = write_demo_study(tmp_path, DemoStudyConfig(n_participants=40, waves=2))
    assert sorted(p.name for p in (tmp_path / "survey").iterdir()) == ["wave_0.csv", "wave_1.csv"]
    assert demo.truth["defects"] == {"injected": False}


def test_shipped_example_is_what_the_generator_writes(tmp_path: Path) -> None:
    demo = write_demo_study(tmp_path, EXAMPLE_CONFIG)
    files = _files(demo.root)
    assert set(files) <= set(_files(EXAMPLES))
    _, mismatch, errors = filecmp.cmpfiles(EXAMPLES, demo.root, [str(f) for f in files],
                                           shallow=False)
    assert mismatch == [] and errors == [], "regenerate: python -m orchestration.demo " \
        "--out examples/demo --participants 120"


# ----------------------------------------------------------------------------- shapes


def test_frames_have_contract_columns_and_row_counts(small: object) -> None:
    cfg = small.config
    lib = load_library()
    items = {it.id for inst in ("who5", "flourish12") for it in lib[inst].items}
    p, r, t = small.participants, small.responses, small.telemetry
    assert p.columns == ["participant_id", "arm", "cohort", "country"]
    assert p.height == cfg.n_participants and p["participant_id"].n_unique() == p.height
    assert r.schema == pl.Schema({
        "participant_id": pl.String, "wave": pl.Int32, "timestamp": pl.Datetime("us", "UTC"),
        "instrument": pl.String, "item": pl.String, "value": pl.Int16,
    })
    assert t.schema == pl.Schema({"participant_id": pl.String,
                                  "timestamp": pl.Datetime("us", "UTC"),
                                  "event": pl.String, "duration_s": pl.Float64})
    assert set(r["item"].unique()) == items
    # every attended session holds all 17 item rows exactly once
    per = r.group_by("participant_id", "wave").agg(pl.len(), pl.col("item").n_unique())
    assert (per["len"] == 17).all() and (per["item"] == 17).all()
    assert set(r["participant_id"].unique()) == set(p["participant_id"])  # all attend wave 0
    assert r.filter(pl.col("wave") == 0).height == 17 * cfg.n_participants
    # values within each item's range
    ranges = pl.DataFrame(lib.subset(["who5", "flourish12"]).item_table()).select(
        "item", "min", "max")
    bad = r.join(ranges, on="item").filter(
        pl.col("value").is_not_null()
        & ((pl.col("value") < pl.col("min")) | (pl.col("value") > pl.col("max"))))
    assert bad.height == 0
    # item skips ~ Binomial(rows, rate)
    rate, n = cfg.item_missing_rate, r.height
    assert abs(r["value"].null_count() / n - rate) < Z * math.sqrt(rate * (1 - rate) / n)
    assert set(t["event"].unique()) <= {"app_open", "exercise_completed", "journal_entry"}
    assert (t["duration_s"] > 0).all()
    assert set(small.latents["domain"].unique()) == set(small.truth["latent_model"]["domains"])


def test_dropout_is_monotone(small: object) -> None:
    waves = small.responses.group_by("participant_id").agg(
        pl.col("wave").unique().sort().alias("w"))
    # attended waves are exactly 0..k for some k (no return after dropout)
    ok = waves.with_columns(
        (pl.col("w").list.len() == pl.col("w").list.max() + 1).alias("contiguous"))
    assert ok["contiguous"].all()
    assert small.responses["wave"].max() == small.config.waves - 1


# ----------------------------------------------------------------------------- allocation


def test_allocation_exact_and_shares_within_sampling_error() -> None:
    cfg = DemoStudyConfig(n_participants=5001, waves=1, seed=5, telemetry=False)
    p = simulate_study_frames(cfg).participants
    counts = dict(p.group_by("arm").len().iter_rows())
    assert counts == {"treatment": round(5001 * 0.5), "control": 5001 - round(5001 * 0.5)}
    for col, shares in (("cohort", cfg.cohorts), ("country", cfg.countries)):
        total = sum(shares.values())
        obs = dict(p.group_by(col).len().iter_rows())
        assert set(obs) == set(shares)
        for label, s in shares.items():
            q = s / total
            assert abs(obs[label] / p.height - q) < Z * math.sqrt(q * (1 - q) / p.height)


# ----------------------------------------------------------------------------- attrition


def _retention_by_baseline(cfg: DemoStudyConfig) -> tuple[float, float, float]:
    s = simulate_study_frames(cfg)
    base = _who5_total(s.responses.filter(pl.col("wave") == 0)).select("participant_id",
                                                                       "score")
    last = s.responses.filter(pl.col("wave") == cfg.waves - 1)["participant_id"].unique()
    d = base.with_columns(pl.col("participant_id").is_in(last.implode()).alias("stay"))
    lo, hi = d["score"].quantile(1 / 3), d["score"].quantile(2 / 3)
    low = d.filter(pl.col("score") <= lo)["stay"]
    high = d.filter(pl.col("score") >= hi)["stay"]
    se = math.sqrt(low.mean() * (1 - low.mean()) / low.len()
                   + high.mean() * (1 - high.mean()) / high.len())
    overall = s.responses.filter(pl.col("wave") == cfg.waves - 1)["participant_id"].n_unique()
    return high.mean() - low.mean(), se, overall / cfg.n_participants


def test_attrition_depends_on_wellbeing() -> None:
    common = dict(n_participants=6000, waves=3, seed=21, dropout_hazard=0.2, telemetry=False,
                  item_missing_rate=0.0)
    diff, se, _ = _retention_by_baseline(DemoStudyConfig(dropout_wellbeing_log_odds=-1.0,
                                                         **common))
    assert diff > Z * se  # low baseline wellbeing -> less retained at the last wave
    assert diff > 0.10
    # Same study with MCAR dropout: no gradient, and retention = (1 - h)^(waves - 1).
    diff0, se0, overall = _retention_by_baseline(DemoStudyConfig(dropout_wellbeing_log_odds=0.0,
                                                                 **common))
    assert abs(diff0) < Z * se0
    q = 0.8**2
    assert abs(overall - q) < Z * math.sqrt(q * (1 - q) / 6000)


# ----------------------------------------------------------------------------- known truth


def test_truth_tables_are_consistent_with_instrument_facts(small: object) -> None:
    truth, waves = small.truth, small.config.waves
    scales = {r["outcome"] for r in truth["expected_scores"]}
    assert scales == {"who5.raw", "who5.total", "flourish12.flourish_index",
                      "flourish12.secure_flourish_index"} | {
        f"flourish12.{d}" for d in ("happiness_life_satisfaction", "mental_physical_health",
                                    "meaning_purpose", "character_virtue",
                                    "close_social_relationships",
                                    "financial_material_stability")}
    assert len(truth["expected_scores"]) == len(scales) * 2 * waves
    for arm in ("control", "treatment"):
        for w in range(waves):
            # WHO-5 percentage score = 4 × raw (Topp et al. 2015)
            assert _truth(truth, "who5.total", arm, w) == pytest.approx(
                4 * _truth(truth, "who5.raw", arm, w), abs=1e-9)
            # flourish index = mean of items 1-10 = mean of the five two-item domain means
            dom = [_truth(truth, f"flourish12.{d}", arm, w) for d in (
                "happiness_life_satisfaction", "mental_physical_health", "meaning_purpose",
                "character_virtue", "close_social_relationships")]
            assert _truth(truth, "flourish12.flourish_index", arm, w) == pytest.approx(
                np.mean(dom), abs=1e-9)
            assert 0 <= _truth(truth, "who5.total", arm, w) <= 100
    eff = {(r["outcome"], r["wave"]): r["effect"] for r in truth["effects"]}
    for outcome in scales:
        assert eff[(outcome, 0)] == 0.0
        series = [eff[(outcome, w)] for w in range(waves)]
        slope = next(r["slope_effect_per_wave"] for r in truth["slope_effects"]
                     if r["outcome"] == outcome)
        assert slope == pytest.approx(np.polyfit(np.arange(waves), series, 1)[0], abs=1e-12)
    tidy = small.to_frame()
    assert tidy.height == len(truth["expected_scores"])
    wave0 = tidy.filter(pl.col("wave") == 0)
    assert (wave0["effect"] == 0).all()
    last = tidy.filter((pl.col("outcome") == "who5.total") & (pl.col("wave") == waves - 1))
    assert last["effect"][0] == pytest.approx(
        last.filter(pl.col("arm") == "treatment")["expected_score"][0]
        - last.filter(pl.col("arm") == "control")["expected_score"][0], abs=1e-12)
    for null in ("character_virtue", "financial_material_stability"):
        assert all(eff[(f"flourish12.{null}", w)] == 0.0 for w in range(waves))
    for pos in ("who5.total", "flourish12.meaning_purpose",
                "flourish12.happiness_life_satisfaction"):
        series = [eff[(pos, w)] for w in range(waves)]
        assert all(b > a for a, b in zip(series, series[1:], strict=False))


def test_simulated_means_match_truth_at_baseline_and_final_wave() -> None:
    # No attrition so the final-wave sample is the randomised population; country
    # heterogeneity on so that truth's mixture over countries is exercised.
    cfg = DemoStudyConfig(n_participants=16000, waves=3, seed=99, dropout_hazard=0.0,
                          telemetry=False,
                          country_effect_multipliers={"GB": 0.0, "US": 2.5, "DE": 1.0})
    s = simulate_study_frames(cfg)
    r = s.responses.join(s.participants.select("participant_id", "arm"), on="participant_id")
    who5 = _who5_total(r).join(s.participants.select("participant_id", "arm"),
                               on="participant_id")
    dom = (
        r.filter(pl.col("item").is_in(["flourish_5", "flourish_6"]))
        .group_by("participant_id", "wave", "arm")
        .agg(pl.col("value").mean().alias("score"), pl.col("value").null_count().alias("m"))
        .filter(pl.col("m") == 0)
    )
    checked = 0
    for outcome, frame in (("who5.total", who5), ("flourish12.meaning_purpose", dom)):
        for arm in ("control", "treatment"):
            for wave in (0, cfg.waves - 1):
                x = frame.filter((pl.col("arm") == arm) & (pl.col("wave") == wave))["score"]
                se = x.std() / math.sqrt(x.len())
                assert abs(x.mean() - _truth(s.truth, outcome, arm, wave)) < Z * se, (
                    outcome, arm, wave)
                checked += 1
    assert checked == 8
    # the truth reflects heterogeneity: no effect in GB, the largest in US
    by_c = {(e["country"], e["wave"]): e["effect"] for e in s.truth["effects_by_country"]
            if e["outcome"] == "who5.total"}
    assert by_c[("GB", 2)] == 0.0 and by_c[("US", 2)] > by_c[("DE", 2)] > 0


def test_item_category_frequencies_match_truth_parameters_at_baseline() -> None:
    # Recompute P(Y_j = k) at wave 0 from truth.json's own latent parameters (normal latent
    # with the recorded mean and SD, GRM with the recorded item parameters) by quadrature,
    # and compare with the simulated frequencies. Sensitive to the latent SD, which the
    # means alone barely are.
    from instruments.simulate import gauss_hermite_normal, grm_category_probabilities

    cfg = DemoStudyConfig(n_participants=16000, waves=1, seed=123, telemetry=False,
                          item_missing_rate=0.0)
    s = simulate_study_frames(cfg)
    lm = s.truth["latent_model"]
    x, w = gauss_hermite_normal(128)
    freq = s.responses.group_by("item", "value").len()
    checked = 0
    for it in s.truth["items"]:
        dom = lm["domains"][it["domain"]]
        theta = dom["intercept_mean"] + lm["latent_sd_by_wave"][0] * x
        p = grm_category_probabilities(theta, np.array([it["discrimination"]]),
                                       np.array([it["thresholds"]]))[:, 0, :]
        expected = w @ p  # (K,)
        obs = dict(freq.filter(pl.col("item") == it["item"]).select("value", "len").iter_rows())
        for k, q in enumerate(expected):
            f = obs.get(it["min"] + k, 0) / cfg.n_participants
            assert abs(f - q) < Z * math.sqrt(q * (1 - q) / cfg.n_participants), (it["item"], k)
            checked += 1
    assert checked == 5 * 6 + 12 * 11


def test_telemetry_depends_on_arm_and_wellbeing() -> None:
    cfg = DemoStudyConfig(n_participants=6000, waves=1, seed=4, item_missing_rate=0.0)
    s = simulate_study_frames(cfg)
    counts = (
        s.participants.join(s.telemetry.group_by("participant_id").len(), on="participant_id",
                            how="left")
        .with_columns(pl.col("len").fill_null(0))
        .join(_who5_total(s.responses), on="participant_id")
    )
    ctrl = counts.filter(pl.col("arm") == "control")["len"]
    trt = counts.filter(pl.col("arm") == "treatment")["len"]
    ratio = trt.mean() / ctrl.mean()
    # delta-method SE of a ratio of two independent means
    se = ratio * math.sqrt(trt.var() / trt.len() / trt.mean() ** 2
                           + ctrl.var() / ctrl.len() / ctrl.mean() ** 2)
    assert abs(ratio - cfg.telemetry_treatment_rate_ratio) < Z * se
    rho = np.corrcoef(counts["len"].to_numpy(), counts["score"].to_numpy())[0, 1]
    assert rho > Z / math.sqrt(counts.height)  # more events with higher wellbeing


# ----------------------------------------------------------------------------- files


def test_study_toml_and_plan(tmp_path: Path) -> None:
    cfg = DemoStudyConfig(n_participants=60, waves=4)
    demo = write_demo_study(tmp_path, cfg)
    spec = tomllib.loads(demo.study_path.read_text())
    assert spec["name"] == cfg.name and spec["output_dir"] == "out"
    assert spec["participants"] == {"path": "participants.csv"}
    assert spec["survey"] == [{"path": "survey/*.csv", "layout": "long",
                               "instruments": ["who5", "flourish12"]}]
    assert spec["telemetry"] == {"path": "telemetry/*.parquet"}
    assert spec["analysis"] == {"plan": "analysis_plan.yaml"}
    assert spec["privacy"] == {"epsilon": 3.0}
    assert len(list(tmp_path.glob(spec["survey"][0]["path"]))) == 4
    assert len(list(tmp_path.glob(spec["telemetry"]["path"]))) == 1

    from models.plan import load_analysis_plan

    plan = load_analysis_plan(demo.plan_path)
    lib = load_library()
    assert plan.control_arm == "control" and plan.treatment_arm == "treatment"
    assert plan.multiplicity == "holm" and plan.planned_sample_size == 60
    h1 = plan.hypothesis("H1")
    assert (h1.role, h1.outcome, h1.method, h1.wave) == ("primary", "who5.total", "ancova", 3)
    assert h1.minimum_important_difference == 10.0
    methods = {h.method for h in plan.hypotheses}
    assert methods == {"ancova", "mmrm", "bayes_growth"}
    assert any(h.role == "guardrail" for h in plan.hypotheses)
    domains = [h.scale for h in plan.hypotheses if h.family == "domains"]
    assert len(domains) == 6
    for h in plan.hypotheses:
        lib[h.instrument].scale(h.scale)  # every outcome is a real scale
        assert h.sided == "two" and h.alpha == 0.05
        assert (h.wave == 3) if h.method == "ancova" else h.wave is None
    assert build_analysis_plan(cfg)["allocation"] == {"control": 0.5, "treatment": 0.5}


def test_survey_csv_round_trips_to_the_frames(tmp_path: Path) -> None:
    cfg = DemoStudyConfig(n_participants=50, waves=2, seed=8, item_missing_rate=0.1)
    demo = write_demo_study(tmp_path, cfg)
    s = simulate_study_frames(cfg)
    read = pl.concat([
        pl.read_csv(p, schema_overrides={"value": pl.Int16, "wave": pl.Int32})
        for p in demo.survey_paths
    ]).with_columns(
        pl.col("timestamp").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC")
    )
    # files are per wave; the frame is ordered by participant, then wave (stable sort)
    read = read.sort("participant_id", "wave", maintain_order=True)
    assert read.equals(s.responses)  # blank value <-> null
    tel = pl.read_parquet(demo.telemetry_path)
    assert tel.equals(s.telemetry)
    assert pl.read_csv(demo.participants_path).equals(s.participants)


# ----------------------------------------------------------------------------- defects


def _read_text(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_defect_counts_match_an_independent_recount(dirty_dir: Path) -> None:
    import json

    truth = json.loads((dirty_dir / "truth.json").read_text())
    d = truth["defects"]
    k = truth["config"]["defect_rows"]
    assert d["injected"] is True and set(d["rows"]) == set(DEFECT_KINDS)
    assert all(d["rows"][kind] == k for kind in DEFECT_KINDS if kind != "unknown_participant")
    assert d["rows"]["unknown_participant"] == 17 * k and d["unknown_participants"] == k

    lib = load_library()
    ranges = {r["item"]: (r["min"], r["max"])
              for r in lib.subset(["who5", "flourish12"]).item_table()}
    known_ids = {row["participant_id"] for row in _read_text(dirty_dir / "participants.csv")}
    waves = truth["config"]["waves"]
    recount = dict.fromkeys(DEFECT_KINDS, 0)
    keys: dict[tuple[str, str, str], list[str]] = {}
    n_rows = {}
    for w in range(waves):
        rel = f"survey/wave_{w}.csv"
        rows = _read_text(dirty_dir / rel)
        n_rows[rel] = len(rows)
        for row in rows:
            row = {key.strip(): v for key, v in row.items()}
            value, item = row["value"], row["item"]
            if row["participant_id"] not in known_ids:
                recount["unknown_participant"] += 1
                continue
            keys.setdefault((row["participant_id"], row["wave"], item), []).append(value)
            if item not in ranges:
                recount["unknown_item"] += 1
            if row["wave"] == "baseline":
                recount["wrong_type_wave"] += 1
            try:
                datetime.strptime(row["timestamp"], "%Y-%m-%dT%H:%M:%SZ")
            except ValueError:
                recount["bad_timestamp"] += 1
            if value in ("n/a", "abc"):
                recount["text_value"] += 1
            elif value != value.strip():
                recount["whitespace_value"] += 1
            elif value.endswith(".5"):
                recount["non_integer"] += 1
            elif value and item in ranges and not (
                    ranges[item][0] <= int(value) <= ranges[item][1]):
                recount["out_of_range"] += 1
    for values in keys.values():
        if len(values) == 2:
            kind = "duplicate_identical" if values[0] == values[1] else "duplicate_conflicting"
            recount[kind] += 1
        assert len(values) <= 2
    assert recount == d["rows"]
    # both variants of two-variant kinds occur, and the variant counts add up
    found = {loc["value"] for loc in d["locations"] if loc["kind"] == "text_value"}
    assert found == {"n/a", "abc"} == set(d["variants"]["text_value"])
    assert set(d["variants"]["out_of_range"]) == {"below_min", "above_max"}
    assert len(d["variants"]["bad_timestamp"]) == 2
    for kind, counts in d["variants"].items():
        assert sum(counts.values()) == d["rows"][kind]
    assert {k: v for k, v in d["data_rows_by_file"].items() if "extra" not in k} == n_rows
    in_place = ("out_of_range", "non_integer", "text_value", "whitespace_value",
                "bad_timestamp", "wrong_type_wave")
    appended = ("unknown_item", "duplicate_conflicting", "duplicate_identical",
                "unknown_participant")
    originals = d["rows"]["duplicate_conflicting"] + d["rows"]["duplicate_identical"]
    assert sum(d["rows"][x] for x in in_place + appended) == d["rows_total"]
    assert sum(n_rows.values()) == d["clean_rows"] + d["rows_total"] + originals


def test_defect_locations_point_at_the_rows(dirty_dir: Path) -> None:
    import json

    d = json.loads((dirty_dir / "truth.json").read_text())["defects"]
    cache: dict[str, list[list[str]]] = {}
    for loc in d["locations"]:
        if loc["file"] not in cache:
            with (dirty_dir / loc["file"]).open(newline="") as fh:
                cache[loc["file"]] = list(csv.reader(fh))
        row = cache[loc["file"]][loc["row"]]  # row 1 = first data row (line 2)
        assert row[0] == loc["participant_id"] and row[1] == loc["wave"]
        assert row[2] == loc["timestamp"]
        assert row[4] == loc["item"] and row[5] == (loc["value"] or "")
    roles = [loc["role"] for loc in d["locations"]]
    n_dup = d["rows"]["duplicate_conflicting"] + d["rows"]["duplicate_identical"]
    assert roles.count("original") == roles.count("duplicate") == n_dup
    assert len(d["locations"]) == d["rows_total"] + n_dup


def test_file_level_defects(dirty_dir: Path) -> None:
    import json

    d = json.loads((dirty_dir / "truth.json").read_text())["defects"]
    header = (dirty_dir / d["header_whitespace"]["file"]).read_text().splitlines()[0]
    assert header.split(",") == ["participant_id", "wave", "timestamp", "instrument", "item",
                                 "value "]
    for w in range(2):
        assert (dirty_dir / f"survey/wave_{w}.csv").read_text().startswith(
            "participant_id,wave,timestamp,instrument,item,value\n")
    assert (dirty_dir / d["empty_file"]["file"]).read_text() == (
        "participant_id,wave,timestamp,instrument,item,value\n")
    assert (dirty_dir / d["zero_byte_file"]["file"]).stat().st_size == 0
    assert len(list(dirty_dir.glob("survey/*.csv"))) == 3 + 2


def test_dirty_and_clean_studies_share_the_clean_rows(tmp_path: Path, dirty_dir: Path) -> None:
    import json

    cfg = DemoStudyConfig(n_participants=150, waves=3, seed=3)
    clean = write_demo_study(tmp_path, cfg)
    d = json.loads((dirty_dir / "truth.json").read_text())["defects"]
    appended = sum(d["rows"][k] for k in ("unknown_item", "duplicate_conflicting",
                                          "duplicate_identical", "unknown_participant"))
    clean_rows = sum(len(_read_text(p)) for p in clean.survey_paths)
    assert sum(d["data_rows_by_file"].values()) == clean_rows + appended
    assert d["clean_rows"] == clean_rows - (d["rows_total"] - appended) - d["rows"][
        "duplicate_conflicting"] - d["rows"]["duplicate_identical"]
    # the data themselves do not depend on the defects flag
    assert (tmp_path / "participants.csv").read_bytes() == (
        dirty_dir / "participants.csv").read_bytes()


def test_config_rejects_programmer_errors() -> None:
    with pytest.raises(ValueError, match="unknown domains"):
        DemoStudyConfig(treatment_slope_effects={"happiness": 0.1})
    with pytest.raises(ValueError, match="treatment_share"):
        DemoStudyConfig(treatment_share=1.0)


# ----------------------------------------------------------------------------- scale


def _scale_check(n: int) -> None:
    cfg = DemoStudyConfig(n_participants=n, waves=6, dropout_hazard=0.0, seed=1)
    s = simulate_study_frames(cfg)
    assert s.responses.height == n * 6 * 17
    assert s.participants.height == n


def test_generates_benchmark_shape_reduced() -> None:
    _scale_check(20_000)


@pytest.mark.slow
def test_generates_benchmark_shape_full() -> None:
    _scale_check(200_000)  # 20.4 M item rows


# ----------------------------------------------------------------------------- --out safety


def _user_study(root: Path) -> dict[str, bytes]:
    """A user's study folder (no truth.json): what a demo must never overwrite."""
    (root / "survey").mkdir(parents=True)
    files = {
        "study.toml": b'name = "Mine"\n',
        "participants.csv": b"participant_id,arm\nP1,control\n",
        "survey/wave_0.csv": b"participant_id,wave,timestamp,instrument,item,value\n",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def test_demo_refuses_a_non_empty_folder_that_is_not_a_demo(tmp_path: Path) -> None:
    from orchestration.demo import DemoTargetError

    files = _user_study(tmp_path)
    with pytest.raises(DemoTargetError, match="not a previous demo"):
        write_demo_study(tmp_path, DemoStudyConfig(n_participants=40, waves=2))
    assert {n: (tmp_path / n).read_bytes() for n in files} == files
    assert sorted(p.name for p in (tmp_path / "survey").iterdir()) == ["wave_0.csv"]


def test_cli_demo_over_a_user_study_exits_2_and_touches_nothing(tmp_path: Path, capsys) -> None:
    from orchestration.cli import main

    files = _user_study(tmp_path)
    code = main(["demo", "--out", str(tmp_path), "--participants", "40", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "not a previous demo" in err and str(tmp_path) in err
    assert {n: (tmp_path / n).read_bytes() for n in files} == files
    assert not (tmp_path / "truth.json").exists()


def test_demo_refuses_a_file_and_accepts_new_empty_or_previous_demo(tmp_path: Path) -> None:
    from orchestration.demo import DemoTargetError, check_demo_target

    (tmp_path / "file").write_text("x")
    with pytest.raises(DemoTargetError, match="not a folder"):
        check_demo_target(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    assert check_demo_target(tmp_path / "empty") == tmp_path / "empty"
    assert check_demo_target(tmp_path / "new") == tmp_path / "new"
    cfg = DemoStudyConfig(n_participants=40, waves=2)
    write_demo_study(tmp_path / "demo", cfg)
    (tmp_path / "demo" / "out").mkdir()  # a run's outputs beside it
    assert write_demo_study(tmp_path / "demo", cfg).root == tmp_path / "demo"
    # a truth.json that is not the demo writer's does not make a folder a demo
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "truth.json").write_text('{"mine": 1}')
    with pytest.raises(DemoTargetError):
        check_demo_target(tmp_path / "other")
