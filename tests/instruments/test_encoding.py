"""Dense text codes: the run-length path and the per-row path give the same codes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from instruments import encoding
from instruments.encoding import encode_text


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
        codes, distinct = encode_text(column)
        assert codes.dtype == pl.UInt32 and distinct.n_chunks() == 1
        assert (codes.to_list(), distinct.to_list()) == want


def test_empty_and_all_null() -> None:
    codes, distinct = encode_text(pl.Series([], dtype=pl.String))
    assert codes.to_list() == [] and distinct.to_list() == [None]
    codes, distinct = encode_text(pl.Series([None, None], dtype=pl.String))
    assert codes.to_list() == [0, 0] and distinct.to_list() == [None]
