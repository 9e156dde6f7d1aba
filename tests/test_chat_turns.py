"""Multi-turn rows are trained whole: every assistant turn is a target (`sft.train_on`), its
content and the template's end-of-turn marker, nothing else; `last_turn` keeps today's
completion-only targets; a `"weight": 0` turn is context. Checked token by token under the real
chat templates (ChatML on SmolLM2's tokenizer, Llama 3, Gemma 3), then through TRL's trainer."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pedigree.config import ModelConfig, SFTConfig
from pedigree.errors import PedigreeError
from pedigree.model.chat import (
    IGNORE_INDEX,
    ChatTemplateError,
    encode_completion,
    encode_turns,
)
from tests.chat_templates import GEMMA3_TEMPLATE

REPO = Path(__file__).resolve().parents[1]

# The official templates, as the instruct models ship them: Meta-Llama-3-8B-Instruct and
# google/gemma-3-*-it (TRL keeps byte-identical copies; test_the_templates_are_the_official_ones).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Llama 3's pre-tokenizer (its tokenizer.json): a run of newlines is one piece, so the "\n\n"
# ending the generation prompt stays one token when the answer follows it.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

ANSWERS = ["Blue.", "Green, mostly.\n\nSometimes yellow.", "White."]


def three_turns(weights=(1, 1, 1)) -> dict:
    """user, assistant, user, assistant, user, assistant (the last one the completion)."""
    questions = ["What colour is the sky?", "And grass?", "Snow?"]
    messages = []
    for question, answer, weight in zip(questions, ANSWERS, weights, strict=True):
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer,
                         **({"weight": 0} if weight == 0 else {})})
    return {"id": "three-turns", "prompt": messages[:-1], "completion": messages[-1:]}


ONE_TURN = {"id": "one-turn",
            "prompt": [{"role": "system", "content": "You are a precise assistant."},
                       {"role": "user", "content": "Sort the numbers.\n\n52 36 93"}],
            "completion": [{"role": "assistant", "content": "36 52 93"}]}


def _gguf_tokenizer(model: str):
    from transformers import AutoTokenizer

    from pedigree.train.gguf_base import resolve_gguf

    cfg = ModelConfig(**yaml.safe_load((REPO / "conf/model" / f"{model}.yaml").read_text()))
    with resolve_gguf(cfg) as (path, _):
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's own tokenizer and ChatML template, from its pinned GGUF (~6 s)."""
    return _gguf_tokenizer("smollm2")


def _with_template(tokenizer, template: str, specials: list[str], bos: str | None = None):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    if bos is not None:
        tokenizer.add_special_tokens({"bos_token": bos})
    tokenizer.chat_template = template
    return tokenizer


def llama3(tokenizer):
    """Llama 3's template, special tokens and pre-tokenizer on SmolLM2's byte-level BPE."""
    from tokenizers import Regex, pre_tokenizers

    tokenizer = _with_template(
        tokenizer, LLAMA3_TEMPLATE,
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        bos="<|begin_of_text|>")
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return tokenizer


def gemma3(tokenizer, template: str = GEMMA3_TEMPLATE):
    return _with_template(tokenizer, template, ["<bos>", "<start_of_turn>", "<end_of_turn>"],
                          bos="<bos>")


# name: (tokenizer from SmolLM2's, the assistant turn's header, its end-of-turn marker)
TEMPLATES = {
    "chatml": (copy.deepcopy, "<|im_start|>assistant\n", "<|im_end|>\n"),
    "llama3": (llama3, "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    "gemma3": (gemma3, "<start_of_turn>model\n", "<end_of_turn>\n"),
    # the project's shipped Gemma turn format (sft.chat_template for the Gemma 3 base)
    "gemma3-conf": (lambda t: gemma3(t, (REPO / "conf/chat/gemma.jinja").read_text()),
                    "<start_of_turn>model\n", "<end_of_turn>\n"),
}


@pytest.fixture(params=sorted(TEMPLATES))
def chat(request, smollm2_tokenizer):
    make, header, end = TEMPLATES[request.param]
    return make(smollm2_tokenizer), header, end


def expected(tokenizer, row: dict, header: str, end: str, targets: list[int]):
    """(ids, target mask) found independently of encode_turns: the whole conversation rendered
    as text and tokenized once with offsets; a token is a target when it lies inside the text of
    one of the assistant turns `targets` (0-based among the assistant turns), from the end of
    its header to the end of its end-of-turn marker."""
    messages = [{k: v for k, v in m.items() if k != "weight"}
                for m in row["prompt"] + row["completion"]]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans, at = [], 0
    for turn, message in enumerate(m for m in messages if m["role"] == "assistant"):
        start = text.index(header + message["content"] + end, at) + len(header)
        at = start + len(message["content"] + end)
        if turn in targets:
            spans.append((start, at))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s <= a and b <= e for s, e in spans)) for a, b in encoded["offset_mapping"]]
    return encoded["input_ids"], mask


