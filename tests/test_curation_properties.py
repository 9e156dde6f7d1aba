"""Property tests: curation on random, malformed and mixed input files fails clearly, never
silently.

Whatever it is given, curation either finishes, with every input row in exactly one place (a
curated file, or rejects.jsonl with its file, line and reason), or stops with one PedigreeError
naming the file that cannot be read at all. It never crashes, and never changes its inputs.

Files are generated whole (JSONL, JSON arrays, CSV, Parquet), so each test knows which rows a
file holds without asking the readers: that is what the outputs are checked against.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from pedigree.config import CurateConfig, NearDedupConfig
from pedigree.data.curate import curate, write_curation
from pedigree.data.decontaminate import EvalIndex, EvalItem
from pedigree.data.formats import FORMATS, RowError, normalise_row
from pedigree.data.lengths import TokenCounter
from pedigree.data.messages import ROLES
from pedigree.data.sources import Source, sources_from_paths
from pedigree.data_layouts import CURATED_FILES
from pedigree.errors import PedigreeError
from pedigree.evals.scorers import MATCH_NAMES, task_row_problem

BOM = b"\xef\xbb\xbf"
REASON = re.compile("[a-z0-9]+(_[a-z0-9]+)*")  # a short code, as the report counts it

# Deterministic (CI must not fail on a new random draw) and small: the whole file runs in
# well under a minute on two cores. Examples write files and some fields are 100 KB on purpose.
PROPERTY = settings(
    derandomize=True, database=None, deadline=None, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example],
)


# ----------------------------------------------------------------------------- text
# A small vocabulary, so that rows are kept, duplicated and matched against the eval set.
WORDS = ["the", "cat", "sat", "on", "a", "mat", "what", "is", "two", "plus", "three", "answer",
         "five", "write", "poem", "about", "sea", "list", "colours", "of", "rainbow", "red",
         "green", "blue"]
CONTROL = [chr(c) for c in range(32)] + ["\x7f", "\x85", "\u2028", "\u2029", "\ufeff", "\u200b"]
SURROGATES = ["\ud800", "\udbff", "\udc80", "\udfff"]  # JSON can hold these; UTF-8 cannot

char = st.characters(codec="utf-8")  # any character but the surrogates
prose = st.lists(st.sampled_from(WORDS), min_size=1, max_size=30).map(" ".join)
odd = st.text(char | st.sampled_from(CONTROL), max_size=20)  # any text
placeholder = st.sampled_from(["", "   ", "\t\n", "n/a", "None", "<noinput>", "-"])
huge = st.integers(10_000, 120_000).map(lambda n: ("lorem ipsum dolor " * (n // 18 + 1))[:n])
loop = st.sampled_from(WORDS).map(lambda w: f"{w} and again " * 30)  # a degenerate answer
valid_text = st.one_of(prose, prose, odd, placeholder, huge, loop)
# Any JSON string: lone surrogates too (json.loads makes them from "\ud800").
text = valid_text | st.text(char | st.sampled_from(SURROGATES + CONTROL), max_size=20)

FIELDS = ["instruction", "input", "output", "system", "prompt", "completion", "messages",
          "conversations", "chosen", "rejected", "label", "match", "reference", "schema", "task",
          "role", "content", "from", "value"]
# KTO labels as JSON and CSV give them, and ones that are not labels.
label = st.booleans() | st.sampled_from(["true", "False", "1", "0", " TRUE", "yes", ""]) | \
    st.integers(-1, 2) | st.floats(0, 1)
# A task's check: every matcher and one that is none, references that are numbers, JSON or
# text, schemas valid and not (a CSV cell holds one as JSON text).
match = st.sampled_from([*MATCH_NAMES, "fuzzy"])
schema = st.sampled_from([{"type": "object"}, {"type": "object", "required": ["a"]}, {"type": 3},
                          True, [1], '{"type": "array"}', "{oops", ""])
junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(FIELDS) | odd,
                                                              kids, max_size=3),
    max_leaves=6,
)


# ----------------------------------------------------------------------------- rows
@st.composite
def conversation(draw, sharegpt: bool = False, content=text,
                 well_formed: bool | None = None) -> list[dict[str, Any]]:
    """Well-formed turns (optional system, then user/assistant pairs); or, unless asked for
    well-formed ones, any sequence of known, unknown and missing roles."""
    if well_formed or (well_formed is None and draw(st.booleans())):
        roles = ["system"] * draw(st.integers(0, 1)) + ["user", "assistant"] * draw(
            st.integers(1, 3))
    else:
        roles = draw(st.lists(st.sampled_from([*ROLES, "narrator", "", None]), max_size=5))
    if sharegpt:
        names = {"system": "system", "user": draw(st.sampled_from(["human", "user"])),
                 "assistant": draw(st.sampled_from(["gpt", "assistant", "bot"]))}
        return [{"from": names.get(r, r), "value": draw(content)} for r in roles]
    return [{"role": r, "content": draw(content)} for r in roles]


@st.composite
def implicit_preference(draw, content=text, well_formed: bool | None = None) -> dict[str, Any]:
    """chosen and rejected as whole conversations sharing their prompt turns."""
    prompt = draw(conversation(content=content, well_formed=well_formed))[:-1] or [
        {"role": "user", "content": "hi"}]
    return {side: prompt + [{"role": "assistant", "content": draw(content)}]
            for side in ("chosen", "rejected")}


def row_strategy(content=text, well_formed: bool | None = None):
    """A row in one of the five formats: any of them in any file."""
    conv = conversation(content=content, well_formed=well_formed)
    sharegpt = conversation(True, content, well_formed)
    either = content | conv
    reference = content | st.integers(0, 99).map(str) | st.sampled_from(['{"a": 1}', "[1, 2]"])
    return st.one_of(
        st.fixed_dictionaries({"instruction": content, "output": content},
                              optional={"input": content, "system": content, "task": content}),
        st.fixed_dictionaries({"prompt": either, "completion": either}),
        st.fixed_dictionaries({"messages": conv}),
        st.fixed_dictionaries({"conversations": sharegpt}),
        st.fixed_dictionaries({"messages": sharegpt}),
        st.fixed_dictionaries({"prompt": either, "chosen": either, "rejected": either}),
        implicit_preference(content, well_formed),
        st.fixed_dictionaries({"prompt": either, "completion": either, "label": label},
                              optional={"system": content}),
        st.fixed_dictionaries({"prompt": either, "match": match},
                              optional={"reference": reference, "schema": schema,
                                        "task": content, "system": content}),
    )


@st.composite
def broken(draw, rows) -> Any:
    """A row with one field missing, of a wrong type, or a list written as a JSON string (as
    CSV holds it); or any JSON value at all."""
    value = draw(rows)
    how = draw(st.sampled_from(["as is", "as is", "drop", "retype", "stringify", "junk"]))
    if how == "junk":
        return draw(junk)
    if how != "as is" and value:
        key = draw(st.sampled_from(sorted(value)))
        if how == "drop":
            del value[key]
        elif how == "retype":
            value[key] = draw(junk)
        elif isinstance(value[key], list):
            value[key] = json.dumps(value[key])
    return value


# Rows that differ in one word (near duplicates), rows that ask an eval question, and rows too
# short for the length bounds.
TWIN = " ".join(WORDS + WORDS[::-1])
twin = st.sampled_from(WORDS).map(lambda w: {"instruction": "Summarise.", "output": f"{TWIN} {w}"})
leak = prose.map(lambda p: {"instruction": "What is two plus three?", "output": p})
tiny = st.sampled_from(WORDS).map(lambda w: {"prompt": w, "completion": w})
good_row = row_strategy(prose, well_formed=True)
any_row = st.one_of(good_row, good_row, broken(row_strategy()), twin, twin, leak, tiny)


# ----------------------------------------------------------------------------- files
@dataclass
class Input:
    suffix: str
    data: bytes
    rows: list[int] = field(default_factory=list)  # line (item) number of every row it holds


def jsonl_rows(data: bytes) -> list[int]:
    """The oracle for JSONL: every line that is not blank is a row."""
    data = data.removeprefix(BOM).replace(b"\r\n", b"\n")
    return [n for n, line in enumerate(data.split(b"\n"), 1)
            if line.decode("utf-8", "replace").strip()]


def encode(obj: Any, ensure_ascii: bool) -> bytes:
    # A lone surrogate written as itself ("surrogatepass") is bytes that are not UTF-8.
    return json.dumps(obj, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


@st.composite
def jsonl_line(draw) -> bytes:
    kind = draw(st.sampled_from(["row"] * 6 + ["truncated", "text", "bytes", "blank", "bigint",
                                               "deep"]))
    line = encode(draw(any_row), ensure_ascii=draw(st.booleans()))
    if kind == "truncated":
        return line[:draw(st.integers(0, len(line) - 1))]
    if kind == "text":
        return draw(odd).encode()
    if kind == "bytes":  # bytes that are not UTF-8 (or a stray newline) somewhere in the line
        at = draw(st.integers(0, len(line)))
        return line[:at] + draw(st.binary(min_size=1, max_size=3)) + line[at:]
    if kind == "blank":
        return draw(st.sampled_from([b"", b" ", b"\t", b"\r", b"\x0c \t"]))
    if kind == "bigint":  # valid JSON, but Python refuses integers over 4300 digits
        return b'{"instruction": "Count.", "output": ' + b"7" * draw(st.integers(4301, 6000)) + b"}"
    if kind == "deep":  # valid JSON, nested deeper than the parser's recursion limit
        depth = draw(st.integers(2_000, 50_000))
        return b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
    return line


@st.composite
def jsonl_file(draw) -> Input:
    lines = draw(st.lists(jsonl_line(), max_size=10))
    if lines:  # some lines again: exact duplicates
        lines += [lines[i] for i in draw(st.lists(st.integers(0, len(lines) - 1), max_size=3))]
    data = b"\n".join(lines) + draw(st.sampled_from([b"", b"\n"]))
    if draw(st.booleans()):
        data = data.replace(b"\n", b"\r\n")
    if draw(st.booleans()):
        data = BOM + data
    return Input(".jsonl", data, jsonl_rows(data))


@st.composite
def json_array_file(draw) -> Input:
    items = draw(st.lists(any_row, max_size=10))
    data = encode(items, ensure_ascii=draw(st.booleans()))
    try:
        data.decode()
    except UnicodeDecodeError:  # a lone surrogate as itself: that file is unreadable, not this
        data = encode(items, ensure_ascii=True)
    return Input(".json", BOM * draw(st.booleans()) + data, list(range(1, len(items) + 1)))


# CSV holds text only: invalid bytes come in as "\udc80".."\udcff" (written by surrogateescape).
csv_text = valid_text | st.text(char | st.sampled_from(["\udc80", "\udcff", '"']), max_size=10)
csv_cell = prose | csv_text | conversation(content=csv_text).map(json.dumps)
csv_header = st.sampled_from([["instruction", "input", "output"], ["prompt", "completion"],
                               ["messages"], ["conversations", "task"],
                               ["prompt", "chosen", "rejected"], ["prompt", "completion", "label"],
                               ["prompt", "match", "reference"]]) | st.lists(
    st.sampled_from(FIELDS) | odd.filter(lambda s: not s.startswith("\ufeff")),
    min_size=1, max_size=5, unique=True)


@st.composite
def csv_file(draw) -> Input:
    header = draw(csv_header)
    n = len(header)
    # Mostly as wide as the header; some records of any width (malformed).
    width = st.one_of(st.just(n), st.just(n), st.just(n), st.integers(1, n + 1))
    records = draw(st.lists(width.flatmap(lambda w: st.lists(csv_cell, min_size=w, max_size=w)),
                            max_size=8))
    buf = io.StringIO()
    # With "\n" line ends the writer leaves a field with a lone "\r" unquoted, which then reads
    # as two records: quote every field there.
    end = draw(st.sampled_from(["\r\n", "\n"]))
    writer = csv.writer(buf, lineterminator=end,
                        quoting=csv.QUOTE_ALL if end == "\n" else csv.QUOTE_MINIMAL)
    writer.writerow(header)
    starts = []
    for record in records:
        # A record's line is where it starts; quoted fields may hold line breaks.
        starts.append(len(re.findall(r"\r\n|\r|\n", buf.getvalue())) + 1)
        writer.writerow(record)
    data = buf.getvalue().encode("utf-8", "surrogateescape")
    return Input(".csv", BOM * draw(st.booleans()) + data, starts)


MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SHAREGPT = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
PARQUET_TYPES = {"string": pa.string(), "binary": pa.binary(), "int": pa.int64(),
                 "bool": pa.bool_(), "messages": MESSAGES, "sharegpt": SHAREGPT}


@st.composite
def parquet_file(draw) -> Input:
    """Columns of one type each (Parquet has no mixed columns), any of them null in any row."""
    columns = draw(st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(
        ["string"] * 4 + ["binary", "int", "bool", "messages", "sharegpt"]), min_size=1,
        max_size=5))
    values = {"string": valid_text, "binary": st.binary(max_size=8), "int": st.integers(-9, 9),
              "bool": st.booleans(),
              "messages": conversation(content=valid_text),
              "sharegpt": conversation(True, valid_text)}
    n = draw(st.integers(0, 8))
    table = pa.table({name: pa.array([draw(st.none() | values[kind]) for _ in range(n)],
                                     PARQUET_TYPES[kind]) for name, kind in columns.items()})
    return Input(".parquet", parquet_bytes(table, row_group_size=draw(st.integers(1, 4))),
                 list(range(1, n + 1)))


def parquet_bytes(table: pa.Table, **options: Any) -> bytes:
    out = pa.BufferOutputStream()
    pq.write_table(table, out, **options)
    return out.getvalue().to_pybytes()


@st.composite
def txt_file(draw) -> Input:
    """Plain text, one document a line: prose, loops, placeholders, any text (line breaks of
    every kind in it), bytes that are not UTF-8; some lines again (exact duplicates)."""
    line = st.one_of(prose, prose, loop, placeholder, odd).map(str.encode) | st.binary(max_size=6)
    lines = draw(st.lists(line, max_size=10))
    if lines:
        lines += [lines[i] for i in draw(st.lists(st.integers(0, len(lines) - 1), max_size=3))]
    data = BOM * draw(st.booleans()) + b"\n".join(lines) + draw(st.sampled_from([b"", b"\n"]))
    if draw(st.booleans()):
        data = data.replace(b"\n", b"\r\n")
    return Input(".txt", data, jsonl_rows(data))  # as JSONL: every line not blank is a row


readable_file = st.one_of(jsonl_file(), jsonl_file(), json_array_file(), csv_file(),
                          parquet_file(), txt_file())


@st.composite
def unreadable_file(draw) -> Input:
    """A file no row of which can be read: the whole input is unusable."""
    kind = draw(st.sampled_from(["json", "json", "parquet", "csv"]))
    if kind == "json":
        data = draw(json_array_file()).data
        how = draw(st.sampled_from(["truncate", "not utf-8", "not an array", "bigint", "deep"]))
        if how == "truncate":  # every proper prefix of an array is not JSON
            data = data[:draw(st.integers(0, len(data) - 1))]
        elif how == "not utf-8":
            at = draw(st.integers(0, len(data)))
            data = data[:at] + b"\xff" + data[at:]
        elif how == "not an array":
            data = encode(draw(st.dictionaries(odd, junk) | prose), ensure_ascii=True)
        elif how == "bigint":
            data = b'[{"instruction": "Count.", "output": ' + b"7" * 5000 + b"}]"
        else:
            data = b"[" * 100_000 + b"]" * 100_000
        return Input(".json", data)
    if kind == "parquet":
        data = draw(parquet_file()).data
        return Input(".parquet", data[:draw(st.integers(0, len(data) - 1))])
    header = draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=5, unique=True))
    rows = draw(csv_file()).data.partition(b"\n")[2]
    how = draw(st.sampled_from(["twice", "not utf-8", "open quote"]))
    if how == "twice":
        line = ",".join(header + header[:1])
    elif how == "not utf-8":
        line = ",".join(header) + "\udcff"
    else:  # a quote never closed: the header swallows the file and ends inside a field
        line, rows = '"' + ",".join(header), rows.replace(b'"', b"")
    return Input(".csv", line.encode("utf-8", "surrogateescape") + b"\n" + rows)


# ----------------------------------------------------------------------------- running
@dataclass
class Options:
    one_source: bool = False  # all files in one source (a directory), or a source each
    format: str = "auto"
    lengths: bool = False  # token-length bounds on a word-level tokenizer
    decontaminate: bool = False
    near_dedup: bool = True
    dedup_fields: str = "row"


options = st.builds(
    Options, one_source=st.booleans(), format=st.sampled_from(("auto",) * 4 + FORMATS),
    lengths=st.booleans(), decontaminate=st.booleans(), near_dedup=st.booleans(),
    dedup_fields=st.sampled_from(["row", "prompt"]))


@pytest.fixture(scope="module")
def counter(tmp_path_factory) -> TokenCounter:
    """A word-level tokenizer over WORDS, for the length bounds: every other word is [UNK]."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    out = tmp_path_factory.mktemp("tok")
    tok.save(str(out / "tokenizer.json"))
    return TokenCounter(out)


