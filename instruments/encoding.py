"""Dense integer codes of repetitive text columns, shared by validation and scoring.

A survey table repeats a handful of texts (item ids, answers, waves) or repeats each text
over a run of consecutive rows (a participant's id over a sitting, a file's name over the
whole file). Both are encoded without string work per row beyond one hash lookup:

- texts that change from row to row are cast to an ``Enum`` of their sorted distinct
  values (one lookup per row);
- texts that come in long runs are run-length encoded first (``Series.rle``, a comparison
  of neighbours), so the lookup runs once per *run*, and the run codes are repeated back.

Either way the result is the same: ``distinct[codes[i]] == column[i]``, with ``distinct``
sorted (byte order) and null as its last entry, so codes compare as the texts do.
"""

from __future__ import annotations

import numpy as np
import polars as pl

__all__ = ["encode_text"]

#: Rows inspected to decide whether a column comes in runs.
_SAMPLE_ROWS = 65_536
#: Run-length encode when a run is this many rows long on average in the sample.
_MIN_MEAN_RUN = 4


def encode_text(column: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Dense codes of a text column: ``(codes UInt32, distinct texts)``.

    ``distinct`` holds the sorted distinct texts followed by null (always present, so that
    ``len(distinct) - 1`` is the code of a null); ``distinct[codes[i]] == column[i]``.

    Parameters
    ----------
    column
        A String series.

    Returns
    -------
    tuple[pl.Series, pl.Series]
        The codes (UInt32, one per row, no nulls) and the distinct texts.

    Examples
    --------
    >>> codes, distinct = encode_text(pl.Series(["b", "b", None, "a"]))
    >>> codes.to_list(), distinct.to_list()
    ([1, 1, 2, 0], ['a', 'b', None])
    """
    head = column.head(_SAMPLE_ROWS)
    runs_in_head = int(head.rle_id().max() or 0) + 1
    if column.len() > _SAMPLE_ROWS and runs_in_head * _MIN_MEAN_RUN <= head.len():
        runs = column.rle().struct.unnest()
        run_codes, distinct = _encode_rows(runs["value"])
        codes = np.repeat(run_codes.to_numpy(), runs["len"].to_numpy())
        return pl.Series(column.name, codes, dtype=pl.UInt32), distinct
    return _encode_rows(column)


def _encode_rows(column: pl.Series) -> tuple[pl.Series, pl.Series]:
    """:func:`encode_text` by one ``Enum`` lookup per row."""
    values = column.drop_nulls().unique().sort()
    codes = column.cast(pl.Enum(values)).to_physical().cast(pl.UInt32)
    codes = codes.fill_null(values.len())
    # one chunk: a gather from a series of several chunks is many times slower
    distinct = pl.concat([values, pl.Series([None], dtype=pl.String)], rechunk=True)
    return codes, distinct
