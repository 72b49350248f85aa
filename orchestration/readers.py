"""Survey and participant readers: every layout and file format to the *raw long table*.

The raw long table (``docs/contracts.md``) is all text, so that nothing is lost or
silently converted before validation decides what is a defect:

``source`` (file path, relative to the study folder when inside it), ``row`` (Int64,
1-based *data* row of that file: header rows are not counted, so row 1 is the first
response of a CSV, the line after the three header rows of a Qualtrics export, and the
first case of a .sav/.dta), ``participant_id``, ``wave``, ``timestamp``, ``instrument``
(null when the layout has none), ``item``, ``value`` (null = blank cell) and ``column``
(the source column the value came from, after header whitespace is stripped).

Layouts (``DESIGN.md``): ``long`` has a row per item; ``wide`` and ``qualtrics`` have a
row per participant × wave and a column per item, which is melted. In wide files a column
is melted when it is an item id of the library or *looks like* one
(``^[a-z][a-z0-9]*_[0-9]+$``), so that an item of an instrument the study did not declare
reaches validation as ``unknown_item`` instead of vanishing. Every other column is
reported as an ``ignored_column`` file issue. A file whose columns or header rows say it
has another layout than the survey's ``layout`` is refused (:class:`IngestError`).

CSV files are decoded in their ``[[survey]] encoding`` and split on their ``delimiter``
(sniffed from the header when not set); every cell stays text. A file whose rows are all
well formed is read by polars; one with a malformed row (ragged, an unterminated quote,
bytes not valid in the encoding) is parsed row by row and the malformed rows are set aside
(``RawSurvey.malformed``, quarantined as ``malformed_row``) with the rest kept. Excel
workbooks are read from their first sheet with openpyxl. Parquet is scanned lazily and
cast to text; SPSS .sav and Stata .dta are read once with pyreadstat
(pandas) and converted to polars. Integral floats from typed formats become ``"5"``, not
``"5.0"``, because the float type is the format's, not the respondent's.
"""

from __future__ import annotations

import codecs
import csv
import glob
import io
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import polars as pl

from instruments.definition import InstrumentLibrary
from instruments.validation import (  # noqa: F401 (RAW_* re-exported)
    QUARANTINE_COLUMNS,
    RAW_COLUMNS,
    RAW_SCHEMA,
)
from orchestration.spec import StudySpec, SurveyFormat, SurveySpec
from privacy.pseudonymise import identifier_kind_of_column

FileIssueReason = Literal[
    "empty_file",
    "no_data_rows",
    "no_timestamp_column",
    "ignored_column",
    "malformed_rows",
    "timestamps_not_parsed",
]

#: File issues that make ``validate`` exit non-zero: a survey file that holds no response.
BLOCKING_FILE_ISSUES: tuple[FileIssueReason, ...] = ("empty_file", "no_data_rows")

#: The columns of a long file besides participant_id, wave and timestamp.
_LONG_COLUMNS = ("instrument", "item", "value")
CoercionKind = Literal["header_whitespace"]

ITEM_ID_PATTERN = re.compile(r"^[a-z][a-z0-9]*_[0-9]+$")

# The raw long table is defined once, beside the validation that consumes it.

FILE_ISSUE_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "column": pl.String(),
    "reason": pl.String(),
    "detail": pl.String(),
}

COERCION_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "column": pl.String(),
    "kind": pl.String(),
    "rows": pl.Int64(),
    "first_row": pl.Int64(),
    "example": pl.String(),
}

_SUFFIX_FORMAT: dict[str, SurveyFormat] = {
    ".csv": "csv",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".sav": "sav",
    ".zsav": "sav",
    ".dta": "dta",
}
_ROW = "__row"
_GLOB_CHARS = re.compile(r"[*?\[]")


class IngestError(Exception):
    """An input file is unusable (missing, unreadable, no participant id column, ...).

    The CLI maps it to exit code 2. ``file`` names the file (or the glob that matched
    nothing).
    """

    def __init__(self, file: Path | str, message: str) -> None:
        self.file = str(file)
        self.message = message
        super().__init__(f"{file}: {message}")


@dataclass(frozen=True)
class RawSurvey:
    """All survey sources of a study as one raw long table, plus what ingest noticed.

    Attributes
    ----------
    rows
        The raw long table (LazyFrame, :data:`RAW_SCHEMA`).
    file_issues
        ``source, column, reason, detail``: empty files, files with a header but no data
        rows, files without a ``timestamp`` column, columns that were ignored (``reason``
        in :data:`FileIssueReason`). None of these stops ingest; the first two
        (:data:`BLOCKING_FILE_ISSUES`) make ``validate`` exit non-zero.
    coercions
        ``source, column, kind, rows, first_row, example`` (the schema of
        ``ValidationResult.coercions``): header whitespace stripped, one row per header
        cell (``rows`` = 1, ``first_row`` null, ``example`` the header as written).
    files
        Every file read, as reported in ``source``, in reading order.
    instruments_by_source
        For files of a survey that lists its ``instruments``: those ids, by ``source``.
    malformed
        CSV rows that could not be read as a row of the file (ragged, an unterminated
        quote, bytes not valid in the file's encoding): ``source, row, participant_id,
        wave, column, value`` (:data:`MALFORMED_SCHEMA`; ``column`` is ``"(row)"``,
        ``value`` says what is wrong). Validation quarantines them as ``malformed_row``.
    identifiers
        Columns of the survey files that are direct identifiers by name (a Qualtrics
        export's IPAddress, RecipientEmail, RecipientFirstName, LocationLatitude, ...):
        never read, reported like ``drop_direct_identifiers`` does
        (:data:`IDENTIFIER_SCHEMA`) instead of as ``ignored_column``.
    timestamp_formats
        ``[[survey]] timestamp_format`` by ``source`` (None: ISO 8601).
    """

    rows: pl.LazyFrame
    file_issues: pl.DataFrame
    coercions: pl.DataFrame
    files: list[str] = field(default_factory=list)
    instruments_by_source: dict[str, tuple[str, ...]] = field(default_factory=dict)
    malformed: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema=MALFORMED_SCHEMA)
    )
    identifiers: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema=IDENTIFIER_SCHEMA)
    )
    timestamp_formats: dict[str, str | None] = field(default_factory=dict)