def eval_index() -> EvalIndex:
    items = [EvalItem("eval.jsonl:1", "what is two plus three"),
             EvalItem("eval.jsonl:2", "write a poem about the sea"), EvalItem("eval.jsonl:3", "red")]
    return EvalIndex(items, ngram=4, min_words=3)


def write_inputs(root: Path, inputs: list[Input]) -> list[Path]:
    (root / "in").mkdir()
    paths = [root / "in" / f"{i}{inp.suffix}" for i, inp in enumerate(inputs)]
    for path, inp in zip(paths, inputs, strict=True):
        path.write_bytes(inp.data)
    return paths


def read_lines(path: Path) -> list[dict]:
    # Split on "\n" only: a row's text may hold U+2028 or U+0085, which splitlines() splits on.
    return [json.loads(line) for line in path.read_text("utf-8").split("\n") if line]


def run_curation(paths: list[Path], opts: Options, counter: TokenCounter | None = None,
                 ) -> tuple[dict, list[dict], list[dict]]:
    """Curate in process as the curate stage does; (report, kept rows, rejects) as written."""
    if opts.one_source:
        sources = [Source("all", tuple(paths), opts.format)]
    else:
        sources = sources_from_paths(paths, opts.format)
    cfg = CurateConfig(tokenizer=None, min_tokens=4, max_tokens=64,
                       dedup_fields=opts.dedup_fields,
                       near_dedup=NearDedupConfig(enabled=opts.near_dedup))
    result = curate(sources, cfg, eval_index() if opts.decontaminate else None,
                    counter if opts.lengths else None)
    out = paths[0].parent.parent / "out"
    out.mkdir()
    write_curation(result, out)
    kept = [row for _, name in CURATED_FILES for row in read_lines(out / name)]
    return json.loads((out / "report.json").read_text()), kept, read_lines(out / "rejects.jsonl")


