"""The align stage's methods on the micro model: dpo, orpo, simpo and kto each move the policy
towards the chosen answers, grpo raises its reward, and each saves as an adapter that reloads
and resumes from its checkpoints."""

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


def _task(i: int) -> dict:
    """A prompt whose answer is rewarded for holding a digit: the micro model, pretrained on text
    with numbers in it, writes one in some of its sampled answers at first."""
    return {"id": f"t{i}", "prompt": [{"role": "user", "content": f"Question {i}: give a number."}],
            "match": "numeric", "reference": str(i % 10)}


TASKS, VALIDATION_TASKS = [_task(i) for i in range(32)], [_task(i) for i in range(32, 40)]
DIGIT = {"rewards": {"format": 1.0}, "format_regex": r"(?s).*\d.*"}


def _rows(method: str, pairs: list[dict], tasks: list[dict]) -> dict[str, list[dict]]:
    return {"task": tasks} if method == "grpo" else {"preference": pairs}


# orpo's odds-ratio term has weight beta beside its SFT loss, which raises both answers: at the
# default 0.1 the preference moves less in 12 steps.
STRONGER = {"dpo": {}, "simpo": {}, "orpo": {"beta": 1.0}, "kto": {}}
PAIRED = [m for m in ALIGN_METHODS if m != "grpo"]


def _config(method: str, **overrides) -> AlignConfig:
    values = {"method": method, "learning_rate": 5e-3, "max_steps": 12, "batch_size": 8,
              "max_length": 64, "save_steps": 6, "lora": {"r": 8, "alpha": 16}}
    if method == "grpo":  # groups of 8 answers; no KL tie, so the reward alone moves it
        values |= {"beta": 0.0, "grpo": {**DIGIT, "num_generations": 8,
                                         "max_completion_length": 8}}
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
    rows = kto_rows(TRAIN, [], seed=0)
    assert len(rows) == 2 * len(TRAIN)
    assert Counter(r["label"] for r in rows) == {True: 32, False: 32}
    assert rows == kto_rows(TRAIN, [], seed=0) and rows != kto_rows(TRAIN, [], seed=1)
    # Unlike TRL's own unpairing (all desirable rows first), the first batch holds both labels.
    assert {r["label"] for r in rows[:8]} == {True, False}
    chosen = {(r["prompt"][0]["content"], r["completion"][0]["content"]) for r in rows
              if r["label"]}
    assert chosen == {(p["prompt"][0]["content"], p["chosen"][0]["content"]) for p in TRAIN}


def test_kto_rows_add_the_unpaired_rows_as_they_are_labelled():
    unpaired = [{"id": "u1", "prompt": TRAIN[0]["prompt"], "completion": TRAIN[1]["chosen"],
                 "label": False}]
    rows = kto_rows(TRAIN[:2], unpaired, seed=0)
    assert len(rows) == 5
    assert {"prompt": TRAIN[0]["prompt"], "completion": TRAIN[1]["chosen"], "label": False} in rows


@pytest.mark.parametrize("method", PAIRED)
def test_each_method_prefers_the_chosen_answers_and_reloads(micro_model_dir, tmp_path, method):
    from peft import PeftModel

    tokenizer = load_tokenizer(micro_model_dir)
    before = _margin(load_causal_lm(micro_model_dir), tokenizer, VALIDATION)
    trained, metrics, curve = train_align(load_causal_lm(micro_model_dir), tokenizer,
                                          {"preference": TRAIN}, {"preference": VALIDATION},
                                          _config(method, **STRONGER[method]), seed=0)
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


