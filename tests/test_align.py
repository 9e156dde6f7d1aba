"""The align stage's methods on the micro model: dpo, orpo, simpo and kto each move the policy
towards the chosen answers, save as an adapter that reloads, and resume from their checkpoints."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from pedigree.config import ALIGN_METHODS, AlignConfig
from pedigree.model.load import load_causal_lm, load_tokenizer
from pedigree.model.measure import completion_nll
from pedigree.train.align import kto_rows, train_align
from pedigree.train.checkpoints import CheckpointStore, fingerprint
from tests.micro_training import COLOURS, THINGS

pytestmark = pytest.mark.slow  # trains: a few seconds per method


def _pair(i: int) -> dict:
    """Each thing has one colour: the chosen answer says it, the rejected one evades (or, every
    third pair, gives the next colour)."""
    thing = THINGS[i % 8]
    wrong = f"The {thing} is {COLOURS[(i + 1) % 8]}." if i % 3 == 0 else "I would rather not say."
    return {
        "id": f"p{i}",
        "prompt": [{"role": "user", "content": f"Question {i}: what colour is the {thing}?"}],
        "chosen": [{"role": "assistant", "content": f"The {thing} is {COLOURS[i % 8]}."}],
        "rejected": [{"role": "assistant", "content": wrong}],
    }


TRAIN = [_pair(i) for i in range(32)]
VALIDATION = [_pair(i) for i in range(32, 40)]


# orpo's odds-ratio term has weight beta beside its SFT loss, which raises both answers: at the
# default 0.1 the preference moves less in 12 steps.
STRONGER = {"dpo": {}, "simpo": {}, "orpo": {"beta": 1.0}, "kto": {}}


def _config(method: str, **overrides) -> AlignConfig:
    values = {"method": method, "learning_rate": 5e-3, "max_steps": 12, "batch_size": 8,
              "max_length": 64, "save_steps": 6, "lora": {"r": 8, "alpha": 16}}
    values.update(overrides)
    return AlignConfig.model_validate(values)


def _margin(model, tokenizer, pairs: list[dict]) -> float:
    """Mean summed log-likelihood of the chosen minus the rejected answer (nats): what every
    method raises."""
    chosen = completion_nll(model, tokenizer, [{**p, "completion": p["chosen"]} for p in pairs],
                            64, 8)
    rejected = completion_nll(model, tokenizer,
                              [{**p, "completion": p["rejected"]} for p in pairs], 64, 8)
    return sum(r[0] - c[0] for c, r in zip(chosen, rejected, strict=True)) / len(pairs)


def test_kto_rows_are_balanced_and_shuffled_deterministically():
    rows = kto_rows(TRAIN, seed=0)
    assert len(rows) == 2 * len(TRAIN)
    assert Counter(r["label"] for r in rows) == {True: 32, False: 32}
    assert rows == kto_rows(TRAIN, seed=0) and rows != kto_rows(TRAIN, seed=1)
    # Unlike TRL's own unpairing (all desirable rows first), the first batch holds both labels.
    assert {r["label"] for r in rows[:8]} == {True, False}
    chosen = {(r["prompt"][0]["content"], r["completion"][0]["content"]) for r in rows
              if r["label"]}
    assert chosen == {(p["prompt"][0]["content"], p["chosen"][0]["content"]) for p in TRAIN}


@pytest.mark.parametrize("method", ALIGN_METHODS)
def test_each_method_prefers_the_chosen_answers_and_reloads(micro_model_dir, tmp_path, method):
    from peft import PeftModel

    tokenizer = load_tokenizer(micro_model_dir)
    before = _margin(load_causal_lm(micro_model_dir), tokenizer, VALIDATION)
    trained, metrics, curve = train_align(load_causal_lm(micro_model_dir), tokenizer, TRAIN,
                                          VALIDATION, _config(method, **STRONGER[method]), seed=0)
    after = _margin(trained, tokenizer, VALIDATION)
    assert after > before + 1.0, (method, before, after)  # held-out pairs, summed nats
    assert metrics["val_loss"] == metrics["val_loss"]  # not NaN
    if method != "kto":  # KTO reports no accuracy: its rows are unpaired
        assert 0 <= metrics["val_preference_accuracy"] <= 1
    assert [step for step, values in curve if "loss" in values]
    trained.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_causal_lm(micro_model_dir), tmp_path / "adapter")
    ids = torch.tensor([tokenizer.encode("The car is red.")])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, trained(ids).logits)


@pytest.mark.parametrize("method", ["orpo", "kto"])
def test_a_killed_run_resumes_to_the_same_adapter(micro_model_dir, tmp_path, method):
    """Killed after its step-6 checkpoint, a run resumes to the adapter it would have made."""
    import shutil

    from pedigree.model.trained import state_digest, trained_state

    tokenizer = load_tokenizer(micro_model_dir)
    cfg = _config(method)
    store = CheckpointStore(tmp_path / "ckpt", fingerprint({"data": {"a": "1" * 64}}, {}, "c" * 64))
    whole, _, _ = train_align(load_causal_lm(micro_model_dir), tokenizer, TRAIN, VALIDATION, cfg,
                              seed=0, store=store)
    shutil.rmtree(tmp_path / "ckpt/checkpoint-12")  # as if killed before the last one
    assert store.resume_point("align") == tmp_path / "ckpt/checkpoint-6"
    resumed, _, _ = train_align(load_causal_lm(micro_model_dir), tokenizer, TRAIN, VALIDATION,
                                cfg, seed=0, store=store)
    assert state_digest(trained_state(resumed)) == state_digest(trained_state(whole))


def test_kto_needs_two_rows_per_batch():
    with pytest.raises(ValueError, match="batch_size"):
        AlignConfig.model_validate({"method": "kto", "batch_size": 1})
