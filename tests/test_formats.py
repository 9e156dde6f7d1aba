"""Readers (JSONL, JSON array, Parquet, CSV), formats, column mapping and row errors."""

from __future__ import annotations

import csv
import datetime
import json
import re
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pedigree.data import messages, readers
from pedigree.data.formats import (
    CANONICAL_FIELDS,
    ColumnsError,
    Normalised,
    RowError,
    check_columns,
    detect_format,
    normalise_row,
    parse_columns,
    row_id,
)
from pedigree.data.readers import InputError, read_rows

U, A, S = "user", "assistant", "system"


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def rows_of(path):
    return list(read_rows(path, path.name))


def errors(rows):
    return [(r.line, r.error.reason) for r in rows if r.error]


# ----------------------------------------------------------------------------- JSONL
def test_jsonl_rows_lines_and_per_row_errors(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"instruction": "Say hi", "output": "hi"}\r\n'  # BOM, Windows line end
        b"\n"
        b"   \n"
        b'{"instruction": "Say yo", "output": "yo"\n'  # truncated
        b'{"instruction": "caf\xe9", "output": "x"}\n'  # Latin-1, not UTF-8
        b'  {"instruction": "Caf\xc3\xa9", "output": "y"}  \n'  # UTF-8, padded with spaces
        b'{"a": 1} {"b": 2}\n'
        b"[1, 2]"  # no newline at the end
    )
    rows = rows_of(path)
    assert [r.line for r in rows] == [1, 4, 5, 6, 7, 8]
    assert rows[0].value == {"instruction": "Say hi", "output": "hi"}
    assert rows[0].text == '{"instruction": "Say hi", "output": "hi"}' and rows[0].file == "a.jsonl"
    assert errors(rows) == [(4, "invalid_json"), (5, "invalid_utf8"), (7, "invalid_json")]
    assert rows[1].text == '{"instruction": "Say yo", "output": "yo"'  # kept for the rejects file
    assert "caf\ufffd" in rows[2].text and "byte 20 of the line" in rows[2].error.detail
    assert rows[3].value == {"instruction": "Café", "output": "y"}
    assert rows[4].error.detail.startswith("Extra data")
    assert rows[5].value == [1, 2] and rows[5].error is None


def test_jsonl_is_read_in_blocks_without_splitting_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_BLOCK", 16)  # most lines are longer than a block
    lines = [json.dumps({"output": "x" * n}) for n in (1, 40, 3, 100)]
    lines.insert(2, '{"output": "\xe9t\xe9"}')
    data = "\n".join(lines).encode("utf-8").replace(b"\xc3\xa9t", b"\xe9t")  # one bad line
    path = tmp_path / "b.jsonl"
    path.write_bytes(data + b"\n")
    rows = rows_of(path)
    assert [r.line for r in rows] == [1, 2, 3, 4, 5]
    assert errors(rows) == [(3, "invalid_utf8")]
    assert [len(r.value["output"]) for r in rows if not r.error] == [1, 40, 3, 100]


