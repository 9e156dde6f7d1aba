"""Measurements on a loaded model: completion loss, general-text loss, greedy answers, logits."""

from __future__ import annotations

import math
from typing import Any

import torch

from pedigree.model.chat import (
    IGNORE_INDEX,
    Encoded,
    encode_completion,
    pad_batch,
    prompt_ids,
    stop_token_ids,
)


def input_logits(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The logits at the input's own positions. A soft prompt of PEFT (prompt tuning, p-tuning)
    puts its virtual tokens in front of the input, and the model returns their logits too."""
    return logits[:, logits.size(1) - ids.size(1):]


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def row_nll(model, encoded: list[Encoded], pad_id: int, batch_size: int) -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, labelled tokens) of each row, in order."""
    model.eval()
    out: list[tuple[float, int]] = []
    for batch in _batches(encoded, batch_size):
        ids, mask, labels = pad_batch(batch, pad_id)
        device = next(model.parameters()).device  # quantized models may sit on CUDA
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logits = input_logits(logits, ids)[:, :-1].float().cpu()
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none",
        )
        counts = (target != IGNORE_INDEX).sum(-1)
        out += [(float(n), int(c)) for n, c in zip(nll.sum(-1), counts, strict=True)]
    return out


def mean_loss(rows: list[tuple[float, int]]) -> float:
    """Token-weighted mean loss (nats/token) over rows from `row_nll`."""
    count = sum(c for _, c in rows)
    if count == 0:
        raise ValueError("no labelled tokens to score (are the rows empty or all truncated?)")
    return sum(n for n, _ in rows) / count


def row_means(rows: list[tuple[float, int]]) -> list[float]:
    """Each row's own mean loss (nats/token): the items a standard error is taken over."""
    return [n / c if c else math.nan for n, c in rows]


def completion_nll(model, tokenizer, rows: list[dict[str, Any]], max_length: int,
                   batch_size: int) -> list[tuple[float, int]]:
    """Per-row NLL of each canonical row's completion given its prompt, via the chat template."""
    encoded = [encode_completion(tokenizer, r, max_length) for r in rows]
    return row_nll(model, encoded, tokenizer.pad_token_id, batch_size)


def text_nll(model, tokenizer, texts: list[str], max_length: int,
             batch_size: int) -> list[tuple[float, int]]:
    """Per-text language-modelling NLL on plain text (the general-ability probe)."""
    encoded = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
        encoded.append(Encoded(ids, ids))
    return row_nll(model, encoded, tokenizer.pad_token_id, batch_size)


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                    batch_size: int) -> list[str]:
    """Greedy completions of token-id prompts, batched with left padding, decoded."""
    model.eval()
    answers: list[str] = []
    stops = stop_token_ids(tokenizer)
    for batch in _batches(prompts, batch_size):
        ids, mask, _ = pad_batch([Encoded(p, p) for p in batch], tokenizer.pad_token_id, left=True)
        device = next(model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
        )
        for row in out[:, ids.size(1):]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers


def greedy_answers(model, tokenizer, prompts: list[list[dict[str, str]]], max_new_tokens: int,
                   batch_size: int) -> list[str]:
    """Greedy answers to chat prompts, rendered through the chat template."""
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    return greedy_generate(model, tokenizer, ids, max_new_tokens, batch_size)


def greedy_continuations(model, tokenizer, texts: list[str], max_new_tokens: int,
                         batch_size: int) -> list[str]:
    """Greedy continuations of plain text (no chat template): what a base model can do."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return greedy_generate(model, tokenizer, ids, max_new_tokens, batch_size)


def chat_inputs(tokenizer, rows: list[dict[str, Any]], max_length: int):
    """(input ids, attention mask) of rows rendered through the chat template, right-padded."""
    encoded = [encode_completion(tokenizer, r, max_length) for r in rows]
    ids, mask, _ = pad_batch(encoded, tokenizer.pad_token_id)
    return ids, mask


@torch.no_grad()
def logits_of(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    return input_logits(logits, ids).float().cpu()


def chat_logits(model, tokenizer, rows: list[dict[str, Any]], max_length: int):
    """(fp32 logits, attention mask) of a model on rows rendered through the chat template."""
    ids, mask = chat_inputs(tokenizer, rows, max_length)
    return logits_of(model, ids, mask), mask


def distribution_compare(reference: torch.Tensor, candidate: torch.Tensor, ids: torch.Tensor,
                         mask: torch.Tensor) -> dict[str, float]:
    """How far a candidate's next-token distributions are from the reference's, on real tokens:
    perplexity ratio (candidate / reference, on the actual next tokens), mean KL(reference ||
    candidate) in nats per token, and top-1 agreement, the figures llama.cpp publishes."""
    ref = torch.log_softmax(reference[:, :-1].double(), -1)
    cand = torch.log_softmax(candidate[:, :-1].double(), -1)
    real = (mask[:, 1:] * mask[:, :-1]).bool()  # positions predicting a real next token
    target = ids[:, 1:, None]
    nll_ref = -ref.gather(-1, target).squeeze(-1)[real].mean()
    nll_cand = -cand.gather(-1, target).squeeze(-1)[real].mean()
    kl = (ref.exp() * (ref - cand)).sum(-1)[real]
    return {
        "perplexity_ratio": float(torch.exp(nll_cand - nll_ref)),
        "kl_divergence": float(kl.mean()),
        "kl_divergence_max": float(kl.max()),
        "top1_agreement": float((ref.argmax(-1) == cand.argmax(-1))[real].double().mean()),
        "tokens": int(real.sum()),
    }


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor,
                   mask: torch.Tensor) -> dict[str, float]:
    """Max and mean |logit difference| and top-1 agreement over real (unpadded) tokens."""
    real = mask.bool()
    diff = (reference - candidate).abs()[real]
    agree = (reference.argmax(-1) == candidate.argmax(-1))[real].float()
    return {
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "top1_agreement": float(agree.mean()),
        "tokens": int(real.sum()),
    }


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # capped: exp of a diverged loss is not informative
