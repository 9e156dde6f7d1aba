"""Reading the rows of a raw dataset file, one at a time and in file order.

Readers (`read_rows`): JSONL, JSON array, Parquet and CSV. A bad row becomes a `RawRow` with an
`error` (counted and quarantined by curation); only a file that cannot be read at all raises
`InputError`. What a row means is `formats`' business, not this module's.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from pedigree.errors import PedigreeError

READABLE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_BLOCK = 1 << 23  # JSONL is decoded 8 MiB at a time: one decode call instead of one per line
_PARQUET_BATCH = 8192
_CSV_FIELD_LIMIT = 2**31 - 1  # the csv module's default (128 KiB a field) is short for answers
_SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes, under errors="surrogateescape"
# A UTF-16 surrogate alone (JSON's "\ud800"): not text, and it cannot be encoded as UTF-8.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_TOO_DEEP = "arrays or objects nested too deep to read"



class InputError(PedigreeError, ValueError):
    """A whole input file that cannot be read."""


class RowError(ValueError):
    """A row that cannot be used; `reason` is a short code counted in the curation report."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RawRow(NamedTuple):
    # A NamedTuple, not a dataclass: it is built once per row and is twice as cheap to build.
    file: str  # path relative to the repository root
    line: int  # 1-based line (JSONL; CSV: where the record starts) or item (JSON array, Parquet)
    text: str  # the row as it appeared in the file (for the rejects file: nothing is lost)
    value: Any = None  # the parsed row, or None when the row failed to parse
    error: RowError | None = None