def digests(paths: list[Path]) -> list[tuple[str, int]]:
    return [(hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths]


def check_accounts(report: dict, kept: list[dict], rejects: list[dict], files: list[str]) -> None:
    """The report adds up, and every row is in exactly one place with its file and line."""
    dropped = report["dropped"]
    assert report["input_rows"] == report["kept_rows"] + sum(dropped.values())
    assert report["kept_rows"] == len(kept) and sum(dropped.values()) == len(rejects)
    assert sum(s["input_rows"] for s in report["sources"].values()) == report["input_rows"]
    for name, src in report["sources"].items():
        assert src["input_rows"] == src["kept_rows"] + sum(src["dropped"].values()), name
    counted: dict[str, int] = {}
    for r in rejects:
        assert REASON.fullmatch(r["reason"]), r
        assert isinstance(r["detail"], str) and r["detail"].strip(), r
        assert r["file"] in files and isinstance(r["line"], int) and r["line"] >= 1, r
        assert isinstance(r["raw"], str), r
        counted[r["reason"]] = counted.get(r["reason"], 0) + 1
    assert counted == dropped
    places = [(r["meta"]["file"], r["meta"]["line"]) for r in kept]
    places += [(r["file"], r["line"]) for r in rejects]
    assert len(set(places)) == len(places), "a row is in two places"
    # What the examples reached (pytest --hypothesis-show-statistics): every reason, and kept rows.
    event("rows kept" if kept else "no row kept")
    for reason in dropped:
        event(f"dropped: {reason}")


# Regressions: inputs that crashed curation before (the exception is named at each example).
BIGINT = b'{"instruction": "Count.", "output": "ok", "n": ' + b"7" * 5000 + b"}"
DEEP = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
LONE = b'{"instruction": "Say \\ud800 hi", "output": "hello there"}'  # valid JSON, not UTF-8
LONE_ITEMS = (b'[{"instruction": "x", "output": "none", "note": "\\udc80"},'
              b' {"prompt": "Say hi", "completion": "hi \\udfff"}]')
# Near duplicates across files and formats (alpaca, messages, CSV): one cluster, one row kept.
TWINS_JSONL = b"\n".join([*(json.dumps(row).encode() for row in [
    {"instruction": "Summarise.", "output": f"{TWIN} red"}, {"messages": [
        {"role": "user", "content": "Summarise."}, {"role": "assistant", "content": f"{TWIN} sea"}]}]),
    b'{"instruction": "Summarise.", "output": '])  # and a truncated row
TWINS_CSV = f"instruction,output\r\nSummarise.,{TWIN} cat\r\n".encode()
# Parquet against its own rules, a string and a column name that are not UTF-8 (pyarrow raises
# UnicodeDecodeError): uncompressed and without statistics, so the bytes are there to change.
SAY_HI = parquet_bytes(pa.table({"instruction": ["Say hi"], "output": ["hi there"]}),
                       compression="NONE", use_dictionary=False, write_statistics=False)
BAD_STRING = SAY_HI.replace(b"Say hi", b"Say \xffi")
BAD_NAME = SAY_HI.replace(b"instruction", b"\x80nstruction", 1)


# ----------------------------------------------------------------------------- properties
@settings(PROPERTY, max_examples=150)
@given(inputs=st.lists(readable_file, min_size=1, max_size=4), opts=options)
@example(inputs=[Input(".jsonl", BIGINT + b"\n", [1])], opts=Options())  # ValueError
@example(inputs=[Input(".jsonl", DEEP + b"\n", [1])], opts=Options())  # RecursionError
@example(inputs=[Input(".jsonl", LONE, [1])], opts=Options())  # UnicodeEncodeError, kept row
@example(inputs=[Input(".json", LONE_ITEMS, [1, 2])], opts=Options())  # ... in rejects.jsonl
@example(inputs=[Input(".jsonl", TWINS_JSONL, [1, 2, 3]), Input(".csv", TWINS_CSV, [2])],
         opts=Options(lengths=True))
def test_every_row_ends_in_exactly_one_place(counter, inputs, opts):
    # A directory per example (tmp_path is one per test, shared by all its examples).
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_inputs(Path(tmp), inputs)
        before = digests(paths)
        report, kept, rejects = run_curation(paths, opts, counter)
        assert digests(paths) == before, "an input file changed"
        files = [p.as_posix() for p in paths]
        check_accounts(report, kept, rejects, files)
        # Against the rows the files were written with, not what the readers say they read.
        expected = sorted((f, n) for f, inp in zip(files, inputs, strict=True) for n in inp.rows)
        places = [(r["meta"]["file"], r["meta"]["line"]) for r in kept]
        assert sorted(places + [(r["file"], r["line"]) for r in rejects]) == expected
        if not opts.one_source:
            assert {f: report["sources"][f]["input_rows"] for f in files} == {
                f: len(inp.rows) for f, inp in zip(files, inputs, strict=True)}


@PROPERTY
@given(bad=unreadable_file(), others=st.lists(readable_file, max_size=2), at=st.integers(0, 2))
@example(bad=Input(".json", b"[" + BIGINT + b"]"), others=[], at=0)  # ValueError
@example(bad=Input(".json", b"[" * 100_000 + b"]" * 100_000), others=[], at=0)  # RecursionError
def test_an_unreadable_file_is_one_clear_error_naming_it(bad, others, at):
    inputs = others[:at] + [bad] + others[at:]
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_inputs(Path(tmp), inputs)
        before = digests(paths)
        with pytest.raises(PedigreeError) as err:
            run_curation(paths, Options())
        assert paths[inputs.index(bad)].as_posix() in str(err.value)
        assert digests(paths) == before


@st.composite
def corrupted_file(draw) -> Input:
    """A readable file with bytes cut, overwritten or inserted anywhere."""
    inp = draw(readable_file)
    data = bytearray(inp.data)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["cut", "overwrite", "insert"]))
        if how == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif how == "overwrite":
            data[at:at + 1] = draw(st.binary(min_size=1, max_size=1))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    data = bytes(data)
    return Input(inp.suffix, data, jsonl_rows(data) if inp.suffix in (".jsonl", ".txt") else [])