def test_read_rows_streams(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    rows = read_rows(path, "c.jsonl")
    assert isinstance(rows, types.GeneratorType)
    assert next(rows).value == {"a": 1}


# ----------------------------------------------------------------------------- JSON array
def test_json_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": "Say yo", "output": "yo"}, "é"]))
    rows = rows_of(path)
    assert [(r.line, r.value) for r in rows] == [
        (1, {"instruction": "Say yo", "output": "yo"}), (2, "é")]
    assert rows[1].text == '"é"'


@pytest.mark.parametrize("data, match", [
    (b'[{"a": 1},', "not a readable JSON array"),
    (b'[{"a": "\xe9"}]', "not a readable JSON array"),
    (b'{"a": 1}', "a .json file must hold an array"),
])
def test_unreadable_json_array_names_the_file(tmp_path, data, match):
    path = tmp_path / "e.json"
    path.write_bytes(data)
    with pytest.raises(InputError, match=f"e.json: {match}"):
        rows_of(path)


# ----------------------------------------------------------------------------- Parquet
def test_parquet_rows_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_PARQUET_BATCH", 2)
    path = tmp_path / "f.parquet"
    table = pa.table({
        "instruction": ["Say hi", "Say yo", None],
        "output": ["hi", "yo", "x"],
        "messages": [None, None, [msg(U, "hi"), msg(A, "hello")]],
        "day": [datetime.date(2024, 1, 2)] * 3,
    })
    pq.write_table(table, path, row_group_size=2)
    rows = rows_of(path)
    assert [r.line for r in rows] == [1, 2, 3] and not errors(rows)
    assert rows[0].value["instruction"] == "Say hi"
    assert json.loads(rows[0].text) == {"instruction": "Say hi", "output": "hi",
                                        "messages": None, "day": "2024-01-02"}
    # A null column is an absent field: row 1 is alpaca, row 3 a conversation.
    assert [normalise_row(r.value, "auto").format for r in rows] == ["alpaca", "alpaca", "messages"]


def test_unreadable_parquet_names_the_file(tmp_path):
    path = tmp_path / "g.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="g.parquet: not a readable Parquet file"):
        rows_of(path)


# ----------------------------------------------------------------------------- CSV
def test_csv_rows_lines_and_per_row_errors(tmp_path):
    path = tmp_path / "h.csv"
    path.write_bytes(
        b"\xef\xbb\xbfinstruction,input,output\r\n"  # BOM, as Excel writes it
        b'Say hi,,"hi"\r\n'
        b'"Write a poem.","about, commas","line one\r\nline two\r\nline three"\r\n'
        b"short,record\r\n"
        b"\r\n"
        b"caf\xe9,,x\r\n"
        b'Say yo,,"yo ""quoted"""\r\n'
    )
    rows = rows_of(path)
    assert [r.line for r in rows] == [2, 3, 6, 8, 9]
    assert rows[0].value == {"instruction": "Say hi", "input": "", "output": "hi"}
    assert rows[1].value["output"] == "line one\r\nline two\r\nline three"
    assert rows[1].value["input"] == "about, commas"
    assert errors(rows) == [(6, "malformed_csv"), (8, "invalid_utf8")]
    assert "2 fields, the header has 3" in rows[2].error.detail
    assert rows[2].text == "short,record"
    assert "'instruction'" in rows[3].error.detail and rows[3].text == "caf\ufffd,,x"
    assert rows[4].value["output"] == 'yo "quoted"'
    assert rows[4].text == 'Say yo,,"yo ""quoted"""'
    # An empty input cell means no input, as in alpaca JSON.
    assert normalise_row(rows[0].value, "auto").content["prompt"] == [msg(U, "Say hi")]


def test_csv_quote_errors_are_malformed_rows(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('prompt,completion\n"a"b,c\nx,y\nz,"never closed\nw,v\n')
    rows = rows_of(path)
    assert [(r.line, r.error and r.error.reason) for r in rows] == [
        (2, "malformed_csv"), (3, None), (4, "malformed_csv")]
    assert rows[0].text == '"a"b,c' and rows[1].value == {"prompt": "x", "completion": "y"}
    # A quote left open swallows the rest of the file: one reject, with every line it took.
    assert rows[2].text == 'z,"never closed\nw,v' and "lines 4-5" in rows[2].error.detail


def test_csv_json_list_columns(tmp_path):
    path = tmp_path / "i.csv"
    chat = json.dumps([msg(U, "hi"), msg(A, "hello")])
    sharegpt = json.dumps([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}])
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["messages"], [chat], [sharegpt], ["not json"]])
    assert '"[{""role"": ""user""' in path.read_text()  # a JSON list in one quoted CSV cell
    rows = rows_of(path)
    assert detect_format(rows[1].value) == "sharegpt"
    first, second = (normalise_row(r.value, "auto") for r in rows[:2])
    assert (first.format, second.format) == ("messages", "sharegpt")
    assert first.content == second.content == {"prompt": [msg(U, "hi")],
                                               "completion": [msg(A, "hello")]}
    with pytest.raises(RowError, match="wrong_type: field 'messages'.*not JSON"):
        normalise_row(rows[2].value, "auto")
    # Where a string is a valid value it stays text, even when it looks like JSON.
    pc = normalise_row({"prompt": "List three numbers.", "completion": "[1, 2, 3]"}, "auto")
    assert pc.content["completion"] == [msg(A, "[1, 2, 3]")]


