import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyreadstat
import pytest

from instruments.definition import load_library
from instruments.validation import validate_responses
from orchestration.readers import RAW_SCHEMA, IngestError, read_participants, read_surveys
from orchestration.spec import load_study_spec

FIXTURES = Path(__file__).parents[1] / "data" / "ingest"


@pytest.fixture(scope="module")
def library():
    return load_library()


@pytest.fixture
def study_dir(tmp_path):
    """The committed CSV fixtures plus parquet/.sav/.dta written here with known content."""
    shutil.copytree(FIXTURES, tmp_path, dirs_exist_ok=True)
    typed = pd.DataFrame(
        {
            "participant_id": ["P1", "P2", "P3"],
            "wave": [4.0, 4.0, 4.0],
            "when": [dt.datetime(2024, 6, 1, 8, 30), dt.datetime(2024, 6, 2), pd.NaT],
            "who5_1": [5.0, np.nan, 2.5],
            "who5_2": [0.0, 1.0, 3.0],
        }
    )
    pyreadstat.write_sav(typed, str(tmp_path / "typed.sav"))
    pyreadstat.write_dta(typed, str(tmp_path / "typed.dta"))
    pl.DataFrame(
        {
            "participant_id": ["P1", "P2"],
            "wave": [5, 5],
            "instrument": ["who5", "who5"],
            "item": ["who5_1", "who5_2"],
            "value": [3, None],
        },
        schema_overrides={"value": pl.Int64},
    ).write_parquet(tmp_path / "long.parquet")
    return tmp_path


def make_spec(root: Path, surveys: str, participants: str = 'path = "participants.csv"'):
    text = f'name = "t"\n[participants]\n{participants}\n{surveys}'
    (root / "study.toml").write_text(text)
    return load_study_spec(root / "study.toml")


def survey(path, layout="long", extra=""):
    return f'[[survey]]\npath = "{path}"\nlayout = "{layout}"\n{extra}\n'


def collect(raw):
    return raw.rows.collect()


def test_long_csv_rows_values_and_header_whitespace(study_dir, library):
    spec = make_spec(study_dir, survey("long.csv"))
    raw = read_surveys(spec, library)
    df = collect(raw)
    assert df.schema == pl.Schema(RAW_SCHEMA)
    assert df["row"].to_list() == [1, 2, 3, 4, 5]  # 1-based data rows, header excluded
    assert df["source"].unique().to_list() == ["long.csv"]
    assert df["value"].to_list() == ["5", " 4", None, "NA", "7"]  # as written; blank -> null
    assert df["wave"].to_list() == ["0"] * 5
    assert df["column"].unique().to_list() == ["value"]
    # " wave " in the header was stripped and reported
    co = raw.coercions
    assert co.filter(pl.col("kind") == "header_whitespace")["column"].to_list() == ["wave"]
    assert raw.files == ["long.csv"]
    assert raw.file_issues.height == 0


def test_wide_melts_items_and_reports_other_columns(study_dir, library):
    spec = make_spec(
        study_dir, survey("wide.csv", "wide", '[survey.columns]\npid = "participant_id"')
    )
    raw = read_surveys(spec, library)
    df = collect(raw).sort("row", "column")
    # 2 data rows x (5 who5 items + phq9_1, which looks like an item id) = 12 rows
    assert df.height == 12
    assert set(df["item"]) == {f"who5_{i}" for i in range(1, 6)} | {"phq9_1"}
    assert df["instrument"].null_count() == 12  # wide files carry no instrument
    p2 = df.filter(pl.col("row") == 2)
    assert dict(zip(p2["item"], p2["value"], strict=True)) == {
        "phq9_1": None,
        "who5_1": "0",
        "who5_2": None,
        "who5_3": "x",
        "who5_4": "3.5",
        "who5_5": "5",
    }
    assert (df["item"] == df["column"]).all()
    issues = raw.file_issues
    assert issues.filter(pl.col("reason") == "ignored_column")["column"].to_list() == ["notes"]
    # validation then makes the unknown instrument's column visible as unknown_item
    res = validate_responses(raw.rows, None, library)
    q = res.quarantine
    assert q.filter(pl.col("column") == "phq9_1")["reason"].to_list() == ["unknown_item"] * 2
    assert res.summary.rows_in == 12
    assert sorted(q["reason"]) == sorted(
        ["unknown_item", "unknown_item", "non_numeric_value", "non_integer_value"]
    )


