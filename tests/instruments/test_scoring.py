"""Scoring against hand-computed values (arithmetic written out), an independent plain-Python
reference scorer, and hypothesis properties (scores within the scale's range, reverse keying
twice is identity, reverse keying in the data equals reverse keying in the definition).

Exact arithmetic: every expected score below is a ratio of small integers, compared with a
relative tolerance of 1e-12.
"""

from __future__ import annotations

import doctest
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import instruments.catalog
import instruments.scoring
from instruments.definition import InstrumentLibrary, InstrumentSpec, load_library
from instruments.scoring import (
    SCORES_SCHEMA,
    reverse_key,
    scale_membership,
    scale_table,
    score_responses,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "instruments"
LIB = load_library([DATA])
TOL = 1e-12


def _long(rows: list[tuple[str, int, str, int | None]]) -> pl.DataFrame:
    """(participant, wave, item, value) -> responses table; instrument from the library."""
    return pl.DataFrame(
        {
            "participant_id": [r[0] for r in rows],
            "wave": [r[1] for r in rows],
            "instrument": [LIB.instrument_of_item(r[2]) for r in rows],
            "item": [r[2] for r in rows],
            "value": [r[3] for r in rows],
        },
        schema={
            "participant_id": pl.String,
            "wave": pl.Int32,
            "instrument": pl.String,
            "item": pl.String,
            "value": pl.Int16,
        },
    )


def _answers(pid: str, prefix: str, values: list[int | None], wave: int = 0) -> list[tuple]:
    return [(pid, wave, f"{prefix}_{i}", v) for i, v in enumerate(values, start=1)]


def _by_key(scores: pl.DataFrame) -> dict[tuple[str, int, str, str], dict]:
    return {
        (r["participant_id"], r["wave"], r["instrument"], r["scale"]): r
        for r in scores.iter_rows(named=True)
    }


def _check(row: dict, score: float | None, answered: int, band: str | None = None) -> None:
    if score is None:
        assert row["score"] is None, row
    else:
        assert row["score"] == pytest.approx(score, rel=TOL, abs=TOL), row
    assert row["items_answered"] == answered, row
    assert row["band"] == band, row


# --- hand-computed values ---------------------------------------------------------------


def test_who5_raw_percentage_and_bands() -> None:
    resp = _long(
        _answers("a", "who5", [3, 4, 2, 3, 3])  # raw 3+4+2+3+3 = 15, total 4*15 = 60
        + _answers("b", "who5", [2, 1, 2, 1, 1])  # raw 7, total 28: <= 28 inclusive
        + _answers("c", "who5", [3, 2, 2, 3, 2])  # raw 12, total 48: <= 50
        + _answers("d", "who5", [5, 5, 5, 5, None])  # 4 of 5 answered: not scored
        + _answers("e", "who5", [2, 3, 2, 3, 3])  # raw 13, total 52: > 50
    )
    got = _by_key(score_responses(resp, LIB))
    assert len(got) == 5 * 2
    _check(got[("a", 0, "who5", "raw")], 15, 5)
    _check(got[("a", 0, "who5", "total")], 60, 5, "adequate_wellbeing")
    _check(got[("b", 0, "who5", "total")], 28, 5, "likely_depression")
    _check(got[("c", 0, "who5", "total")], 48, 5, "poor_wellbeing")
    _check(got[("d", 0, "who5", "raw")], None, 4)
    _check(got[("d", 0, "who5", "total")], None, 4, None)
    _check(got[("e", 0, "who5", "total")], 52, 5, "adequate_wellbeing")


def test_flourish12_domains_and_both_indices() -> None:
    v = [8, 7, 6, 9, 5, 8, 7, 6, 9, 10, 3, 4]
    resp = _long(
        _answers("a", "flourish", v, wave=1)
        # skips item 11: financial domain (1 of 2) and secure index (11 of 12) not scored
        + _answers("b", "flourish", v[:10] + [None, 4], wave=1)
    )
    got = _by_key(score_responses(resp, LIB))
    expected_a = {
        "happiness_life_satisfaction": ((8 + 7) / 2, 2),
        "mental_physical_health": ((6 + 9) / 2, 2),
        "meaning_purpose": ((5 + 8) / 2, 2),
        "character_virtue": ((7 + 6) / 2, 2),
        "close_social_relationships": ((9 + 10) / 2, 2),
        "financial_material_stability": ((3 + 4) / 2, 2),
        "flourish_index": ((8 + 7 + 6 + 9 + 5 + 8 + 7 + 6 + 9 + 10) / 10, 10),  # 75 / 10
        "secure_flourish_index": ((75 + 3 + 4) / 12, 12),  # 82 / 12
    }
    for scale, (score, k) in expected_a.items():
        _check(got[("a", 1, "flourish12", scale)], score, k)
    _check(got[("b", 1, "flourish12", "financial_material_stability")], None, 1)
    _check(got[("b", 1, "flourish12", "secure_flourish_index")], None, 11)
    _check(got[("b", 1, "flourish12", "flourish_index")], 7.5, 10)
    _check(got[("b", 1, "flourish12", "meaning_purpose")], 6.5, 2)


def test_reverse_keying_on_each_items_own_range() -> None:
    # revtest: items 1-3 on 1..5, item 4 on 0..4; items 2 and 4 reverse keyed.
    resp = _long(_answers("p", "revtest", [4, 2, 5, 1]))
    got = _by_key(score_responses(resp, LIB))
    # keyed: 4, 1+5-2 = 4, 5, 0+4-1 = 3
    _check(got[("p", 0, "revtest", "total")], 4 + 4 + 5 + 3, 4, "high")  # 16 > 14
    _check(got[("p", 0, "revtest", "pair")], 25 * (4 + 4) / 2 - 25, 2)  # 75
    _check(got[("p", 0, "revtest", "strict_sum")], 4 + 4 + 5, 3)  # 13


def test_missing_items_below_and_above_the_minimum() -> None:
    resp = _long(
        # q: item 2 skipped. keyed 2, -, 3, 0+4-4 = 0; k = 3 >= 3 -> total prorated.
        _answers("q", "revtest", [2, None, 3, 4])
        # r: only item 1 answered (rows for the others present, blank); k = 1 < 3.
        + _answers("r", "revtest", [3, None, None, None])
        # s: item 4 skipped; keyed 5, 1+5-1 = 5, 5.
        + _answers("s", "revtest", [5, 1, 5, None])
    )
    got = _by_key(score_responses(resp, LIB))
    # Prorating over unequal item ranges: the answered items' position in their summed range
    # mapped onto the scale's summed range. All items: minima 1+1+1+0 = 3, widths 4*4 = 16.
    # q answered 1, 3, 4: minima 1+1+0 = 2, widths 12, keyed sum 2+3+0 = 5:
    #   3 + (5 - 2) * 16 / 12 = 7   (naive mean x n would give 5/3*4 = 6.67)
    _check(got[("q", 0, "revtest", "total")], 7, 3, "low")
    _check(got[("q", 0, "revtest", "strict_sum")], None, 2)  # needs items 1-3
    _check(got[("q", 0, "revtest", "pair")], 25 * 2 - 25, 1)  # one of two is enough: 25
    _check(got[("r", 0, "revtest", "total")], None, 1, None)
    _check(got[("r", 0, "revtest", "pair")], 25 * 3 - 25, 1)  # 50
    _check(got[("r", 0, "revtest", "strict_sum")], None, 1)
    # s answered 1, 2, 3 (minima 3, widths 12), keyed sum 15: 3 + (15 - 3) * 16 / 12 = 19,
    # the scale maximum (naive 15/3*4 = 20 would exceed the 3..19 range).
    _check(got[("s", 0, "revtest", "total")], 19, 3, "high")


def test_prorated_sum_is_mean_times_number_of_items_on_a_common_range() -> None:
    resp = _long(
        _answers("a", "prorate", [3, 1, None, 2])  # mean (3+1+2)/3 = 2, x 4 items = 8
        + _answers("b", "prorate", [3, None, None, 2])  # 2 of 4 < 3: no total; mean 5/2
        + _answers("c", "prorate", [1, 0, 2, None])  # (1+0+2)/3 * 4 = 4: <= 4 inclusive
        + _answers("d", "prorate", [1, 1, 1, 2])  # all answered: plain sum 5
    )
    expected = {
        ("a", "total"): (8, 3, "high"),
        ("a", "average"): (2, 3, None),
        ("b", "total"): (None, 2, None),
        ("b", "average"): (2.5, 2, None),
        ("c", "total"): (4, 3, "low"),
        ("d", "total"): (5, 4, "high"),
        ("d", "average"): (1.25, 4, None),
    }
    # The same numbers whether or not the library also holds unequal-range scales (which
    # switches scoring to the general prorating formula).
    for lib in (LIB.subset(["prorate"]), LIB):
        got = _by_key(score_responses(resp, lib))
        for (pid, scale), (score, k, band) in expected.items():
            _check(got[(pid, 0, "prorate", scale)], score, k, band)


def test_swls_band_for_every_possible_total() -> None:
    # Totals 5..35 built from five items on 1..7; bands from the interpretation guide.
    def band(t: int) -> str:
        if t <= 9:
            return "extremely_dissatisfied"
        if t <= 14:
            return "dissatisfied"
        if t <= 19:
            return "slightly_dissatisfied"
        if t == 20:
            return "neutral"
        if t <= 25:
            return "slightly_satisfied"
        if t <= 30:
            return "satisfied"
        return "extremely_satisfied"

    rows = []
    for t in range(5, 36):
        extra, values = t - 5, []
        for _ in range(5):
            step = min(6, extra)
            values.append(1 + step)
            extra -= step
        assert sum(values) == t
        rows += _answers(f"p{t}", "swls", values)
    got = _by_key(score_responses(_long(rows), LIB))
    for t in range(5, 36):
        _check(got[(f"p{t}", 0, "swls", "total")], t, 5, band(t))


def test_administered_instrument_gets_every_scale_even_without_item_rows() -> None:
    # Only flourish_11 and flourish_12 have rows: the instrument was administered, so all
    # eight scales appear; scales with none of their items present have 0 answered.
    resp = _long([("a", 2, "flourish_11", 6), ("a", 2, "flourish_12", None)])
    got = score_responses(resp, LIB, sort=True)
    assert got["scale"].to_list() == [s.id for s in LIB["flourish12"].scales]
    by = _by_key(got)
    _check(by[("a", 2, "flourish12", "happiness_life_satisfaction")], None, 0)
    _check(by[("a", 2, "flourish12", "financial_material_stability")], None, 1)
    _check(by[("a", 2, "flourish12", "secure_flourish_index")], None, 1)


def test_all_blank_instrument_is_present_with_null_scores() -> None:
    resp = _long(_answers("z", "who5", [None] * 5))
    got = _by_key(score_responses(resp, LIB))
    _check(got[("z", 0, "who5", "raw")], None, 0)
    _check(got[("z", 0, "who5", "total")], None, 0)


def test_output_schema_order_and_waves() -> None:
    resp = _long(
        _answers("b", "who5", [1, 1, 1, 1, 1], wave=3)
        + _answers("a", "who5", [2, 2, 2, 2, 2], wave=3)
        + _answers("a", "who5", [0, 0, 0, 0, 0], wave=0)
        + _answers("a", "swls", [7, 7, 7, 7, 7], wave=0)
    ).sample(fraction=1.0, shuffle=True, seed=3)
    got = score_responses(resp.lazy(), LIB, sort=True)
    assert got.schema == SCORES_SCHEMA
    assert got.select("participant_id", "wave", "instrument", "scale").rows() == [
        ("a", 0, "swls", "total"),
        ("a", 0, "who5", "raw"),
        ("a", 0, "who5", "total"),
        ("a", 3, "who5", "raw"),
        ("a", 3, "who5", "total"),
        ("b", 3, "who5", "raw"),
        ("b", 3, "who5", "total"),
    ]
    assert got["score"].to_list() == [35, 0, 0, 10, 40, 5, 20]


def test_rows_the_library_does_not_define_are_ignored() -> None:
    resp = pl.concat(
        [
            _long(_answers("a", "who5", [1, 2, 3, 4, 5])),
            pl.DataFrame(
                {
                    "participant_id": ["a", "a"],
                    "wave": [0, 0],
                    "instrument": ["unknown", "swls"],
                    "item": ["unknown_1", "who5_1"],  # item of another instrument
                    "value": [3, 1],
                },
                schema=_long([]).schema,
            ),
        ]
    )
    got = _by_key(score_responses(resp, LIB))
    assert set(got) == {("a", 0, "who5", "raw"), ("a", 0, "who5", "total")}
    _check(got[("a", 0, "who5", "raw")], 15, 5)


def test_empty_responses_give_an_empty_table() -> None:
    got = score_responses(_long([]), LIB)
    assert got.height == 0 and got.schema == SCORES_SCHEMA


def test_unvalidated_input_is_a_programmer_error() -> None:
    with pytest.raises(ValueError, match="outside their item's range"):
        score_responses(_long(_answers("a", "who5", [1, 2, 3, 4, 6])), LIB)
    with pytest.raises(ValueError, match="outside their item's range"):
        score_responses(_long(_answers("a", "revtest", [1, 2, 3, 5])), LIB)  # item 4: 0..4
    with pytest.raises(ValueError, match="more than once"):
        score_responses(
            _long(_answers("a", "who5", [1, 2, 3, 4, 5]) + [("a", 0, "who5_2", 2)]), LIB
        )
    with pytest.raises(ValueError, match="lack column"):
        score_responses(_long([]).drop("instrument"), LIB)


# --- tables for others ------------------------------------------------------------------


def test_scale_table() -> None:
    t = scale_table(LIB)
    assert t.height == sum(len(s.scales) for s in LIB)
    rows = {(r["instrument"], r["scale"]): r for r in t.iter_rows(named=True)}
    assert rows[("who5", "total")] == {
        "instrument": "who5",
        "scale": "total",
        "name": "WHO-5 percentage score",
        "rule": "sum",
        "n_items": 5,
        "required_items": 5,
        "min": 0.0,
        "max": 100.0,
        "mid": 10.0,
    }
    assert (rows[("swls", "total")]["min"], rows[("swls", "total")]["max"]) == (5, 35)
    assert rows[("revtest", "total")]["required_items"] == 3
    assert (rows[("revtest", "pair")]["min"], rows[("revtest", "pair")]["max"]) == (0, 100)
    assert rows[("perma", "overall")]["n_items"] == 16
    assert rows[("dfs", "total")]["mid"] is None


def test_scale_membership() -> None:
    m = scale_membership(LIB)
    assert m.height == sum(len(s.items) for inst in LIB for s in inst.scales)
    r = m.filter((pl.col("scale") == "total") & (pl.col("item") == "revtest_4")).row(0, named=True)
    assert (r["reverse"], r["min"], r["max"], r["n_items"], r["required"]) == (True, 0, 4, 4, 3)


def test_doctests() -> None:
    for module in (instruments.scoring, instruments.catalog):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# --- independent reference and properties -----------------------------------------------


def _reference(spec: InstrumentSpec, answers: dict[str, int | None]) -> dict[str, tuple]:
    """Plain-Python scoring of one administration, written from the contract."""
    out = {}
    for s in spec.scales:
        keyed, lo_k, w_k = [], 0, 0
        for item in s.items:
            x = answers.get(item)
            if x is None:
                continue
            lo, hi = spec.item_range(item)
            keyed.append(lo + hi - x if spec.item(item).reverse else x)
            lo_k, w_k = lo_k + lo, w_k + hi - lo
        k = len(keyed)
        if k < s.required_items:
            out[s.id] = (None, k, None)
            continue
        if s.rule == "mean":
            raw = sum(keyed) / k
        elif k == len(s.items):
            raw = sum(keyed)
        else:
            lo_all = sum(spec.item_range(i)[0] for i in s.items)
            w_all = sum(spec.item_range(i)[1] - spec.item_range(i)[0] for i in s.items)
            raw = lo_all + (sum(keyed) - lo_k) * w_all / w_k
        score = s.multiplier * raw + s.offset
        band = next((b.label for b in s.bands if score <= b.upper), None)
        out[s.id] = (score, k, band)
    return out


@st.composite
def administrations(draw: st.DrawFn) -> list[tuple[str, int, str, int | None]]:
    """A few participants x waves x instruments, each item present-and-answered, present-and-
    blank, or absent."""
    rows: list[tuple[str, int, str, int | None]] = []
    n = draw(st.integers(1, 6))
    for p in range(n):
        for inst_id in draw(
            st.lists(st.sampled_from(LIB.ids()), min_size=1, max_size=3, unique=True)
        ):
            spec = LIB[inst_id]
            wave = draw(st.integers(0, 2))
            for it in spec.items:
                lo, hi = spec.item_range(it.id)
                state = draw(st.sampled_from(["answered"] * 4 + ["blank", "absent"]))
                if state == "absent":
                    continue
                value = draw(st.integers(lo, hi)) if state == "answered" else None
                rows.append((f"p{p}", wave, it.id, value))
    # One (participant, wave, item) at most: later draws of the same key are dropped.
    seen, unique = set(), []
    for r in rows:
        if (r[0], r[1], r[2]) not in seen:
            seen.add((r[0], r[1], r[2]))
            unique.append(r)
    return unique


PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(administrations())
def test_scores_match_reference_and_stay_within_scale_range(rows: list[tuple]) -> None:
    got = _by_key(score_responses(_long(rows), LIB))
    groups: dict[tuple[str, int, str], dict[str, int | None]] = {}
    for pid, wave, item, value in rows:
        groups.setdefault((pid, wave, LIB.instrument_of_item(item)), {})[item] = value
    assert len(got) == sum(len(LIB[inst].scales) for (_, _, inst) in groups)
    for (pid, wave, inst), answers in groups.items():
        spec = LIB[inst]
        for scale_id, (score, k, band) in _reference(spec, answers).items():
            row = got[(pid, wave, inst, scale_id)]
            _check(row, score, k, band)
            if row["score"] is not None:
                lo, hi = spec.scale_range(scale_id)
                assert lo - 1e-9 <= row["score"] <= hi + 1e-9


@given(st.integers(-50, 50), st.integers(-50, 50), st.integers(0, 100))
def test_reverse_keying_twice_is_identity(lo: int, width: int, offset: int) -> None:
    hi = lo + abs(width) + 1
    x = lo + offset % (hi - lo + 1)
    assert reverse_key(reverse_key(x, lo, hi), lo, hi) == x
    assert lo <= reverse_key(x, lo, hi) <= hi
    s = pl.Series("v", [x, None, lo, hi], dtype=pl.Int32)
    twice = pl.select(reverse_key(reverse_key(pl.lit(s), lo, hi), lo, hi)).to_series()
    assert twice.to_list() == s.to_list()


def _unreversed(lib: InstrumentLibrary) -> InstrumentLibrary:
    specs = {}
    for spec in lib:
        items = [it.model_copy(update={"reverse": False}) for it in spec.items]
        specs[spec.id] = spec.model_copy(update={"items": items})
    return InstrumentLibrary(specs)


@PROPERTY_SETTINGS
@given(administrations())
def test_reverse_keying_in_data_equals_reverse_keying_in_definition(rows: list[tuple]) -> None:
    # Pre-keying reverse items in the data and scoring with reverse flags off must give the
    # same scores as scoring the raw data with the definition's keying.
    keyed_rows = []
    for pid, wave, item, value in rows:
        spec = LIB[LIB.instrument_of_item(item)]
        lo, hi = spec.item_range(item)
        if value is not None and spec.item(item).reverse:
            value = reverse_key(value, lo, hi)
        keyed_rows.append((pid, wave, item, value))
    a = score_responses(_long(rows), LIB, sort=True)
    b = score_responses(_long(keyed_rows), _unreversed(LIB), sort=True)
    assert a.select(
        "participant_id", "wave", "instrument", "scale", "items_answered", "band"
    ).equals(b.select("participant_id", "wave", "instrument", "scale", "items_answered", "band"))
    diff = (a["score"] - b["score"]).abs().fill_null(0)
    assert a["score"].is_null().equals(b["score"].is_null()) and diff.max() <= 1e-12


@pytest.mark.parametrize(
    "extra",
    [
        [("a", 0, "who5_1", 2)],  # 1 + 1 carries into bit 1, which who5_2 also holds
        [("a", 0, "who5_1", 2), ("a", 0, "who5_1", 3)],  # three times
        [("a", 0, "who5_5", 2), ("a", 0, "who5_4", 1)],  # two repeats, carries chain upward
    ],
)
def test_repeated_items_are_detected_whatever_the_carries(extra) -> None:
    """Any repeat of an item in an administration is found, however many and wherever."""
    with pytest.raises(ValueError, match="more than once"):
        score_responses(_long(_answers("a", "who5", [1, 2, 3, 4, 5]) + extra), LIB)
    # the same rows for another participant each are fine
    fine = _answers("a", "who5", [1, 2, 3, 4, 5]) + [(f"b{i}", 0, it, v) for i, (_, _, it, v)
                                                      in enumerate(extra)]
    assert score_responses(_long(fine), LIB).height > 0


@PROPERTY_SETTINGS
@given(administrations())
def test_sorted_numbering_of_administrations_equals_the_dense_grid(rows: list[tuple]) -> None:
    """Both ways of numbering participant x wave x instrument give the same scores."""
    dense = score_responses(_long(rows), LIB)
    far = _long(rows).with_columns(pl.col("wave") * 1_000_000)  # a grid too sparse to count
    got = score_responses(far, LIB).with_columns(pl.col("wave") // 1_000_000)
    assert got.equals(dense)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(instruments.scoring, "_DENSE_CELLS_PER_ROW", 0)
        mp.setattr(instruments.scoring, "_DENSE_CELLS_MIN", 0)
        assert score_responses(_long(rows), LIB).equals(dense)
