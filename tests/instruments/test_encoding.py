"""Dense text codes: the run-length, per-row and integer paths give the same codes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from instruments import encoding
from instruments.encoding import encode_integer_text, encode_text


def _reference(column: pl.Series) -> tuple[list[int], list[str | None]]:
    distinct = sorted({t for t in column.to_list() if t is not None})
    code = {t: n for n, t in enumerate(distinct)}
    return [code.get(t, len(distinct)) for t in column.to_list()], [*distinct, None]


@pytest.mark.parametrize("run", [1, 3, 50])
def test_both_paths_give_the_reference_codes(run: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(run)
    texts = np.array(["b", "a", "", " a", "flourish12_10", "é", "NA"], dtype=object)
    values = np.repeat(texts[rng.integers(0, texts.size, 4000)], run)
    values[rng.integers(0, values.size, 30)] = None
    column = pl.Series("x", values.tolist(), dtype=pl.String)
    want = _reference(column)
    monkeypatch.setattr(encoding, "_SAMPLE_ROWS", 256)  # both paths on a small column
    for min_run in (1, 10**9):  # 1: always run-length encode; 10**9: never
        monkeypatch.setattr(encoding, "_MIN_MEAN_RUN", min_run)
        for sample_texts in (0, 1024):  # 0: never take the sample's texts as all of them
            monkeypatch.setattr(encoding, "_MAX_SAMPLE_TEXTS", sample_texts)
            codes, distinct = encode_text(column)
            assert codes.dtype == pl.UInt32 and distinct.n_chunks() == 1
            assert (codes.to_list(), distinct.to_list()) == want


def test_a_text_missing_from_the_sample_is_still_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first rows' texts are tried as all of them; a later new text falls back."""
    monkeypatch.setattr(encoding, "_SAMPLE_ROWS", 8)
    for late in ("c", None, "a"):  # a new text, a null (not a text), a known text
        values = ["a", "b"] * 8 + [late, "b"]
        column = pl.Series("x", values, dtype=pl.String)
        codes, distinct = encode_text(column)
        assert (codes.to_list(), distinct.to_list()) == _reference(column)


def test_empty_and_all_null() -> None:
    codes, distinct = encode_text(pl.Series([], dtype=pl.String))
    assert codes.to_list() == [] and distinct.to_list() == [None]
    codes, distinct = encode_text(pl.Series([None, None], dtype=pl.String))
    assert codes.to_list() == [0, 0] and distinct.to_list() == [None]


@pytest.mark.parametrize(
    "texts",
    [
        ["10", "8", "0", "3", "-2"],  # plain integers only: the table
        ["5", "7", "", " 5", "5.0", "NA", "x"],  # plus texts that do not parse
        ["5", "05", "3"],  # parses but is not plain: all encoded as texts
        ["5", "+5"],
        ["0", "-0"],
        ["1", "30000"],  # too wide a span: all encoded as texts
        ["-32768", "-10000", "-999", "32767"],
        ["NA", ""],  # nothing parses
    ],
)
def test_integer_path_decodes_like_the_text_path(texts: list[str]) -> None:
    rng = np.random.default_rng(len(texts))
    values = np.array(texts, dtype=object)[rng.integers(0, len(texts), 500)]
    values[rng.integers(0, values.size, 20)] = None
    column = pl.Series("v", values.tolist(), dtype=pl.String)
    codes, distinct = encode_integer_text(column)
    want_codes, want_distinct = encode_text(column)
    assert codes.dtype == pl.UInt32 and distinct.n_chunks() == 1
    assert distinct.gather(codes).to_list() == column.to_list()
    assert distinct.to_list()[-1] is None and distinct.drop_nulls().is_sorted()
    # codes compare as the texts do (the integer path may hold integer texts that do not
    # occur between the smallest and largest, so codes may differ, never their order)
    assert np.array_equal(
        np.argsort(codes.to_numpy(), kind="stable"), np.argsort(want_codes.to_numpy(), kind="stable")
    )
    assert set(want_distinct.to_list()) <= set(distinct.to_list())