def test_qualtrics_three_header_rows(study_dir, library):
    cols = (
        '[survey.columns]\nExternalReference = "participant_id"\nRecordedDate = "timestamp"\n'
        + "".join(f'Q1_{i} = "who5_{i}"\n' for i in range(1, 6))
    )
    spec = make_spec(study_dir, survey("qualtrics.csv", "qualtrics", "wave = 1\n" + cols))
    raw = read_surveys(spec, library)
    df = collect(raw)
    assert df.height == 3 * 5
    # rows 2-3 (question text with an embedded newline, ImportId JSON) are skipped; the
    # first response is data row 1
    first = df.filter(pl.col("row") == 1).sort("item")
    assert first["participant_id"].unique().to_list() == ["P1"]
    assert first["value"].to_list() == ["5", "5", "4", "4", "3"]
    assert first["column"].to_list() == [f"Q1_{i}" for i in range(1, 6)]
    assert first["timestamp"].unique().to_list() == ["2024-05-01 10:05:01"]
    assert df.filter(pl.col("row") == 3)["participant_id"].unique().to_list() == ["P3"]
    assert df["wave"].unique().to_list() == ["1"]
    ignored = set(raw.file_issues.filter(pl.col("reason") == "ignored_column")["column"])
    assert ignored == {"StartDate", "EndDate", "Status", "ResponseId"}
    res = validate_responses(raw.rows, None, library)
    q = res.quarantine
    assert q.select("row", "column", "value", "reason").rows() == [(2, "Q1_5", "6", "out_of_range")]


def test_glob_of_several_files(study_dir, library):
    spec = make_spec(study_dir, survey("survey/wave*.csv", "wide"))
    raw = read_surveys(spec, library)
    df = collect(raw)
    assert raw.files == ["survey/wave2.csv", "survey/wave3.csv"]
    assert df.group_by("source").len().sort("source").rows() == [
        ("survey/wave2.csv", 4),
        ("survey/wave3.csv", 2),
    ]
    # row numbers restart in each file
    assert df.filter(pl.col("source") == "survey/wave3.csv")["row"].unique().to_list() == [1]


def test_parquet_is_read_as_text(study_dir, library):
    spec = make_spec(study_dir, survey("long.parquet"))
    df = collect(read_surveys(spec, library))
    assert df["value"].to_list() == ["3", None]
    assert df["wave"].to_list() == ["5", "5"]
    assert df["row"].to_list() == [1, 2]


@pytest.mark.parametrize("name", ["typed.sav", "typed.dta"])
def test_spss_and_stata(study_dir, library, name):
    extra = '[survey.columns]\nwhen = "timestamp"'
    spec = make_spec(study_dir, survey(name, "wide", extra))
    raw = read_surveys(spec, library)
    df = collect(raw).sort("row", "item")
    assert df.height == 6
    # integral floats of the file format print as integers; missing is null; 2.5 stays
    assert df["value"].to_list() == ["5", "0", None, "1", "2.5", "3"]
    assert df["wave"].unique().to_list() == ["4"]
    assert df.filter(pl.col("row") == 1)["timestamp"].unique().to_list() == ["2024-06-01T08:30:00"]
    res = validate_responses(raw.rows, None, library)
    assert res.quarantine["reason"].to_list() == ["non_integer_value"]
    assert (
        res.responses.filter(pl.col("participant_id") == "P1")["timestamp"].to_list()
        == [dt.datetime(2024, 6, 1, 8, 30, tzinfo=dt.UTC)] * 2
    )


def test_empty_and_header_only_files_are_issues_not_crashes(study_dir, library):
    spec = make_spec(
        study_dir, survey("empty.csv") + survey("header_only.csv") + survey("long.csv")
    )
    raw = read_surveys(spec, library)
    issues = {(r["source"], r["reason"]) for r in raw.file_issues.iter_rows(named=True)}
    assert issues == {("empty.csv", "empty_file"), ("header_only.csv", "no_data_rows")}
    assert collect(raw).height == 5
    assert raw.files == ["empty.csv", "header_only.csv", "long.csv"]


