"""Validation: every defect kind, every coercion, row accounting, and pandera as the detector.

Expected outcomes are derived by hand from the instrument definitions (WHO-5 items answer
0..5; a test instrument with an item-level 1..7 override) and from the documented
decisions in ``instruments/validation.py``, never from the code's own output.
"""

import datetime as dt
import time

import numpy as np
import pandera.polars as pa
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pandera.config import ValidationDepth, config_context
from polars.testing import assert_frame_equal

from instruments.definition import InstrumentLibrary, InstrumentSpec, load_library
from instruments.schemas import (
    ParticipantsSchema,
    QuarantineSchema,
    RawLongSchema,
    ResponsesSchema,
    ScoresSchema,
    build_item_schema,
)
from instruments.validation import (
    COERCION_KINDS,
    QUARANTINE_REASONS,
    ValidationConfig,
    validate_responses,
)

UTC = dt.UTC
RAW_COLS = [
    "source",
    "row",
    "participant_id",
    "wave",
    "timestamp",
    "instrument",
    "item",
    "value",
    "column",
]

TEST_INSTRUMENT = {
    "id": "tst",
    "name": "Test",
    "version": "1",
    "citation": "none",
    "licence": {"name": "test"},
    "response": {"min": 0, "max": 4},
    "items": [
        {"id": "tst_1", "text": "a"},
        {"id": "tst_2", "text": "b", "response": {"min": 1, "max": 7}},
    ],
    "scales": [{"id": "total", "name": "t", "items": ["tst_1", "tst_2"], "rule": "sum"}],
}


@pytest.fixture(scope="module")
def library():
    who5 = load_library()["who5"]
    tst = InstrumentSpec.model_validate(TEST_INSTRUMENT)
    return InstrumentLibrary({"who5": who5, "tst": tst})


def raw(*rows: dict) -> pl.DataFrame:
    """Raw long table; each row overrides a valid WHO-5 answer (P1, wave 0, value 3) to
    item who5_1, who5_2, ... by position (so that rows are not duplicates by default)."""
    base = {
        "source": "s.csv",
        "participant_id": "P1",
        "wave": "0",
        "timestamp": "2024-03-01T10:00:00Z",
        "instrument": "who5",
        "value": "3",
        "column": "value",
    }
    recs = [{**base, "row": i + 1, "item": f"who5_{i % 5 + 1}", **r} for i, r in enumerate(rows)]
    return pl.DataFrame(recs, schema={c: (pl.Int64 if c == "row" else pl.String) for c in RAW_COLS})


def reasons(res) -> list[str]:
    return res.quarantine.sort("row")["reason"].to_list()


def check_accounting(res):
    s = res.summary
    assert s.rows_in == s.accepted + s.quarantined
    assert s.accepted == res.responses.height and s.quarantined == res.quarantine.height
    assert sum(s.by_reason.values()) == s.quarantined
    assert set(s.by_reason) == set(QUARANTINE_REASONS)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"value": "x"}, "non_numeric_value"),
        ({"value": "5,0"}, "non_numeric_value"),
        ({"value": "3.5"}, "non_integer_value"),
        ({"value": "6"}, "out_of_range"),
        ({"value": "-1"}, "out_of_range"),
        ({"value": "inf"}, "non_integer_value"),
        ({"item": "who5_9"}, "unknown_item"),
        ({"item": "phq9_1", "instrument": None}, "unknown_item"),
        ({"item": None}, "unknown_item"),
        ({"instrument": "tst"}, "instrument_mismatch"),
        ({"participant_id": None}, "missing_participant_id"),
        ({"participant_id": "  "}, "missing_participant_id"),
        ({"wave": "-1"}, "invalid_wave"),
        ({"wave": "1.5"}, "invalid_wave"),
        ({"wave": "baseline"}, "invalid_wave"),
        ({"wave": None}, "invalid_wave"),
        ({"wave": "99999999999"}, "invalid_wave"),
        ({"timestamp": "yesterday"}, "invalid_timestamp"),
        ({"timestamp": "2024-13-01"}, "invalid_timestamp"),
        # the item-level override (1..7) is used, not the instrument's default (0..4)
        ({"instrument": "tst", "item": "tst_2", "value": "0"}, "out_of_range"),
        ({"instrument": "tst", "item": "tst_1", "value": "5"}, "out_of_range"),
    ],
)
def test_each_defect_kind(library, row, reason):
    res = validate_responses(raw({}, row), None, library)
    assert reasons(res) == [reason]
    q = res.quarantine.row(0, named=True)
    assert q["row"] == 2 and q["source"] == "s.csv"
    if reason == "invalid_timestamp":  # the timestamp's column and text, not the item's
        assert (q["column"], q["value"]) == ("timestamp", row["timestamp"])
    else:  # the value is reported as written
        assert q["column"] == "value" and q["value"] == row.get("value", "3")
    assert res.responses["row"].to_list() == [1]
    check_accounting(res)


