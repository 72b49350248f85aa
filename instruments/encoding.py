"""Dense integer codes of repetitive text columns, shared by validation and scoring.

A survey table repeats a handful of texts (item ids, answers, waves) or repeats each text
over a run of consecutive rows (a participant's id over a sitting, a file's name over the
whole file). Both are encoded without string work per row beyond one hash lookup:

- texts that change from row to row are cast to an ``Enum`` of their sorted distinct
  values (one lookup per row). When the first rows hold few distinct texts (item ids),
  those are tried as the ``Enum``'s values first: if every row is found among them they
  are all the distinct texts, and the pass that finds the distinct texts of the whole
  column is saved;
- texts that come in long runs are run-length encoded first (``Series.rle``, a comparison
  of neighbours), so the lookup runs once per *run*, and the run codes are repeated back.

Either way the result is the same: ``distinct[codes[i]] == column[i]``, with ``distinct``
sorted (byte order) and null as its last entry, so codes compare as the texts do.

Answers are mostly whole numbers written plainly (``"5"``). :func:`encode_integer_text`
parses them as integers (``Int16``, much cheaper than looking texts up) and maps each
number to its text's code through a table indexed by the number; only the texts that are
not plain integers (``"5 "``, ``"NA"``, ``""``) are encoded as texts.
"""

from __future__ import annotations

import numpy as np
import polars as pl

__all__ = ["encode_integer_text", "encode_text"]

#: Rows inspected to decide whether a column comes in runs.
_SAMPLE_ROWS = 65_536
#: Run-length encode when a run is this many rows long on average in the sample.
_MIN_MEAN_RUN = 4
#: Try the sample's distinct texts as all of them when the sample has at most this many.
_MAX_SAMPLE_TEXTS = 1024
#: :func:`encode_integer_text` tabulates the integers between the smallest and largest one
#: when they span at most this many values; else it encodes the texts.
_MAX_INTEGER_SPAN = 4096


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
    codes = None
    if column.len() > _SAMPLE_ROWS:
        values = column.head(_SAMPLE_ROWS).drop_nulls().unique().sort()
        if values.len() <= _MAX_SAMPLE_TEXTS:
            codes = column.cast(pl.Enum(values), strict=False).to_physical()
            if codes.null_count() > column.null_count():  # a text the sample lacks
                codes = None
    if codes is None:
        values = column.drop_nulls().unique().sort()
        codes = column.cast(pl.Enum(values)).to_physical()
    codes = codes.cast(pl.UInt32).fill_null(values.len())
    # one chunk: a gather from a series of several chunks is many times slower
    distinct = pl.concat([values, pl.Series([None], dtype=pl.String)], rechunk=True)
    return codes, distinct


def encode_integer_text(column: pl.Series) -> tuple[pl.Series, pl.Series]:
    """:func:`encode_text` for a column of mostly plain integer texts (``"5"``, ``"-2"``).

    The same contract, except that ``distinct`` also holds the plain integer texts between
    the smallest and largest integer that do not occur (a few, when answers lie in a small
    range). Each row is parsed as ``Int16``, and its code is read from a table indexed by
    the number; only texts that do not parse are encoded as texts. A text that parses
    without being written plainly (``"05"``, ``"+5"``, ``"-0"``) is longer than its
    number's own text, so comparing the total length of the parsed texts with that of
    their numbers' texts proves that every parsed text is plain; when it is not, or the
    integers span more than 4096 values, this is :func:`encode_text`.

    Examples
    --------
    >>> codes, distinct = encode_integer_text(pl.Series(["10", "8", None, "NA", "10"]))
    >>> codes.to_list(), distinct.to_list()
    ([0, 1, 4, 3, 0], ['10', '8', '9', 'NA', None])
    """
    numbers = column.cast(pl.Int16, strict=False).rechunk()
    parsed = numbers.len() - numbers.null_count()
    lo, hi = numbers.min(), numbers.max()
    if not parsed or hi - lo >= _MAX_INTEGER_SPAN:  # type: ignore[operator]
        return encode_text(column)
    other_rows = (column.is_not_null() & numbers.is_null()).arg_true()
    others = column.gather(other_rows)
    # digits of each number: 1, plus 1 per power of ten it reaches, plus 1 for a sign
    digits = parsed + int((numbers < 0).sum())
    for power in (10, 100, 1_000, 10_000):
        digits += int((numbers >= power).sum()) + int((numbers <= -power).sum())
    written = int(column.str.len_bytes().sum() or 0) - int(others.str.len_bytes().sum() or 0)
    if written != digits:
        return encode_text(column)
    other_codes, other_texts = encode_text(others)
    plain = pl.Series([str(i) for i in range(lo, hi + 1)], dtype=pl.String)  # type: ignore[operator]
    distinct = pl.concat([plain, other_texts], rechunk=True)  # other_texts ends with null
    # byte order as in encode_text, null last (rank leaves it null)
    rank = distinct.rank("ordinal").fill_null(distinct.len()).to_numpy().astype(np.uint32) - 1
    table = np.zeros(1 << 16, dtype=np.uint32)
    table[np.arange(lo, hi + 1, dtype=np.int16).view(np.uint16)] = rank[: plain.len()]
    codes = table[numbers.fill_null(0).to_numpy().view(np.uint16)]
    codes[other_rows.to_numpy()] = rank[plain.len() :][other_codes.to_numpy()]
    codes[column.is_null().arg_true().to_numpy()] = distinct.len() - 1
    order = np.argsort(rank, kind="stable")
    return pl.Series(column.name, codes, dtype=pl.UInt32), distinct.gather(order)