@pytest.mark.parametrize("header, match", [
    (b"a,b,a\n1,2,3\n", "names a column twice"),
    (b"a,\xff\n1,2\n", "not UTF-8"),
])
def test_csv_bad_header_names_the_file(tmp_path, header, match):
    path = tmp_path / "j.csv"
    path.write_bytes(header)
    with pytest.raises(InputError, match=f"j.csv: .*{match}"):
        rows_of(path)


def test_empty_csv_has_no_rows(tmp_path):
    path = tmp_path / "k.csv"
    path.write_text("")
    assert rows_of(path) == []


# ----------------------------------------------------------------------------- formats
PROMPT = [msg(S, "Be brief."), msg(U, "Add the two numbers.\n\n2 + 3")]
COMPLETION = [msg(A, "5")]
SAME_EXAMPLE = {
    "alpaca": {"system": "Be brief.", "instruction": "Add the two numbers.", "input": "2 + 3",
               "output": "5"},
    "prompt_completion": {"prompt": PROMPT, "completion": "5"},
    "messages": {"messages": PROMPT + COMPLETION},
    "sharegpt": {"conversations": [{"from": "system", "value": "Be brief."},
                                   {"from": "human", "value": "Add the two numbers.\n\n2 + 3"},
                                   {"from": "gpt", "value": "5"}]},
}


@pytest.mark.parametrize("fmt", list(SAME_EXAMPLE))
def test_one_example_in_every_sft_format_is_the_same_row(fmt):
    expected = {"prompt": PROMPT, "completion": COMPLETION}
    for given in ("auto", fmt):
        norm = normalise_row(SAME_EXAMPLE[fmt], given)
        assert norm == Normalised("sft", fmt, expected)
        assert row_id(norm.content) == row_id(expected)


def test_sharegpt_items_under_messages_and_the_role_table():
    row = {"messages": [{"from": "user", "value": "hi"}, {"from": "model", "value": "hello"}]}
    assert detect_format(row) == "sharegpt"
    assert normalise_row(row, "messages") == Normalised(
        "sft", "sharegpt", {"prompt": [msg(U, "hi")], "completion": [msg(A, "hello")]})
    assert messages.SHAREGPT_ROLES["human"] == "user"
    assert {messages.SHAREGPT_ROLES[r] for r in ("gpt", "assistant", "bot", "model")} == {A}


def test_ids_of_existing_rows_do_not_change():
    # Ids computed before this module read Parquet, CSV or ShareGPT: they must stay.
    alpaca = {"instruction": "Add the two numbers.", "input": "2 + 3", "output": "5"}
    chat = {"messages": [msg(S, "Be brief."), msg(U, "hi"), msg(A, "hello")]}
    pair = {"prompt": "p", "chosen": "a", "rejected": "b"}
    assert row_id(normalise_row(alpaca, "alpaca").content) == (
        "ea1a0a334e295884f76693595a5037a38ee9037969310579cd61077c6b15b818")
    assert row_id(normalise_row(chat, "auto").content) == (
        "97ee60a0de96f51b81ccf4f06926e17ffc3b0a372c61c2b302a733963520d483")
    assert row_id(normalise_row(pair, "auto").content) == (
        "6da1400b7ac0dba683620d4e7afe921ec0880851bf3e71d43d5f54766902b3b7")


def test_prompt_completion_with_message_lists():
    row = {"prompt": [msg(U, "hi"), msg(A, "hello"), msg(U, "bye")], "completion": [msg(A, "ciao")]}
    assert normalise_row(row, "auto") == Normalised("sft", "prompt_completion", row)