def _display(spec: StudySpec, path: Path) -> str:
    try:
        return path.relative_to(spec.base_dir).as_posix()
    except ValueError:
        return str(path)


def expand_paths(spec: StudySpec, pattern: str) -> list[Path]:
    """Files named by ``pattern`` (a path or a glob, relative to the study folder), sorted.

    Raises
    ------
    IngestError
        When the file does not exist or the glob matches no file.
    """
    target = spec.resolve(pattern)
    if _GLOB_CHARS.search(pattern):
        found = sorted(Path(p) for p in glob.glob(str(target), recursive=True))
        files = [p for p in found if p.is_file()]
        if not files:
            raise IngestError(target, "the glob matches no file")
        return files
    if not target.is_file():
        raise IngestError(target, "file not found")
    return [target]


def _format_of(path: Path, override: SurveyFormat | None) -> SurveyFormat:
    if override is not None:
        return override
    fmt = _SUFFIX_FORMAT.get(path.suffix.lower())
    if fmt is None:
        raise IngestError(
            path, f"unknown file format '{path.suffix}'; set format = csv|parquet|sav|dta|xlsx"
        )
    return fmt


def _text_columns(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Cast every column to text; integral floats print as integers, datetimes in ISO form."""
    exprs = []
    for name, dtype in lf.collect_schema().items():
        col = pl.col(name)
        if name == _ROW:
            exprs.append(col)
        elif dtype == pl.String:
            exprs.append(col)
        elif dtype.is_float():
            exprs.append(
                pl.when(col.is_nan())
                .then(None)
                .when(col.is_finite() & (col == col.floor()) & (col.abs() < 2**53))
                .then(col.cast(pl.Int64).cast(pl.String))
                .otherwise(col.cast(pl.String))
                .alias(name)
            )
        elif isinstance(dtype, pl.Datetime):
            c = (
                col.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
                if dtype.time_zone
                else col
            )
            exprs.append(c.dt.to_string("%Y-%m-%dT%H:%M:%S%.f").alias(name))
        elif dtype == pl.Date:
            exprs.append(col.dt.to_string("%Y-%m-%d").alias(name))
        else:
            exprs.append(col.cast(pl.String).alias(name))
    return lf.select(exprs)


#: Delimiters recognised in a CSV header when ``[[survey]] delimiter`` is not set.
SNIFFED_DELIMITERS: tuple[str, ...] = (",", ";", "\t")
#: Column name of a malformed row's quarantine entry (the whole row is rejected).
MALFORMED_COLUMN = "(row)"
_UNDECODABLE = re.compile("[\udc80-\udcff]")
#: A file with more undecodable rows than this share (and more than one) is refused: it is
#: in another encoding, not damaged in a row or two.
_MAX_UNDECODABLE_SHARE = 0.1


@dataclass
class _Csv:
    """A CSV file as parsed: header, well-formed data rows, malformed rows, header rows."""

    header: list[str]
    frame: pl.DataFrame  # header names as written (all text) + __row
    malformed: list[tuple[int, list[str], str]]  # (data row, fields, why)
    skipped: pl.DataFrame  # the header rows under the column names (Qualtrics)


def sniff_delimiter(header_line: str) -> str:
    """The delimiter of a CSV header line: the most frequent of ``,`` ``;`` tab (``,``)."""
    counts = {d: header_line.count(d) for d in SNIFFED_DELIMITERS}
    best = max(SNIFFED_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _decode(path: Path, data: bytes, encoding: str) -> tuple[str, str | None]:
    """Text of the file (undecodable bytes as lone surrogates) and the first such byte."""
    name = codecs.lookup(encoding).name
    if name == "utf-8" and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if data[:4] == b"PK\x03\x04" or (b"\x00" in data[:8192] and not name.startswith("utf-")):
        raise IngestError(
            path,
            "binary content, not a text CSV file (an Excel workbook or another format?); "
            "name it .xlsx or set format = 'xlsx' (or 'parquet'|'sav'|'dta') in its [[survey]]",
        )
    try:
        return data.decode(encoding), None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        where = (
            f"byte 0x{data[exc.start]:02x} at byte offset {exc.start} (line {line}) is not "
            f"valid {encoding}"
        )
        return data.decode(encoding, errors="surrogateescape"), where


def _encoding_hint(encoding: str) -> str:
    other = "latin-1" if codecs.lookup(encoding).name == "utf-8" else "utf-8"
    return (
        f"if the file was saved in another encoding, set encoding = \"{other}\" "
        "(or \"cp1252\", ...) in its [[survey]]"
    )


def _records(lines: list[str], delimiter: str):  # noqa: ANN202 - a generator of tuples
    """``(fields, why)`` per CSV record; ``why`` is None unless it cannot be parsed.

    A record that cannot be parsed (a quote left open, text after a closing quote) is
    yielded with the fields of its first line as far as they go and why, and reading
    resumes on the next line, so one bad quote costs one row, not the rest of the file.
    """
    start = 0
    while start < len(lines):
        reader = csv.reader(iter(lines[start:]), delimiter=delimiter, strict=True)
        consumed = 0
        try:
            for rec in reader:
                consumed = reader.line_num
                yield rec, None
            return
        except csv.Error as exc:
            why = str(exc).strip()
            if "end of data" in why:
                why = "a quoted field is never closed (unterminated quote)"
            bad_line = lines[start + consumed] if start + consumed < len(lines) else ""
            fields = next(csv.reader([bad_line.rstrip("\r\n")], delimiter=delimiter), [])
            yield fields or [""], f"cannot parse the row: {why}"
            start += consumed + 1


def read_csv_text(
    path: Path,
    *,
    header_rows: int = 1,
    encoding: str = "utf-8",
    delimiter: str | None = None,
) -> _Csv | None:
    """Parse a CSV file row by row, keeping well-formed rows and setting aside the rest.

    A data row is *malformed* when it cannot be parsed (an unterminated quote), has more or
    fewer fields than the header, or holds bytes that are not valid in ``encoding``; it is
    returned in ``malformed`` with its 1-based data row and why, and the other rows are
    kept. Blank lines are skipped. None for an empty file.

    Raises
    ------
    IngestError
        The file cannot be read at all: binary content, a header that cannot be parsed or
        decoded, more than one undecodable row and over 10 % of the rows (another
        encoding: the message names the first bad byte, its offset and the ``encoding``
        option), or every data row malformed.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IngestError(path, f"cannot read: {exc}") from None
    text, bad_byte = _decode(path, data, encoding)
    if bad_byte is None:
        fast = _read_well_formed(text, header_rows, delimiter)
        if fast is not None:
            return fast
    lines = io.StringIO(text, newline="").readlines()
    if not any(line.strip() for line in lines):
        return None
    first = next(line for line in lines if line.strip())
    delim = delimiter or sniff_delimiter(first)
    header: list[str] | None = None
    skipped: list[list[str]] = []
    good: list[list[str]] = []
    rows: list[int] = []
    malformed: list[tuple[int, list[str], str]] = []
    undecodable = 0
    row = 0
    for rec, why in _records(lines, delim):
        if not rec:
            continue  # a blank line
        if header is None:
            if why is not None or (bad_byte and any(_UNDECODABLE.search(f) for f in rec)):
                raise IngestError(
                    path,
                    f"cannot read the header: {why or bad_byte}"
                    + ("" if why is not None else f"; {_encoding_hint(encoding)}"),
                )
            header = rec
            continue
        if len(skipped) < header_rows - 1:
            skipped.append(rec)
            continue
        row += 1
        if why is not None:
            malformed.append((row, rec, why))
        elif bad_byte and any(_UNDECODABLE.search(f) for f in rec):
            undecodable += 1
            malformed.append((row, [], f"bytes that are not valid {encoding}"))
        elif len(rec) != len(header):
            malformed.append(
                (row, rec, f"{len(rec)} fields where the header has {len(header)}")
            )
        else:
            good.append(rec)
            rows.append(row)
    assert header is not None
    if undecodable > 1 and undecodable > _MAX_UNDECODABLE_SHARE * row:
        raise IngestError(
            path,
            f"not valid {encoding} text: {bad_byte}; {undecodable} of {row} data rows have "
            f"such bytes — {_encoding_hint(encoding)}",
        )
    if row and len(malformed) == row:
        r, _, why = malformed[0]
        raise IngestError(
            path,
            f"every data row is malformed (row {r}: {why}); is the delimiter "
            f"{delim!r} right? set delimiter = \";\" (or \",\", \"\\t\") in its [[survey]]",
        )
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise IngestError(path, f"duplicate column names {dup}")

    def frame(records: list[list[str]], index: list[int]) -> pl.DataFrame:
        cols = list(zip(*records, strict=True)) if records else [()] * len(header)
        df = pl.DataFrame(
            {h: pl.Series(h, c, dtype=pl.String) for h, c in zip(header, cols, strict=True)}
        )
        df = df.select(pl.when(pl.col(h).str.len_bytes() > 0).then(pl.col(h)).alias(h)
                       for h in header)
        return df.with_columns(pl.Series(_ROW, index, dtype=pl.UInt32)).select(
            _ROW, *header
        )

    ok_skipped = [r for r in skipped if len(r) == len(header)]
    return _Csv(header, frame(good, rows), malformed, frame(ok_skipped, [0] * len(ok_skipped)))


_QUOTED = r'"(?:[^"]|"")*"'


def _cell_text(value: object) -> str | None:
    """An Excel cell as text: integral numbers without ``.0``, dates in ISO 8601."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)
    if isinstance(value, datetime):
        return value.isoformat(sep="T")
    if hasattr(value, "isoformat"):  # date, time
        return value.isoformat()  # type: ignore[no-any-return]
    return str(value)


def read_xlsx(path: Path, *, header_rows: int = 1) -> _Csv | None:
    """The first sheet of an Excel workbook (.xlsx/.xlsm, read with openpyxl) as text.

    As :func:`read_csv_text`: the first non-blank row is the header, blank rows are
    skipped, data rows are numbered from 1; a row with a value beyond the last named
    column is malformed. Cached formula results are read, not formulas. None when the
    sheet is empty.
    """
    import zipfile

    from openpyxl import load_workbook  # local: only studies with workbooks pay the import
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except (OSError, zipfile.BadZipFile, InvalidFileException, KeyError, ValueError) as exc:
        raise IngestError(path, f"cannot read as xlsx: {exc}") from None
    try:
        rows = [
            [_cell_text(v) for v in r] for r in book.worksheets[0].iter_rows(values_only=True)
        ]
    finally:
        book.close()
    rows = [r for r in rows if any(v is not None for v in r)]
    if not rows:
        return None
    header_cells = list(rows[0])
    while header_cells and header_cells[-1] is None:
        header_cells.pop()
    header = [h or "" for h in header_cells]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise IngestError(path, f"duplicate column names {dup}")
    width = len(header)
    skipped = [r[:width] + [None] * (width - len(r)) for r in rows[1:header_rows]]
    good: list[list[str | None]] = []
    index: list[int] = []
    malformed: list[tuple[int, list[str], str]] = []
    for row, r in enumerate(rows[header_rows:], start=1):
        if any(v is not None for v in r[width:]):
            malformed.append(
                (row, [v or "" for v in r], "a value beyond the last named column")
            )
            continue
        good.append(r[:width] + [None] * (width - len(r)))
        index.append(row)

    def frame(records: list[list[str | None]], idx: list[int]) -> pl.DataFrame:
        cols = list(zip(*records, strict=True)) if records else [()] * width
        df = pl.DataFrame(
            [pl.Series(h, c, dtype=pl.String) for h, c in zip(header, cols, strict=True)]
        )
        return df.with_columns(pl.Series(_ROW, idx, dtype=pl.UInt32)).select(_ROW, *header)

    return _Csv(header, frame(good, index), malformed, frame(skipped, [0] * len(skipped)))


def _read_well_formed(text: str, header_rows: int, delimiter: str | None) -> _Csv | None:
    """The fast path of :func:`read_csv_text`: polars' reader when every row is well formed.

    Whether it is, is decided without a Python loop over rows: per line (split on line
    feeds), quoted fields are cut out and the delimiters left are counted. None (take the
    row-by-row path) when some line has another number of fields than the header, a quote
    left over (an unterminated quote, or a quoted field that spans lines), or is blank.
    """
    lines = pl.Series(text.split("\n")).str.strip_suffix("\r")
    if lines.len() and lines[-1] == "":
        lines = lines.head(-1)
    if lines.len() == 0:
        return None
    delim = delimiter or sniff_delimiter(lines[0])
    unquoted = lines.str.replace_all(_QUOTED, "") if '"' in text else lines
    checks = pl.DataFrame({"line": lines, "rest": unquoted}).select(
        pl.col("rest").str.count_matches(delim, literal=True).alias("n"),
        pl.col("rest").str.contains('"', literal=True).alias("quote"),
        (pl.col("line").str.len_bytes() == 0).alias("blank"),
    )
    n_fields = checks["n"][0] + 1
    if checks["quote"].any() or checks["blank"].any() or (checks["n"] != n_fields - 1).any():
        return None
    header = next(csv.reader([lines[0]], delimiter=delim))
    if len(header) != n_fields or len(set(header)) != len(header):
        return None
    try:
        df = pl.read_csv(
            io.BytesIO(text.encode("utf-8")),
            separator=delim,
            infer_schema=False,
            missing_utf8_is_empty_string=False,
            raise_if_empty=False,
        )
    except pl.exceptions.PolarsError:
        return None
    if df.columns != header or df.height != lines.len() - 1:
        return None
    if '"' in text:  # a quoted empty field is blank, as on the row-by-row path
        df = df.select(pl.when(pl.col(h).str.len_bytes() > 0).then(pl.col(h)).alias(h)
                       for h in header)
    skip = header_rows - 1
    data = df.slice(skip).with_row_index(_ROW, offset=1)
    return _Csv(header, data, [], df.head(skip).with_columns(pl.lit(0, pl.UInt32).alias(_ROW)))


def _scan_file(path: Path, fmt: SurveyFormat, header_rows: int) -> pl.LazyFrame | None:
    """A lazy all-text frame with a 1-based ``__row`` column; None when the file is empty.

    A CSV file with a malformed row is refused (participants); survey files are read with
    :func:`read_csv_text`, which sets such rows aside instead.
    """
    if path.stat().st_size == 0:
        return None
    try:
        if fmt in ("csv", "xlsx"):
            parsed = (read_csv_text if fmt == "csv" else read_xlsx)(path, header_rows=header_rows)
            if parsed is None:
                return None
            if parsed.malformed:
                r, _, why = parsed.malformed[0]
                raise IngestError(path, f"malformed row {r}: {why}")
            return parsed.frame.lazy()
        if fmt == "parquet":
            lf = pl.scan_parquet(path).with_row_index(_ROW, offset=1)
            return _text_columns(lf)
        import pyreadstat  # local: only studies with SPSS/Stata files pay the import

        reader = pyreadstat.read_sav if fmt == "sav" else pyreadstat.read_dta
        try:
            pdf, _meta = reader(str(path), apply_value_formats=False)
        except (pyreadstat.ReadstatError, pyreadstat.PyreadstatError) as exc:
            raise IngestError(path, f"cannot read as {fmt}: {exc}") from None
        frame = pl.from_pandas(pdf, nan_to_null=True)
        return _text_columns(frame.lazy().with_row_index(_ROW, offset=1))
    except (OSError, pl.exceptions.PolarsError, ValueError) as exc:
        raise IngestError(path, f"cannot read as {fmt}: {exc}") from None


#: Quarantine entries of malformed rows, before validation adds ``reason``.
MALFORMED_SCHEMA: dict[str, pl.DataType] = {
    k: v for k, v in QUARANTINE_COLUMNS.items() if k != "reason"
}

IDENTIFIER_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "column": pl.String(),
    "kind": pl.String(),
    "n_values": pl.Int64(),
    "action": pl.String(),
    "detected_by": pl.String(),
}


@dataclass
class _FileRead:
    rows: pl.LazyFrame | None
    issues: list[dict[str, object]]
    coercions: list[dict[str, object]]
    malformed: pl.DataFrame | None = None
    identifiers: list[dict[str, object]] = field(default_factory=list)


def _issue(source: str, column: str | None, reason: FileIssueReason, detail: str) -> dict:
    return {"source": source, "column": column, "reason": reason, "detail": detail}


def _normalise_header(
    lf: pl.LazyFrame, source: str, path: Path, survey_columns: dict[str, str]
) -> tuple[pl.LazyFrame, dict[str, str], list[dict[str, object]]]:
    """Strip header whitespace and apply renames; return frame, {new name: source column}."""
    names = [n for n in lf.collect_schema().names() if n != _ROW]
    coercions: list[dict[str, object]] = []
    stripped: dict[str, str] = {}
    for n in names:
        s = n.strip()
        if s != n:
            coercions.append(
                {
                    "source": source,
                    "column": s,
                    "kind": "header_whitespace",
                    "rows": 1,
                    "first_row": None,
                    "example": repr(n),
                }
            )
        stripped[n] = s
    seen = list(stripped.values())
    dup = sorted({s for s in seen if seen.count(s) > 1})
    if dup:
        raise IngestError(path, f"duplicate column names {dup} (after stripping whitespace)")
    renamed = {n: survey_columns.get(s, survey_columns.get(n, s)) for n, s in stripped.items()}
    targets = list(renamed.values())
    dup = sorted({t for t in targets if targets.count(t) > 1})
    if dup:
        raise IngestError(path, f"several columns would be named {dup} after [survey.columns]")
    origin = {renamed[n]: stripped[n] for n in names}
    return lf.rename(renamed), origin, coercions


def _check_layout(
    path: Path,
    survey: SurveySpec,
    lf: pl.LazyFrame,
    cols: set[str],
    items: list[str],
    origin: dict[str, str],
    skipped: pl.DataFrame | None = None,
) -> None:
    """Refuse a wide/qualtrics file whose columns or header rows say it has another layout.

    A file without any item column would melt to 0 rows that "add up"; a long file read as
    wide, a Qualtrics export read as wide (its question-text and ImportId rows read as
    responses) or a plain wide file read as Qualtrics (its first two responses skipped as
    header rows) would be read wrongly without a word.
    """
    expected = survey.layout
    found = sorted(origin.values())
    if not items:
        hint = ""
        if {"item", "value"} <= cols:
            hint = "; columns item and value look like layout 'long' — set layout = 'long'"
        raise IngestError(
            path,
            f"layout mismatch: layout '{expected}' expects one column per item id "
            f"(e.g. who5_1), but no column is an item id; columns found: {found}{hint}"
            " (or map the item columns with [survey.columns])",
        )
    if expected == "wide":
        head = lf.head(2).collect()
        cells = [str(v) for row in head.iter_rows() for v in row if isinstance(v, str)]
        if any('"ImportId"' in c for c in cells):
            raise IngestError(
                path,
                "layout mismatch: layout 'wide' expects responses from the first row under "
                "the header, but rows 1-2 hold Qualtrics header rows (ImportId); columns "
                f"found: {found} — set layout = 'qualtrics'",
            )
    elif expected == "qualtrics":
        # The two header rows under the column names (question text, ImportId) were
        # skipped; read them back: if every item cell is a number they were responses.
        if skipped is None:
            return
        sources = {origin[i] for i in items}
        item_cells = [
            v.strip() for c in skipped.columns if c.strip() in sources
            for v in skipped[c].to_list() if v is not None and v.strip()
        ]
        if item_cells and all(_is_number(v) for v in item_cells):
            raise IngestError(
                path,
                "layout mismatch: layout 'qualtrics' expects two header rows (question "
                "text, ImportId) under the column names, but rows 1-2 hold numeric "
                f"responses; columns found: {found} — set layout = 'wide'",
            )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_one(
    spec: StudySpec, survey: SurveySpec, path: Path, library: InstrumentLibrary
) -> _FileRead:
    source = _display(spec, path)
    fmt = _format_of(path, survey.format)
    header_rows = 3 if survey.layout == "qualtrics" else 1
    if survey.layout == "qualtrics" and fmt not in ("csv", "xlsx"):
        raise IngestError(
            path, "layout 'qualtrics' needs a CSV or Excel export (format = 'csv'|'xlsx')"
        )
    parsed: _Csv | None = None
    if fmt in ("csv", "xlsx"):
        if path.stat().st_size and fmt == "xlsx":
            parsed = read_xlsx(path, header_rows=header_rows)
        elif path.stat().st_size:
            parsed = read_csv_text(
                path, header_rows=header_rows, encoding=survey.encoding,
                delimiter=survey.delimiter,
            )
        lf = None if parsed is None else parsed.frame.lazy()
    else:
        lf = _scan_file(path, fmt, header_rows)
    if lf is None:
        return _FileRead(None, [_issue(source, None, "empty_file", "the file has 0 bytes")], [])
    lf, origin, coercions = _normalise_header(lf, source, path, survey.columns)
    cols = set(origin)

    if "participant_id" not in cols:
        raise IngestError(
            path,
            "no 'participant_id' column; map one with [survey.columns] "
            f"(columns: {sorted(origin.values())})",
        )
    wave_col = survey.wave_column or "wave"
    if survey.wave is not None:
        wave_expr = pl.lit(str(survey.wave), dtype=pl.String)
        used = set()
    elif wave_col in cols:
        wave_expr = pl.col(wave_col)
        used = {wave_col}
    else:
        raise IngestError(
            path, f"no wave column '{wave_col}'; set wave = N or wave_column in [[survey]]"
        )
    ts_expr = pl.col("timestamp") if "timestamp" in cols else pl.lit(None, dtype=pl.String)
    if survey.timestamp_format is not None and "timestamp" in cols:
        ts_expr = _reformat_timestamps(ts_expr, survey.timestamp_format)
    used |= {"participant_id", "timestamp"}

    base = [
        pl.lit(source, dtype=pl.String).alias("source"),
        pl.col(_ROW).cast(pl.Int64).alias("row"),
        pl.col("participant_id"),
        wave_expr.alias("wave"),
        ts_expr.alias("timestamp"),
    ]
    issues: list[dict[str, object]] = []
    found = sorted(origin.values())
    if survey.layout == "long":
        missing = [c for c in ("item", "value") if c not in cols]
        if missing:
            hint = ""
            if any(ITEM_ID_PATTERN.match(c) for c in cols):
                hint = "; its item-id columns look like layout 'wide' — set layout = 'wide'"
            raise IngestError(
                path,
                f"layout mismatch: layout 'long' expects columns {missing} "
                f"(participant_id, wave, timestamp, instrument, item, value); "
                f"columns found: {found}{hint}",
            )
        used |= {"item", "value", "instrument"}
        inst = pl.col("instrument") if "instrument" in cols else pl.lit(None, dtype=pl.String)
        out = lf.select(
            *base,
            inst.alias("instrument"),
            pl.col("item"),
            pl.col("value"),
            pl.lit(origin["value"], dtype=pl.String).alias("column"),
        )
    else:
        known = {it.id for inst in library for it in inst.items}
        items = [c for c in origin if c not in used and (c in known or ITEM_ID_PATTERN.match(c))]
        used |= set(items)
        _check_layout(path, survey, lf, cols, items, origin,
                      None if parsed is None else parsed.skipped)
        melted = lf.select(*base, *[pl.col(c) for c in items]).unpivot(
            on=items,
            index=["source", "row", "participant_id", "wave", "timestamp"],
            variable_name="item",
            value_name="value",
        )
        out = melted.select(
            "source",
            "row",
            "participant_id",
            "wave",
            "timestamp",
            pl.lit(None, dtype=pl.String).alias("instrument"),
            "item",
            "value",
            pl.col("item")
            .replace_strict({c: origin[c] for c in items}, return_dtype=pl.String)
            .alias("column"),
        )
    identifiers: list[dict[str, object]] = []
    for c in origin:
        kind = identifier_kind_of_column(origin[c]) if c not in used else None
        if kind is not None:
            identifiers.append(
                {
                    "source": source,
                    "column": origin[c],
                    "kind": kind,
                    "n_values": lf.select(pl.col(c).count()).collect().item(),
                    "action": "dropped_column",
                    "detected_by": "name",
                }
            )
        elif c not in used:
            issues.append(
                _issue(
                    source,
                    origin[c],
                    "ignored_column",
                    "not an item id nor participant_id/wave/timestamp"
                    + ("/instrument/item/value" if survey.layout == "long" else ""),
                )
            )
    if "timestamp" not in cols and spec.telemetry is not None:
        raise IngestError(
            path,
            "no 'timestamp' column; a study with [telemetry] needs each response's timestamp "
            "(engagement is measured in the window before it) — add the column or map one "
            "with [survey.columns]",
        )
    if "timestamp" not in cols:
        issues.append(
            _issue(source, None, "no_timestamp_column",
                   "no 'timestamp' column; its responses have no timestamp (null)")
        )
    malformed = _malformed_rows(source, survey, parsed, origin)
    if malformed.height:
        listed = ", ".join(
            f"{r} ({v})" for r, v in malformed.select("row", "value").head(5).iter_rows()
        )
        more = f" and {malformed.height - 5} more" if malformed.height > 5 else ""
        issues.append(
            _issue(source, None, "malformed_rows",
                   f"{malformed.height} malformed row(s) quarantined as malformed_row: "
                   f"row {listed}{more}")
        )
    elif lf.head(1).collect().height == 0:
        issues.append(_issue(source, None, "no_data_rows", "a header but no data rows"))
    return _FileRead(
        out.select([pl.col(c).cast(t) for c, t in RAW_SCHEMA.items()]), issues, coercions,
        malformed, identifiers,
    )


def _malformed_rows(
    source: str, survey: SurveySpec, parsed: _Csv | None, origin: dict[str, str]
) -> pl.DataFrame:
    """Quarantine entries (:data:`MALFORMED_SCHEMA`) for the rows a CSV reader set aside.

    ``participant_id`` and ``wave`` are taken from their place in the header when the row
    has that many fields (they may be wrong in a row with a field too many); ``value``
    says what is wrong with the row, never its text.
    """
    if parsed is None or not parsed.malformed:
        return pl.DataFrame(schema=MALFORMED_SCHEMA)
    position = {h.strip(): i for i, h in enumerate(parsed.header)}
    pid_at = position.get(origin.get("participant_id", ""))
    wave_at = None if survey.wave is not None else position.get(
        origin.get(survey.wave_column or "wave", "")
    )

    def cell(fields: list[str], at: int | None) -> str | None:
        return fields[at] if at is not None and at < len(fields) and fields[at] else None

    recs = [
        {
            "source": source,
            "row": r,
            "participant_id": cell(fields, pid_at),
            "wave": str(survey.wave) if survey.wave is not None else cell(fields, wave_at),
            "column": MALFORMED_COLUMN,
            "value": why,
        }
        for r, fields, why in parsed.malformed
    ]
    return pl.DataFrame(recs, schema=MALFORMED_SCHEMA)


def _reformat_timestamps(text: pl.Expr, fmt: str) -> pl.Expr:
    """Timestamps written in ``fmt`` rewritten in ISO 8601.

    UTC with ``Z`` when ``fmt`` has an offset; a text that ``fmt`` does not parse is kept
    as written, so that validation quarantines it as ``invalid_timestamp``.
    """
    if "%z" in fmt or "%:z" in fmt:
        parsed = text.str.to_datetime(fmt, strict=False, time_unit="us", time_zone="UTC")
        iso = parsed.dt.replace_time_zone(None).dt.to_string("%Y-%m-%dT%H:%M:%S%.fZ")
    else:
        parsed = text.str.to_datetime(fmt, strict=False, time_unit="us")
        iso = parsed.dt.to_string("%Y-%m-%dT%H:%M:%S%.f")
    return pl.coalesce(iso, text)


def read_surveys(spec: StudySpec, library: InstrumentLibrary) -> RawSurvey:
    """Read every ``[[survey]]`` source of the study into one raw long table.

    Parameters
    ----------
    spec
        The study spec; paths and globs are resolved against its folder.
    library
        The study's instruments; in wide/qualtrics files their item ids (and any column
        that looks like an item id) are melted.

    Returns
    -------
    RawSurvey
        ``rows`` is lazy: files are scanned when it is collected (CSV/Parquet), except
        .sav/.dta, which pyreadstat reads eagerly.

    Raises
    ------
    IngestError
        A missing file, a glob that matches nothing, an unknown format, a file without a
        participant id or wave column, duplicate column names, a layout mismatch (a
        wide/qualtrics file without any item column, a long file without item/value, a
        Qualtrics export read as wide or a plain wide file read as qualtrics), a file
        without a timestamp column in a study with telemetry, a CSV file that cannot be
        read at all (binary, an unreadable header, another encoding than declared, every
        row malformed; see :func:`read_csv_text`). Empty files, files with a header only,
        files without a timestamp column and malformed rows are *not* errors: they are
        reported in ``file_issues`` (and ``malformed``).
    """
    frames: list[pl.LazyFrame] = []
    issues: list[dict[str, object]] = []
    coercions: list[dict[str, object]] = []
    files: list[str] = []
    by_source: dict[str, tuple[str, ...]] = {}
    malformed: list[pl.DataFrame] = []
    identifiers: list[dict[str, object]] = []
    formats: dict[str, str | None] = {}
    for survey in spec.survey:
        for path in expand_paths(spec, survey.path):
            try:
                got = _read_one(spec, survey, path, library)
            except pl.exceptions.ComputeError as exc:  # ragged rows, bad encoding, ...
                detail = str(exc).strip().splitlines()[0]
                raise IngestError(path, f"cannot parse: {detail}") from None
            files.append(_display(spec, path))
            if survey.instruments:
                by_source[files[-1]] = tuple(survey.instruments)
            issues += got.issues
            coercions += got.coercions
            identifiers += got.identifiers
            formats[files[-1]] = survey.timestamp_format
            if got.malformed is not None and got.malformed.height:
                malformed.append(got.malformed)
            if got.rows is not None:
                frames.append(got.rows)
    rows = pl.concat(frames, how="vertical") if frames else pl.LazyFrame(schema=RAW_SCHEMA)
    return RawSurvey(
        rows=rows,
        file_issues=pl.DataFrame(issues, schema=FILE_ISSUE_SCHEMA),
        coercions=pl.DataFrame(coercions, schema=COERCION_SCHEMA),
        files=files,
        instruments_by_source=by_source,
        malformed=pl.concat(malformed) if malformed else pl.DataFrame(schema=MALFORMED_SCHEMA),
        identifiers=pl.DataFrame(identifiers, schema=IDENTIFIER_SCHEMA),
        timestamp_formats=formats,
    )


#: Layouts tried on an example timestamp to suggest a ``timestamp_format``.
_FORMAT_GUESSES: tuple[str, ...] = (
    "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M",
    "%d/%m/%Y", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y", "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M", "%Y/%m/%d", "%m/%d/%y %H:%M", "%m/%d/%y", "%d-%m-%Y %H:%M", "%d-%m-%Y",
)


def guess_timestamp_format(example: str) -> str | None:
    """The first of a few common layouts (US first) that parses ``example``, or None."""
    for fmt in _FORMAT_GUESSES:
        try:
            datetime.strptime(example.strip(), fmt)
        except ValueError:
            continue
        return fmt
    return None


def timestamp_issues(raw: RawSurvey, rows: pl.DataFrame, quarantine: pl.DataFrame) -> pl.DataFrame:
    """``timestamps_not_parsed`` file issues: files where most timestamps did not parse.

    ``rows`` is the raw long table, ``quarantine`` validation's (bad timestamps show the
    ``timestamp`` column and its text). The detail gives an example and a
    ``timestamp_format`` that reads it, when one of a few common layouts does.
    """
    bad = quarantine.filter(pl.col("reason") == "invalid_timestamp")
    if bad.height == 0:
        return pl.DataFrame(schema=FILE_ISSUE_SCHEMA)
    stamped = (
        rows.filter(pl.col("timestamp").is_not_null()).group_by("source").agg(pl.len().alias("n"))
    )
    counts = bad.group_by("source", maintain_order=True).agg(
        pl.len().alias("bad"), pl.col("value").first().alias("example")
    ).join(stamped, on="source", how="left")
    out = []
    for source, n_bad, example, n in counts.iter_rows():
        if not n or n_bad * 2 <= n:
            continue
        declared = raw.timestamp_formats.get(source)
        guess = guess_timestamp_format(example or "")
        detail = f"{n_bad} of {n} rows have a timestamp that is not "
        detail += f"in timestamp_format {declared!r}" if declared else "ISO 8601 (2024-03-15T09:30:00)"
        detail += f", e.g. {example!r}; set timestamp_format = "
        detail += f"\"{guess}\"" if guess else "\"%m/%d/%Y %H:%M\" (a strftime format)"
        out.append(_issue(source, "timestamp", "timestamps_not_parsed", detail + " in its [[survey]]"))
    return pl.DataFrame(out, schema=FILE_ISSUE_SCHEMA)


def read_participants(spec: StudySpec) -> pl.DataFrame:
    """Read the participants table: all columns as text, canonical names.

    ``[participants] id_column``, ``arm_column`` and ``cluster_column`` are renamed to
    ``participant_id``, ``arm`` and ``cluster``; header whitespace and whitespace around
    ids are stripped; other columns (covariates) are kept as given.

    Raises
    ------
    IngestError
        Missing or empty file, missing id/arm column, blank or repeated participant ids
        (a participants table that cannot be joined unambiguously is unusable).
    """
    p = spec.participants
    path = expand_paths(spec, p.path)
    if len(path) != 1:
        raise IngestError(spec.resolve(p.path), "participants must be one file, not a glob")
    lf = _scan_file(path[0], _format_of(path[0], p.format), 1)
    if lf is None:
        raise IngestError(path[0], "the participants file is empty")
    renames = {p.id_column: "participant_id", p.arm_column: "arm"}
    if p.cluster_column is not None:
        renames[p.cluster_column] = "cluster"
    lf, origin, _ = _normalise_header(lf, _display(spec, path[0]), path[0], renames)
    for key, col in (("id_column", p.id_column), ("arm_column", p.arm_column)):
        if renames[col] not in origin:
            raise IngestError(path[0], f"no column '{col}' ([participants] {key})")
    if p.cluster_column is not None and "cluster" not in origin:
        raise IngestError(
            path[0], f"no column '{p.cluster_column}' ([participants] cluster_column)"
        )
    df = lf.drop(_ROW).with_columns(pl.col("participant_id").str.strip_chars()).collect()
    first = ["participant_id", "arm"] + (["cluster"] if "cluster" in origin else [])
    df = df.select(first + [c for c in df.columns if c not in first])
    blank = df.filter(pl.col("participant_id").is_null() | (pl.col("participant_id") == ""))
    if blank.height:
        raise IngestError(path[0], f"{blank.height} row(s) without a participant id")
    dups = df.filter(pl.col("participant_id").is_duplicated())["participant_id"].unique()
    if dups.len():
        raise IngestError(
            path[0], f"participant ids repeat: {sorted(dups.to_list())[:5]} ({dups.len()} ids)"
        )
    return df