@settings(PROPERTY, max_examples=150)
@given(inp=corrupted_file())
@example(inp=Input(".parquet", BAD_STRING))
@example(inp=Input(".parquet", BAD_NAME))
def test_corrupted_files_give_rows_or_one_clear_error(inp):
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_inputs(Path(tmp), [inp])
        try:
            report, kept, rejects = run_curation(paths, Options())
        except PedigreeError as err:
            # Only a file that has to be read whole can be unusable whole: never JSONL or text.
            assert inp.suffix not in (".jsonl", ".txt") and paths[0].as_posix() in str(err)
            return
        check_accounts(report, kept, rejects, [paths[0].as_posix()])
        if inp.suffix in (".jsonl", ".txt"):
            assert report["input_rows"] == len(inp.rows)


@settings(PROPERTY, max_examples=500)
@given(row=any_row, fmt=st.sampled_from(("auto",) + FORMATS))
def test_a_row_is_canonical_or_a_row_error_with_a_reason(row, fmt):
    try:
        norm = normalise_row(row, fmt)
    except RowError as err:
        assert REASON.fullmatch(err.reason) and err.detail.strip()
        return
    if norm.kind == "text":  # a document: one string, not blank, and no messages
        assert set(norm.content) == {"text"} and norm.content["text"].strip()
        return
    answers = {"sft": ("completion",), "preference": ("chosen", "rejected"),
               "unpaired": ("completion",), "task": ()}[norm.kind]
    values = set(norm.content) - {"prompt", *answers}
    if norm.kind == "unpaired":
        assert values == {"label"} and isinstance(norm.content["label"], bool)
    elif norm.kind == "task":
        assert "match" in values <= {"match", "reference", "schema"}
        assert norm.content["match"] in MATCH_NAMES and task_row_problem(norm.content) is None
        assert norm.content["prompt"][-1]["role"] != "assistant"
    else:
        assert not values
    for key in ("prompt", *answers):
        messages = norm.content[key]
        assert messages and all(m["role"] in ROLES and isinstance(m["content"], str)
                                and m["content"].strip() for m in messages)
    assert all(norm.content[a][-1]["role"] == "assistant" for a in answers)