# ----------------------------------------------------------------------------- readers
def read_rows(path: Path, rel: str) -> Iterator[RawRow]:
    """The rows of one file, in file order, one at a time (`rel` names the file in rows and
    errors). Blank lines are not rows."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _read_json_array(path, rel)
    if suffix == ".parquet":
        return _read_parquet(path, rel)
    if suffix == ".csv":
        return _read_csv(path, rel)
    return _read_jsonl(path, rel)


def _read_jsonl(path: Path, rel: str) -> Iterator[RawRow]:
    """The hot path (a million rows must take seconds): a block of whole lines is decoded at
    once and split; only a block with bytes that are not UTF-8 is decoded line by line."""
    loads = json.loads
    scan = json.JSONDecoder().scan_once
    number = 0
    with path.open("rb") as f:
        for block in _line_blocks(f):
            if number == 0:
                block = block.removeprefix(b"\xef\xbb\xbf")  # a byte order mark (Windows tools)
            try:
                lines: list[str] | list[bytes] = block.decode("utf-8").split("\n")
            except UnicodeDecodeError:
                lines = block.split(b"\n")
            if block.endswith(b"\n"):
                lines.pop()  # the empty string after the last newline is not a line
            for line in lines:
                number += 1
                if line.__class__ is bytes:  # only in a block that is not all UTF-8
                    try:
                        line = line.decode("utf-8")
                    except UnicodeDecodeError as err:
                        shown = line.decode("utf-8", errors="replace")
                        yield RawRow(rel, number, shown, error=RowError(
                            "invalid_utf8", f"byte {err.start} of the line: {err.reason}"))
                        continue
                try:
                    # json's C scanner, without json.loads's Python wrapper (a third of its
                    # time); a line it does not take whole goes to json.loads, which decides.
                    value, end = scan(line, 0)
                    if end != len(line):
                        value = loads(line)
                except (StopIteration, ValueError, RecursionError):
                    try:
                        value = loads(line)  # leading white space; or the error and its column
                    except (ValueError, RecursionError) as err:
                        # Blank lines fail too: checking for them only here keeps the check off
                        # the path of the rows that parse.
                        if line and not line.isspace():
                            yield RawRow(rel, number, line, error=_json_error(err))
                        continue
                yield RawRow(rel, number, line, value)  # type: ignore[arg-type]


def _json_error(err: ValueError | RecursionError) -> RowError:
    """A line that is not JSON; or JSON that Python will not hold: an integer of more than 4300
    digits (a ValueError) or arrays and objects nested about a thousand deep (a RecursionError)."""
    if isinstance(err, json.JSONDecodeError):
        return RowError("invalid_json", f"{err.msg} (column {err.colno})")
    if isinstance(err, RecursionError):
        return RowError("invalid_json", _TOO_DEEP)
    return RowError("invalid_json", str(err))


def _line_blocks(f: io.BufferedReader) -> Iterator[bytes]:
    """The file in blocks that end at a newline (the last one may not), so no line is split.
    Windows line ends become "\\n" (a raw CR cannot be inside a JSON string, so it is safe)."""
    tail = b""
    while chunk := f.read(_BLOCK):
        cut = chunk.rfind(b"\n")
        if cut < 0:  # a line longer than a block: keep reading
            tail += chunk
            continue
        block = tail + chunk[:cut + 1]
        tail = chunk[cut + 1:]
        yield block.replace(b"\r\n", b"\n") if b"\r" in block else block
    if tail:
        yield tail.replace(b"\r\n", b"\n")


def _read_json_array(path: Path, rel: str) -> Iterator[RawRow]:
    # A JSON array is parsed whole by nature: an error anywhere makes the whole file unreadable.
    try:
        items = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (ValueError, RecursionError) as err:  # also too long integers, too deep nesting
        why = _TOO_DEEP if isinstance(err, RecursionError) else err
        raise InputError(f"{rel}: not a readable JSON array ({why}); use JSONL for partial data"
                         ) from None
    if not isinstance(items, list):
        raise InputError(f"{rel}: a .json file must hold an array of rows")
    for number, item in enumerate(items, start=1):
        text = json.dumps(item, ensure_ascii=False)
        if not text.isascii() and LONE_SURROGATE.search(text):
            # An escape such as \ud800 without its pair: as a character it cannot be written
            # as UTF-8 (in the rejects file), so the text keeps the escape.
            text = json.dumps(item)
        yield RawRow(rel, number, text, value=item)


def _read_parquet(path: Path, rel: str) -> Iterator[RawRow]:
    """Rows in batches; `line` is the 1-based row number and `text` the row as JSON (values JSON
    has no type for, such as dates and bytes, as their str())."""
    import pyarrow as pa  # imported here: most runs read no Parquet, and pyarrow is slow to load
    import pyarrow.parquet as pq

    # ValueError: pyarrow's UnicodeDecodeError where a column name or a string is not UTF-8.
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise InputError(f"{rel}: not a readable Parquet file ({err})") from None
    number = 0
    while True:
        try:
            batch = next(batches, None)
            values = [] if batch is None else batch.to_pylist()
        except (pa.ArrowException, OSError, ValueError) as err:
            raise InputError(f"{rel}: Parquet data unreadable after row {number} ({err})") from None
        if batch is None:
            return
        for value in values:
            number += 1
            text = json.dumps(value, ensure_ascii=False, default=str)
            yield RawRow(rel, number, text, value)


def _read_csv(path: Path, rel: str) -> Iterator[RawRow]:
    """Rows of a CSV file with a header row; every value is a string (an empty cell is "").
    `line` is the physical line where the record starts (a quoted field may span lines);
    `text` is the record's lines as they are in the file."""
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    # surrogateescape: bytes that are not UTF-8 reject their row, not the whole file.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        taken: list[str] = []  # the physical lines of the record being read, for `text`

        def lines() -> Iterator[str]:
            for physical in f:
                taken.append(physical)
                yield physical

        # strict: a stray quote or a quote left open at the end of the file is an error, not a
        # field that silently swallows the lines after it.
        reader = csv.reader(lines(), strict=True)
        header = _csv_header(reader, rel)
        while header is not None:
            taken.clear()
            start = reader.line_num + 1
            try:
                fields = next(reader, None)
            except csv.Error as err:
                if reader.line_num < start:  # nothing consumed: stop rather than loop forever
                    raise InputError(f"{rel}:{start}: unreadable CSV ({err})") from None
                yield RawRow(rel, start, _record_text(taken), error=RowError(
                    "malformed_csv", f"{err} (lines {start}-{reader.line_num})"))
                continue
            if fields is None:
                return
            if fields:  # not a blank line
                yield _csv_row(rel, start, _record_text(taken), header, fields)


def _record_text(lines: list[str]) -> str:
    """The record as in the file, without its line end; bytes that are not UTF-8 as U+FFFD."""
    text = "".join(lines)
    text = text[:-2] if text.endswith("\r\n") else text[:-1] if text[-1:] in "\r\n" else text
    if not text.isascii() and _SURROGATE.search(text):
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text


def _csv_header(reader: Any, rel: str) -> list[str] | None:
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise InputError(f"{rel}: the CSV header row is unreadable ({err})") from None
    if header is None:
        return None
    if any(_SURROGATE.search(name) for name in header):
        raise InputError(f"{rel}: the CSV header row has bytes that are not UTF-8")
    if len(set(header)) != len(header):
        raise InputError(f"{rel}: the CSV header names a column twice: {header}")
    return header


def _csv_row(rel: str, line: int, text: str, header: list[str], fields: list[str]) -> RawRow:
    for i, value in enumerate(fields):
        if not value.isascii() and _SURROGATE.search(value):
            name = header[i] if i < len(header) else f"#{i + 1}"
            return RawRow(rel, line, text, error=RowError(
                "invalid_utf8", f"field {name!r} has bytes that are not UTF-8"))
    if len(fields) != len(header):
        return RawRow(rel, line, text, error=RowError(
            "malformed_csv", f"{len(fields)} fields, the header has {len(header)}: {header}"))
    return RawRow(rel, line, text, dict(zip(header, fields)))