def test_only_empty_files_gives_empty_table(study_dir, library):
    spec = make_spec(study_dir, survey("empty.csv"))
    raw = read_surveys(spec, library)
    assert collect(raw).height == 0
    res = validate_responses(raw.rows, None, library)
    assert res.summary.rows_in == 0 and res.message == "no_rows"


@pytest.mark.parametrize("path", ["missing.csv", "nothing/*.csv"])
def test_missing_file_or_empty_glob_raises(study_dir, library, path):
    spec = make_spec(study_dir, survey(path))
    with pytest.raises(IngestError) as err:
        read_surveys(spec, library)
    assert path.split("/")[0] in err.value.file


def test_missing_participant_or_wave_column_raises(study_dir, library):
    spec = make_spec(study_dir, survey("wide.csv", "wide"))  # 'pid' is not mapped
    with pytest.raises(IngestError, match="participant_id"):
        read_surveys(spec, library)
    spec = make_spec(
        study_dir,
        survey("qualtrics.csv", "qualtrics", '[survey.columns]\nResponseId = "participant_id"'),
    )
    with pytest.raises(IngestError, match="wave"):
        read_surveys(spec, library)


def test_unknown_format_raises(study_dir, library):
    (study_dir / "data.txt").write_text("participant_id,wave,item,value\n")
    spec = make_spec(study_dir, survey("data.txt"))
    with pytest.raises(IngestError, match="format"):
        read_surveys(spec, library)
    spec = make_spec(study_dir, survey("data.txt", extra='format = "csv"'))
    assert read_surveys(spec, library).file_issues["reason"].to_list() == [
        "no_timestamp_column", "no_data_rows"]


def test_read_participants_renames_and_strips(study_dir):
    spec = make_spec(
        study_dir,
        survey("long.csv"),
        'path = "participants.csv"\nid_column = "person"\narm_column = "group"\n'
        'cluster_column = "site"',
    )
    df = read_participants(spec)
    assert df.columns == ["participant_id", "arm", "cluster", "age"]
    assert df["participant_id"].to_list() == ["P1", "P2", "P3"]
    assert df["age"].dtype == pl.String  # covariates are read as given


def test_read_participants_errors(study_dir):
    spec = make_spec(study_dir, survey("long.csv"), 'path = "participants.csv"')
    with pytest.raises(IngestError, match="participant_id"):
        read_participants(spec)  # default id_column does not exist in this file
    (study_dir / "dup.csv").write_text("participant_id,arm\nP1,a\nP1,b\n")
    spec = make_spec(study_dir, survey("long.csv"), 'path = "dup.csv"')
    with pytest.raises(IngestError, match="repeat"):
        read_participants(spec)
    spec = make_spec(study_dir, survey("long.csv"), 'path = "nope.csv"')
    with pytest.raises(IngestError, match="not found"):
        read_participants(spec)


@pytest.mark.parametrize("name", ["bad.sav", "bad.dta", "bad.parquet"])
def test_unreadable_binary_file_raises(study_dir, library, name):
    (study_dir / name).write_text("this is not a binary survey file\n")
    spec = make_spec(study_dir, survey(name, "wide"))
    with pytest.raises(IngestError, match="cannot read"):
        read_surveys(spec, library)


def test_wide_file_without_item_columns_is_a_layout_mismatch(study_dir, library):
    (study_dir / "noitems.csv").write_text("participant_id,wave,comment\nP1,0,hello\n")
    spec = make_spec(study_dir, survey("noitems.csv", "wide"))
    with pytest.raises(IngestError, match=r"layout 'wide'.*\['comment', 'participant_id'"):
        read_surveys(spec, library)


@pytest.mark.parametrize("layout", ["wide", "qualtrics"])
def test_long_file_read_as_wide_is_refused_naming_columns_and_layout(study_dir, library,
                                                                     layout):
    spec = make_spec(study_dir, survey("long.csv", layout))
    with pytest.raises(IngestError) as err:
        read_surveys(spec, library)
    msg = err.value.message
    assert f"layout '{layout}'" in msg and "look like layout 'long'" in msg
    assert "['instrument', 'item', 'participant_id', 'timestamp', 'value', 'wave']" in msg


