"""Reading one user-supplied table (CSV, TSV, JSON lines or Parquet) with plain-language errors.

The format comes from the file's extension; a CSV's delimiter is judged from its header line
(comma, semicolon, tab or pipe); a UTF-8 byte order mark is dropped. CSV and TSV cells are read
as text, so ids such as "007" keep their leading zeros. Polars' own messages never reach the
user: each failure is a `DataError` naming the file and, where it can be found, the row.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import polars as pl

from recsys.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".parquet": "parquet"}
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
BOM = b"\xef\xbb\xbf"


def table_format(path: Path) -> str:
    """csv | tsv | jsonl | parquet, from the extension, or a `DataError` naming the choices."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"cannot tell the format from the extension {path.suffix or '(none)'!r}; "
                        f"use one of {', '.join(FORMATS)}", file=str(path))
    return fmt


def read_table(path: str | Path) -> pl.DataFrame:
    """The rows of `path` as a frame (at least one data row), or a `DataError`."""
    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    if fmt == "parquet":
        try:
            frame = pl.read_parquet(path)
        except Exception as exc:  # polars raises several kinds for a damaged file
            raise DataError("cannot read as Parquet: not a Parquet file, or a damaged one",
                            file=str(path)) from exc
    else:
        data = path.read_bytes().removeprefix(BOM)
        if not data.strip():
            raise DataError("the file is empty", file=str(path))
        frame = _read_jsonl(data, path) if fmt == "jsonl" else _read_delimited(data, path, fmt)
    if frame.height == 0:
        raise DataError("the file has no data rows", file=str(path))
    return frame


def sniff_delimiter(header: str) -> str:
    """The delimiter that splits the header line into the most fields (comma when none does)."""
    counts = {d: len(next(csv.reader([header], delimiter=d))) for d in DELIMITERS}
    best = max(counts.values())
    return next(d for d in DELIMITERS if counts[d] == best)


def _read_delimited(data: bytes, path: Path, fmt: str) -> pl.DataFrame:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n")
        raise DataError("not UTF-8 text (save the file as UTF-8)", file=str(path),
                        row=max(line - 1, 0)) from exc
    header = text.split("\n", 1)[0].rstrip("\r")
    delimiter = "\t" if fmt == "tsv" else sniff_delimiter(header)
    try:
        return pl.read_csv(io.BytesIO(data), separator=delimiter, infer_schema=False)
    except Exception as exc:  # polars' messages name its own options; say what is wrong instead
        raise _delimited_error(text, delimiter, path) from exc


def _delimited_error(text: str, delimiter: str, path: Path) -> DataError:
    rows = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(rows)
        for row, fields in enumerate(rows):
            if fields and len(fields) != len(header):
                return DataError(
                    f"{len(fields)} fields where the header has {len(header)} (separator: "
                    f"{DELIMITERS[delimiter]}); quote cells that contain the separator",
                    file=str(path), row=row)
    except csv.Error as exc:
        return DataError(f"not readable as {DELIMITERS[delimiter]}-separated text: {exc}",
                         file=str(path))
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        return DataError(f"the header repeats column {', '.join(map(repr, duplicates))}",
                         file=str(path))
    return DataError(f"not readable as {DELIMITERS[delimiter]}-separated text", file=str(path))


def unreadable(path: Path, separator: str | None = None) -> DataError:
    """The error for a delimited file polars could not read, in words rather than its options."""
    data = path.read_bytes().removeprefix(BOM) if path.is_file() else b""
    if not data.strip():
        return DataError("the file is empty", file=str(path))
    text = data.decode("utf-8", errors="replace")
    separator = separator or ("\t" if path.suffix.lower() == ".tsv" else
                              sniff_delimiter(text.split("\n", 1)[0]))
    return _delimited_error(text, separator, path)


def _read_jsonl(data: bytes, path: Path) -> pl.DataFrame:
    try:
        return pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
    except Exception as exc:  # find the line polars choked on and say why in plain words
        raise _jsonl_error(data, path) from exc


def _jsonl_error(data: bytes, path: Path) -> DataError:
    row = 0
    for line in data.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            return DataError("not a JSON object (JSON lines: one object per line)",
                             file=str(path), row=row)
        if not isinstance(value, dict):
            return DataError("not a JSON object (JSON lines: one object per line)",
                             file=str(path), row=row)
        row += 1
    return DataError("not readable as JSON lines: a field holds values of different kinds "
                     "(e.g. numbers in some rows and text or lists in others)", file=str(path))


__all__ = ["DELIMITERS", "FORMATS", "read_table", "sniff_delimiter", "table_format",
           "unreadable"]