@pytest.mark.parametrize(
    ("row", "value"),
    [
        ({"instrument": "tst", "item": "tst_2", "value": "7"}, 7),
        ({"instrument": "tst", "item": "tst_2", "value": "1"}, 1),
        ({"instrument": None, "item": "tst_1", "value": "4"}, 4),
        ({"value": "0"}, 0),
        ({"value": "5"}, 5),
    ],
)
def test_valid_boundaries(library, row, value):
    res = validate_responses(raw(row), None, library)
    assert res.quarantine.height == 0
    assert res.responses["value"].to_list() == [value]


def test_blank_value_is_skipped_item_not_defect(library):
    res = validate_responses(
        raw({"value": None}, {"value": "", "item": "who5_2"}, {"value": "   ", "item": "who5_3"}),
        None,
        library,
    )
    assert res.quarantine.height == 0
    assert res.responses["value"].to_list() == [None, None, None]
    assert res.summary.coerced_by_kind["na_token"] == 0


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ("5 ", 5, "value_whitespace"),
        (" 2", 2, "value_whitespace"),
        ("5.0", 5, "value_decimal"),
        ("4.", 4, "value_decimal"),
        ("NA", None, "na_token"),
        ("N/A", None, "na_token"),
        ("n/a", None, "na_token"),
        (".", None, "na_token"),
        (" NA ", None, "na_token"),
    ],
)
def test_value_coercions_are_reported(library, text, value, kind):
    res = validate_responses(raw({"value": text}, {"value": "1"}), None, library)
    assert res.quarantine.height == 0
    assert res.responses["value"].to_list() == [value, 1]
    assert res.summary.coerced_by_kind[kind] == 1
    c = res.coercions.filter(pl.col("kind") == kind).row(0, named=True)
    assert c["rows"] == 1 and c["first_row"] == 1 and c["example"] == text
    assert c["column"] == "value" and c["source"] == "s.csv"
    assert set(res.summary.coerced_by_kind) == set(COERCION_KINDS)


def test_record_coercions(library):
    res = validate_responses(
        raw({"participant_id": " P1 ", "wave": "1.0", "item": " who5_2"}), None, library
    )
    r = res.responses.row(0, named=True)
    assert (r["participant_id"], r["wave"], r["item"]) == ("P1", 1, "who5_2")
    kinds = res.summary.coerced_by_kind
    assert kinds["participant_id_whitespace"] == 1
    assert kinds["wave_format"] == 1
    assert kinds["field_whitespace"] == 1


def test_coercions_only_counted_on_accepted_rows(library):
    res = validate_responses(raw({"value": "7.0"}, {"value": " 9"}), None, library)
    assert reasons(res) == ["out_of_range", "out_of_range"]
    assert res.coercions.height == 0


def test_custom_na_tokens(library):
    cfg = ValidationConfig(na_tokens=("-99",))
    res = validate_responses(raw({"value": "-99"}, {"value": "NA"}), None, library, cfg)
    assert res.responses["value"].to_list() == [None]
    assert reasons(res) == ["non_numeric_value"]