def test_wide_file_read_as_long_names_columns_and_suggests_wide(study_dir, library):
    spec = make_spec(study_dir, survey("wide.csv", "long", '[survey.columns]\npid = "participant_id"'))
    with pytest.raises(IngestError, match=r"layout 'long' expects columns \['item', 'value'\]"
                       r".*columns found: \['notes', 'phq9_1', 'pid'.*set layout = 'wide'"):
        read_surveys(spec, library)


def test_qualtrics_export_read_as_wide_is_refused(study_dir, library):
    spec = make_spec(study_dir, survey(
        "qualtrics.csv", "wide",
        'wave = 0\n[survey.columns]\nExternalReference = "participant_id"\n'
        'Q1_1 = "who5_1"\nQ1_2 = "who5_2"'))
    with pytest.raises(IngestError, match="layout 'wide'.*ImportId.*set layout = 'qualtrics'"):
        read_surveys(spec, library)


def test_wide_file_read_as_qualtrics_is_refused_not_two_rows_short(study_dir, library):
    (study_dir / "plain.csv").write_text(
        "participant_id,wave,timestamp,who5_1,who5_2\nP1,0,2024-01-01,3,4\n"
        "P2,0,2024-01-01,5,\nP3,0,2024-01-01,1,2\n")
    spec = make_spec(study_dir, survey("plain.csv", "qualtrics"))
    with pytest.raises(IngestError, match="layout 'qualtrics'.*numeric.*set layout = 'wide'"):
        read_surveys(spec, library)
    # the real export still reads: its header rows are text
    spec = make_spec(study_dir, survey(
        "qualtrics.csv", "qualtrics",
        'wave = 0\n[survey.columns]\nExternalReference = "participant_id"\n'
        'RecordedDate = "timestamp"\nQ1_1 = "who5_1"'))
    assert collect(read_surveys(spec, library)).height > 0


def test_missing_timestamp_column_is_a_file_issue_or_refused_with_telemetry(study_dir,
                                                                             library):
    (study_dir / "nots.csv").write_text("participant_id,wave,item,value\nP1,0,who5_1,3\n")
    spec = make_spec(study_dir, survey("nots.csv"))
    raw = read_surveys(spec, library)
    assert raw.file_issues.select("source", "reason").rows() == [
        ("nots.csv", "no_timestamp_column")]
    assert collect(raw)["timestamp"].to_list() == [None]
    (study_dir / "study.toml").write_text(
        (study_dir / "study.toml").read_text() + '\n[telemetry]\npath = "events.parquet"\n')
    spec = load_study_spec(study_dir / "study.toml")
    with pytest.raises(IngestError, match="timestamp.*telemetry"):
        read_surveys(spec, library)


def test_header_only_and_empty_files_are_blocking_issues():
    from orchestration.readers import BLOCKING_FILE_ISSUES

    assert set(BLOCKING_FILE_ISSUES) == {"empty_file", "no_data_rows"}