def test_preference_with_strings_and_message_lists():
    row = {"prompt": "2 + 3?", "chosen": "5", "rejected": "6"}
    assert normalise_row(row, "auto") == Normalised("preference", "preference", {
        "prompt": [msg(U, "2 + 3?")], "chosen": [msg(A, "5")], "rejected": [msg(A, "6")]})
    lists = {"prompt": [msg(U, "2 + 3?")], "chosen": [msg(A, "5")], "rejected": [msg(A, "6")]}
    assert normalise_row(lists, "preference").content == normalise_row(row, "preference").content


def test_implicit_prompt_preference():
    shared = [msg(S, "Be brief."), msg(U, "2 + 3?")]
    row = {"chosen": shared + [msg(A, "5")], "rejected": shared + [msg(A, "6")]}
    expected = {"prompt": shared, "chosen": [msg(A, "5")], "rejected": [msg(A, "6")]}
    assert normalise_row(row, "auto") == Normalised("preference", "preference", expected)
    # The same pair as JSON strings (a CSV file): no prompt, so the strings must be the lists.
    as_text = {k: json.dumps(v) for k, v in row.items()}
    assert normalise_row(as_text, "preference").content == expected
    # Multi-turn: the prompt is every shared turn, the answers may run on.
    long = {"chosen": shared + [msg(A, "5"), msg(U, "sure?"), msg(A, "yes")],
            "rejected": shared + [msg(A, "6")]}
    assert normalise_row(long, "auto").content["chosen"] == [
        msg(A, "5"), msg(U, "sure?"), msg(A, "yes")]


def test_unpaired_rows_with_strings_and_message_lists():
    expected = {"prompt": [msg(S, "Be brief."), msg(U, "2 + 3?")], "completion": [msg(A, "6")],
                "label": False}
    row = {"system": "Be brief.", "prompt": "2 + 3?", "completion": "6", "label": False}
    assert normalise_row(row, "auto") == Normalised("unpaired", "unpaired_preference", expected)
    assert normalise_row(row, "unpaired") == Normalised("unpaired", "unpaired", expected)
    lists = {"prompt": expected["prompt"], "completion": expected["completion"], "label": False}
    assert normalise_row(lists, "auto").content == expected
    # The same answer labelled otherwise is another row.
    assert row_id(normalise_row({**row, "label": True}, "auto").content) != row_id(expected)


@pytest.mark.parametrize("label, value", [
    (True, True), (False, False), ("true", True), ("False", False), (" TRUE ", True), ("1", True),
    ("0", False), (1, True), (0, False)])
def test_unpaired_labels_as_csv_and_json_give_them(label, value):
    row = {"prompt": "2 + 3?", "completion": "5", "label": label}
    assert normalise_row(row, "auto").content["label"] is value


def test_unpaired_labels_read_from_csv(tmp_path):
    path = tmp_path / "kto.csv"
    path.write_text("prompt,completion,label\n2 + 3?,5,true\n2 + 3?,6,False\n2 + 2?,4,1\n")
    labels = [normalise_row(r.value, "auto").content["label"] for r in rows_of(path)]
    assert labels == [True, False, True]


def test_task_rows_with_strings_and_message_lists():
    row = {"id": "add-1", "task": "add", "prompt": "Add 2 and 3.", "match": "numeric",
           "reference": "5", "system": "Answer with a number."}
    expected = {"prompt": [msg(S, "Answer with a number."), msg(U, "Add 2 and 3.")],
                "match": "numeric", "reference": "5"}
    assert normalise_row(row, "auto") == Normalised("task", "task", expected)
    lists = {"prompt": expected["prompt"], "match": "numeric", "reference": "5"}
    assert normalise_row(lists, "task").content == expected
    schema = {"type": "object", "required": ["name"]}
    row = {"prompt": "A record, please.", "match": "json_valid", "schema": schema}
    assert normalise_row(row, "auto").content == {"prompt": [msg(U, "A record, please.")],
                                                  "match": "json_valid", "schema": schema}
    # json with a reference and a schema; a schema in a CSV cell is JSON text; an empty cell is
    # no value.
    row = {"prompt": "A record.", "match": "json", "reference": '{"name": "x"}',
           "schema": json.dumps(schema)}
    assert normalise_row(row, "task").content["schema"] == schema
    row = {"prompt": "Add 2 and 3.", "match": "numeric", "reference": "5", "schema": ""}
    assert set(normalise_row(row, "task").content) == {"prompt", "match", "reference"}