def test_timestamps_parse_to_utc(library):
    texts = [
        ("2024-03-01T10:00:00Z", dt.datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T10:00:00+02:00", dt.datetime(2024, 3, 1, 8, tzinfo=UTC)),
        ("2024-03-01 10:00:00", dt.datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T10:00:00.250", dt.datetime(2024, 3, 1, 10, 0, 0, 250000, tzinfo=UTC)),
        ("2024-03-01 10:00", dt.datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01", dt.datetime(2024, 3, 1, tzinfo=UTC)),
        (None, None),
        ("", None),
    ]
    rows = [
        {"timestamp": t, "item": f"who5_{i % 5 + 1}", "wave": str(i // 5)}
        for i, (t, _) in enumerate(texts)
    ]
    res = validate_responses(raw(*rows), None, library)
    assert res.quarantine.height == 0
    assert res.responses.sort("row")["timestamp"].to_list() == [e for _, e in texts]


def test_instrument_inferred_when_absent(library):
    res = validate_responses(
        raw({"instrument": None, "item": "tst_2", "value": "6"}), None, library
    )
    assert res.responses["instrument"].to_list() == ["tst"]


def test_unknown_participant(library):
    people = pl.DataFrame({"participant_id": ["P1", "P3"], "arm": ["a", "b"]})
    res = validate_responses(
        raw({}, {"participant_id": "P2"}, {"participant_id": " P3"}), people, library
    )
    assert reasons(res) == ["unknown_participant"]
    assert res.quarantine["participant_id"].to_list() == ["P2"]
    # without a participants table the check is off
    assert validate_responses(raw({"participant_id": "P2"}), None, library).quarantine.height == 0


def test_duplicates(library):
    rows = [
        {"item": "who5_1", "value": "3"},  # 1 identical x3: first kept
        {"item": "who5_1", "value": "3"},  # 2 duplicate_row
        {"item": "who5_1", "value": "3.0"},  # 3 same value 3 -> duplicate_row
        {"item": "who5_2", "value": "1"},  # 4 conflict
        {"item": "who5_2", "value": "2"},  # 5 conflict
        {"item": "who5_3", "value": "4"},  # 6 conflict (answer vs blank)
        {"item": "who5_3", "value": ""},  # 7 conflict
        {"item": "who5_4", "value": "9"},  # 8 out_of_range, not a duplicate
        {"item": "who5_4", "value": "2"},  # 9 kept: its twin was rejected first
        {"item": "who5_5", "value": "2", "wave": "1"},  # 10 different wave: fine
        {"item": "who5_5", "value": "2"},  # 11
        {"item": "who5_5", "value": "2", "participant_id": "P2"},  # 12 other person: fine
        {"item": "who5_1", "value": "3", "source": "t.csv", "row": 1},  # 13 another file
    ]
    res = validate_responses(raw(*rows), None, library)
    got = dict(zip(res.quarantine["row"], res.quarantine["reason"], strict=True))
    assert sorted(got.items()) == [
        (1, "duplicate_row"),  # row 13 of the input was given row=1 in t.csv
        (2, "duplicate_row"),
        (3, "duplicate_row"),
        (4, "duplicate_conflict"),
        (5, "duplicate_conflict"),
        (6, "duplicate_conflict"),
        (7, "duplicate_conflict"),
        (8, "out_of_range"),
    ]
    assert res.quarantine.filter(pl.col("row") == 1)["source"].to_list() == ["t.csv"]
    kept = res.responses.sort("source", "row")
    assert kept.select("source", "row").rows() == [
        ("s.csv", 1),
        ("s.csv", 9),
        ("s.csv", 10),
        ("s.csv", 11),
        ("s.csv", 12),
    ]
    check_accounting(res)


def test_first_reason_in_priority_order_wins(library):
    res = validate_responses(
        raw(
            {"participant_id": None, "value": "x", "wave": "-2"},
            {"wave": "-2", "value": "9"},
            {"item": "nope_1", "value": "9"},
        ),
        None,
        library,
    )
    assert reasons(res) == ["missing_participant_id", "invalid_wave", "unknown_item"]


def test_responses_contract_and_order(library):
    res = validate_responses(raw({}, {"item": "who5_2", "value": "5"}), None, library)
    ResponsesSchema.validate(res.responses)  # eager frame: data checks run
    assert res.responses.schema == pl.Schema(
        {
            "participant_id": pl.String,
            "wave": pl.Int32,
            "timestamp": pl.Datetime("us", "UTC"),
            "instrument": pl.String,
            "item": pl.String,
            "value": pl.Int16,
            "source": pl.String,
            "row": pl.Int64,
        }
    )
    assert res.responses["row"].to_list() == [1, 2]
    QuarantineSchema.validate(validate_responses(raw({"value": "x"}), None, library).quarantine)


def test_empty_input(library):
    res = validate_responses(raw().clear(), None, library)
    assert res.message == "no_rows" and res.summary.rows_in == 0
    assert res.responses.height == 0 and res.quarantine.height == 0
    ResponsesSchema.validate(res.responses)


def test_summary_frame(library):
    res = validate_responses(raw({}, {"value": "x"}, {"value": "5.0"}), None, library)
    assert res.message == "quarantined"
    f = res.to_frame()
    get = {(m, k): n for m, k, n in f.iter_rows()}
    assert get[("rows_in", None)] == 3 and get[("accepted", None)] == 2
    assert get[("quarantined", None)] == 1 and get[("reason", "non_numeric_value")] == 1
    assert get[("coercion", "value_decimal")] == 1
    d = res.summary_dict()
    assert d["rows_in"] == 3 and d["by_reason"]["non_numeric_value"] == 1


# --- pandera is the detector, and lazy frames need SCHEMA_AND_DATA ----------------------


def test_pandera_reports_every_item_failure(library):
    validated = pl.DataFrame(
        {
            "instrument": ["who5", "who5", "tst", "who5", None, "who5"],
            "item": ["who5_1", "who5_2", "who5_3", "who5_4", "zzz_1", "who5_5"],
            "value": [3.0, 9.0, 1.0, 2.5, 1.0, 1.0],
            "wave": [0, 0, 0, 0, 0, -1],
        }
    )
    schema = build_item_schema(library)
    # On a LazyFrame with schema-only depth pandera checks names and dtypes only: the bad
    # data passes. This is the trap the validator avoids by setting the depth itself.
    with config_context(validation_depth=ValidationDepth.SCHEMA_ONLY):
        schema.validate(validated.lazy(), lazy=True).collect()
    with config_context(validation_depth=ValidationDepth.SCHEMA_AND_DATA):
        with pytest.raises(pa.errors.SchemaErrors) as err:
            schema.validate(validated.lazy(), lazy=True)
    fc = err.value.failure_cases
    got = sorted(zip(fc["check"], fc["index"], strict=True))
    assert got == [
        ("instrument_matches_item", 2),
        ("integer_value", 3),
        ("known_item", 4),
        ("value_in_item_range", 1),
        ("wave_ge_0", 5),
    ]


def test_validate_responses_uses_pandera_failure_cases(library):
    res = validate_responses(raw({}, {"value": "9"}, {"value": "2.5"}), None, library)
    checks = dict(zip(res.item_failures["checks"], res.item_failures["reason"], strict=True))
    assert checks == {"value_in_item_range": "out_of_range", "integer_value": "non_integer_value"}


def test_contract_models_reject_bad_data():
    bad = pl.DataFrame(
        {
            "participant_id": ["P1"],
            "wave": pl.Series([-1], dtype=pl.Int32),
            "timestamp": pl.Series([None], dtype=pl.Datetime("us", "UTC")),
            "instrument": ["who5"],
            "item": ["who5_1"],
            "value": pl.Series([3], dtype=pl.Int16),
            "source": ["s"],
            "row": pl.Series([0], dtype=pl.Int64),
        }
    )
    with config_context(validation_depth=ValidationDepth.SCHEMA_AND_DATA):
        with pytest.raises(pa.errors.SchemaErrors) as err:
            ResponsesSchema.validate(bad.lazy(), lazy=True)
    assert set(err.value.failure_cases["column"]) == {"wave", "row"}
    with pytest.raises(pa.errors.SchemaErrors):
        ParticipantsSchema.validate(
            pl.DataFrame({"participant_id": ["a", "a"], "arm": ["x", "y"]}), lazy=True
        )
    with pytest.raises(pa.errors.SchemaErrors):
        QuarantineSchema.validate(
            pl.DataFrame(
                {
                    "source": ["s"],
                    "row": [1],
                    "participant_id": ["p"],
                    "wave": ["0"],
                    "column": ["c"],
                    "value": ["v"],
                    "reason": ["because"],
                }
            ),
            lazy=True,
        )


def test_every_schema_column_has_a_description():
    for model in (
        RawLongSchema,
        ResponsesSchema,
        QuarantineSchema,
        ScoresSchema,
        ParticipantsSchema,
    ):
        schema = model.to_schema()
        for name, col in schema.columns.items():
            assert col.description, f"{model.__name__}.{name} has no description"


# --- row accounting as a property ------------------------------------------------------

GOOD = {
    "value": ["0", "3", "5", "", None, " 4", "2.0", "NA"],
    "wave": ["0", "1", "2"],
    "participant_id": ["P1", "P2", "P3"],
    "item": ["who5_1", "who5_2", "tst_2"],
    "timestamp": [None, "2024-01-01", "2024-01-01T10:00:00Z"],
}
BAD = {
    "value": ["x", "9", "3.5", "-1", "1e9"],
    "wave": ["-1", "a", None],
    "participant_id": [None, "", "P9"],
    "item": ["foo_1", "", None],
    "timestamp": ["never", "2024-02-30"],
}


@st.composite
def messy_rows(draw):
    n = draw(st.integers(min_value=0, max_value=40))
    rows = []
    for _ in range(n):
        rec = {}
        for field, good in GOOD.items():
            pool = good + BAD[field] if draw(st.booleans()) else good
            rec[field] = draw(st.sampled_from(pool))
        rec["instrument"] = draw(st.sampled_from([None, "who5", "tst"]))
        rows.append(rec)
    return rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=messy_rows())
def test_row_accounting_always_adds_up(library, rows):
    people = pl.DataFrame({"participant_id": ["P1", "P2", "P3"], "arm": ["a"] * 3})
    frame = raw(*rows) if rows else raw().clear()
    res = validate_responses(frame, people, library)
    check_accounting(res)
    # each input row is in exactly one of the two outputs
    kept, rejected = set(res.responses["row"]), set(res.quarantine["row"])
    assert kept.isdisjoint(rejected) and kept | rejected == set(range(1, len(rows) + 1))
    # accepted values respect the item's own range
    r = res.responses.with_columns(
        lo=pl.col("item").replace_strict({"who5_1": 0, "who5_2": 0, "tst_2": 1}, default=None),
        hi=pl.col("item").replace_strict({"who5_1": 5, "who5_2": 5, "tst_2": 7}, default=None),
    )
    assert (
        r.filter(pl.col("value").is_not_null() & ~pl.col("value").is_between("lo", "hi")).height
        == 0
    )
    assert r["wave"].min() is None or r["wave"].min() >= 0


# --- known truth at scale -------------------------------------------------------------


def simulate(n_people: int, seed: int):
    """A long table with defects injected at known rows; returns it and the true counts."""
    rng = np.random.default_rng(seed)
    waves, items = 4, 5
    n = n_people * waves * items
    values = rng.integers(0, 6, n).astype(str).astype(object)
    kinds = {"non_numeric_value": "abc", "out_of_range": "8", "non_integer_value": "2.5"}
    truth = {}
    taken = rng.choice(n, size=3 * (n // 100), replace=False)
    for j, (kind, text) in enumerate(kinds.items()):
        idx = taken[j * (n // 100) : (j + 1) * (n // 100)]
        values[idx] = text
        truth[kind] = len(idx)
    i = pl.int_range(0, n, dtype=pl.Int64)
    frame = pl.select(
        source=pl.lit("big.csv"),
        row=i + 1,
        participant_id=pl.format("P{}", i // (waves * items)),
        wave=((i // items) % waves).cast(pl.String),
        timestamp=pl.lit(None, dtype=pl.String),
        instrument=pl.lit("who5"),
        item=pl.format("who5_{}", i % items + 1),
        value=pl.lit(pl.Series(values.astype(str))),
        column=pl.lit("value"),
    )
    return frame, truth


def run_known_truth(n_people: int):
    frame, truth = simulate(n_people, seed=11)
    library = load_library()
    t0, c0 = time.perf_counter(), time.process_time()
    res = validate_responses(frame.lazy(), None, library)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"\n{res.summary.rows_in:,} rows: {seconds:.1f} s wall, {cpu:.1f} s CPU")
    check_accounting(res)
    for kind, count in truth.items():
        assert res.summary.by_reason[kind] == count
    assert res.summary.quarantined == sum(truth.values())
    return seconds, res


def test_known_truth_reduced():
    seconds, res = run_known_truth(2_000)  # 40 000 rows
    assert res.summary.rows_in == 40_000


@pytest.mark.slow
def test_known_truth_20_million_rows():
    seconds, res = run_known_truth(1_000_000)  # 20 M rows
    assert res.summary.rows_in == 20_000_000


def test_contract_gate_raises_on_a_bad_accepted_table(library):
    from instruments.validation import _check_contract

    good = validate_responses(raw({}), None, library).responses
    domain = pl.DataFrame({"instrument": ["who5"], "item": ["who5_1"], "value": [9.0], "wave": [0]})
    with pytest.raises(pa.errors.SchemaErrors):
        _check_contract(good, domain, library)
    with pytest.raises(pa.errors.SchemaErrors):
        _check_contract(good.with_columns(pl.col("wave").cast(pl.Int64)), domain.clear(), library)


def test_with_coercions_recounts(library):
    res = validate_responses(raw({"value": "5.0"}), None, library)
    extra = pl.DataFrame(
        {
            "source": ["s.csv"],
            "column": ["wave"],
            "kind": ["header_whitespace"],
            "rows": [1],
            "first_row": [None],
            "example": ["' wave '"],
        },
        schema=res.coercions.schema,
    )
    merged = res.with_coercions(pl.concat([res.coercions, extra]))
    assert merged.summary.coerced_by_kind["header_whitespace"] == 1
    assert merged.summary.coerced_by_kind["value_decimal"] == 1
    assert merged.summary.rows_in == res.summary.rows_in


def test_timestamp_whitespace_and_blank(library):
    res = validate_responses(
        raw({"timestamp": " 2024-03-01T10:00:00Z "}, {"timestamp": "   "}, {"timestamp": "x "}),
        None,
        library,
    )
    assert reasons(res) == ["invalid_timestamp"]
    assert res.responses["timestamp"].to_list() == [dt.datetime(2024, 3, 1, 10, tzinfo=UTC), None]
    c = res.coercions.filter(pl.col("kind") == "field_whitespace")
    assert c.select("column", "rows", "first_row").rows() == [("timestamp", 1, 1)]


def test_items_of_an_instrument_the_survey_does_not_administer(library):
    """A source restricted to WHO-5 quarantines the test instrument's items; an
    unrestricted source accepts them; row accounting holds."""
    frame = raw(
        {},
        {"instrument": "tst", "item": "tst_1"},  # s.csv administers who5 only
        {"instrument": None, "item": "tst_2", "value": "5"},  # instrument inferred: tst
        {"source": "t.csv", "participant_id": "P2", "instrument": "tst", "item": "tst_1"},
        {"instrument": "tst", "item": "who5_2"},  # the mismatch is reported first
    )
    res = validate_responses(frame, None, library, survey_instruments={"s.csv": ["who5"]})
    check_accounting(res)
    assert reasons(res) == ["instrument_not_in_survey", "instrument_not_in_survey",
                            "instrument_mismatch"]
    assert sorted(res.responses["item"].to_list()) == ["tst_1", "who5_1"]
    # without the restriction every row but the mismatch is accepted
    free = validate_responses(frame, None, library)
    assert reasons(free) == ["instrument_mismatch"]


def _outputs(res) -> tuple:
    return (res.responses, res.quarantine, res.coercions, res.item_failures, res.summary_dict())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=messy_rows(), survey=st.booleans())
def test_fast_paths_equal_the_general_ones(library, rows, survey):
    """Counting tables, raw columns kept as written and run-length codes (the fast paths)
    give exactly what sorting, gathering and per-row codes give."""
    import instruments.encoding as encoding
    import instruments.validation as validation

    people = pl.DataFrame({"participant_id": ["P1", "P2", "P3"], "arm": ["a"] * 3})
    frame = raw(*rows) if rows else raw().clear()
    frame = pl.concat([frame, frame.head(3)])  # some exact repeats, whatever was drawn
    by_source = {"s.csv": ("who5",)} if survey else None
    fast = _outputs(validate_responses(frame, people, library, survey_instruments=by_source))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(validation, "_DENSE_KEYS_MAX", 0)
        mp.setattr(validation, "_MARK_KEYS_MAX", 0)
        mp.setattr(validation, "_as_written", lambda *args: False)
        mp.setattr(encoding, "_SAMPLE_ROWS", 2)
        mp.setattr(validation, "encode_integer_text", encoding.encode_text)
        for min_run in (1, 10**9):
            mp.setattr(encoding, "_MIN_MEAN_RUN", min_run)
            slow = validate_responses(frame, people, library, survey_instruments=by_source)
            for a, b in zip(fast, _outputs(slow), strict=True):
                if isinstance(a, pl.DataFrame):
                    assert_frame_equal(a, b)
                else:
                    assert a == b


@pytest.mark.parametrize("blank_timestamp", [False, True])
@pytest.mark.parametrize("repeat", [False, True])
def test_clean_input_equals_the_per_row_path(library, blank_timestamp, repeat):
    """When no row fails (no per-row reason column, no filter, an empty quarantine) the
    accepted rows and coercions are those of the per-row path, which one failing row
    appended at the end forces; with exact repeats the duplicate marking runs on either."""
    rows = [{"item": f"who5_{i + 1}", "value": v} for i, v in enumerate(("3", " 4", "", "NA", "5.0"))]
    rows += [{"participant_id": "P2", "wave": "1", "item": "who5_1", "value": "2"}]
    if blank_timestamp:
        rows += [{"participant_id": "P2", "timestamp": "", "item": "who5_2", "value": "1"}]
    if repeat:
        rows += [rows[0]]  # the same answer again: a duplicate_row
    people = pl.DataFrame({"participant_id": ["P1", "P2"], "arm": ["a", "b"]})
    clean = validate_responses(raw(*rows), people, library)
    failing = raw(*rows, {"participant_id": "P9", "item": "who5_3"})  # unknown participant
    per_row = validate_responses(failing, people, library)
    assert clean.quarantine.height == int(repeat) and per_row.quarantine.height == 1 + repeat
    assert_frame_equal(clean.responses, per_row.responses)
    assert_frame_equal(clean.coercions, per_row.coercions)
    assert_frame_equal(clean.item_failures, per_row.item_failures)
    assert_frame_equal(clean.quarantine, per_row.quarantine.filter(pl.col("participant_id") != "P9"))
