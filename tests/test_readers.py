"""Files as they are published: compressed JSONL/JSON/CSV, Parquet shards, Arrow IPC and
`datasets`' save_to_disk directories; which files a directory gives, and as which sources."""

from __future__ import annotations

import gzip
import itertools
import json
import os

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from pyarrow import feather

from pedigree.config import DataConfig
from pedigree.data import readers
from pedigree.data.readers import InputError, read_rows, readable_suffix
from pedigree.data.sources import readable_files, resolve_sources, sources_from_paths

ROWS = [{"instruction": f"Say {w}", "output": w} for w in ("hi", "yo", "hey", "ho", "ha")]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def values(path):
    rows = list(read_rows(path, path.name))
    assert not [r for r in rows if r.error]
    return [r.value for r in rows]


def names(paths, root):
    return [p.relative_to(root).as_posix() for p in paths]


# ----------------------------------------------------------------------------- suffixes
@pytest.mark.parametrize("name, suffix", [
    ("a.jsonl.gz", ".jsonl.gz"), ("a.JSON.GZ", ".json.gz"), ("a.jsonl.zst", ".jsonl.zst"),
    ("a.csv.gz", ".csv.gz"), ("a.json", ".json"), ("v1.2.jsonl", ".jsonl"),
    ("data-00000-of-00001.arrow", ".arrow"),
    ("a.txt", ".txt"), ("a.txt.zst", ".txt.zst"),
    ("a.gz", None), ("a.parquet.gz", None), ("a.md", None), (".jsonl", None),
])
def test_readable_suffix_is_the_whole_suffix(tmp_path, name, suffix):
    assert readable_suffix(tmp_path / name) == suffix


# ----------------------------------------------------------------------------- compressed
def test_gzip_and_zstd_jsonl_read_as_jsonl(tmp_path):
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl(ROWS[:2]) + b"not json\n" + jsonl(ROWS[2:])))
    rows = list(read_rows(gz, "a.jsonl.gz"))
    assert [(r.line, r.error and r.error.reason) for r in rows] == [
        (1, None), (2, None), (3, "invalid_json"), (4, None), (5, None), (6, None)]
    assert [r.value for r in rows if not r.error] == ROWS
    assert rows[2].text == "not json" and rows[0].file == "a.jsonl.gz"

    # Two frames, as `zstd -T` or concatenation make: the reader must not stop at the first.
    zst = tmp_path / "b.jsonl.zst"
    c = zstandard.ZstdCompressor()
    zst.write_bytes(c.compress(jsonl(ROWS[:2])) + c.compress(jsonl(ROWS[2:])))
    assert values(zst) == ROWS


def test_gzip_and_zstd_json_array_and_csv(tmp_path):
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(json.dumps(ROWS).encode()))
    (tmp_path / "b.json.zst").write_bytes(
        zstandard.ZstdCompressor().compress(json.dumps(ROWS).encode()))
    csv = "\ufeffinstruction,output\r\n" + "".join(
        f'{r["instruction"]},"{r["output"]}"\r\n' for r in ROWS)
    (tmp_path / "c.csv.gz").write_bytes(gzip.compress(csv.encode()))
    for name in ("a.json.gz", "b.json.zst", "c.csv.gz"):
        assert values(tmp_path / name) == ROWS, name
    rows = list(read_rows(tmp_path / "c.csv.gz", "c"))
    assert [r.line for r in rows] == [2, 3, 4, 5, 6] and rows[0].text == 'Say hi,"hi"'


def test_json_lines_named_json_are_read_as_json_lines(tmp_path):
    path = tmp_path / "c4-train.00000-of-01024.json.gz"  # C4 publishes JSON Lines as .json.gz
    path.write_bytes(gzip.compress(jsonl(ROWS)))
    assert values(path) == ROWS
    plain = tmp_path / "to_json.json"  # what `datasets`' Dataset.to_json writes by default
    plain.write_bytes(jsonl(ROWS) + b"not json\n")
    rows = list(read_rows(plain, "p"))
    assert [r.value for r in rows[:-1]] == ROWS and rows[-1].error.reason == "invalid_json"
    broken = tmp_path / "broken.json"  # an array cut short is still an unreadable array
    broken.write_text('[{"instruction": "x", "output": "y"},')
    with pytest.raises(InputError, match="not a readable JSON array"):
        values(broken)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]  # a download cut short


