"""A source that keeps nothing (or too little) fails with the reason, examples and the setting
that reads it; tool turns are kept only when the template renders them; the layout chosen is
reported per file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pedigree.config import CurateConfig
from pedigree.data.curate import CurationError, check_kept, curate
from pedigree.data.sources import Source
from pedigree.data.tools import ToolSupport

NO_LENGTHS = CurateConfig(tokenizer=None)
BASE = Path(__file__).resolve().parents[1] / "models" / "base"


def write_jsonl(path: Path, items: list) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def words(i: int, n: int = 12) -> str:
    return " ".join(f"w{(i * 7919 + j * 104729) % 100003}" for j in range(n))


def failure(tmp_path: Path, rows: list, fmt: str = "auto", columns=None,
            min_fraction: float = 0.5) -> str:
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    result = curate([Source("data", (path,), fmt, dict(columns or {}))], NO_LENGTHS)
    with pytest.raises(CurationError) as err:
        check_kept(result, min_fraction)
    return str(err.value)


def test_an_all_rejected_source_fails_with_the_mapping_that_reads_it(tmp_path):
    rows = [{"problem": f"Problem {i}: {words(i)}", "solution": words(i + 1000)}
            for i in range(30)]
    message = failure(tmp_path, rows)
    assert "source 'data': kept 0 of 30 rows" in message
    assert "main reason unknown_format (30 rows)" in message
    assert message.count("data.jsonl:") == 3  # three example lines, with file and line
    assert "data.jsonl:1:" in message and '{"problem": "Problem 0' in message
    hint = "format: prompt_completion with columns: {prompt: problem, completion: solution}"
    assert hint in message and "--columns prompt=problem,completion=solution" in message
    # The hint is right: that mapping keeps every row.
    path = tmp_path / "data.jsonl"
    result = curate([Source("data", (path,), "prompt_completion",
                            {"prompt": "problem", "completion": "solution"})], NO_LENGTHS)
    check_kept(result, 0.5)
    assert len(result.sft) == 30


def test_a_wrong_explicit_format_is_told_that_auto_reads_the_rows(tmp_path):
    rows = [{"instruction": words(i), "context": "", "response": words(i + 50)} for i in range(5)]
    message = failure(tmp_path, rows, fmt="alpaca")
    assert "missing_field" in message and "hint: format: auto reads them (as the dolly layout)" \
        in message


def test_a_source_below_min_kept_fraction_fails_and_zero_allows_it(tmp_path):
    rows = [{"prompt": words(i), "completion": words(i + 100)} for i in range(4)]
    rows += [{"prompt": words(i)} for i in range(6)]  # 6 of 10 miss their answer
    message = failure(tmp_path, rows)
    assert "kept 4 of 10 rows (curate.min_kept_fraction=0.5); main reason unknown_format" in message
    path = tmp_path / "data.jsonl"
    check_kept(curate([Source("data", (path,))], NO_LENGTHS), 0.0)  # 0: only empty fails


def test_feedback_with_labels_not_understood_gets_no_mapping_that_drops_them(tmp_path):
    rows = [{"prompt": words(i), "completion": words(i + 100), "label": "good"} for i in range(5)]
    message = failure(tmp_path, rows)
    assert "main reason wrong_type (5 rows)" in message and "field 'label'" in message
    assert "hint" not in message  # prompt_completion would read them, as if every answer were good


def test_an_empty_file_fails(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    result = curate([Source("e", (tmp_path / "empty.jsonl",))], NO_LENGTHS)
    with pytest.raises(CurationError, match="source 'e': no rows in"):
        check_kept(result, 0.0)


def test_cli_writes_the_outputs_then_exits_1(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", [{"q": words(i), "a": words(i + 9)} for i in range(5)])
    done = subprocess.run([sys.executable, "-m", "pedigree.cli", "curate", "qa.jsonl", "--out",
                           "cur"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "kept 0 of 5 rows" in done.stderr
    assert "Traceback" not in done.stderr
    rejects = (tmp_path / "cur/rejects.jsonl").read_text().splitlines()
    assert len(rejects) == 5  # there to read


def test_layout_is_reported_per_file(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"question": words(i), "answer": words(i + 1)}
                                            for i in range(3)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": words(i + 40), "output": words(i)}
                                            for i in range(2)])
    report = curate([Source("both", (a, b))], NO_LENGTHS).report()["sources"]["both"]
    assert report["detected_formats"] == {"alpaca": 2, "question_answer": 3}
    assert report["detected_formats_by_file"] == {a.as_posix(): {"question_answer": 3},
                                                  b.as_posix(): {"alpaca": 2}}


class FakeTemplate(ToolSupport):
    def __init__(self, renders: dict[str, bool]):
        super().__init__("models/fake")
        self.__dict__["renders"] = renders  # what the probe would have found


def tool_rows() -> list[dict]:
    call = {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    return [
        {"messages": [{"role": "user", "content": words(1)},
                      {"role": "assistant", "content": "", "tool_calls": [call]},
                      {"role": "tool", "content": "42"},
                      {"role": "assistant", "content": words(2)}]},
        {"messages": [{"role": "user", "content": words(3)},
                      {"role": "tool", "content": "context from a tool"},
                      {"role": "assistant", "content": words(4)}]},
        {"messages": [{"role": "user", "content": words(5)},
                      {"role": "assistant", "content": words(6)}]},
    ]


@pytest.mark.parametrize(("renders", "kept", "dropped"), [
    ({"tool_calls": True, "tool": True}, 3, {}),
    ({"tool_calls": False, "tool": True}, 2, {"tool_calls_not_rendered": 1}),
    ({"tool_calls": False, "tool": False}, 1,
     {"tool_calls_not_rendered": 1, "tool_role_not_rendered": 1}),
])
def test_tool_turns_are_kept_only_when_the_template_renders_them(tmp_path, renders, kept,
                                                                  dropped):
    path = write_jsonl(tmp_path / "tools.jsonl", tool_rows())
    result = curate([Source("t", (path,))], NO_LENGTHS, tools=FakeTemplate(renders))
    assert len(result.sft) == kept and result.report()["dropped"] == dropped


def test_tool_checks_read_the_message_fields_only(tmp_path):
    # A KTO label and a task's check are values, not turns; a task prompt's tool turn is one.
    path = write_jsonl(tmp_path / "rows.jsonl", [
        {"prompt": words(1), "completion": words(2), "label": True},
        {"prompt": words(3), "match": "json_valid", "schema": {"type": "object"}},
        {"prompt": [{"role": "user", "content": words(5)}, {"role": "tool", "content": "7"}],
         "match": "numeric", "reference": "7"},
    ])
    result = curate([Source("r", (path,))], NO_LENGTHS,
                    tools=FakeTemplate({"tool_calls": False, "tool": False}))
    assert (len(result.unpaired), len(result.task)) == (1, 1)
    assert [(r["line"], r["reason"]) for r in result.rejects] == [(3, "tool_role_not_rendered")]


@pytest.mark.skipif(not (BASE / "chat_template.jinja").is_file(), reason="no models/base")
def test_probe_of_a_real_chat_template():
    # SmolLM2's ChatML template prints role and content: tool results show, tool calls do not.
    if "im_start" not in (BASE / "chat_template.jinja").read_text():
        pytest.skip("models/base is not the ChatML SmolLM2")
    assert ToolSupport(BASE).renders == {"tool_calls": False, "tool": True}


@pytest.mark.parametrize(("method", "kinds"), [("dpo", "preference"), ("grpo", "task")])
def test_align_without_rows_of_its_kind_fails_before_loading_a_model(tmp_path, method, kinds):
    repo = Path(__file__).resolve().parents[1]
    params = (repo / "params.yaml").read_text()
    assert "align:\n  enabled: true\n  method: dpo" in params  # the default this test relies on
    params = params.replace("tracking:\n  enabled: true", "tracking:\n  enabled: false")
    (tmp_path / "params.yaml").write_text(params.replace("method: dpo", f"method: {method}"))
    (tmp_path / "dvc.yaml").write_text((repo / "dvc.yaml").read_text())  # the stage's contract
    for d in ("models/base", "models/cpt", "models/sft", "data/split"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "x").write_text("x")
    (tmp_path / "data/split/preference_train.jsonl").write_text("")
    (tmp_path / "data/split/preference_validation.jsonl").write_text("")
    done = subprocess.run([sys.executable, str(repo / "stages/align.py")], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stderr
    assert (f"align.method={method} learns from {kinds} rows, but the split has 0 training and "
            "0 validation ones") in done.stderr
    assert not (tmp_path / "models/align").exists()


def test_answer_filters_look_at_every_target_turn(tmp_path):
    loop = " ".join(["the answer is yes"] * 10)
    rows = [{"messages": [{"role": "user", "content": words(1)},
                          {"role": "assistant", "content": loop},
                          {"role": "user", "content": words(2)},
                          {"role": "assistant", "content": words(3)}]},
            {"messages": [{"role": "user", "content": words(4)},  # context only: kept
                          {"role": "assistant", "content": loop, "weight": 0},
                          {"role": "user", "content": words(5)},
                          {"role": "assistant", "content": words(6)}]}]
    result = curate([Source("t", (write_jsonl(tmp_path / "t.jsonl", rows),))], NO_LENGTHS)
    assert len(result.sft) == 1 and [r["reason"] for r in result.rejects] == ["repetitive"]
    assert "an earlier assistant turn (1 before the last)" in result.rejects[0]["detail"]