# ----------------------------------------------------------------------------- command line
def pedigree(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pedigree.cli", *args], cwd=cwd,
                          capture_output=True, text=True, check=False)


@settings(PROPERTY, max_examples=4)
@given(good=st.lists(readable_file, min_size=1, max_size=2), bad=unreadable_file())
def test_cli_on_malformed_files_exits_without_a_traceback(good, bad):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_inputs(root, [*good, bad])
        names = [p.relative_to(root).as_posix() for p in paths]
        # The first file named twice (as `pedigree curate data data/a.jsonl` would) must be
        # read once, not counted twice against one source.
        done = pedigree("curate", *names[:-1], names[0], "--out", "out", cwd=root)
        # Exit 1 only for a file that kept too little; the outputs are written either way.
        assert done.returncode == 0 or "curation kept too little" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        out = root / "out"
        report = json.loads((out / "report.json").read_text())
        kept = [row for _, name in CURATED_FILES for row in read_lines(out / name)]
        check_accounts(report, kept, read_lines(out / "rejects.jsonl"), names)
        assert report["input_rows"] == sum(len(g.rows) for g in good)
        done = pedigree("curate", *names, "--out", "out2", cwd=root)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert names[-1] in done.stderr and not (root / "out2").exists()


# ----------------------------------------------------------------------------- sources
def test_a_file_named_twice_is_read_once(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"instruction": "Say hi", "output": "hi there"}\n')
    assert [s.files for s in sources_from_paths([path, tmp_path, path])] == [(path,)]


