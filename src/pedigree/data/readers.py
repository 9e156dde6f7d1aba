"""Reading the rows of a raw dataset file, one at a time and in file order.

Readers (`read_rows`): JSONL, JSON array, Parquet, CSV, Arrow IPC (the `.arrow` files of
`datasets`' `save_to_disk`, stream or file format) and plain text (`.txt`, one document a line:
the row `{"text": line}`). JSONL, JSON, CSV and text may come compressed as they are published,
`.gz` or `.zst` (`train.jsonl.gz`): the file is decompressed as it is read, and the suffix inside
(`.jsonl`) picks the reader. A bad row becomes a `RawRow` with an `error`
(counted and quarantined by curation); only a file that cannot be read at all raises
`InputError`, and so does compressed data that turns out corrupt or truncated part way (the
message says how far reading got; the rows before it are not a partial result to trust).
What a row means is `formats`' business, not this module's.

Memory stays bounded by the block or batch size, compressed or not, with one exception: a JSON
array is parsed whole by nature, so a `.json` (or `.json.gz`) file is held in memory whole,
decompressed. Use JSONL for large data.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from pedigree.data.jsonl import LONE_SURROGATE
from pedigree.errors import PedigreeError

_TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".txt")  # the formats published compressed
_COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
READABLE_SUFFIXES = (*_TEXT_SUFFIXES, ".parquet", ".arrow",
                     *(s + c for c in _COMPRESSIONS for s in _TEXT_SUFFIXES))
_BLOCK = 1 << 23  # JSONL is decoded 8 MiB at a time: one decode call instead of one per line
_ZSTD_CHUNK = 1 << 16  # compressed bytes decompressed at once: the output is ~10x that
_PARQUET_BATCH = 8192  # rows converted to Python at once (Parquet and Arrow)
_CSV_FIELD_LIMIT = 2**31 - 1  # the csv module's default (128 KiB a field) is short for answers
_SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes, under errors="surrogateescape"
_TOO_DEEP = "arrays or objects nested too deep to read"



class InputError(PedigreeError, ValueError):
    """A whole input file that cannot be read."""


class RowError(ValueError):
    """A row that cannot be used; `reason` is a short code counted in the curation report."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Span(NamedTuple):
    """Whole lines of a JSONL or text file: bytes [start, end), the first of them line `line`.
    Curation's worker processes each read a span of a large file (`line_spans`)."""

    start: int
    end: int
    line: int


class RawRow(NamedTuple):
    # A NamedTuple, not a dataclass: it is built once per row and is twice as cheap to build.
    file: str  # path relative to the repository root
    line: int  # 1-based line (JSONL; CSV: where the record starts) or item (JSON array, Parquet)
    text: str  # the row as it appeared in the file (for the rejects file: nothing is lost)
    value: Any = None  # the parsed row, or None when the row failed to parse
    error: RowError | None = None