def target_spans(tokenizer, encoded) -> list[str]:
    """The decoded runs of target tokens."""
    spans, run = [], []
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    return spans + ([tokenizer.decode(run)] if run else [])


def test_every_assistant_turn_is_a_target(chat):
    tokenizer, header, end = chat
    row = three_turns()
    encoded = encode_turns(tokenizer, row)  # all_assistant_turns, the default
    ids, mask = expected(tokenizer, row, header, end, [0, 1, 2])
    assert encoded.input_ids == ids
    assert encoded.target_mask == mask  # token by token: the three answers, nothing else
    assert target_spans(tokenizer, encoded) == [answer + end for answer in ANSWERS]


def test_last_turn_is_the_completion_only(chat):
    tokenizer, header, end = chat
    row = three_turns()
    encoded = encode_turns(tokenizer, row, train_on="last_turn")
    ids, mask = expected(tokenizer, row, header, end, [2])
    assert (encoded.input_ids, encoded.target_mask) == (ids, mask)
    assert target_spans(tokenizer, encoded) == [ANSWERS[2] + end]
    assert encode_completion(tokenizer, row, max_length=10_000) == encoded  # what evals score


def test_a_weight_0_turn_is_context(chat):
    tokenizer, header, end = chat
    row = three_turns(weights=(1, 0, 1))
    encoded = encode_turns(tokenizer, row)
    ids, mask = expected(tokenizer, row, header, end, [0, 2])
    assert (encoded.input_ids, encoded.target_mask) == (ids, mask)
    assert target_spans(tokenizer, encoded) == [ANSWERS[0] + end, ANSWERS[2] + end]
    # The weight is ours: the template renders the same conversation either way.
    assert encoded.input_ids == encode_turns(tokenizer, three_turns()).input_ids


def _encode_completion_before(tokenizer, row: dict, max_length: int):
    """encode_completion as it was before multi-turn rows: one prompt/completion split."""
    prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=True, return_dict=True,
                                           add_generation_prompt=True)["input_ids"]
    full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                         return_dict=True)["input_ids"]
    assert full[: len(prompt)] == prompt
    labels = [IGNORE_INDEX] * len(prompt) + full[len(prompt):]
    return full[:max_length], labels[:max_length]


@pytest.mark.parametrize("train_on", ["all_assistant_turns", "last_turn"])
def test_a_one_turn_row_encodes_as_before(chat, train_on):
    tokenizer, _, end = chat
    for max_length in (10_000, 12):  # whole, and truncated into the prompt
        encoded = encode_turns(tokenizer, ONE_TURN, max_length, train_on)
        before = _encode_completion_before(tokenizer, ONE_TURN, max_length)
        assert (encoded.input_ids, encoded.labels) == before
        assert encode_completion(tokenizer, ONE_TURN, max_length) == encoded
    assert target_spans(tokenizer, encode_turns(tokenizer, ONE_TURN)) == ["36 52 93" + end]


def _trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


def test_the_templates_are_the_official_ones():
    assert LLAMA3_TEMPLATE == _trl_template("llama3")
    assert GEMMA3_TEMPLATE == _trl_template("gemma3")


def test_tool_calls_are_targets_and_tool_results_context(smollm2_tokenizer):
    """Qwen2.5's ChatML renders an assistant's tool calls and the tool's results."""
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.chat_template = _trl_template("qwen2_5")
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
    row = {"id": "tools",
           "prompt": [{"role": "user", "content": "What is 2 + 3?"},
                      {"role": "assistant", "content": "", "tool_calls": [call]},
                      {"role": "tool", "name": "add", "content": "5"}],
           "completion": [{"role": "assistant", "content": "It is 5."}]}
    encoded = encode_turns(tokenizer, row)
    assert target_spans(tokenizer, encoded) == [
        '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>\n',
        "It is 5.<|im_end|>\n",
    ]
    assert "<tool_response>\n5\n</tool_response>" in tokenizer.decode(encoded.input_ids)


