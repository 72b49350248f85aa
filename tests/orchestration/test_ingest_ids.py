"""Participant ids through ingest: stripped before they are keyed, never stored raw.

Reference: the pseudonym is HMAC-SHA256(key, id) (checked against RFC 4231 in
tests/privacy); here the expected pseudonyms are computed with Python's ``hmac`` directly.
"""

from __future__ import annotations

import hashlib
import hmac

import polars as pl
import pytest

from orchestration import pipeline
from orchestration.spec import StudySpecError

KEY = "ab" * 32


def _study(tmp_path, rows: str):
    (tmp_path / "participants.csv").write_text("participant_id,arm\nP1,control\nP2,treatment\n")
    (tmp_path / "responses.csv").write_text("participant_id,wave,item,value\n" + rows)
    (tmp_path / "study.toml").write_text(
        'name = "ids"\noutput_dir = "out"\n[participants]\npath = "participants.csv"\n'
        '[[survey]]\npath = "responses.csv"\nlayout = "long"\n'
    )
    (tmp_path / "pseudonym.key").write_text(KEY)
    return pipeline.load_study(tmp_path / "study.toml")


def _study_key() -> bytes:
    """HKDF-SHA256 (RFC 5869, one block) of the master key for purpose "pseudonym" of study "ids",
    written out here independently of privacy.keys."""
    prk = hmac.new(b"flourish/v1", KEY.encode(), hashlib.sha256).digest()
    return hmac.new(prk, b"pseudonym\x1fids\x01", hashlib.sha256).digest()


def _hmac(text: str) -> str:
    return hmac.new(_study_key(), text.encode(), hashlib.sha256).hexdigest()


def test_padded_id_is_the_same_participant_and_reported_as_a_coercion(tmp_path):
    study = _study(tmp_path, " P1 ,0,who5_1,3\nP1,0,who5_2,4\nP2,0,who5_1,5\nP9,0,who5_1,1\n")
    result = pipeline.ingest_study(study)
    v = result.validation
    assert v.summary.rows_in == 4 and v.summary.accepted == 3 and v.summary.quarantined == 1
    # " P1 " and "P1" are one participant, keyed after stripping
    assert sorted(v.responses["participant_id"].unique()) == sorted([_hmac("P1"), _hmac("P2")])
    assert set(result.participants["participant_id"]) == {_hmac("P1"), _hmac("P2")}
    assert v.quarantine["reason"].to_list() == ["unknown_participant"]
    assert v.quarantine["participant_id"].to_list() == [_hmac("P9")]
    ws = v.coercions.filter(pl.col("kind") == "participant_id_whitespace")
    assert ws["rows"].to_list() == [1] and ws["first_row"].to_list() == [1]
    # no raw id anywhere in what is kept
    kept = pl.concat(
        [
            v.responses.select(pl.col("participant_id")),
            v.quarantine.select(pl.col("participant_id")),
            v.coercions.select(pl.col("example").alias("participant_id")),
        ]
    )["participant_id"].drop_nulls()
    assert not kept.str.contains("P").any()


def test_survey_instruments_are_enforced_and_must_exist(tmp_path):
    study = _study(tmp_path, "P1,0,who5_1,3\nP1,0,swls_1,4\n")
    spec = (tmp_path / "study.toml").read_text()
    (tmp_path / "study.toml").write_text(spec + 'instruments = ["who5"]\n')
    v = pipeline.ingest_study(pipeline.load_study(tmp_path / "study.toml")).validation
    assert v.summary.accepted == 1
    assert v.quarantine["reason"].to_list() == ["instrument_not_in_survey"]
    assert v.quarantine["row"].to_list() == [2]
    (tmp_path / "study.toml").write_text(spec + 'instruments = ["who5", "who6"]\n')
    with pytest.raises(StudySpecError, match=r"survey\.0\.instruments.*who6"):
        pipeline.load_study(tmp_path / "study.toml")
    assert study.spec.survey[0].instruments == []