def test_auto_detects_each_row():
    assert detect_format({"instruction": "x", "output": "y"}) == "alpaca"
    assert detect_format({"prompt": "x", "completion": "y"}) == "prompt_completion"
    assert detect_format({"prompt": "x", "completion": "y", "label": True}) == (
        "unpaired_preference")
    assert detect_format({"prompt": "x", "completion": "y", "label": None}) == "prompt_completion"
    assert detect_format({"prompt": "x", "match": "exact", "reference": "y"}) == "task"
    assert detect_format({"prompt": "x", "match": None, "completion": "y"}) == "prompt_completion"
    assert detect_format({"messages": [msg(U, "x")]}) == "messages"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"chosen": "x"}) == "preference"
    assert detect_format({"messages": None, "instruction": "x"}) == "alpaca"  # null is absent
    with pytest.raises(RowError) as err:
        detect_format({"q": "x", "a": "y"})
    assert err.value.reason == "unknown_format"
    assert "['a', 'q']" in err.value.detail and "sharegpt" in err.value.detail


# ----------------------------------------------------------------------------- columns
def test_column_mapping():
    row = {"question": "What is 2 + 3?", "answer": "5", "id": 7}
    columns = {"prompt": "question", "completion": "answer"}
    norm = normalise_row(row, "auto", columns)
    assert norm == Normalised("sft", "prompt_completion",
                              {"prompt": [msg(U, "What is 2 + 3?")], "completion": [msg(A, "5")]})
    # The source fields are gone after mapping: `instruction` mapped to `prompt` is not alpaca.
    renamed = {"instruction": "What is 2 + 3?", "output": "5"}
    assert normalise_row(renamed, "auto", {"prompt": "instruction", "completion": "output"}) == norm


def test_column_mapping_errors_name_the_source_field():
    columns = {"prompt": "question", "completion": "answer"}
    with pytest.raises(RowError) as err:
        normalise_row({"question": "q?", "reply": "a"}, "auto", columns)
    assert err.value.reason == "missing_field"
    assert "'answer'" in err.value.detail and "completion=answer" in err.value.detail
    with pytest.raises(RowError) as err:
        normalise_row({"question": "q?", "answer": " "}, "auto", columns)
    assert err.value.reason == "empty_content"
    assert "'completion'" in err.value.detail and "completion=answer" in err.value.detail
    with pytest.raises(ColumnsError, match="the canonical name comes first: prompt=question"):
        normalise_row({"question": "q?"}, "auto", {"question": "prompt"})


def test_parse_columns():
    assert parse_columns("prompt=question,completion=answer") == {
        "prompt": "question", "completion": "answer"}
    assert parse_columns(" prompt = question ") == {"prompt": "question"}
    check_columns({"messages": "turns"})


@pytest.mark.parametrize("spec, match", [
    ("bogus", "'bogus' is not canonical=source"),
    ("prompt=", "'prompt=' is not canonical=source"),
    ("prompt=q,,completion=a", "'' is not canonical=source"),
    ("", "'' is not canonical=source"),
    ("question=prompt", "the canonical name comes first: prompt=question"),
    ("answer=reply", "'answer' is not a canonical field; allowed: " + ", ".join(CANONICAL_FIELDS)),
    ("prompt=a,prompt=b", "'prompt' is mapped twice"),
])
def test_parse_columns_errors(spec, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace("?", r"\?")):
        parse_columns(spec)


