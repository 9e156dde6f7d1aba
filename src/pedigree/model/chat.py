"""Rendering canonical rows through a model's chat template, the one way every stage does it.

Training, parity checks and evals must see the same tokens, or a logit check or a loss compares
different inputs. A row is rendered whole, once; which of its tokens are targets comes from
rendering it again prefix by prefix: the tokens an assistant turn adds after the conversation
before it (with the generation prompt) are that turn's answer, its end-of-turn marker included.
For the last turn this is how TRL splits a prompt/completion row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pedigree.errors import PedigreeError

IGNORE_INDEX = -100  # label value the loss skips (PyTorch cross-entropy convention)

TrainOn = Literal["all_assistant_turns", "last_turn"]


class ChatTemplateError(PedigreeError, ValueError):
    """A row the chat template cannot split into context and target turns."""


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX except on target tokens: the loss covers those only

    @property
    def target_mask(self) -> list[int]:
        """1 on target tokens, 0 elsewhere (TRL's `completion_mask`)."""
        return [int(label != IGNORE_INDEX) for label in self.labels]


def _ids(tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(out["input_ids"])


def rendered(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the template sees it: `weight` is ours, not the template's."""
    return {k: v for k, v in message.items() if k != "weight"}


def is_target(message: dict[str, Any]) -> bool:
    """An assistant turn not marked as context (`"weight": 0`)."""
    return message["role"] == "assistant" and message.get("weight", 1) != 0


def prompt_ids(tokenizer, prompt: list[dict[str, Any]]) -> list[int]:
    return _ids(tokenizer, [rendered(m) for m in prompt], add_generation_prompt=True)


def encode_turns(tokenizer, row: dict[str, Any], max_length: int | None = None,
                 train_on: TrainOn = "all_assistant_turns") -> Encoded:
    """The row's tokens, labels on its target turns, truncated to `max_length` (None: whole).

    Targets: every assistant turn of prompt and completion not marked `"weight": 0`
    (all_assistant_turns), or those of the completion only (last_turn). The target span of turn
    i is what messages[:i+1] adds to messages[:i] rendered with the generation prompt; both
    renderings must be prefixes of the whole conversation's, or the template rewrites earlier
    turns (and only the last turn can be a target).
    """
    original = [*row["prompt"], *row["completion"]]
    messages = [rendered(m) for m in original]
    # An opening assistant turn has no conversation before it to render: context.
    first = 1 if train_on == "all_assistant_turns" else len(row["prompt"])
    turns = [i for i in range(first, len(messages)) if is_target(original[i])]
    full = _ids(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    for i in turns:
        context = _ids(tokenizer, messages[:i], add_generation_prompt=True)
        through = full if i == len(messages) - 1 else _ids(tokenizer, messages[: i + 1], False)
        if through[: len(context)] != context or full[: len(through)] != through:
            raise ChatTemplateError(_not_a_prefix(row, i, train_on))
        labels[len(context) : len(through)] = through[len(context) :]
    if max_length is not None:
        full, labels = full[:max_length], labels[:max_length]
    return Encoded(full, labels)


def _not_a_prefix(row: dict[str, Any], i: int, train_on: TrainOn) -> str:
    where = f"row {str(row.get('id', '?'))[:12]}, message {i}"
    if i == len(row["prompt"]) + len(row["completion"]) - 1:
        return (f"{where}: the chat template renders the prompt differently inside the full "
                "conversation; completion-only loss needs the prompt with the generation prompt "
                "to be a prefix of it (check the template, and whether the tokenizer merges the "
                "generation prompt's last characters with the answer's first)")
    hint = ("; set sft.train_on=last_turn to train on the last turn only"
            if train_on == "all_assistant_turns" else "")
    return (f"{where}: the chat template does not render this assistant turn as a continuation "
            "of the conversation before it, or renders it differently once the conversation "
            f"goes on (it rewrites earlier turns, e.g. drops their reasoning){hint}")


def encode_completion(tokenizer, row: dict[str, Any], max_length: int) -> Encoded:
    """Prompt + completion tokens, labels on the completion only, truncated to `max_length`."""
    return encode_turns(tokenizer, row, max_length, train_on="last_turn")


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
