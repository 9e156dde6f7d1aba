"""Each public dataset layout in the README's table is read by `format: auto`, from a row shaped
as the dataset publishes it; chat details (text parts, tool calls, weights, transcripts) kept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pedigree import data_layouts as layouts
from pedigree.data.formats import RowError, detect_format, normalise_row

U, A, S = "user", "assistant", "system"
README = Path(__file__).resolve().parents[1] / "README.md"


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def sft(prompt, answer) -> dict:
    return {"prompt": prompt, "completion": [msg(A, answer)]}


def pref(prompt, chosen, rejected) -> dict:
    return {"prompt": prompt, "chosen": [msg(A, chosen)], "rejected": [msg(A, rejected)]}


# (layout, a row as the public dataset has it, the canonical content expected)
CASES = [
    ("paired_responses",
     {"qid": 7, "question": "How do I sort a dict?", "date": "2012/01/01", "metadata": ["x"],
      "response_j": "Use sorted(d.items()).", "response_k": "You cannot."},
     pref([msg(U, "How do I sort a dict?")], "Use sorted(d.items()).", "You cannot.")),
    ("question_preference",
     {"system": "You are an AI assistant.", "question": "Is 7 prime?", "chosen": "Yes.",
      "rejected": "No."},
     pref([msg(S, "You are an AI assistant."), msg(U, "Is 7 prime?")], "Yes.", "No.")),
    ("input_preference",
     {"system": "", "input": "Name a colour.", "chosen": "Blue.", "rejected": "Seven.",
      "generations": ["Blue.", "Seven."], "order": ["a", "b"]},
     pref([msg(U, "Name a colour.")], "Blue.", "Seven.")),
    ("preference",  # UltraFeedback binarized: chosen/rejected repeat the prompt turn
     {"prompt": "Say hi.", "prompt_id": "ab12", "score_chosen": 8.0, "score_rejected": 3.0,
      "chosen": [msg(U, "Say hi."), msg(A, "Hi!")], "rejected": [msg(U, "Say hi."), msg(A, "No.")],
      "messages": [msg(U, "Say hi."), msg(A, "Hi!")]},
     pref([msg(U, "Say hi.")], "Hi!", "No.")),
    ("preference",  # Anthropic HH-RLHF: two transcripts sharing their first turns
     {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 6.",
      "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 7."},
     pref([msg(U, "What is 2+2?"), msg(A, "4."), msg(U, "And 3+3?")], "6.", "7.")),
    ("messages",  # no_robots: a prompt string beside the messages
     {"prompt": "Write a haiku.", "prompt_id": "9", "category": "Generation",
      "messages": [msg(U, "Write a haiku."), msg(A, "Leaves fall.")]},
     sft([msg(U, "Write a haiku.")], "Leaves fall.")),
    ("sharegpt",  # SlimOrca: a weight on every turn, 0 on the human one
     {"conversations": [{"from": "system", "value": "Be brief.", "weight": None},
                        {"from": "human", "value": "Capital of France?", "weight": 0.0},
                        {"from": "gpt", "value": "Paris.", "weight": 1.0}]},
     sft([msg(S, "Be brief."), msg(U, "Capital of France?")], "Paris.")),
    ("alpaca",
     {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
     sft([msg(U, "Add the numbers.\n\n2 and 3")], "5")),
    ("dolly",
     {"instruction": "Who wrote it?", "context": "Hamlet is a play.", "response": "Shakespeare.",
      "category": "closed_qa"},
     sft([msg(U, "Who wrote it?\n\nHamlet is a play.")], "Shakespeare.")),
    ("unpaired_preference",  # trl-lib/kto-mix-14k: message lists and a boolean label
     {"prompt": [msg(U, "Is 7 prime?")], "completion": [msg(A, "No.")], "label": False},
     {"prompt": [msg(U, "Is 7 prime?")], "completion": [msg(A, "No.")], "label": False}),
    ("task",  # a GRPO prompt with its check, as data/eval/task.jsonl's rows
     {"id": "add-7", "task": "add", "prompt": "2 + 3?", "match": "numeric", "reference": "5"},
     {"prompt": [msg(U, "2 + 3?")], "match": "numeric", "reference": "5"}),
    ("orca",
     {"id": "niv.1", "system_prompt": "You are helpful.", "question": "Translate: chat",
      "response": "cat"},
     sft([msg(S, "You are helpful."), msg(U, "Translate: chat")], "cat")),
    ("prompt_completion", {"prompt": "2+2=", "completion": "4"}, sft([msg(U, "2+2=")], "4")),
    ("prompt_response", {"prompt": "Hi", "response": "Hello"}, sft([msg(U, "Hi")], "Hello")),
    ("question_answer",  # GSM8K
     {"question": "Tom has 3 apples and eats 1. How many?", "answer": "3 - 1 = 2\n#### 2"},
     sft([msg(U, "Tom has 3 apples and eats 1. How many?")], "3 - 1 = 2\n#### 2")),
    ("query_response",  # MetaMathQA
     {"type": "GSM_Rephrased", "query": "What is 6 times 7?", "original_question": "6*7?",
      "response": "42"},
     sft([msg(U, "What is 6 times 7?")], "42")),
    ("input_output", {"input": "ping", "output": "pong"}, sft([msg(U, "ping")], "pong")),
    ("transcript",  # openassistant-guanaco: labels run on without a newline
     {"text": "### Human: Name a fruit.### Assistant: An apple.### Human: Another?"
              "### Assistant: A pear."},
     sft([msg(U, "Name a fruit."), msg(A, "An apple."), msg(U, "Another?")], "A pear.")),
    ("transcript",  # Vicuna: a system preamble, inline upper-case labels, </s> after answers
     {"text": "A chat between a user and an assistant. USER: Hi ASSISTANT: Hello!</s>"
              "USER: Bye ASSISTANT: Goodbye.</s>"},
     sft([msg(S, "A chat between a user and an assistant."), msg(U, "Hi"), msg(A, "Hello!"),
          msg(U, "Bye")], "Goodbye.")),
]


@pytest.mark.parametrize(("layout", "row", "content"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_auto_reads_each_public_layout(layout, row, content):
    assert detect_format(row) == layout
    norm = normalise_row(row, "auto")
    assert (norm.format, norm.content) == (layout, content)
    assert normalise_row(row, layout).content == content  # the layout's name works as a format


def test_every_layout_is_tested_and_in_the_readme_table():
    assert {c[0] for c in CASES} == set(layouts.BY_NAME)
    table = README.read_text()
    for layout in layouts.LAYOUTS:
        assert re.search(rf"^\| `{layout.name}` \| {re.escape(layouts.describe(layout))} \|",
                         table, re.MULTILINE), f"README: no table row for layout {layout.name}"


def test_a_layout_name_as_format_reads_only_that_layout():
    with pytest.raises(RowError, match="field 'output' is missing"):
        normalise_row({"instruction": "x", "response": "y"}, "alpaca")
    assert normalise_row({"instruction": "x", "response": "y"}, "dolly").content == sft(
        [msg(U, "x")], "y")


def test_text_without_speaker_labels_is_not_a_conversation():
    with pytest.raises(RowError) as err:
        normalise_row({"text": "Just a paragraph of prose. Human rights matter."}, "auto")
    assert err.value.reason == "no_speaker_labels"


def test_content_given_as_text_parts_is_joined():
    row = {"messages": [{"role": U, "content": [{"type": "text", "text": "Hello, "},
                                                {"type": "text", "text": "world"}]},
                        msg(A, "Hi")]}
    assert normalise_row(row, "auto").content["prompt"] == [msg(U, "Hello, world")]
    row["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": "x"}})
    with pytest.raises(RowError) as err:
        normalise_row(row, "auto")
    assert err.value.reason == "non_text_content" and "messages[0].content[2]" in err.value.detail


def test_tool_calls_and_tool_results_are_kept():
    call = {"id": "c1", "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    row = {"messages": [msg(U, "Weather in Oslo?"),
                        {"role": A, "content": None, "tool_calls": [call]},
                        {"role": "tool", "tool_call_id": "c1", "content": "4 C, rain"},
                        msg(A, "4 degrees and rain.")]}
    prompt = normalise_row(row, "auto").content["prompt"]
    assert prompt[1] == {"role": A, "content": "", "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]}
    assert prompt[2] == {"role": "tool", "content": "4 C, rain", "tool_call_id": "c1"}


def test_sharegpt_function_call_and_observation_turns():
    row = {"conversations": [{"from": "human", "value": "Weather in Oslo?"},
                             {"from": "function_call",
                              "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
                             {"from": "observation", "value": "4 C"},
                             {"from": "gpt", "value": "4 degrees."}]}
    prompt = normalise_row(row, "auto").content["prompt"]
    assert prompt[1]["tool_calls"][0]["function"] == {"name": "weather",
                                                      "arguments": {"city": "Oslo"}}
    assert prompt[2] == {"role": "tool", "content": "4 C"}


def test_weight_zero_marks_an_assistant_turn_as_context():
    turns = [msg(U, "a"), {**msg(A, "b"), "weight": 0}, msg(U, "c"), {**msg(A, "d"), "weight": 1}]
    content = normalise_row({"messages": turns}, "auto").content
    assert content["prompt"][1] == {"role": A, "content": "b", "weight": 0}
    assert content["completion"] == [msg(A, "d")]
    # Trailing context after the last target teaches nothing and is left out.
    turns[3]["weight"] = 0
    content = normalise_row({"messages": [msg(U, "a"), msg(A, "b"), *turns[2:]]}, "auto").content
    assert content == sft([msg(U, "a")], "b")
    for bad, reason in ((0, "no_target"), (0.5, "wrong_type")):
        with pytest.raises(RowError) as err:
            normalise_row({"messages": [msg(U, "a"), {**msg(A, "b"), "weight": bad}]}, "auto")
        assert err.value.reason == reason


def test_a_transcript_splits_only_on_labels_of_its_own_style():
    # An HH answer quoting a dialogue on single-newline lines stays one answer.
    hh = "\n\nHuman: Show a chat.\n\nAssistant: Sure:\nUser: hi\nAssistant: hello"
    rows = normalise_row({"chosen": hh, "rejected": "\n\nHuman: Show a chat.\n\nAssistant: No."},
                     "auto").content
    assert rows["chosen"] == [msg(A, "Sure:\nUser: hi\nAssistant: hello")]
    # Upper-case Vicuna labels inside an HH answer are text.
    text = "\n\nHuman: Set a variable.\n\nAssistant: Run export USER: bob"
    assert normalise_row({"text": text}, "auto").content["completion"] == [
        msg(A, "Run export USER: bob")]
    # Labels of the transcript's own style that break user/assistant turn-taking: rejected.
    with pytest.raises(RowError) as err:
        normalise_row({"text": "User: a\nAssistant: b\nAssistant: c"}, "auto")
    assert err.value.reason == "ambiguous_transcript"


def test_empty_system_turns_and_empty_tool_call_lists_are_nothing():
    row = {"conversations": [{"from": "system", "value": ""}, {"from": "human", "value": "q"},
                             {"from": "gpt", "value": "a"}]}
    assert normalise_row(row, "auto").content == sft([msg(U, "q")], "a")
    row = {"messages": [{"role": S, "content": None}, {"role": U, "content": "q",
                                                        "tool_calls": []},
                        {"role": A, "content": "a", "tool_calls": []}]}
    assert normalise_row(row, "auto").content == sft([msg(U, "q")], "a")


def test_a_null_field_does_not_block_a_layout():
    # Parquet and merged `datasets` give every row every column, null where it has none.
    row = {"prompt": None, "question": "Is 7 prime?", "chosen": "Yes.", "rejected": "No."}
    assert detect_format(row) == "question_preference"
    row = {"instruction": "x", "context": None, "response": "y", "output": None}
    assert normalise_row(row, "auto").content == sft([msg(U, "x")], "y")