def test_dirty_demo_study_matches_its_injected_truth(tmp_path):
    """Independent reference: the demo writer records every defect it injects (file, row,
    kind) in truth.json; ingest + validation must find each one where it was put."""
    import json

    from orchestration.demo import DemoStudyConfig, write_demo_study

    write_demo_study(tmp_path, DemoStudyConfig(n_participants=40, telemetry=False), dirty=True)
    truth = json.loads((tmp_path / "truth.json").read_text())["defects"]
    spec = load_study_spec(tmp_path / "study.toml")
    lib = load_library(spec.instrument_dirs)
    raw = read_surveys(spec, lib)
    res = validate_responses(raw.rows, read_participants(spec), lib)
    expected = {  # demo kind (role) -> quarantine reason; None = accepted
        ("out_of_range", "defect"): "out_of_range",
        ("non_integer", "defect"): "non_integer_value",
        ("bad_timestamp", "defect"): "invalid_timestamp",
        ("wrong_type_wave", "defect"): "invalid_wave",
        ("unknown_item", "defect"): "unknown_item",
        ("unknown_participant", "defect"): "unknown_participant",
        ("duplicate_conflicting", "duplicate"): "duplicate_conflict",
        ("duplicate_conflicting", "original"): "duplicate_conflict",
        ("duplicate_identical", "duplicate"): "duplicate_row",
        ("duplicate_identical", "original"): None,
        ("whitespace_value", "defect"): None,
    }
    q = {(r["source"], r["row"]): r["reason"] for r in res.quarantine.iter_rows(named=True)}
    for loc in truth["locations"]:
        got = q.get((loc["file"], loc["row"]))
        if loc["kind"] == "text_value":  # "n/a" is an NA token (skipped), "abc" is not
            want = None if loc["value"] == "n/a" else "non_numeric_value"
        else:
            want = expected[(loc["kind"], loc["role"])]
        assert got == want, loc
    s = res.summary
    assert s.rows_in == sum(truth["data_rows_by_file"].values())
    assert s.rows_in == s.accepted + s.quarantined
    assert s.quarantined == len(q)  # nothing quarantined beyond the injected defects
    assert len(q) == sum(
        1
        for loc in truth["locations"]
        if (loc["kind"], loc["role"]) in expected and expected[(loc["kind"], loc["role"])]
    ) + truth["variants"]["text_value"].get("abc", 0)
    assert s.coerced_by_kind["value_whitespace"] == truth["rows"]["whitespace_value"]
    assert s.coerced_by_kind["na_token"] == truth["variants"]["text_value"].get("n/a", 0)
    hw = truth["header_whitespace"]
    assert raw.coercions.filter(pl.col("kind") == "header_whitespace").select(
        "source", "column"
    ).rows() == [(hw["file"], hw["canonical"])]
    issues = {(r["source"], r["reason"]) for r in raw.file_issues.iter_rows(named=True)}
    assert issues == {
        (truth["empty_file"]["file"], "no_data_rows"),
        (truth["zero_byte_file"]["file"], "empty_file"),
    }


# --- input that is hard to get wrong (issue 13) ----------------------------------------

HEAD = "participant_id,wave,timestamp,instrument,item,value\n"


def _one_file(tmp_path: Path, content: bytes | str, extra: str = "", name: str = "s.csv"):
    data = content.encode() if isinstance(content, str) else content
    (tmp_path / name).write_bytes(data)
    (tmp_path / "participants.csv").write_text("participant_id,arm\nP1,a\nP2,b\n")
    return make_spec(tmp_path, survey(name, extra=extra))


def test_malformed_rows_are_quarantined_by_row_and_the_rest_kept(tmp_path, library):
    spec = _one_file(
        tmp_path,
        HEAD
        + "P1,0,,who5,who5_1,3\n"
        + "P1,0,,who5,who5_2,4,extra\n"  # row 2: a field too many
        + "P1,0,,who5\n"  # row 3: fields missing
        + 'P1,0,,who5,who5_4,"5\n'  # row 4: a quote never closed
        + "P2,0,,who5,who5_1,2\n",
    )
    raw = read_surveys(spec, library)
    assert collect(raw)["row"].to_list() == [1, 5]
    assert raw.malformed.select("source", "row", "participant_id", "column").rows() == [
        ("s.csv", 2, "P1", "(row)"), ("s.csv", 3, "P1", "(row)"), ("s.csv", 4, "P1", "(row)")]
    whys = raw.malformed["value"].to_list()
    assert whys[0] == "7 fields where the header has 6"
    assert whys[1] == "4 fields where the header has 6"
    assert "unterminated quote" in whys[2]
    assert raw.file_issues.filter(pl.col("reason") == "malformed_rows")["detail"].item().startswith(
        "3 malformed row(s) quarantined as malformed_row: row 2 (7 fields")
    res = validate_responses(raw.rows, None, library, malformed=raw.malformed)
    assert res.quarantine.select("row", "reason").rows() == [(r, "malformed_row") for r in (2, 3, 4)]
    s = res.summary
    assert (s.rows_in, s.accepted, s.quarantined) == (5, 2, 3)
    assert s.by_reason["malformed_row"] == 3


def test_one_invalid_byte_quarantines_its_row(tmp_path, library):
    body = (HEAD + "P1,0,,who5,who5_1,3\n").encode() + b"P1,0,,who5,who5_2,4\xff\n"
    spec = _one_file(tmp_path, body + b"P2,0,,who5,who5_1,2\n")
    raw = read_surveys(spec, library)
    assert collect(raw)["row"].to_list() == [1, 3]
    assert raw.malformed.select("row", "value").rows() == [(2, "bytes that are not valid utf-8")]