def test_an_opening_assistant_turn_is_context(smollm2_tokenizer):
    """A greeting before the first question answers nothing: there is no context to render."""
    row = {"id": "greeting",
           "prompt": [{"role": "assistant", "content": "Hello! Ask me anything."},
                      {"role": "user", "content": "What colour is the sky?"}],
           "completion": [{"role": "assistant", "content": "Blue."}]}
    encoded = encode_turns(smollm2_tokenizer, row)
    assert target_spans(smollm2_tokenizer, encoded) == ["Blue.<|im_end|>\n"]


def test_a_template_that_rewrites_earlier_turns_is_refused(smollm2_tokenizer):
    """Qwen3's template gives only the last assistant turn its (empty) thinking block: an
    earlier turn renders differently once the conversation goes on, and cannot be a target."""
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.chat_template = _trl_template("qwen3")
    with pytest.raises(ChatTemplateError, match=r"row three-turns, message 1: .*rewrites "
                                                r"earlier turns.*sft\.train_on=last_turn"):
        encode_turns(tokenizer, three_turns())
    encoded = encode_turns(tokenizer, three_turns(), train_on="last_turn")
    assert target_spans(tokenizer, encoded) == ["<think>\n\n</think>\n\nWhite.<|im_end|>\n"]


@pytest.mark.slow  # assembles the Gemma 3 GGUF and reads its 262k-token vocabulary (~20 s)
def test_gemma3_own_tokenizer():
    tokenizer = _gguf_tokenizer("gemma3-270m")
    for template in (GEMMA3_TEMPLATE, (REPO / "conf/chat/gemma.jinja").read_text()):
        tokenizer.chat_template = template
        for weights, targets in (((1, 1, 1), [0, 1, 2]), ((1, 0, 1), [0, 2])):
            row = three_turns(weights)
            encoded = encode_turns(tokenizer, row)
            ids, mask = expected(tokenizer, row, "<start_of_turn>model\n", "<end_of_turn>\n",
                                 targets)
            assert (encoded.input_ids, encoded.target_mask) == (ids, mask)
            assert target_spans(tokenizer, encoded) == [ANSWERS[t] + "<end_of_turn>\n"
                                                        for t in targets]


# ----------------------------------------------------------------------------- training
COLOURS = ["red", "blue", "green", "black", "white", "yellow", "brown", "pink"]
THINGS = ["car", "house", "cup", "door", "shirt", "bird", "book", "lamp"]


def _fact(i: int) -> tuple[str, str]:
    return f"What colour is the {THINGS[i % 8]}?", f"The {THINGS[i % 8]} is {COLOURS[i % 8]}."


def _one_turn(i: int) -> dict:
    question, answer = _fact(i)
    return {"id": f"r{i}", "prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": answer}]}


def _conversation(i: int) -> dict:
    """Three questions and answers in one row."""
    messages = []
    for j in (i, i + 3, i + 5):
        question, answer = _fact(j)
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": answer}]
    return {"id": f"c{i}", "prompt": messages[:-1], "completion": messages[-1:]}


def _cfg(**overrides) -> SFTConfig:
    values = {"method": "full", "learning_rate": 3e-3, "max_steps": 16, "batch_size": 8,
              "max_length": 128, "warmup_steps": 0, "eval_steps": 8, "save_steps": 8}
    return SFTConfig.model_validate({**values, **overrides})


@pytest.mark.parametrize("overrides", [{}, {"packing": True}, {"completion_only_loss": False}],
                         ids=["completion-only", "packing", "whole-sequence"])