def test_kto_learns_from_unpaired_rows_alone(micro_model_dir):
    """Thumbs up and thumbs down without pairs: the held-out pairs' margin still rises."""
    tokenizer = load_tokenizer(micro_model_dir)
    unpaired = kto_rows(TRAIN, [], seed=0)  # no pairs reach the trainer: only labelled answers
    before = _margin(load_causal_lm(micro_model_dir), tokenizer, VALIDATION)
    trained, _, _ = train_align(load_causal_lm(micro_model_dir), tokenizer, {"unpaired": unpaired},
                                {"unpaired": unpaired[:8]}, _config("kto"), seed=0)
    assert _margin(trained, tokenizer, VALIDATION) > before + 1.0


@torch.no_grad()
def _sampled_reward(model, tokenizer, tasks: list[dict], samples: int = 8) -> float:
    """The digit reward's mean over `samples` answers to each held-out task, sampled as GRPO
    samples them (temperature 1, no top-k cut), with a fixed seed."""
    from pedigree.model.chat import prompt_ids

    torch.manual_seed(0)
    model.eval()
    hits = []
    for task in tasks:
        ids = torch.tensor([prompt_ids(tokenizer, task["prompt"])])
        out = model.generate(ids, do_sample=True, top_k=0, temperature=1.0, max_new_tokens=8,
                             num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id)
        hits += [any(ch.isdigit() for ch in tokenizer.decode(o[ids.size(1):],
                                                             skip_special_tokens=True))
                 for o in out]
    return sum(hits) / len(hits)


def test_grpo_raises_the_reward_of_held_out_tasks(micro_model_dir):
    """30 steps of groups of 8 sampled answers: the answers that hold a digit are reinforced.
    TRL's logged reward climbs from ~0.15 to ~0.7; on held-out prompts (sampled one prompt at a
    time, where the base writes more digits) from 0.59 to 0.75."""
    tokenizer = load_tokenizer(micro_model_dir)
    before = _sampled_reward(load_causal_lm(micro_model_dir), tokenizer, VALIDATION_TASKS)
    cfg = _config("grpo", learning_rate=1e-2, max_steps=30, batch_size=16)
    trained, metrics, curve = train_align(load_causal_lm(micro_model_dir), tokenizer,
                                          {"task": TASKS}, {"task": VALIDATION_TASKS}, cfg,
                                          seed=0)
    rewards = [values["reward"] for _, values in curve if "reward" in values]
    assert rewards[-1] > rewards[0] + 0.3, rewards
    after = _sampled_reward(trained, tokenizer, VALIDATION_TASKS)
    assert after > before + 0.1, (before, after)
    # The stage's figures: the weighted reward of greedy answers, before and after, per reward.
    assert set(metrics) == {"val_reward", "val_reward/format", "val_reward_before",
                            "val_reward/format_before"}


@pytest.mark.parametrize("method", ALIGN_METHODS)
def test_a_killed_run_resumes_to_the_same_adapter(micro_model_dir, tmp_path, method):
    """Killed after its step-6 checkpoint, a run resumes to the adapter it would have made."""
    import shutil

    from pedigree.model.trained import state_digest, trained_state

    tokenizer = load_tokenizer(micro_model_dir)
    cfg = _config(method)
    store = CheckpointStore(tmp_path / "ckpt", fingerprint({"data": {"a": "1" * 64}}, {}, "c" * 64))
    train, validation = _rows(method, TRAIN, TASKS), _rows(method, VALIDATION, VALIDATION_TASKS)
    whole, _, _ = train_align(load_causal_lm(micro_model_dir), tokenizer, train, validation, cfg,
                              seed=0, store=store)
    shutil.rmtree(tmp_path / "ckpt/checkpoint-12")  # as if killed before the last one
    assert store.resume_point("align") == tmp_path / "ckpt/checkpoint-6"
    resumed, _, _ = train_align(load_causal_lm(micro_model_dir), tokenizer, train, validation,
                                cfg, seed=0, store=store)
    assert state_digest(trained_state(resumed)) == state_digest(trained_state(whole))


def test_kto_needs_two_rows_per_batch():
    with pytest.raises(ValueError, match="batch_size"):
        AlignConfig.model_validate({"method": "kto", "batch_size": 1})