# ----------------------------------------------------------------------------- row errors
ROW_ERRORS = [
    # (row, fmt, reason, text in the detail)
    (["not", "an", "object"], "auto", "not_an_object", "got list"),
    ({"question": "x"}, "auto", "unknown_format", "['question']"),
    ({"instruction": "x", "output": "y"}, "yaml", "unknown_format", "'yaml'"),
    ({"instruction": "x"}, "auto", "missing_field", "'output'"),
    ({"instruction": 42, "output": "y"}, "auto", "wrong_type", "'instruction' must be a string"),
    ({"instruction": "x", "output": "y", "system": 1}, "auto", "wrong_type", "'system'"),
    ({"instruction": "  ", "output": "y"}, "auto", "empty_content", "'instruction'"),
    ({"prompt": "", "completion": "y"}, "auto", "empty_content", "'prompt'"),
    ({"prompt": "x", "completion": []}, "auto", "empty_content", "'completion' is an empty list"),
    ({"prompt": "x", "completion": 5}, "auto", "wrong_type", "'completion' must be a list"),
    ({"prompt": "x", "completion": [msg(U, "y")]}, "auto", "no_final_assistant", "completion[0]"),
    ({"messages": [msg(U, "x"), msg("robot", "y")]}, "auto", "unknown_role",
     "messages[1].role='robot'; allowed: system, user, assistant"),
    ({"conversations": [{"from": "human", "value": "x"}, {"from": "narrator", "value": "y"}]},
     "auto", "unknown_role", "conversations[1].from='narrator'; allowed: system, human, user, gpt"),
    ({"messages": [msg(U, "x"), {"content": "y"}]}, "auto", "missing_field", "messages[1].role"),
    ({"messages": [msg(U, "x"), {"role": A}]}, "auto", "missing_field", "messages[1].content"),
    ({"messages": [msg(U, "x"), {"role": A, "content": 3}]}, "auto", "wrong_type",
     "messages[1].content must be a string, not int"),
    ({"messages": [msg(U, "x"), "y"]}, "auto", "wrong_type", "messages[1] must be an object"),
    ({"messages": [msg(U, "x"), msg(A, "")]}, "auto", "empty_content", "messages[1].content"),
    ({"messages": "user: hi"}, "auto", "wrong_type", "'messages' must be a list"),
    ({"messages": [msg(U, "x")]}, "auto", "no_final_assistant", "messages[0] is a user turn"),
    ({"messages": [msg(A, "x")]}, "auto", "no_prompt", "no user turn"),
    ({"messages": [msg(S, "x"), msg(A, "y")]}, "auto", "no_prompt", "no user turn"),
    ({"instruction": "x"}, "messages", "missing_field", "'messages'"),
    ({"prompt": "x", "chosen": "y", "rejected": "y"}, "auto", "chosen_equals_rejected", "identical"),
    ({"prompt": "x", "chosen": "y"}, "auto", "missing_field", "'rejected'"),
    ({"prompt": "x", "chosen": "y", "rejected": [msg(U, "z")]}, "auto", "no_prompt",
     "rejected starts with a user turn that is not the row's prompt"),
    ({"chosen": "y", "rejected": "z"}, "auto", "missing_field", "'prompt' is missing"),
    ({"chosen": [msg(U, "x"), msg(A, "y")], "rejected": [msg(U, "x"), msg(A, "y")]}, "auto",
     "chosen_equals_rejected", "identical"),
    ({"chosen": [msg(U, "x"), msg(A, "y")], "rejected": [msg(U, "w"), msg(A, "z")]}, "auto",
     "no_prompt", "share no first turn"),
    ({"chosen": [msg(U, "x"), msg(A, "y")], "rejected": [msg(U, "x")]}, "auto",
     "empty_content", "rejected has no turn after the 1 turn"),
    ({"chosen": [msg(U, "x"), msg(A, "y"), msg(U, "a"), msg(A, "b")],
      "rejected": [msg(U, "x"), msg(A, "y"), msg(U, "c"), msg(A, "d")]}, "auto",
     "no_prompt", "chosen[2] is a user turn"),
    ({"chosen": [msg(S, "x"), msg(A, "y")], "rejected": [msg(S, "x"), msg(A, "z")]}, "auto",
     "no_prompt", "no user turn"),
    # unpaired: the prompt_completion fields, then the label
    ({"prompt": "x", "completion": "y", "label": "maybe"}, "auto", "wrong_type",
     "field 'label' must be true or false"),
    ({"prompt": "x", "completion": "y", "label": 2}, "auto", "wrong_type", "'label'"),
    ({"prompt": "x", "completion": "y", "label": 1.0}, "auto", "wrong_type", "'label'"),
    ({"prompt": "x", "completion": "y", "label": ""}, "auto", "wrong_type", "'label'"),
    ({"prompt": "x", "completion": "y", "label": [True]}, "auto", "wrong_type", "'label'"),
    ({"prompt": "x", "completion": "y"}, "unpaired", "missing_field", "'label'"),
    ({"prompt": "x", "label": True}, "unpaired", "missing_field", "'completion'"),
    ({"prompt": "", "completion": "y", "label": True}, "auto", "empty_content", "'prompt'"),
    ({"prompt": "x", "completion": [msg(U, "y")], "label": True}, "auto", "no_final_assistant",
     "completion[0]"),
    # task: the eval's rules for its check
    ({"prompt": "x", "match": "fuzzy", "reference": "y"}, "auto", "bad_task",
     "match='fuzzy': expected one of exact, normalised, numeric, contains, json, json_valid"),
    ({"prompt": "x", "match": "exact"}, "auto", "bad_task",
     "reference: a string is required for match='exact'"),
    ({"prompt": "x", "match": "exact", "reference": 5}, "auto", "bad_task",
     "reference: a string is required"),
    ({"prompt": "x", "match": "json_valid", "reference": 5}, "auto", "bad_task",
     "reference: must be a string, not int"),
    ({"prompt": "x", "match": "numeric", "reference": "ten"}, "auto", "bad_task",
     "reference='ten' is not a number (match=numeric)"),
    ({"prompt": "x", "match": "json", "reference": "{"}, "auto", "bad_task",
     "reference is not valid JSON (match=json)"),
    ({"prompt": "x", "match": "json_valid", "schema": {"type": 3}}, "auto", "bad_task",
     "schema: not a valid JSON Schema"),
    ({"prompt": "x", "match": "json_valid", "schema": [1]}, "auto", "bad_task",
     "schema: a JSON Schema object is required, not list"),
    ({"prompt": "x", "match": "json_valid", "schema": "{oops"}, "auto", "bad_task",
     "schema: a JSON Schema object is required; it is a string that is not JSON"),
    ({"prompt": "x", "reference": "y"}, "task", "missing_field", "'match'"),
    ({"match": "exact", "reference": "y"}, "task", "missing_field", "'prompt'"),
    ({"prompt": 5, "match": "exact", "reference": "y"}, "auto", "wrong_type", "'prompt'"),
    ({"prompt": [msg(U, "x"), msg(A, "y")], "match": "exact", "reference": "y"}, "auto",
     "no_prompt", "prompt[1] is an assistant turn"),
    ({"prompt": [msg(S, "x")], "match": "exact", "reference": "y"}, "auto", "no_prompt",
     "no user turn"),
]


@pytest.mark.parametrize("row, fmt, reason, detail", ROW_ERRORS)
def test_row_errors(row, fmt, reason, detail):
    with pytest.raises(RowError) as err:
        normalise_row(row, fmt)
    assert (err.value.reason, detail in err.value.detail) == (reason, True), err.value.detail


def test_every_reason_is_covered_and_short():
    read_reasons = {"invalid_json", "invalid_utf8", "malformed_csv"}  # tested with the readers
    covered = {reason for _, _, reason, _ in ROW_ERRORS} | read_reasons
    assert covered == {
        "invalid_json", "invalid_utf8", "malformed_csv", "not_an_object", "unknown_format",
        "missing_field", "wrong_type", "empty_content", "unknown_role", "no_final_assistant",
        "no_prompt", "chosen_equals_rejected", "bad_task"}
    assert all(re.fullmatch("[a-z0-9]+(_[a-z0-9]+)*", r) for r in covered)