# ----------------------------------------------------------------------------- readers
def readable_suffix(path: Path) -> str | None:
    """The whole suffix that makes `path` readable (`.jsonl.gz`, not `.gz`), lower case; None
    for a file no reader takes. `Path.suffix` alone would see `.gz`."""
    name = path.name.lower()
    # Longest first: `.jsonl.gz` before `.gz` could ever match, `.jsonl` is not `.json`.
    for suffix in sorted(READABLE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def is_plain_text(path: Path) -> bool:
    """Whether `path` is read as plain text, one document a line (`.txt`, compressed or not)."""
    return (readable_suffix(path) or "").startswith(".txt")


def splittable(path: Path) -> bool:
    """Whether `path` is read line by line from its own bytes (uncompressed JSONL or text), so
    that a span of its lines can be read alone (`read_rows(..., span)`)."""
    return readable_suffix(path) in (".jsonl", ".txt", None)


def line_spans(path: Path, size: int) -> list[Span]:
    """`path` (`splittable`) cut into spans of about `size` bytes, each ending after a newline,
    with the number of each span's first line: one pass counting newlines."""
    spans: list[Span] = []
    start = position = 0
    line = first = 1  # line: the number of the line at `position`
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            at = 0
            while position + len(block) - start >= size:  # a cut falls in this block
                cut = block.find(b"\n", max(at, start + size - 1 - position))
                if cut < 0:
                    break
                line += block.count(b"\n", at, cut + 1)
                at = cut + 1
                spans.append(Span(start, position + at, first))
                start, first = position + at, line
            line += block.count(b"\n", at)
            position += len(block)
    if position > start or not spans:
        spans.append(Span(start, position, first))
    return spans


def read_rows(path: Path, rel: str, span: Span | None = None) -> Iterator[RawRow]:
    """The rows of one file, in file order, one at a time (`rel` names the file in rows and
    errors). Blank lines are not rows. A file of no readable suffix is read as JSONL. `span`:
    only those lines of a `splittable` file."""
    if span is not None:
        if not splittable(path):
            raise ValueError(f"{rel}: only a JSONL or text file is read a span at a time")
        return (_read_text if is_plain_text(path) else _read_jsonl)(path, rel, span=span)
    name = path.name.lower()
    compression = next((c for c in _COMPRESSIONS if name.endswith(c)), None)
    suffix = Path(name.removesuffix(compression)).suffix if compression else path.suffix.lower()
    if compression and suffix in (".parquet", ".arrow"):
        # Both compress inside the file; an outer layer would have to be undone whole first.
        raise InputError(f"{rel}: a compressed {suffix} file; decompress it first")
    if suffix == ".json":
        rows = _read_json_array(path, rel, compression)
    elif suffix == ".parquet":
        return _read_parquet(path, rel)
    elif suffix == ".arrow":
        return _read_arrow(path, rel)
    elif suffix == ".csv":
        rows = _read_csv(path, rel, compression)
    elif suffix == ".txt":
        rows = _read_text(path, rel, compression)
    else:
        rows = _read_jsonl(path, rel, compression)
    return _decompressed(rows, rel, compression) if compression else rows


def _open_binary(path: Path, compression: str | None) -> io.BufferedIOBase:
    """The file's bytes, decompressed as they are read (never the whole file at once)."""
    if compression == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if compression == ".zst":
        return io.BufferedReader(_ZstdReader(path), buffer_size=_ZSTD_CHUNK)
    return path.open("rb")


class _ZstdReader(io.RawIOBase):
    """A zstd file, decompressed as it is read, frame after frame (`zstd -T`, `pzstd` and
    concatenated files hold several). Not zstandard's `stream_reader`: where the file ends
    inside a frame (a download cut short) it ends silently, as if the data were whole; here
    that is a `ZstdError`. Memory: the output of one `_ZSTD_CHUNK` of input at a time (data
    compressed 10x: 640 KiB)."""

    def __init__(self, path: Path):
        import zstandard  # imported here: most runs read no zstd

        self._error = zstandard.ZstdError
        self._dctx = zstandard.ZstdDecompressor()
        self._file = path.open("rb")
        self._frame: Any = None  # the decompressor of the frame under way, if one is
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            if not self._decompress_more():
                return 0
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress_more(self) -> bool:
        data = self._file.read(_ZSTD_CHUNK)
        if not data:
            if self._frame is not None:
                raise self._error("the file ends inside a frame")
            return False
        out = []
        while data:
            if self._frame is None:
                self._frame = self._dctx.decompressobj()
            out.append(self._frame.decompress(data))
            data = b""
            if self._frame.eof:  # the frame is whole; what follows it begins the next
                data, self._frame = self._frame.unused_data, None
        self._out = memoryview(b"".join(out))
        return True

    def close(self) -> None:
        self._file.close()
        super().close()


def _decompression_errors() -> tuple[type[BaseException], ...]:
    # gzip: BadGzipFile (an OSError) for a bad header or CRC, EOFError for a truncated file,
    # zlib.error for a corrupt deflate stream.
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error)
    try:
        import zstandard
    except ImportError:  # pragma: no cover - a dependency; only .zst files need it
        return errors
    return (*errors, zstandard.ZstdError)


