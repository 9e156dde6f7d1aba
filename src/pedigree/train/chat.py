"""Rendering canonical rows through a model's chat template, the one way every stage does it.

Training (through TRL), parity checks and evals must see the same tokens, or a logit check or a
loss compares different inputs. TRL renders prompt/completion rows the same way: the prompt with
the generation prompt appended, then the completion as the rest of the full conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100  # label value the loss skips (PyTorch cross-entropy convention)


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens: the loss covers the completion only


def _ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(out["input_ids"])


def prompt_ids(tokenizer, prompt: list[dict[str, str]]) -> list[int]:
    return _ids(tokenizer, prompt, add_generation_prompt=True)


def encode_completion(tokenizer, row: dict[str, Any], max_length: int) -> Encoded:
    """Prompt + completion tokens, labels masking the prompt, truncated to `max_length`."""
    prompt = prompt_ids(tokenizer, row["prompt"])
    full = _ids(tokenizer, row["prompt"] + row["completion"], add_generation_prompt=False)
    if full[: len(prompt)] != prompt:
        raise ValueError(
            "the chat template renders the prompt differently inside the full conversation; "
            "completion-only loss needs the prompt to be a prefix (check the template)"
        )
    labels = [IGNORE_INDEX] * len(prompt) + full[len(prompt):]
    return Encoded(full[:max_length], labels[:max_length])


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an answer: the tokenizer's eos and the special token the chat template
    closes an assistant turn with, where that differs (Gemma's <end_of_turn> against <eos>):
    without it a model trained on the template talks on into a next turn."""
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if tokenizer.chat_template:
        row = {"prompt": [{"role": "user", "content": "x"}],
               "completion": [{"role": "assistant", "content": "y"}]}
        labels = encode_completion(tokenizer, row, max_length=64).labels
        answer = [t for t in labels if t != IGNORE_INDEX]
        content = tokenizer("y", add_special_tokens=False).input_ids
        after = answer[len(content):] if answer[: len(content)] == content else []
        if after and after[0] in tokenizer.all_special_ids + _added_special_ids(tokenizer):
            stops.append(after[0])
    return list(dict.fromkeys(stops))


def _added_special_ids(tokenizer) -> list[int]:
    return [i for i, token in tokenizer.added_tokens_decoder.items() if token.special]


def pad_batch(encoded: list[Encoded], pad_id: int, left: bool = False):
    """Tensors (input_ids, attention_mask, labels) for a batch; right padding unless `left`."""
    import torch

    width = max(len(e.input_ids) for e in encoded)
    ids, mask, labels = [], [], []
    for e in encoded:
        gap = width - len(e.input_ids)
        pad_ids, pad_mask, pad_labels = [pad_id] * gap, [0] * gap, [IGNORE_INDEX] * gap
        if left:
            ids.append(pad_ids + e.input_ids)
            mask.append(pad_mask + [1] * len(e.input_ids))
            labels.append(pad_labels + e.labels)
        else:
            ids.append(e.input_ids + pad_ids)
            mask.append([1] * len(e.input_ids) + pad_mask)
            labels.append(e.labels + pad_labels)
    return torch.tensor(ids), torch.tensor(mask), torch.tensor(labels)
