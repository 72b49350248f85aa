"""The public tier's DP releases: margins, planning before data, declared keys, the door.

References: the Laplace tail in closed form, the normal quantile, and simulation with known
truth (the ``slow`` coverage study, which CI runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import pytest

from privacy.figures import FigureSpec, PublicDeclaration, plan_release
from privacy.margins import laplace_sum_margin, normal_laplace_margin
from privacy.objects import DPRelease, LedgerStamp
from privacy.release import compile_suite, draw_release, release_id_of, release_public
from privacy.table import build_public_table, compute_data_version, value_column

# ---------------------------------------------------------------------- fixtures


def _effect(outcome: str = "who5.total", wave: int = 4, threshold: float = 5.0, tier: int = 0,
            lo: float = 0.0, hi: float = 100.0, role: str = "primary") -> FigureSpec:
    return FigureSpec(f"effect:{outcome}@{wave}", "effect", outcome, "WHO-5", "Total",
                      "points", lo, hi, role, "H1", wave, threshold, tier)


def _means(outcome: str = "who5.total", threshold: float = 5.0) -> FigureSpec:
    return FigureSpec(f"means:{outcome}", "means", outcome, "WHO-5", "Total", "points",
                      0.0, 100.0, "primary", None, None, threshold, 1)


def _decl(figures: tuple[FigureSpec, ...] | None = None, epsilon: float = 3.0,
          waves: tuple[int, ...] = (0, 4), n: float = 500, **kw) -> PublicDeclaration:
    return PublicDeclaration("Trial", "control", "treatment", waves,
                             figures or (_effect(), _means()), epsilon,
                             {"control": n, "treatment": n}, expected_retention=0.7, **kw)


def _scores(n: int = 1000, seed: int = 0, effect: float = 8.0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"p{i:05d}" for i in range(n)]
    arm = np.where(np.arange(n) % 2 == 0, "control", "treatment")
    base = np.clip(rng.normal(55, 20, n), 0, 100).round()
    final = np.clip(base * 0.5 + 30 + (arm == "treatment") * effect + rng.normal(0, 15, n),
                    0, 100).round()
    keep = rng.random(n) > 0.3
    rows = pl.DataFrame({"participant_id": ids * 2, "wave": [0] * n + [4] * n,
                         "instrument": "who5", "scale": "total",
                         "score": np.concatenate([base, np.where(keep, final, np.nan)])})
    rows = rows.filter(pl.col("score").is_not_nan())
    return rows, pl.DataFrame({"participant_id": ids, "arm": arm})


@dataclass
class _Entry:
    payload: str
    epsilon: float
    seq: int


@dataclass
class _Outcome:
    status: str
    entry: _Entry
    stamp: LedgerStamp


class _MemoryLedger:
    """The ledger's charging contract, in memory (the real one is tested in test_privacy_ledger)."""

    def __init__(self, budget: float) -> None:
        self.budget, self.entries, self.computed = budget, {}, 0

    def charge_and_record(self, rid, kind, data_version, epsilon, compute, *, anchors=()):
        if rid in self.entries:
            e = self.entries[rid]
            return _Outcome("cached", e, LedgerStamp("L", e.seq, "h"))
        if sum(e.epsilon for e in self.entries.values()) + epsilon > self.budget + 1e-9:
            raise RuntimeError("budget exceeded")
        self.computed += 1
        e = _Entry(compute(), epsilon, len(self.entries) + 1)
        self.entries[rid] = e
        return _Outcome("charged", e, LedgerStamp("L", e.seq, "h"))


# ---------------------------------------------------------------------- margins


def test_normal_laplace_margin_matches_closed_forms() -> None:
    assert normal_laplace_margin(1.0, [], 0.05) == pytest.approx(1.959964, abs=2e-4)
    assert normal_laplace_margin(2.5, [], 0.01) == pytest.approx(2.5 * 2.575829, abs=1e-3)
    assert normal_laplace_margin(0.0, [1.0], 0.05) == pytest.approx(math.log(20), abs=2e-4)
    for b1, b2 in [(1.0, 0.5), (0.3, 0.3), (2.0, 0.01)]:
        closed = float(laplace_sum_margin(np.array(b1), np.array(b2), 0.05))
        assert normal_laplace_margin(0.0, [b1, b2], 0.05) == pytest.approx(closed, rel=1e-3)