def _decompressed(rows: Iterator[RawRow], rel: str, compression: str) -> Iterator[RawRow]:
    """`rows`, with a decompression failure part way as an `InputError` that names the file and
    the last line read. Nothing past the damage can be read, so the file fails whole, as one
    unreadable from its start does; the line only tells how much of the download is good."""
    caught = _decompression_errors()
    last = 0
    try:
        for row in rows:
            last = row.line
            yield row
    except FileNotFoundError:
        raise  # not a question of the data
    except caught as err:
        where = f"after line {last}" if last else "before its first row"
        raise InputError(f"{rel}: {_COMPRESSIONS[compression]} data corrupt or truncated {where} "
                         f"({type(err).__name__}: {err})") from None


def _read_jsonl(path: Path, rel: str, compression: str | None = None,
                span: Span | None = None) -> Iterator[RawRow]:
    """The hot path (a million rows must take seconds): a block of whole lines is decoded at
    once and split; only a block with bytes that are not UTF-8 is decoded line by line."""
    loads = json.loads
    scan = json.JSONDecoder().scan_once
    number = span.line - 1 if span else 0
    with _open_binary(path, compression) as f:
        for lines in _lines(f, span):
            for line in lines:
                number += 1
                if line.__class__ is bytes:  # only in a block that is not all UTF-8
                    line = _decode_line(line, rel, number)  # type: ignore[arg-type]
                    if line.__class__ is RawRow:
                        yield line  # type: ignore[misc]
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


def _read_text(path: Path, rel: str, compression: str | None = None,
               span: Span | None = None) -> Iterator[RawRow]:
    """Plain text, one document a line (as pretraining text is published): each line that is
    not blank is the row {"text": line}, as it is in the file. Lines end at "\\n" alone, as in
    JSONL (not also at U+2028 or a form feed, as str.splitlines() would): line numbers are an
    editor's."""
    number = span.line - 1 if span else 0
    with _open_binary(path, compression) as f:
        for lines in _lines(f, span):
            for line in lines:
                number += 1
                if line.__class__ is bytes:
                    line = _decode_line(line, rel, number)  # type: ignore[arg-type]
                    if line.__class__ is RawRow:
                        yield line  # type: ignore[misc]
                        continue
                if line and not line.isspace():
                    yield RawRow(rel, number, line, {"text": line})  # type: ignore[arg-type]


def _lines(f: io.BufferedIOBase, span: Span | None = None) -> Iterator[list[str] | list[bytes]]:
    """The file's lines (or the span's) a block at a time (`_line_blocks`), without their line
    ends and without a leading byte order mark (Windows tools write one). A block is decoded at
    once (one call instead of one a line); one with bytes that are not UTF-8 comes as bytes, for
    `_decode_line` to decode line by line, so that only the bad lines are bad rows."""
    first = span is None or span.start == 0  # a mark only ever starts the file
    if span is not None:
        f.seek(span.start)
    for block in _line_blocks(f, span.end - span.start if span else None):
        if first:
            block, first = block.removeprefix(b"\xef\xbb\xbf"), False
        try:
            lines: list[str] | list[bytes] = block.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            lines = block.split(b"\n")
        if block.endswith(b"\n"):
            lines.pop()  # the empty string after the last newline is not a line
        yield lines


