"""Table files read row by row: parquet in record batches, JSON lines and CSV a line at a time.

Memory stays bounded by a batch, whatever the file's size, and one bad line never costs the
others: a line that does not parse is a :class:`BadRow` naming its line number, and the rows
around it are read as usual. A file that cannot be opened as its format at all raises
:class:`TableUnreadable` with the parser's reason.

Formats (:func:`table_format`): ``parquet`` (``.parquet``/``.pq``), ``jsonl`` (``.jsonl``,
``.ndjson``, and ``.json`` holding one object per line), ``json`` (a ``.json`` document: a list of
records, or a ``{file name: caption}`` mapping, whose rows are ``file_name``/``caption``), ``csv``
(``.csv``; ``.tsv`` tab-separated).
"""

from __future__ import annotations

import csv
import io as _pyio
import json
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from recaption import io

BATCH_ROWS = 1024  # parquet rows decoded at a time
SCHEMA_LINES = 1000  # JSON lines looked at for the column names
MAPPING_COLUMNS = ("file_name", "caption")  # the columns of a {file name: caption} document


class TableUnreadable(Exception):
    """The file cannot be read as its format at all; ``reason`` says why, for the manifest."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class BadRow:
    """A row that did not parse: its row index (what its key is made of), line number and why."""

    row: int
    line: int
    reason: str


_ESCAPED = re.compile("[\udc80-\udcff]")  # a byte that was not UTF-8, escaped by surrogateescape
_BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark
TABLE_SUFFIXES = (".parquet", ".pq", ".jsonl", ".ndjson", ".json", ".csv", ".tsv")


def is_table_name(uri: str) -> bool:
    """Whether the name is a table's (no file is opened)."""
    return uri.lower().endswith(TABLE_SUFFIXES)


def table_format(uri: str) -> str:
    """``parquet``, ``jsonl``, ``json`` (a JSON document), ``csv``, or ``""`` (not a table).

    A ``.json`` file is a document when it starts with ``[``, or is one object spread over several
    lines (a mapping); one object per line is JSON lines. Only ``.json`` files are opened to tell.
    """
    name = uri.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return _json_layout(uri)
    if name.endswith((".csv", ".tsv")):
        return "csv"
    return ""


def _json_layout(uri: str) -> str:
    try:
        with io.open_file(uri, "rb") as f:
            first = f.readline()  # whole: a cut line would not parse and pass for a document
    except OSError:
        return "jsonl"  # reported when it is read
    head = first.removeprefix(_BOM).lstrip()
    if head.startswith(b"["):
        return "json"
    if head.startswith(b"{"):
        try:
            value = json.loads(head)
        except ValueError:
            return "json"  # an object over several lines: a document
        if _file_mapping(value) and not _more_lines(uri):
            return "json"  # {"a.jpg": "...", ...} on one line: a mapping, not one JSON-lines record
    return "jsonl"


def _file_mapping(value: Any) -> bool:
    """An object of strings keyed by image file names (a record's keys are column names)."""
    from recaption.images.formats import is_image_extension

    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(v, str) for v in value.values())
        and all(is_image_extension(posixpath.splitext(k)[1].lstrip(".").lower()) for k in value)
    )


def _more_lines(uri: str) -> bool:
    """Whether anything but blank lines follows the first line."""
    with io.open_file(uri, "rb") as f:
        f.readline()
        return any(line.strip() for line in f)


def _lines(f: Any) -> Iterator[bytes]:
    """The lines of a binary file, the first without a byte-order mark (Windows tools such as
    Notepad start UTF-8 files with one)."""
    for n, raw in enumerate(f):
        yield raw.removeprefix(_BOM) if n == 0 else raw


def _text(raw: bytes, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"line {line} is not valid UTF-8 (byte {e.start}: {raw[e.start : e.start + 1]!r})"
        ) from None


def _json_line(raw: bytes, line: int) -> dict[str, Any] | str:
    """The object on one line, or why it is not one."""
    try:
        value = json.loads(_text(raw, line))
    except json.JSONDecodeError as e:
        return f"line {line} is not valid JSON ({e.msg} at column {e.colno})"
    except ValueError as e:
        return str(e)
    if not isinstance(value, dict):
        return f"line {line} is JSON but not an object ({type(value).__name__})"
    return value