def test_normal_laplace_margin_by_simulation() -> None:
    rng = np.random.default_rng(7)
    n = 1_000_000
    for sigma, bs in [(1.3, [0.8, 0.5, 0.05, 0.1]), (0.2, [1.0, 1.0, 0.3, 0.3])]:
        x = rng.normal(0, sigma, n) + sum(rng.laplace(0, b, n) for b in bs)
        t = normal_laplace_margin(sigma, bs, 0.05)
        assert np.mean(np.abs(x) > t) == pytest.approx(0.05, abs=0.0015)  # ~3.4 sd of MC


# ---------------------------------------------------------------------- planning


def test_auto_plan_spends_exactly_the_budget_and_meets_thresholds() -> None:
    plan = plan_release(_decl())
    assert plan.epsilon == pytest.approx(3.0)
    for f in plan.released:
        assert f.planned_margin <= f.spec.threshold + 1e-9
    # every admitted figure beats its threshold by the same factor (ε ∝ what it needs)
    ratios = {round(f.spec.threshold / f.planned_margin, 6) for f in plan.released}
    assert len(ratios) == 1


def test_margin_is_inverse_in_epsilon() -> None:
    a = plan_release(_decl(epsilon=1.0)).figures[0].planned_margin
    b = plan_release(_decl(epsilon=2.0)).figures[0].planned_margin
    assert a / b == pytest.approx(2.0, rel=1e-3)


def test_figure_too_uncertain_is_withheld_and_its_epsilon_goes_to_the_rest() -> None:
    strict = _effect("swls.total", threshold=0.2, tier=2, role="secondary")  # needs a huge ε
    decl = _decl((_effect(), strict, _means()), epsilon=1.0)
    plan = plan_release(decl)
    by = {f.spec.id: f for f in plan.figures}
    assert by[strict.id].status == "withheld" and by[strict.id].epsilon == 0
    assert "too uncertain at this privacy level" in by[strict.id].reason
    assert plan.epsilon == pytest.approx(1.0)
    alone = plan_release(_decl((_effect(), _means()), epsilon=1.0))
    assert by[_effect().id].epsilon == pytest.approx(alone.figures[0].epsilon)


def test_declared_weights_split_and_withhold() -> None:
    strict = _effect("swls.total", threshold=0.2, tier=2, role="secondary")
    decl = _decl((_effect(), strict, _means()), epsilon=3.0,
                 split={_effect().id: 1.0, strict.id: 1.0, "means:who5.total": 2.0})
    plan = plan_release(decl)
    eps = {f.spec.id: f.epsilon for f in plan.figures}
    assert eps[strict.id] == 0.0
    assert eps["means:who5.total"] == pytest.approx(2 * eps[_effect().id])
    assert plan.epsilon == pytest.approx(3.0)


def test_compiled_queries_charge_exactly_the_planned_epsilon() -> None:
    plan = plan_release(_decl())
    suite = compile_suite(plan)
    for q in suite.queries:
        assert q.epsilon == pytest.approx(q.planned.epsilon, rel=1e-9)
        assert q.epsilon <= q.planned.epsilon * (1 + 1e-12)
    assert suite.epsilon == pytest.approx(3.0)


# ---------------------------------------------------------------------- keys from declarations


def test_undeclared_waves_and_arms_change_no_key_and_no_data_version() -> None:
    decl = _decl()
    scores, parts = _scores()
    clean = build_public_table(scores, parts, decl)
    # five rows of one participant at an undeclared wave 9, and a participant in an
    # undeclared arm with scores at declared waves
    extra = pl.DataFrame({"participant_id": ["p00001"] * 5 + ["x1", "x1"],
                          "wave": [9] * 5 + [0, 4], "instrument": "who5", "scale": "total",
                          "score": [100.0] * 7})
    dirty = build_public_table(pl.concat([scores, extra]),
                               pl.concat([parts, pl.DataFrame({"participant_id": ["x1"],
                                                               "arm": ["placebo"]})]), decl)
    assert dirty.frame.columns == clean.frame.columns
    assert dirty.frame.equals(clean.frame)
    assert dirty.data_version == clean.data_version
    assert dirty.dropped["score_rows_at_undeclared_waves"] == 5
    assert dirty.dropped["participants_in_undeclared_arms"] == 1
    assert dirty.dropped["score_rows_in_undeclared_arms"] == 2
    release = draw_release(plan_release(decl), dirty)
    keys = {(v["arm"], v["wave"]) for v in release.figure("means:who5.total").values}
    assert keys == {(a, w) for a in ("control", "treatment") for w in (0, 4)}
    assert "placebo" not in release.to_json() and '"wave":9' not in release.to_json()