def _decode_line(line: bytes, rel: str, number: int) -> str | RawRow:
    """A line of a block that is not all UTF-8: its text, or the bad row it is."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as err:
        shown = line.decode("utf-8", errors="replace")
        return RawRow(rel, number, shown, error=RowError(
            "invalid_utf8", f"byte {err.start} of the line: {err.reason}"))


def _json_error(err: ValueError | RecursionError) -> RowError:
    """A line that is not JSON; or JSON that Python will not hold: an integer of more than 4300
    digits (a ValueError) or arrays and objects nested about a thousand deep (a RecursionError)."""
    if isinstance(err, json.JSONDecodeError):
        return RowError("invalid_json", f"{err.msg} (column {err.colno})")
    if isinstance(err, RecursionError):
        return RowError("invalid_json", _TOO_DEEP)
    return RowError("invalid_json", str(err))


def _line_blocks(f: io.BufferedIOBase, size: int | None = None) -> Iterator[bytes]:
    """The file (or its next `size` bytes) in blocks that end at a newline (the last one may
    not), so no line is split. Windows line ends become "\\n" (a raw CR cannot be inside a
    JSON string, so it is safe; in plain text a CR before a line end is part of the line end)."""
    tail = b""
    left = size  # bytes still to read; None: to the end of the file
    while left != 0 and (chunk := f.read(_BLOCK if left is None else min(_BLOCK, left))):
        if left is not None:
            left -= len(chunk)
        cut = chunk.rfind(b"\n")
        if cut < 0:  # a line longer than a block: keep reading
            tail += chunk
            continue
        block = tail + chunk[:cut + 1]
        tail = chunk[cut + 1:]
        yield block.replace(b"\r\n", b"\n") if b"\r" in block else block
    if tail:
        yield tail.replace(b"\r\n", b"\n")


def _read_json_array(path: Path, rel: str, compression: str | None = None
                     ) -> Iterator[RawRow]:
    # A JSON array is parsed whole by nature: the file is held in memory whole (decompressed),
    # and an error anywhere makes the whole file unreadable.
    with _open_binary(path, compression) as f:
        data = f.read()
    try:
        items = json.loads(data.decode("utf-8-sig"))
    except (ValueError, RecursionError) as err:  # also too long integers, too deep nesting
        if getattr(err, "msg", None) == "Extra data" and data.lstrip()[:1] == b"{":
            # Published `.json` files are often JSON Lines (one object a line: `datasets`'
            # to_json writes them so): read as what they are, a bad line a bad row.
            items = None
        else:
            why = _TOO_DEEP if isinstance(err, RecursionError) else err
            raise InputError(f"{rel}: not a readable JSON array ({why}); use JSONL for partial "
                             "data") from None
    if items is None:
        del data
        yield from _read_jsonl(path, rel, compression)
        return
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
    yield from _batch_rows(batches, rel, "Parquet")


def _read_arrow(path: Path, rel: str) -> Iterator[RawRow]:
    """An Arrow IPC file, batch by batch, as Parquet: `datasets`' `save_to_disk` writes the
    stream format; Feather v2 (the file format, which begins with ARROW1) is read too. The file
    is memory-mapped, so a batch costs address space, not memory, until it is converted."""
    import pyarrow as pa
    from pyarrow import ipc

    try:
        source = pa.memory_map(str(path), "r")
        if source.read(6) == b"ARROW1":
            reader = ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            source.seek(0)
            batches = iter(ipc.open_stream(source))
    except (pa.ArrowException, OSError, ValueError) as err:
        raise InputError(f"{rel}: not a readable Arrow IPC file ({err})") from None
    with source:
        yield from _batch_rows(batches, rel, "Arrow")


def _batch_rows(batches: Iterator[Any], rel: str, kind: str) -> Iterator[RawRow]:
    """The rows of record batches; `line` is the 1-based row number and `text` the row as JSON.
    A writer's batch may be large (a whole file): it is converted `_PARQUET_BATCH` rows at a
    time, so memory holds that many Python rows at most."""
    import pyarrow as pa

    number = 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError, ValueError) as err:
            raise InputError(f"{rel}: {kind} data unreadable after row {number} ({err})") from None
        if batch is None:
            return
        for start in range(0, batch.num_rows, _PARQUET_BATCH):
            try:
                values = batch.slice(start, _PARQUET_BATCH).to_pylist()
            except (pa.ArrowException, ValueError) as err:
                raise InputError(f"{rel}: {kind} data unreadable after row {number} ({err})"
                                 ) from None
            for value in values:
                number += 1
                text = json.dumps(value, ensure_ascii=False, default=str)
                yield RawRow(rel, number, text, value)


def _read_csv(path: Path, rel: str, compression: str | None = None) -> Iterator[RawRow]:
    """Rows of a CSV file with a header row; every value is a string (an empty cell is "").
    `line` is the physical line where the record starts (a quoted field may span lines);
    `text` is the record's lines as they are in the file."""
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    # surrogateescape: bytes that are not UTF-8 reject their row, not the whole file.
    with io.TextIOWrapper(_open_binary(path, compression), encoding="utf-8-sig",
                          errors="surrogateescape", newline="") as f:
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