def bad_crc(data: bytes) -> bytes:
    return data[:-8] + bytes(8)  # gzip's CRC and length, checked at the end


def not_gzip(data: bytes) -> bytes:
    return b"PK" + data[2:]


@pytest.mark.parametrize("name, damage, some_rows_first", [
    ("a.jsonl.gz", truncated, True),
    ("a.jsonl.gz", bad_crc, True),
    ("a.jsonl.gz", not_gzip, False),
    ("a.jsonl.zst", truncated, True),
    ("a.csv.gz", bad_crc, True),
    ("a.json.gz", truncated, False),  # parsed whole: nothing before the damage is a row
])
def test_corrupt_compressed_file_is_an_input_error(tmp_path, monkeypatch, name, damage,
                                                   some_rows_first):
    monkeypatch.setattr(readers, "_BLOCK", 64)  # so rows come before the damage
    path = tmp_path / name
    kind = "zstd" if name.endswith(".zst") else "gzip"
    if name.startswith("a.csv"):
        data = b"a,b\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(2000))
    elif name.startswith("a.json."):
        data = json.dumps(ROWS * 400).encode()
    else:  # zstd decompresses whole blocks of 128 KiB: some must come before the damage
        data = jsonl({"output": f"{i * 2654435761 % 2**32:x}"} for i in range(20_000))
    compress = gzip.compress if kind == "gzip" else zstandard.ZstdCompressor().compress
    path.write_bytes(damage(compress(data)))
    seen = []
    with pytest.raises(InputError, match=rf"^{name}: {kind} data corrupt or truncated ") as err:
        seen.extend(read_rows(path, name))
    if some_rows_first:  # the message says how far reading got
        assert seen and f"after line {seen[-1].line} (" in str(err.value)
    else:
        assert not seen and "before its first row (" in str(err.value)


def test_compressed_parquet_is_refused(tmp_path):
    path = tmp_path / "a.parquet.gz"
    path.write_bytes(gzip.compress(b"PAR1"))
    with pytest.raises(InputError, match="a.parquet.gz: a compressed .parquet file"):
        values(path)


def test_compressed_jsonl_streams_in_blocks(tmp_path, monkeypatch):
    """Bounded memory: the decompressed file is read `_BLOCK` bytes at a time, never whole
    (a read() with no size would hold a 100 GB dump in memory), and the first row comes before
    the rest of the file is read."""
    monkeypatch.setattr(readers, "_BLOCK", 4096)
    data = jsonl({"output": f"{i:06d}" + "x" * (i % 97)} for i in range(20_000))
    path = tmp_path / "big.jsonl.gz"
    path.write_bytes(gzip.compress(data))
    sizes: list[int] = []
    opened = readers._open_binary

    class Spy:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, size=-1):
            chunk = self.f.read(size)
            sizes.append(size if size is not None and size >= 0 else -1)
            self.returned = getattr(self, "returned", 0) + len(chunk)
            return chunk

    spies: list[Spy] = []

    def spied(*args):
        spies.append(Spy(opened(*args)))
        return spies[-1]

    monkeypatch.setattr(readers, "_open_binary", spied)
    rows = read_rows(path, "big.jsonl.gz")
    assert next(rows).value == {"output": "000000"}
    assert spies[0].returned <= 2 * 4096 < len(data)  # one block read, not the file
    rest = list(rows)
    assert len(rest) == 19_999 and rest[-1].value["output"].startswith("019999")
    assert set(sizes) == {4096}  # every read bounded, including the last (empty) one


# ----------------------------------------------------------------------------- Arrow
def test_arrow_stream_and_file_format(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_PARQUET_BATCH", 2)  # a writer's batch is converted in slices
    table = pa.table({"instruction": [r["instruction"] for r in ROWS],
                      "output": [r["output"] for r in ROWS]})
    stream = tmp_path / "s.arrow"
    with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=3)
    feather.write_feather(table, tmp_path / "f.arrow", compression="uncompressed")
    for name in ("s.arrow", "f.arrow"):
        rows = list(read_rows(tmp_path / name, name))
        assert [r.line for r in rows] == [1, 2, 3, 4, 5]
        assert [r.value for r in rows] == ROWS and json.loads(rows[4].text) == ROWS[4]