def _document(uri: str) -> list[Any]:
    """The records of a JSON document (read whole: manifests are small)."""
    try:
        with io.open_file(uri, "rb") as f:
            value = json.loads(f.read().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise TableUnreadable(f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise TableUnreadable(
            f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); expected a list of "
            "records, a {file name: caption} object, or one object per line (JSON lines)"
        ) from None
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return [dict(zip(MAPPING_COLUMNS, kv, strict=True)) for kv in value.items()]
    raise TableUnreadable(
        f"a JSON {type(value).__name__} that is neither a list of records nor a {{file name: caption}} "
        "mapping of strings"
    )


def _csv_lines(uri: str) -> Iterator[tuple[int, list[str] | str]]:
    """(line number, fields or why the record did not parse) per CSV record; the header first.

    Bytes that are not UTF-8 cost only their record: they are decoded as escapes (surrogateescape)
    and the record that holds one is reported, so the records after it are still read."""
    delimiter = "\t" if uri.lower().endswith(".tsv") else ","
    with io.open_file(uri, "rb") as f:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is no part of the first column's name
        text = _pyio.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield reader.line_num, f"line {reader.line_num}: {e}"
                continue
            bad = next((m for m in map(_ESCAPED.search, fields) if m), None)
            if bad is not None:
                byte = bytes([ord(bad.group()) - 0xDC00])
                yield reader.line_num, f"line {reader.line_num} is not valid UTF-8 (byte {byte!r})"
                continue
            yield reader.line_num, fields


def read_schema(uri: str) -> tuple[list[str], dict[str, Any]]:
    """Column names and arrow types (strings for text formats) without reading the whole file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fmt = table_format(uri)
    if fmt == "parquet":
        try:
            with io.open_file(uri, "rb") as f:
                schema = pq.ParquetFile(f).schema_arrow
        except (OSError, pa.ArrowException) as e:
            raise TableUnreadable(f"not a readable parquet file ({type(e).__name__}: {e})") from None
        return list(schema.names), {n: schema.field(n).type for n in schema.names}
    names: dict[str, None] = {}
    if fmt == "json":
        for rec in _document(uri):
            if isinstance(rec, dict):
                names.update(dict.fromkeys(rec))
    elif fmt == "jsonl":
        first_problem, good, bad = "", 0, 0
        with io.open_file(uri, "rb") as f:
            for n, raw in enumerate(_lines(f), 1):
                if n > SCHEMA_LINES:
                    break
                if not raw.strip():
                    continue
                value = _json_line(raw, n)
                if isinstance(value, str):
                    first_problem, bad = first_problem or value, bad + 1
                    continue
                good += 1
                names.update(dict.fromkeys(value))
        if not good and first_problem:
            raise TableUnreadable(
                f"not JSON lines: none of {'its' if bad < SCHEMA_LINES else 'the first'} {bad} lines is a "
                f"JSON object ({first_problem})"
            )
    elif fmt == "csv":
        for _, fields in _csv_lines(uri):
            if isinstance(fields, str):
                raise TableUnreadable(f"its header does not parse as CSV ({fields})")
            names.update(dict.fromkeys(fields))
            break
    return list(names), {n: pa.string() for n in names}


def count_rows(uri: str) -> int:
    """Rows of a table: parquet's footer; lines of JSON lines; records of CSV (after the header)."""
    import pyarrow.parquet as pq

    fmt = table_format(uri)
    if fmt == "parquet":
        with io.open_file(uri, "rb") as f:
            return int(pq.ParquetFile(f).metadata.num_rows)
    if fmt == "json":
        return len(_document(uri))
    if fmt == "jsonl":
        with io.open_file(uri, "rb") as f:
            return sum(1 for _ in f)
    return max(0, sum(1 for _ in _csv_lines(uri)) - 1)


def iter_rows(
    uri: str, columns: list[str], start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, dict[str, Any]] | BadRow]:
    """``(row index, {column: value})`` for rows ``[start, stop)``, and a :class:`BadRow` for each
    row there that does not parse. A column a row lacks is ``None``."""
    fmt = table_format(uri)
    if fmt == "parquet":
        yield from _parquet_rows(uri, columns, start, stop)
        return
    if fmt == "json":
        for i, rec in enumerate(_document(uri)):
            if stop is not None and i >= stop:
                return
            if i < start:
                continue
            if isinstance(rec, dict):
                yield i, {c: rec.get(c) for c in columns}
            else:
                yield BadRow(i, 0, f"record {i} is not an object ({type(rec).__name__})")
        return
    if fmt == "jsonl":
        with io.open_file(uri, "rb") as f:
            for i, raw in enumerate(_lines(f)):
                if stop is not None and i >= stop:
                    return
                if i < start or not raw.strip():
                    continue
                value = _json_line(raw, i + 1)
                if isinstance(value, str):
                    yield BadRow(i, i + 1, value)
                else:
                    yield i, {c: value.get(c) for c in columns}
        return
    header: list[str] | None = None
    i = -1
    for line, fields in _csv_lines(uri):
        if header is None:
            if isinstance(fields, str):
                raise TableUnreadable(f"its header does not parse as CSV ({fields})")
            header = fields
            continue
        i += 1
        if stop is not None and i >= stop:
            return
        if i < start:
            continue
        if isinstance(fields, str):
            yield BadRow(i, line, fields)
        elif len(fields) != len(header):
            if not any(fields):
                continue  # a blank line
            yield BadRow(i, line, f"line {line} has {len(fields)} field(s), the header has {len(header)}")
        else:
            row = dict(zip(header, fields, strict=True))
            yield i, {c: row.get(c) for c in columns}


def _parquet_rows(
    uri: str, columns: list[str], start: int, stop: int | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    with io.open_file(uri, "rb") as f:
        pf = pq.ParquetFile(f)
        md = pf.metadata
        stop = md.num_rows if stop is None else min(stop, md.num_rows)
        groups, row, first = [], 0, None
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if row + n > start and row < stop:
                groups.append(g)
                first = row if first is None else first
            row += n
        if not groups:
            return
        i = int(first or 0)
        # batches of the overlapping row groups: only a batch of rows is ever decoded at once
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, columns=columns):
            if i + batch.num_rows <= start:
                i += batch.num_rows
                continue
            for rec in batch.to_pylist():
                if i >= stop:
                    return
                if i >= start:
                    yield i, rec
                i += 1