def test_data_version_ignores_pseudonyms_and_row_order() -> None:
    decl = _decl()
    scores, parts = _scores()
    renamed = {f"p{i:05d}": f"other-key-{i * 7919 % 1000:04d}" for i in range(1000)}
    s2 = scores.with_columns(pl.col("participant_id").replace_strict(renamed)).reverse()
    p2 = parts.with_columns(pl.col("participant_id").replace_strict(renamed)).sample(
        fraction=1.0, shuffle=True, seed=3)
    assert build_public_table(s2, p2, decl).data_version == build_public_table(
        scores, parts, decl).data_version
    changed = scores.with_columns(pl.when(pl.col("participant_id") == "p00002")
                                  .then(pl.col("score") + 1).otherwise("score").alias("score"))
    assert build_public_table(changed, parts, decl).data_version != build_public_table(
        scores, parts, decl).data_version


def test_one_row_per_participant_whatever_the_input() -> None:
    decl = _decl()
    scores, parts = _scores(200)
    doubled = pl.concat([scores, scores])  # a repeated score row must not double a contribution
    t = build_public_table(doubled, pl.concat([parts, parts]), decl)
    assert t.frame.height == 200
    assert compute_data_version(t.frame) == build_public_table(scores, parts, decl).data_version


# ---------------------------------------------------------------------- the door


def test_release_is_served_not_redrawn_and_charged_once() -> None:
    decl = _decl()
    scores, parts = _scores()
    table = build_public_table(scores, parts, decl)
    ledger = _MemoryLedger(budget=6.0)
    first = release_public(declaration=decl, table=table, ledger=ledger)
    again = release_public(declaration=decl, table=table, ledger=ledger)
    assert first.status == "charged" and again.status == "cached"
    assert ledger.computed == 1 and again.payload == first.payload
    assert first.release.release_id == release_id_of(decl, table.data_version)
    assert first.release.epsilon == pytest.approx(3.0)
    assert DPRelease.from_json(first.payload).to_json() == first.payload


def test_release_holds_no_participant_data() -> None:
    decl = _decl()
    scores, parts = _scores(300)
    text = draw_release(plan_release(decl), build_public_table(scores, parts, decl)).to_json()
    import re

    assert not re.search(r"p\d{5}", text)  # no participant id of the input
    assert '"participant_id"' not in text


# ---------------------------------------------------------------------- coverage (slow)


def _simulated_table(rng: np.random.Generator, n: int, effect: float) -> tuple[pl.DataFrame, dict]:
    """A participant-level table with known truth; returns it and the exact statistics."""
    arm = (np.arange(n) % 2).astype(np.int32)
    base = np.clip(rng.normal(55, 20, n), 0, 100)
    final = np.clip(0.5 * base + 30 + arm * effect + rng.normal(0, 15, n), 0, 100)
    final = np.where(rng.random(n) < 0.3, np.nan, final)  # MCAR dropout
    x0, x4 = base / 100, final / 100
    frame = pl.DataFrame({"arm": arm, value_column("who5.total", 0): x0,
                          value_column("who5.total", 4): x4}).fill_nan(None)
    d = np.clip(x4 - x0, -0.5, 0.5)
    exact = {"effect": 100 * (np.nanmean(d[arm == 1]) - np.nanmean(d[arm == 0]))}
    for a, name in ((0, "control"), (1, "treatment")):
        exact[(name, 0)] = 100 * x0[arm == a].mean()
        exact[(name, 4)] = 100 * np.nanmean(x4[arm == a])
    return frame, exact