def test_unreadable_arrow_names_the_file(tmp_path):
    path = tmp_path / "x.arrow"
    path.write_bytes(b"this is not arrow at all")
    with pytest.raises(InputError, match="x.arrow: not a readable Arrow IPC file"):
        values(path)


# ----------------------------------------------------------------------------- save_to_disk
def quiet_save(ds, path, **kw):
    datasets.disable_progress_bars()
    ds.save_to_disk(str(path), **kw)


def test_save_to_disk_reads_back_row_for_row(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}], "n": i} for i in range(50)]
    ds = datasets.Dataset.from_list(rows)
    quiet_save(ds, tmp_path / "saved", num_shards=3)
    (tmp_path / "saved" / "cache-1234abcd.arrow").write_bytes(b"left by map()")  # not data
    files = readable_files(tmp_path / "saved")
    assert names(files, tmp_path / "saved") == [
        f"data-0000{i}-of-00003.arrow" for i in range(3)]  # as state.json lists them
    read = [r.value for p in files for r in read_rows(p, p.name)]
    assert read == rows == ds.to_list()


def test_save_to_disk_of_a_selection_reads_what_was_selected(tmp_path):
    # select()/shuffle() keep an indices mapping; save_to_disk writes the rows it selects.
    ds = datasets.Dataset.from_list(ROWS).shuffle(seed=1).select([4, 0, 2])
    quiet_save(ds, tmp_path / "sel")
    assert [r.value for p in readable_files(tmp_path / "sel") for r in read_rows(p, "x")] == \
        ds.to_list()


def test_dataset_dict_splits_in_listed_order(tmp_path):
    dd = datasets.DatasetDict(train=datasets.Dataset.from_list(ROWS[:3]),
                              test=datasets.Dataset.from_list(ROWS[3:]))
    quiet_save(dd, tmp_path / "dd")
    files = readable_files(tmp_path / "dd")
    # train first, as dataset_dict.json lists it (name order would put test first)
    assert names(files, tmp_path / "dd") == [
        "train/data-00000-of-00001.arrow", "test/data-00000-of-00001.arrow"]
    assert [r.value for p in files for r in read_rows(p, "x")] == ROWS


def test_broken_save_to_disk_state_names_the_file(tmp_path):
    quiet_save(datasets.Dataset.from_list(ROWS), tmp_path / "s")
    os.remove(tmp_path / "s" / "data-00000-of-00001.arrow")
    with pytest.raises(Exception, match="state.json lists data-00000-of-00001.arrow, which is"):
        readable_files(tmp_path / "s")
    (tmp_path / "s" / "state.json").write_text('{"_data_files": [{"filename": "../x.arrow"}]}')
    with pytest.raises(Exception, match=r"state.json: '../x.arrow' is not the name of an .arrow"):
        readable_files(tmp_path / "s")


# ----------------------------------------------------------------------------- sources
def write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_one_source_per_dataset_under_raw_dir(tmp_path):
    raw = tmp_path / "raw"
    # The Hub's layout: shards of two splits in one directory; shards listed out of order
    # (8 sorts after 10 by name only with unequal widths).
    for i, chunk in ((0, ROWS[:2]), (1, ROWS[2:4]), (2, ROWS[4:])):
        write_parquet(raw / "hub/data" / f"train-{i:05d}-of-00003.parquet", chunk)
    write_parquet(raw / "hub/data/test-00000-of-00001.parquet", ROWS[:1])
    write_parquet(raw / "odd/part-8-of-11.parquet", ROWS[:1])
    write_parquet(raw / "odd/part-10-of-11.parquet", ROWS[1:2])
    quiet_save(datasets.Dataset.from_list(ROWS), raw / "saved", num_shards=2)
    quiet_save(datasets.DatasetDict(train=datasets.Dataset.from_list(ROWS[:2]),
                                    validation=datasets.Dataset.from_list(ROWS[2:])), raw / "dd")
    (raw / "a.jsonl.gz").write_bytes(gzip.compress(jsonl(ROWS)))
    (raw / "NOTES").write_text("not data")
    (raw / "hub/README.md").write_text("---\nlicense: mit\n---\n")  # as the Hub has them
    (raw / "hub/dataset_infos.json").write_text('{"default": {"features": {}}}')
    (raw / ".hidden").mkdir()
    (raw / ".hidden/x.jsonl").write_text("{}\n")

    sources = resolve_sources(DataConfig(raw_dir=str(raw), format="alpaca"))
    got = {s.name: names(s.files, raw) for s in sources}
    assert list(got) == ["a.jsonl.gz", "dd/train", "dd/validation", "hub/data/test",
                         "hub/data/train", "odd/part", "saved"]
    assert got["hub/data/train"] == [f"hub/data/train-{i:05d}-of-00003.parquet" for i in range(3)]
    assert got["odd/part"] == ["odd/part-8-of-11.parquet", "odd/part-10-of-11.parquet"]
    assert got["saved"] == ["saved/data-00000-of-00002.arrow", "saved/data-00001-of-00002.arrow"]
    assert got["dd/train"] == ["dd/train/data-00000-of-00001.arrow"]
    assert all(s.format == "alpaca" for s in sources)
    train = next(s for s in sources if s.name == "hub/data/train")
    assert [r.value for p in train.files for r in read_rows(p, "x")] == ROWS  # shard order

    # The same files, named as one source by a directory: every file under it, once.
    named = resolve_sources(DataConfig(raw_dir=str(raw), sources=[{"path": "hub"}]))
    assert [s.name for s in named] == ["hub"] and names(named[0].files, raw) == [
        "hub/data/test-00000-of-00001.parquet",
        *(f"hub/data/train-{i:05d}-of-00003.parquet" for i in range(3))]
    assert sorted(p for s in sources for p in s.files) == sorted(readable_files(raw))