def test_one_turn_rows_train_as_trl_tokenizes_them(micro_model_dir, tmp_path, overrides):
    """Our tokenized rows against TRL's own tokenization of the same prompt/completion rows:
    the same prepared datasets (labels, packing) and the same loss."""
    from trl import SFTTrainer

    from pedigree.model.load import load_causal_lm, load_tokenizer
    from pedigree.train.sft import sft_args, sft_trainer
    from pedigree.train.trainer import conversational_dataset

    cfg = _cfg(**overrides)
    tokenizer, model = load_tokenizer(micro_model_dir), load_causal_lm(micro_model_dir)
    train, validation = [_one_turn(i) for i in range(12)], [_one_turn(i) for i in range(12, 16)]
    ours = sft_trainer(model, tokenizer, None, train, validation, cfg, 0, str(tmp_path / "a"))
    columns = ("prompt", "completion")
    theirs = SFTTrainer(model=model, args=sft_args(cfg, 0, str(tmp_path / "b")),
                        train_dataset=conversational_dataset(train, columns),
                        eval_dataset=conversational_dataset(validation, columns),
                        processing_class=tokenizer)
    for split in ("train_dataset", "eval_dataset"):
        got, want = getattr(ours, split), getattr(theirs, split)
        # TRL keeps the rows' own columns too; the trainer drops them (not model inputs).
        assert set(want.column_names) - set(got.column_names) <= {"prompt", "completion"}
        assert got.to_dict() == want.select_columns(got.column_names).to_dict()
    assert "labels" in ours.train_dataset.column_names
    assert ours.evaluate()["eval_loss"] == theirs.evaluate()["eval_loss"]


def _assistant_runs(tokenizer, row: dict) -> tuple[list[int], list[int]]:
    """The tiny template's own {% generation %} mask of the row's assistant turns, and the
    length of each turn's run in it."""
    mask = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                         return_dict=True,
                                         return_assistant_tokens_mask=True)["assistant_masks"]
    runs = "".join(map(str, mask)).replace("0", " ").split()
    return list(mask), [len(run) for run in runs]


@pytest.mark.parametrize("train_on", ["all_assistant_turns", "last_turn"])
def test_a_three_turn_row_trains_every_turn(micro_model_dir, tmp_path, train_on):
    from pedigree.model.load import load_causal_lm, load_tokenizer
    from pedigree.train.sft import sft_trainer

    tokenizer, model = load_tokenizer(micro_model_dir), load_causal_lm(micro_model_dir)
    rows = [_conversation(i) for i in range(4)]
    trainer = sft_trainer(model, tokenizer, None, rows, rows, _cfg(train_on=train_on), 0,
                          str(tmp_path))
    by_ids = {tuple(encode_turns(tokenizer, row).input_ids): row for row in rows}
    prepared = trainer.train_dataset  # what the loss is taken over
    assert len(prepared) == len(rows)
    for ids, labels in zip(prepared["input_ids"], prepared["labels"], strict=True):
        assert len(ids) < 128  # nothing truncated
        mask, runs = _assistant_runs(tokenizer, by_ids[tuple(ids)])
        assert len(runs) == 3
        labelled = [int(label != IGNORE_INDEX) for label in labels]
        if train_on == "all_assistant_turns":
            assert labelled == mask  # the three turns, token by token
            assert sum(labelled) == sum(runs)
        else:
            assert sum(labelled) == runs[-1]
            assert labelled[-runs[-1]:] == [1] * runs[-1]


def test_three_turn_rows_train_and_validation_loss_falls(micro_model_dir):
    from pedigree.model.load import load_tokenizer
    from pedigree.train.methods import prepare_model
    from pedigree.train.sft import train_sft

    cfg = _cfg()
    model, peft_config, _ = prepare_model(micro_model_dir, cfg)
    train, validation = [_conversation(i) for i in range(24)], [_conversation(i)
                                                                 for i in range(24, 32)]
    _, metrics, _ = train_sft(model, load_tokenizer(micro_model_dir), peft_config, train,
                              validation, cfg, seed=0)
    assert metrics["val_loss"] < 0.9 * metrics["val_loss_base"], metrics


def test_rows_without_a_target_turn(micro_model_dir):
    from pedigree.model.load import load_tokenizer
    from pedigree.train.sft import sft_dataset

    tokenizer = load_tokenizer(micro_model_dir)
    context_only = three_turns(weights=(0, 0, 0))
    dataset = sft_dataset(tokenizer, [context_only, three_turns()], _cfg())
    assert len(dataset) == 1  # the row with nothing to learn adds no loss: left out
    assert len(sft_dataset(tokenizer, [context_only], _cfg(completion_only_loss=False))) == 1
    with pytest.raises(PedigreeError, match="no row has an assistant turn to train on"):
        sft_dataset(tokenizer, [context_only], _cfg())