def _population_effect(effect: float, rng: np.random.Generator, n: int = 4_000_000) -> float:
    base = np.clip(rng.normal(55, 20, n), 0, 100)
    common = 0.5 * base + 30 + rng.normal(0, 15, n)
    d1 = np.clip(np.clip(common + effect, 0, 100) / 100 - base / 100, -0.5, 0.5)
    d0 = np.clip(np.clip(common, 0, 100) / 100 - base / 100, -0.5, 0.5)
    return float(100 * (d1.mean() - d0.mean()))


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_published_intervals_cover_what_they_claim() -> None:
    """≥ 2,000 releases through OpenDP: each published interval covers at 95 % ± 1.5 %.

    The effect's interval must cover the simulated true effect (population value from
    4 M draws of the same model); its noise margin and every mean's margin must cover the
    data's exact statistic.
    """
    reps, n, effect = 2000, 1000, 8.0
    rng = np.random.default_rng(20261204)
    truth = _population_effect(effect, rng)
    decl = _decl(epsilon=1.0)  # a tight budget: noise matters
    suite = compile_suite(plan_release(decl))
    hits = {"effect_ci": 0, "effect_noise": 0, "means": 0}
    n_means = 0
    for _ in range(reps):
        frame, exact = _simulated_table(rng, n, effect)
        figures = {f.id: f for f in suite.draw(frame)}
        e = figures["effect:who5.total@4"].values[0]
        hits["effect_ci"] += e["ci_low"] <= truth <= e["ci_high"]
        hits["effect_noise"] += abs(e["estimate"] - exact["effect"]) <= e["noise_margin"]
        for v in figures["means:who5.total"].values:
            n_means += 1
            hits["means"] += abs(v["mean"] - exact[(v["arm"], v["wave"])]) <= v["margin"]
    rates = {"effect_ci": hits["effect_ci"] / reps, "effect_noise": hits["effect_noise"] / reps,
             "means": hits["means"] / n_means}
    print("coverage", rates, "truth", truth)
    for name, rate in rates.items():
        assert 0.935 <= rate <= 0.965, (name, rate)


def test_coverage_harness_runs_quickly() -> None:
    """A reduced run of the coverage study's machinery (no tolerance claims at 20 reps)."""
    rng = np.random.default_rng(1)
    decl = replace(_decl(epsilon=1.0))
    suite = compile_suite(plan_release(decl))
    frame, exact = _simulated_table(rng, 1000, 8.0)
    figs = {f.id: f for f in suite.draw(frame)}
    e = figs["effect:who5.total@4"].values[0]
    assert e["ci_low"] < e["estimate"] < e["ci_high"]
    assert abs(e["estimate"] - exact["effect"]) < 5 * e["se_noise"] + 1e-9


# ---------------------------------------------------------------------- covariate breakdowns


def _by_country(categories=("GB", "US"), shares=(0.5, 0.5)) -> FigureSpec:
    return FigureSpec("effect:who5.total@4|by:country", "effect", "who5.total", "WHO-5",
                      "Total", "points", 0.0, 100.0, "subgroup", "H1", 4, 10.0, 4,
                      breakdown="country", categories=categories, category_shares=shares)


def test_breakdown_keys_come_from_declared_categories_only() -> None:
    decl = _decl((_effect(), _by_country()), epsilon=3.0)
    scores, parts = _scores()
    country = ["GB", "US", "FR"]  # FR is not declared
    parts = parts.with_columns(pl.Series("country", [country[i % 3] for i in range(parts.height)]))
    table = build_public_table(scores, parts, decl)
    outside = table.dropped["participants_outside_the_declared_country_categories"]
    assert outside == 333  # i % 3 == 2 for i < 1000
    release = draw_release(plan_release(decl), table)
    fig = release.figure("effect:who5.total@4|by:country")
    assert fig.released and fig.breakdown == "country"
    assert [v["category"] for v in fig.values] == ["GB", "US"]
    assert "FR" not in release.to_json()
    # each participant is in one category: the breakdown costs one ε, not one per category
    suite = compile_suite(plan_release(decl))
    q = next(q for q in suite.queries if q.planned.spec.breakdown)
    assert q.epsilon == pytest.approx(q.planned.epsilon, rel=1e-9)


def test_breakdown_is_planned_at_its_smallest_category() -> None:
    even = plan_release(_decl((_by_country(),), epsilon=1.0)).figures[0].planned_margin
    skew = plan_release(_decl((_by_country(shares=(0.8, 0.2)),), epsilon=1.0)).figures[0]
    alone = plan_release(_decl((replace(_by_country(), breakdown=None, categories=(),
                                        category_shares=()),), epsilon=1.0)).figures[0]
    assert skew.planned_margin > even > alone.planned_margin


def test_withheld_figure_states_the_margin_it_would_have_had() -> None:
    strict = _effect("swls.total", threshold=0.2, tier=2, role="secondary")
    plan = plan_release(_decl((_effect(), strict), epsilon=1.0))
    held = next(f for f in plan.figures if f.status == "withheld")
    assert held.planned_margin > held.spec.threshold