def test_raw_dir_that_is_a_saved_dataset_is_one_source(tmp_path):
    quiet_save(datasets.Dataset.from_list(ROWS), tmp_path / "mine", num_shards=2)
    sources = resolve_sources(DataConfig(raw_dir=str(tmp_path / "mine")))
    assert [(s.name, len(s.files)) for s in sources] == [("mine", 2)]


def test_shard_sets_that_would_share_a_name_are_refused(tmp_path):
    write_parquet(tmp_path / "train-00000-of-00002.parquet", ROWS[:1])
    write_parquet(tmp_path / "train-00000-of-00003.parquet", ROWS[:1])  # a stale download
    with pytest.raises(Exception, match="names must be unique"):
        resolve_sources(DataConfig(raw_dir=str(tmp_path)))


def test_command_line_directory_gives_one_source_per_dataset(tmp_path):
    quiet_save(datasets.Dataset.from_list(ROWS), tmp_path / "saved", num_shards=2)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(jsonl(ROWS)))
    sources = sources_from_paths([tmp_path / "a.jsonl.gz", tmp_path])
    assert [(s.name, len(s.files)) for s in sources] == [
        ((tmp_path / "a.jsonl.gz").as_posix(), 1), ((tmp_path / "saved").as_posix(), 2)]


# ----------------------------------------------------------------------------- spans
@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_spans_of_a_file_read_as_the_whole_file_does(tmp_path, suffix):
    """Curation's workers each read a span of lines: together the spans give the whole file's
    rows, line numbers and errors, with its byte order mark, CRLF line ends, blank lines, bad
    JSON and bad UTF-8, whatever the span size (1 byte: a span a line)."""
    lines = []
    for i in range(300):
        lines.append(["", "  ", "{bad", json.dumps({"instruction": "é" * (i % 50),
                                                    "output": "x" * (i * 7 % 300)})][i % 4])
    data = ("\ufeff" + "\n".join(lines)).encode().replace(b"\n", b"\r\n", 40)
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(data + b"\n\xff\xfe{}\n" + b'{"last": "no newline"}')
    whole = [(r.file, r.line, r.text, r.value, str(r.error)) for r in read_rows(path, "r")]
    for size in (1, 100, 4096, 10**6):
        spans = readers.line_spans(path, size)
        assert spans[0].start == 0 and spans[-1].end == path.stat().st_size
        assert all(a.end == b.start for a, b in itertools.pairwise(spans))
        got = [(r.file, r.line, r.text, r.value, str(r.error))
               for span in spans for r in read_rows(path, "r", span)]
        assert got == whole, size
    assert len(readers.line_spans(path, 100)) > 10


def test_only_jsonl_and_text_are_read_a_span_at_a_time(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(ROWS)))
    assert not readers.splittable(path) and readers.splittable(tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match="span at a time"):
        read_rows(path, "a", readers.Span(0, 10, 1))