def test_a_file_in_another_encoding_names_file_offset_and_the_option(tmp_path, library):
    rows = "".join(f"P{i},0,,who5,who5_1,3\n" for i in range(1, 5))
    text = HEAD.replace("value", "valeur_é") + rows  # header itself not utf-8
    spec = _one_file(tmp_path, text.encode("latin-1"))
    with pytest.raises(IngestError) as err:
        read_surveys(spec, library)
    assert err.value.file.endswith("s.csv")
    assert "byte 0xe9 at byte offset 53 (line 1)" in err.value.message
    assert 'encoding = "latin-1"' in err.value.message
    # many latin-1 rows (not only the header): same, naming the option
    body = HEAD + "".join(f"P{i},0,,who5,who5_1,3\n" for i in range(3)) + "Pé,0,,who5,who5_1,3\n" * 2
    spec = _one_file(tmp_path, body.encode("latin-1"))
    with pytest.raises(IngestError, match=r"2 of 5 data rows .*encoding = \"latin-1\""):
        read_surveys(spec, library)
    spec = _one_file(tmp_path, body.encode("latin-1"), extra='encoding = "latin-1"')
    assert collect(read_surveys(spec, library))["participant_id"].to_list()[-1] == "Pé"


def test_a_utf8_bom_is_skipped(tmp_path, library):
    spec = _one_file(tmp_path, b"\xef\xbb\xbf" + (HEAD + "P1,0,,who5,who5_1,3\n").encode())
    assert collect(read_surveys(spec, library))["participant_id"].to_list() == ["P1"]


@pytest.mark.parametrize("delimiter", [";", "\t", ","])
def test_delimiter_is_sniffed(tmp_path, library, delimiter):
    text = (HEAD + 'P1,0,2024-01-01T09:00:00,who5,who5_1,"3,5"\n').replace(",", delimiter)
    spec = _one_file(tmp_path, text)
    df = collect(read_surveys(spec, library))
    assert df.select("participant_id", "item", "value").rows() == [("P1", "who5_1", "3" + delimiter + "5")]


def test_delimiter_option_overrides_the_sniffing(tmp_path, library):
    # a header with more commas than semicolons, but the file is semicolon-separated
    text = "participant_id;wave;timestamp;instrument;item;value,with,commas\nP1;0;;who5;who5_1;3\n"
    spec = _one_file(tmp_path, text, extra='delimiter = ";"\n[survey.columns]\n"value,with,commas" = "value"')
    assert collect(read_surveys(spec, library))["value"].to_list() == ["3"]


def test_every_row_malformed_is_an_ingest_error_naming_the_delimiter(tmp_path, library):
    text = HEAD + "P1;0;;who5;who5_1;3\nP2;0;;who5;who5_1;3\n"
    spec = _one_file(tmp_path, text)
    with pytest.raises(IngestError, match=r"every data row is malformed.*delimiter"):
        read_surveys(spec, library)


def test_timestamp_format_option(tmp_path, library):
    text = HEAD + "P1,0,03/15/2024 09:30,who5,who5_1,3\nP2,0,15/03/2024 09:30,who5,who5_1,3\n"
    spec = _one_file(tmp_path, text, extra='timestamp_format = "%m/%d/%Y %H:%M"')
    raw = read_surveys(spec, library)
    res = validate_responses(raw.rows, None, library)
    assert res.responses["timestamp"].to_list() == [
        dt.datetime(2024, 3, 15, 9, 30, tzinfo=dt.UTC)]
    # the text the format does not read is quarantined as written, under its own column
    assert res.quarantine.select("row", "column", "value", "reason").rows() == [
        (2, "timestamp", "15/03/2024 09:30", "invalid_timestamp")]


def test_timestamp_format_with_an_offset_is_utc(tmp_path, library):
    text = HEAD + "P1,0,15.03.2024 09:30 +0200,who5,who5_1,3\n"
    spec = _one_file(tmp_path, text, extra='timestamp_format = "%d.%m.%Y %H:%M %z"')
    res = validate_responses(read_surveys(spec, library).rows, None, library)
    assert res.responses["timestamp"].to_list() == [dt.datetime(2024, 3, 15, 7, 30, tzinfo=dt.UTC)]