def test_a_file_in_two_sources_is_an_error_naming_it(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"instruction": "Say hi", "output": "hi there"}\n')
    sources = [Source("one", (path,)), Source("two", (path,))]
    with pytest.raises(PedigreeError, match=re.escape(f"{path.as_posix()}: read twice")):
        curate(sources, CurateConfig(tokenizer=None))


def test_parquet_that_is_not_utf8_is_one_clear_error(tmp_path):
    for name, data in (("string", BAD_STRING), ("name", BAD_NAME)):
        assert data != SAY_HI, "the bytes to change were not found: pyarrow wrote differently"
        path = tmp_path / f"{name}.parquet"
        path.write_bytes(data)
        with pytest.raises(PedigreeError, match=re.escape(path.as_posix())):
            curate([Source(name, (path,))], CurateConfig(tokenizer=None))


def test_an_eval_item_with_a_lone_surrogate_in_its_id_is_written_escaped(tmp_path):
    """The eval item a contaminated row names is copied into rejects.jsonl: an id holding
    "\\ud800" (valid JSON, no UTF-8 form) must not fail the write."""
    raw, evals = tmp_path / "a.jsonl", tmp_path / "task.jsonl"
    question = "What is the capital city of the country France in Europe today please"
    raw.write_text(json.dumps({"instruction": question, "output": "Paris"}) + "\n")
    evals.write_text('{"id": "e\\ud800", "prompt": "' + question + '", "answer": "Paris"}\n')
    proc = subprocess.run([sys.executable, "-m", "pedigree.cli", "curate", str(raw), "--out",
                           str(tmp_path / "out"), "--against", str(evals)],
                          capture_output=True, text=True, timeout=120, check=False)
    # Its only row is dropped: exit 1 for a file that kept nothing, the outputs written first.
    assert proc.returncode == 1 and "kept 0 of 1 rows" in proc.stderr, proc.stderr
    rejects = (tmp_path / "out/rejects.jsonl").read_text(encoding="utf-8")
    assert json.loads(rejects)["eval_item"].endswith("(e\ud800)")
