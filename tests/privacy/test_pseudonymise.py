"""Pseudonymisation and direct-identifier removal."""

from __future__ import annotations

import hashlib
import hmac

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.pseudonymise import (
    compute_pseudonyms,
    drop_direct_identifiers,
    pseudonym,
    pseudonymise_ids,
)

KEY = b"0123456789abcdef0123456789abcdef"


def test_hmac_matches_rfc4231_test_case_2():
    # RFC 4231, test case 2 (key "Jefe"): an independent published vector for HMAC-SHA256.
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert pseudonym("what do ya want for nothing?", b"Jefe") == expected


def test_hmac_matches_rfc4231_test_case_6_key_longer_than_a_block():
    # RFC 4231, test case 6: a 131-byte key is hashed before padding.
    expected = "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    message = "Test Using Larger Than Block-Size Key - Hash Key First"
    assert pseudonym(message, b"\xaa" * 131) == expected


@pytest.mark.parametrize("length", [1, 16, 63, 64, 65, 200])
def test_precomputed_states_equal_one_shot_hmac(length):
    """The copied inner/outer hash states give hmac.digest's bytes, for keys shorter
    than, equal to and longer than SHA-256's 64-byte block."""
    key = bytes((7 * i + 1) % 256 for i in range(length))
    ids = ["", "P1", "é-ü 名", "x" * 200, " P1 "]
    want = [hmac.digest(key, v.encode("utf-8"), "sha256").hex() for v in ids]
    assert compute_pseudonyms(ids, key) == want


def test_pseudonyms_stable_across_waves_and_runs():
    wave0 = pl.DataFrame({"participant_id": ["P1", "P2", "P3"], "wave": [0, 0, 0]})
    wave3 = pl.DataFrame({"participant_id": ["P3", "P1"], "wave": [3, 3]})
    a = pseudonymise_ids(wave0, "participant_id", KEY)
    b = pseudonymise_ids(wave3, "participant_id", KEY)
    again = pseudonymise_ids(wave0, "participant_id", KEY)
    assert a.equals(again)
    m0 = dict(zip(wave0["participant_id"], a["participant_id"], strict=True))
    m3 = dict(zip(wave3["participant_id"], b["participant_id"], strict=True))
    assert m0["P1"] == m3["P1"] and m0["P3"] == m3["P3"]
    assert a["wave"].to_list() == [0, 0, 0]  # other columns, row order untouched
    assert all(len(p) == 64 and int(p, 16) >= 0 for p in a["participant_id"])


def test_pseudonyms_are_keyed_and_not_a_plain_hash():
    f = pl.DataFrame({"participant_id": ["P1", "P2"]})
    a = pseudonymise_ids(f, "participant_id", KEY)["participant_id"].to_list()
    b = pseudonymise_ids(f, "participant_id", b"another key, 16+ bytes")["participant_id"]
    assert a != b.to_list()
    assert a[0] != hashlib.sha256(b"P1").hexdigest()
    assert a[0] != a[1]


def test_numeric_ids_and_nulls():
    f = pl.DataFrame({"participant_id": [12, None, 12]})
    out = pseudonymise_ids(f, "participant_id", KEY)["participant_id"]
    assert out[1] is None
    assert out[0] == out[2] == pseudonym("12", KEY)


def test_short_key_refused():
    with pytest.raises(ValueError):
        pseudonymise_ids(pl.DataFrame({"participant_id": ["a"]}), "participant_id", b"short")


# ------------------------------------------------------------------ identifiers


def _survey() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "participant_id": ["P0001", "P0002", "P0003", "P0004"],
            "wave": [0, 0, 1, 1],
            "timestamp": ["2024-01-05 10:00:00", "2024-01-05", "2024-02-01T09:30:00Z", None],
            "RecipientEmail": ["a@b.org", None, "c@d.com", "e@f.net"],
            "RecipientFirstName": ["Ann", "Bo", "Cy", "Di"],
            "IPAddress": ["10.0.0.1", "192.168.1.20", "8.8.8.8", "1.2.3.4"],
            "phone_number": ["+44 20 7946 0958", None, None, None],
            "contact": ["x@y.org", "p@q.io", "z@w.de", None],  # no telling name
            "device": ["2001:db8::1", "fe80::1", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", None],
            "mobile_no": [None, None, None, None],
            "instrument": ["who5"] * 4,
            "who5_1": ["3", "4", "5", "0"],
            "comment": ["fine", "call me on +1 415 555 2671", "ok", "great"],
            "item_note": ["12.5", "3", "10:00:00", "2024-03-01"],
        }
    )


def test_identifiers_dropped_by_name_and_pattern():
    out, report = drop_direct_identifiers(_survey())
    rep = report.to_frame()
    dropped = set(rep.filter(pl.col("action") == "dropped_column")["column"])
    assert dropped == {
        "RecipientEmail", "RecipientFirstName", "IPAddress", "phone_number", "contact",
        "device", "mobile_no",
    }
    kinds = dict(zip(rep["column"], rep["kind"], strict=True))
    assert kinds["RecipientEmail"] == "email" and kinds["contact"] == "email"
    assert kinds["RecipientFirstName"] == "name" and kinds["IPAddress"] == "ip_address"
    assert kinds["phone_number"] == "phone" and kinds["device"] == "ip_address"
    counts = dict(zip(rep["column"], rep["n_values"], strict=True))
    assert counts["RecipientEmail"] == 3 and counts["contact"] == 3 and counts["mobile_no"] == 0
    assert not dropped & set(out.columns)
    # ids, timestamps, dates, times, item values survive
    for col in ("participant_id", "wave", "timestamp", "instrument", "who5_1", "item_note"):
        assert col in out.columns
    assert out["item_note"].to_list() == ["12.5", "3", "10:00:00", "2024-03-01"]
    assert out["timestamp"].null_count() == 1


def test_a_few_identifier_cells_are_redacted_not_the_column():
    out, report = drop_direct_identifiers(_survey())
    assert out["comment"].to_list() == ["fine", None, "ok", "great"]
    rec = report.to_frame().filter(pl.col("column") == "comment").row(0, named=True)
    assert rec["kind"] == "phone" and rec["action"] == "redacted_values" and rec["n_values"] == 1


def test_protected_column_is_redacted_only():
    f = pl.DataFrame({"participant_id": ["a@b.org", "P2"], "value": ["me@home.org", "3"]})
    out, report = drop_direct_identifiers(f, protect=["participant_id", "value"])
    assert out.columns == ["participant_id", "value"]
    assert out["value"].to_list() == [None, "3"]
    assert out["participant_id"].to_list() == [None, "P2"]
    assert report.n_columns_dropped == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=-10_000, max_value=10**8), min_size=1, max_size=20))
def test_numbers_are_never_identifiers(values):
    f = pl.DataFrame({"participant_id": ["p"] * len(values), "answer": [str(v) for v in values]})
    out, report = drop_direct_identifiers(f)
    assert out.equals(f) and report.to_frame().height == 0
