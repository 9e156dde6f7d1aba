"""The field layouts of widely used public datasets, recognised without configuration; the
names a source's `format` and `columns` may use (checked here: config validation imports this
light module, not the row parsers).

A layout is one of the row formats (`formats.FORMATS`) read through a column mapping: Dolly's
`instruction`/`context`/`response` is the alpaca format with `input=context, output=response`.
`format: auto` takes, for each row, the first layout in LAYOUTS whose fields the row has (a
null field is absent); a layout's name may also be given as `format:` to read a whole source
with it. The README's table of supported layouts is this list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from pedigree.errors import PedigreeError

# `text` (plain documents, for continued pretraining) is a format but no layout: a row of prose
# has no field to tell it by, and a {"text"} row under auto is a transcript (guanaco's layout).
# It is read by `format: text`, and is what auto means for a source of .txt files alone.
FORMATS = ("alpaca", "prompt_completion", "messages", "sharegpt", "preference", "unpaired",
           "task", "transcript", "text")
# The field names `columns` may map to (canonical name -> the source's field name).
CANONICAL_FIELDS = ("instruction", "input", "output", "system", "prompt", "completion",
                    "messages", "conversations", "chosen", "rejected", "label", "match",
                    "reference", "schema", "text")
# The kinds of canonical row curation writes, each to its own file (split writes
# {kind}_train.jsonl and {kind}_validation.jsonl of each): sft (prompt, completion), preference
# (prompt, chosen, rejected), unpaired (prompt, completion, label: KTO's desirable or not), task
# (prompt, match, reference and/or schema: a prompt and the check its answers are rewarded by,
# for GRPO) and text (text: one plain document, for continued pretraining).
CURATED_FILES = (("sft", "sft.jsonl"), ("preference", "preferences.jsonl"),
                 ("unpaired", "unpaired.jsonl"), ("task", "tasks.jsonl"), ("text", "text.jsonl"))
# The fields of canonical content that are lists of messages, in conversation order; the others
# (an unpaired row's label, a task's match, reference, schema) are values, and a document's
# `text` is one string, not messages.
MESSAGE_FIELDS = ("prompt", "completion", "chosen", "rejected")


class ColumnsError(PedigreeError, ValueError):
    """A column mapping that cannot be right (a config or command line error, not a row's)."""


class Layout(NamedTuple):
    name: str
    format: str  # the row format that reads it, one of formats.FORMATS
    # Fields the row must have; a tuple inside means any one of them.
    fields: tuple[str | tuple[str, ...], ...]
    # canonical field -> the layout's field, applied where the row has that field
    columns: dict[str, str]
    examples: str  # public datasets published in this layout
    absent: tuple[str, ...] = ()  # fields the row must not have (null counts as absent)


LAYOUTS: tuple[Layout, ...] = (
    # Preferences first: UltraFeedback rows also carry `messages` (the chosen conversation).
    Layout("paired_responses", "preference", ("question", "response_j", "response_k"),
           {"prompt": "question", "chosen": "response_j", "rejected": "response_k"},
           "lvwerra/stack-exchange-paired (response_j is the better answer)"),
    Layout("question_preference", "preference", ("question", ("chosen", "rejected")),
           {"prompt": "question"}, "Intel/orca_dpo_pairs (system, question, chosen, rejected)",
           absent=("prompt",)),
    Layout("input_preference", "preference", ("input", ("chosen", "rejected")),
           {"prompt": "input"}, "argilla/distilabel-intel-orca-dpo-pairs", absent=("prompt",)),
    Layout("preference", "preference", (("chosen", "rejected"),), {},
           "HuggingFaceH4/ultrafeedback_binarized, argilla/dpo-mix-7k (prompt optional); "
           "Anthropic/hh-rlhf (chosen and rejected whole transcripts)"),
    Layout("messages", "messages", ("messages",), {},
           "HuggingFaceH4/no_robots, OpenAI fine-tuning files (tool calls, weight)"),
    Layout("sharegpt", "sharegpt", ("conversations",), {},
           "teknium/OpenHermes-2.5, Open-Orca/SlimOrca, LLaMA-Factory ShareGPT"),
    Layout("dolly", "alpaca", ("instruction", "response"), {"input": "context", "output": "response"},
           "databricks/databricks-dolly-15k (instruction, context, response, category)",
           absent=("output",)),
    # `instruction` alone is enough: a row without its output is an alpaca row missing it.
    Layout("alpaca", "alpaca", ("instruction",), {},
           "tatsu-lab/alpaca, yahma/alpaca-cleaned, sahil2801/CodeAlpaca-20k, WizardLM"),
    # Before prompt_completion: KTO rows are prompt/completion rows with a label, and a task row
    # names the check (`match`) its answers are rewarded by.
    Layout("unpaired_preference", "unpaired", ("prompt", "completion", "label"), {},
           "trl-lib/kto-mix-14k (TRL's unpaired preference format: label true is desirable)"),
    Layout("task", "task", ("prompt", "match"), {},
           "GRPO prompts checked as data/eval/task.jsonl's (match, reference and/or schema)"),
    Layout("orca", "prompt_completion", ("question", "response"),
           {"prompt": "question", "completion": "response", "system": "system_prompt"},
           "Open-Orca/OpenOrca (system_prompt, question, response)"),
    Layout("prompt_completion", "prompt_completion", ("prompt", "completion"), {},
           "TRL's prompt-completion datasets"),
    Layout("prompt_response", "prompt_completion", ("prompt", "response"),
           {"completion": "response"}, "many instruction sets (prompt, response)"),
    Layout("question_answer", "prompt_completion", ("question", "answer"),
           {"prompt": "question", "completion": "answer"}, "openai/gsm8k"),
    Layout("query_response", "prompt_completion", ("query", "response"),
           {"prompt": "query", "completion": "response"}, "meta-math/MetaMathQA"),
    Layout("input_output", "prompt_completion", ("input", "output"),
           {"prompt": "input", "completion": "output"}, "sequence-to-sequence sets",
           absent=("instruction",)),
    Layout("transcript", "transcript", ("text",), {},
           "timdettmers/openassistant-guanaco (### Human: / ### Assistant:), Vicuna "
           "(USER: / ASSISTANT:)"),
)
BY_NAME = {layout.name: layout for layout in LAYOUTS}


def check_format(name: str) -> str:
    """`name` if it is "auto", a format or a layout; ValueError naming the allowed ones."""
    if name != "auto" and name not in FORMATS and name not in BY_NAME:
        raise ValueError(f"format {name!r}; allowed: auto, {', '.join(FORMATS)}, or a layout: "
                         f"{', '.join(n for n in BY_NAME if n not in FORMATS)}")
    return name


def parse_columns(spec: str) -> dict[str, str]:
    """The command line's column mapping, "prompt=question,completion=answer" (canonical=source),
    as a dict; ColumnsError (a ValueError) for bad syntax or an unknown canonical name."""
    columns: dict[str, str] = {}
    for item in spec.split(","):
        canonical, sep, source = (part.strip() for part in item.partition("="))
        if not sep or not canonical or not source:
            raise ColumnsError(f"{item.strip()!r} is not canonical=source; "
                               "example: prompt=question,completion=answer")
        if canonical in columns:
            raise ColumnsError(f"{canonical!r} is mapped twice")
        columns[canonical] = source
    check_columns(columns)
    return columns


def check_columns(columns: Mapping[str, str]) -> None:
    """ColumnsError unless every key of `columns` is a canonical field name."""
    for canonical, source in columns.items():
        if canonical not in CANONICAL_FIELDS:
            hint = (f" (the canonical name comes first: {source}={canonical}?)"
                    if source in CANONICAL_FIELDS else "")
            raise ColumnsError(f"{canonical!r} is not a canonical field{hint}; "
                               f"allowed: {', '.join(CANONICAL_FIELDS)}")


def detect(row: dict[str, Any]) -> Layout | None:
    """The first layout whose fields `row` has, or None."""
    for layout in LAYOUTS:
        if all((any(row.get(f) is not None for f in need) if isinstance(need, tuple)
                else row.get(need) is not None) for need in layout.fields) and \
                not any(row.get(key) is not None for key in layout.absent):
            return layout
    return None


def apply(row: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """`row` with the layout's fields renamed to their canonical names (those the row has)."""
    if not layout.columns:
        return row
    present = {canonical: source for canonical, source in layout.columns.items()
               if row.get(source) is not None}
    out = {k: v for k, v in row.items() if k not in present.values()}
    out.update({canonical: row[source] for canonical, source in present.items()})
    return out


def describe(layout: Layout) -> str:
    """The layout's fields as the README and errors show them."""
    return ", ".join("/".join(f) if isinstance(f, tuple) else f for f in layout.fields)