def test_survey_identifier_columns_are_reported_not_ignored(tmp_path, library):
    text = ("participant_id,wave,IPAddress,RecipientEmail,RecipientFirstName,LocationLatitude,"
            "Status,who5_1\nP1,0,10.0.0.1,a@b.org,Ann,52.1,0,3\nP2,0,,,,,0,4\n")
    spec = _one_file(tmp_path, text)
    (tmp_path / "study.toml").write_text(
        (tmp_path / "study.toml").read_text().replace('layout = "long"', 'layout = "wide"'))
    spec = load_study_spec(tmp_path / "study.toml")
    raw = read_surveys(spec, library)
    assert raw.identifiers.select("source", "column", "kind", "n_values").rows() == [
        ("s.csv", "IPAddress", "ip_address", 1),
        ("s.csv", "RecipientEmail", "email", 1),
        ("s.csv", "RecipientFirstName", "name", 1),
        ("s.csv", "LocationLatitude", "location", 1),
    ]
    ignored = raw.file_issues.filter(pl.col("reason") == "ignored_column")["column"].to_list()
    assert ignored == ["Status"]


def test_fast_and_row_by_row_csv_paths_agree(tmp_path):
    from orchestration.readers import read_csv_text

    text = (HEAD + 'P1,0,,who5,who5_1," 3"\nP1,0,2024-01-01,who5,"who5,2",\n'
            + 'P2, 0 ,,who5,who5_1,""\nP2,0,,who5,who5_2,"say ""4"""\n')
    (tmp_path / "ok.csv").write_text(text)
    (tmp_path / "bad.csv").write_text(text + "P3,0\n")  # a short row: row by row
    fast, slow = read_csv_text(tmp_path / "ok.csv"), read_csv_text(tmp_path / "bad.csv")
    assert not fast.malformed and [m[0] for m in slow.malformed] == [5]
    assert fast.frame.rows() == slow.frame.rows()
    assert fast.frame["value"].to_list() == [" 3", None, None, 'say "4"']


def test_xlsx_survey_first_sheet_as_text(tmp_path, library):
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(["participant_id", "wave", "timestamp", "who5_1", "who5_2"])
    sheet.append(["P1", 0, dt.datetime(2024, 3, 15, 9, 30), 3, 4.0])
    sheet.append([None, None, None, None, None])  # a blank row is skipped
    sheet.append(["P2", 0, None, 2.5, None])
    sheet.append(["P2", 1, None, 1, 2, "stray"])  # a value beyond the last named column
    book.save(tmp_path / "s.xlsx")
    (tmp_path / "participants.csv").write_text("participant_id,arm\nP1,a\nP2,b\n")
    spec = make_spec(tmp_path, survey("s.xlsx", "wide"))
    raw = read_surveys(spec, library)
    df = collect(raw).sort("row", "item")
    assert df.select("row", "participant_id", "wave", "timestamp", "item", "value").rows() == [
        (1, "P1", "0", "2024-03-15T09:30:00", "who5_1", "3"),
        (1, "P1", "0", "2024-03-15T09:30:00", "who5_2", "4"),
        (2, "P2", "0", None, "who5_1", "2.5"),
        (2, "P2", "0", None, "who5_2", None),
    ]
    assert raw.malformed.select("row", "participant_id", "wave", "value").rows() == [
        (3, "P2", "1", "a value beyond the last named column")]
    res = validate_responses(raw.rows, None, library, malformed=raw.malformed)
    assert res.summary.rows_in == res.summary.accepted + res.summary.quarantined == 5


def test_a_file_that_is_not_a_workbook_is_an_ingest_error(tmp_path, library):
    spec = _one_file(tmp_path, "not a workbook", name="s.xlsx")
    with pytest.raises(IngestError, match="cannot read as xlsx"):
        read_surveys(spec, library)
    spec = _one_file(tmp_path, b"PK\x03\x04rest of a zip", name="s.csv")
    with pytest.raises(IngestError, match="binary content.*format = 'xlsx'"):
        read_surveys(spec, library)
