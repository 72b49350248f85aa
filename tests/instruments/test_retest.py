"""Test-retest ICCs: parity with psych::ICC (R), Shrout & Fleiss (1979), simulation.

References: tests/data/psychometrics/retest_icc.json, produced by retest_icc.R (psych 2.2.9,
``ICC(lmer = FALSE)``) from retest_scores.csv. Tolerance 1e-8 (closed forms; R writes 15
significant digits). Shrout & Fleiss (1979, Table 4) publish ICC(2,1) = .29 and ICC(3,1)
= .71 at two decimals.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from instruments.retest import (
    RetestConfig,
    compute_retest,
    icc_from_mean_squares,
    two_way_mean_squares,
)

HERE = Path(__file__).resolve().parents[1] / "data" / "psychometrics"
REF = json.loads((HERE / "retest_icc.json").read_text())
TOL = 1e-8


@pytest.fixture(scope="module")
def retest():
    scores = pl.read_csv(HERE / "retest_scores.csv", null_values="")
    return compute_retest(scores, RetestConfig()).to_frame()


@pytest.mark.parametrize("pair", REF["pairs"], ids=lambda p: f"{p['scale']}-{p['wave_from']}")
@pytest.mark.parametrize("icc_type", ["icc2_1", "icc3_1"])
def test_matches_psych_icc(retest, pair, icc_type):
    row = retest.filter(scale=pair["scale"], wave_from=pair["wave_from"], icc_type=icc_type).row(
        0, named=True
    )
    ref = pair[icc_type]
    assert row["wave_to"] == pair["wave_to"]
    assert row["n"] == pair["n"]
    assert row["message"] == "ok"
    assert row["icc"] == pytest.approx(ref["icc"], abs=TOL)
    assert row["ci_low"] == pytest.approx(ref["lower"], abs=TOL)
    assert row["ci_high"] == pytest.approx(ref["upper"], abs=TOL)
    assert row["f"] == pytest.approx(ref["f"], abs=TOL)
    assert row["df1"] == ref["df1"] and row["df2"] == ref["df2"]
    assert row["p_value"] == pytest.approx(ref["p"], abs=TOL)


def test_missing_scores_drop_only_that_pair(retest):
    scores = pl.read_csv(HERE / "retest_scores.csv", null_values="")
    per_wave = scores.drop_nulls("score").group_by("scale", "wave").len()
    n = retest.filter(scale="total", wave_from=0)["n"][0]
    assert n < per_wave.filter(scale="total", wave=0)["len"][0]  # some dropped
    assert n == REF["pairs"][[p["scale"] for p in REF["pairs"]].index("total")]["n"]


def test_shrout_fleiss_published_example():
    sf = REF["shrout_fleiss"]
    x = np.array(sf["data"], dtype=float)
    r = icc_from_mean_squares(*two_way_mean_squares(x), n=6, k=4)
    assert round(float(r["icc2"]), 2) == 0.29  # Shrout & Fleiss (1979), Table 4
    assert round(float(r["icc3"]), 2) == 0.71
    for stem, key in (("icc2", "icc2_1"), ("icc3", "icc3_1")):
        assert float(r[stem]) == pytest.approx(sf[key]["icc"], abs=TOL)
        assert float(r[f"{stem}_low"]) == pytest.approx(sf[key]["lower"], abs=TOL)
        assert float(r[f"{stem}_high"]) == pytest.approx(sf[key]["upper"], abs=TOL)


def test_two_way_mean_squares_closed_form():
    # Shrout & Fleiss (1979) Table 2 ANOVA: BMS = 11.24, JMS = 32.49, EMS = 1.02
    x = np.array(REF["shrout_fleiss"]["data"], dtype=float)
    msr, msc, mse = two_way_mean_squares(x)
    assert (round(msr, 2), round(msc, 2), round(mse, 2)) == (11.24, 32.49, 1.02)


def _simulate(n, reps, sd_t, sd_e, shift, seed):
    rng = np.random.default_rng(seed)
    t = rng.normal(scale=sd_t, size=(reps, n, 1))
    x = t + np.array([0.0, shift]) + rng.normal(scale=sd_e, size=(reps, n, 2))
    g = x.mean(axis=(1, 2), keepdims=True)
    msr = 2 * ((x.mean(axis=2, keepdims=True) - g) ** 2).sum(axis=(1, 2)) / (n - 1)
    msc = n * ((x.mean(axis=1, keepdims=True) - g) ** 2).sum(axis=(1, 2))
    sst = ((x - g) ** 2).sum(axis=(1, 2))
    mse = (sst - msr * (n - 1) - msc) / (n - 1)
    return icc_from_mean_squares(msr, msc, mse, n, 2, 0.05)


def _coverage(reps, seed):
    # ICC(3,1) truth: var_T / (var_T + var_E) = 4 / 5; ICC(2,1) with a fixed wave shift d:
    # var_T / (var_T + var_E + d^2 / 2) = 4 / 5.5 (McGraw & Wong 1996, case 2A)
    r = _simulate(40, reps, 2.0, 1.0, 1.0, seed)
    c3 = np.mean((r["icc3_low"] <= 0.8) & (0.8 <= r["icc3_high"]))
    c2 = np.mean((r["icc2_low"] <= 4 / 5.5) & (4 / 5.5 <= r["icc2_high"]))
    return c3, c2, r


def test_coverage_reduced():
    c3, c2, r = _coverage(2_000, 1)
    # binomial SE at 2000 reps is 0.005; ICC(3,1) limits are exact. ICC(2,1)'s
    # Satterthwaite limits are conservative with k = 2 occasions (one df for the occasion
    # effect): measured 0.99 here, so only a lower bound and "not degenerate" are checked.
    assert 0.93 <= c3 <= 0.97
    assert 0.93 <= c2 <= 0.997
    assert np.median(r["icc3"]) == pytest.approx(0.8, abs=0.02)


@pytest.mark.slow
def test_coverage_full():
    c3, c2, _ = _coverage(50_000, 2)
    assert 0.945 <= c3 <= 0.955
    assert 0.94 <= c2 <= 0.997


def test_compute_retest_recovers_truth_and_pairs_consecutive_waves():
    rng = np.random.default_rng(5)
    n = 3_000
    trait = rng.normal(scale=2.0, size=n)
    rows = []
    for w in (0, 2, 5):  # irregular wave numbers: pairs are (0, 2) and (2, 5)
        rows.append(
            pl.DataFrame(
                {
                    "participant_id": [f"p{i}" for i in range(n)],
                    "wave": w,
                    "instrument": "who5",
                    "scale": "total",
                    "score": trait + 0.5 * w + rng.normal(size=n),
                }
            )
        )
    res = compute_retest(pl.concat(rows)).to_frame()
    assert res.select("wave_from", "wave_to").unique().sort("wave_from").rows() == [(0, 2), (2, 5)]
    icc3 = res.filter(icc_type="icc3_1")["icc"].to_numpy()
    np.testing.assert_allclose(icc3, 0.8, atol=0.02)
    icc2 = res.filter(icc_type="icc2_1", wave_from=2)["icc"][0]  # shift 1.5: 4/(5+1.125)
    assert icc2 == pytest.approx(4 / (5 + 1.5**2 / 2), abs=0.02)
    base = compute_retest(pl.concat(rows), RetestConfig(pairing="baseline")).to_frame()
    assert base.select("wave_from", "wave_to").unique().sort("wave_to").rows() == [(0, 2), (0, 5)]


def test_edge_cases_come_back_as_codes():
    few = pl.DataFrame(
        {
            "participant_id": ["a", "b", "a", "b"],
            "wave": [0, 0, 1, 1],
            "instrument": "x",
            "scale": "s",
            "score": [1.0, 2.0, 1.5, 2.5],
        }
    )
    res = compute_retest(few).to_frame()
    assert set(res["message"]) == {"too_few_participants"} and res["icc"].null_count() == 2
    same = pl.DataFrame(
        {
            "participant_id": [f"p{i}" for i in range(12)] * 2,
            "wave": [0] * 12 + [1] * 12,
            "instrument": "x",
            "scale": "s",
            "score": [float(i) for i in range(12)] * 2,
        }
    )
    assert set(compute_retest(same).to_frame()["message"]) == {"no_error_variance"}
    flat = same.with_columns(pl.lit(3.0).alias("score"))
    assert set(compute_retest(flat).to_frame()["message"]) == {"zero_variance"}
    assert compute_retest(flat.filter(pl.lit(False))).message == "no_data"
    with pytest.raises(ValueError):
        compute_retest(flat.drop("score"))
