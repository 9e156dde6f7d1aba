"""Prompted baselines: which examples they draw, how they prompt the base, and the gate's check
that a fine-tune beats the best of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pedigree.config import BaselineConfig, EvalConfig, GateConfig, parse_params
from pedigree.evals.gate import best_prompted, check_prompting, decide
from pedigree.evals.outputs import summary
from pedigree.evals.prompting import baselines
from pedigree.evals.scorers import EvalSetError


def _row(i: int, task: str | None, turns: int = 1) -> dict:
    prompt = [{"role": "user", "content": f"question {i}"}]
    if turns == 2:
        prompt = [{"role": "system", "content": "be brief"}, *prompt]
    return {"id": f"r{i:03d}", "prompt": prompt,
            "completion": [{"role": "assistant", "content": f"answer {i}"}],
            "meta": {"task": task} if task else {}}


TRAIN = [_row(i, "add" if i % 3 == 0 else "sort" if i % 3 == 1 else None) for i in range(30)]


def test_shots_are_seeded_nested_and_from_the_task_first():
    cfg = BaselineConfig(system="Answer only.", shots=[0, 1, 3])
    made = baselines(cfg, TRAIN, ["add", "sort", "json"], seed=7)
    assert [b.name for b in made] == ["prompted-0shot", "prompted-1shot", "prompted-3shot"]
    zero, one, three = made
    assert zero.context("add") == [{"role": "system", "content": "Answer only."}]
    # The 1-shot example opens the 3-shot prompt; a task's examples are its own rows first.
    assert three.shots["add"][:1] == one.shots["add"]
    assert all(r["meta"]["task"] == "add" for r in three.shots["add"])
    assert all(r["meta"]["task"] == "sort" for r in three.shots["sort"])
    assert len(three.shots["json"]) == 3  # no json rows: drawn from all of them
    context = three.context("add")
    assert [m["role"] for m in context] == ["system", "user", "assistant", "user", "assistant",
                                           "user", "assistant"]
    assert context[1]["content"] == three.shots["add"][0]["prompt"][0]["content"]
    # Same seed, same split: the same ids, whatever the rows' order; another seed: others.
    again = baselines(cfg, list(reversed(TRAIN)), ["add", "sort", "json"], seed=7)
    assert [b.record() for b in again] == [b.record() for b in made]
    other = baselines(cfg, TRAIN, ["add", "sort", "json"], seed=8)
    assert other[2].record()["shots"] != three.record()["shots"]
    assert three.record() == {"system": "Answer only.", "k": 3, "shots": {
        task: [r["id"] for r in rows] for task, rows in sorted(three.shots.items())}}


def test_zero_shots_without_a_system_prompt_is_the_base_and_is_left_out():
    made = baselines(BaselineConfig(system=None, shots=[0, 2]), TRAIN, ["add"], seed=0)
    assert [b.name for b in made] == ["prompted-2shot"]
    assert made[0].context("add")[0]["role"] == "user"  # no system message
    assert baselines(BaselineConfig(system=None, shots=[0]), TRAIN, ["add"], seed=0) == []
    assert baselines(BaselineConfig(shots=[]), TRAIN, ["add"], seed=0) == []


def test_only_single_turn_training_rows_are_examples():
    rows = [_row(0, "add", turns=2), _row(1, "add")]
    made = baselines(BaselineConfig(shots=[1]), rows, ["add"], seed=0)
    assert made[0].shots["add"][0]["id"] == "r001"
    with pytest.raises(EvalSetError, match=r"split/sft_train.jsonl: 1 single-turn rows .* asks "
                       r"for 2 examples"):
        baselines(BaselineConfig(shots=[2]), rows, ["add"], seed=0, where="split/sft_train.jsonl")


def test_baseline_config_is_checked():
    with pytest.raises(ValueError, match="less than or equal to 16"):
        BaselineConfig(shots=[17])
    assert EvalConfig().baseline.shots == [0, 1, 3]


def _items(**metrics: list[float]) -> dict[str, dict[str, float]]:
    return {name: {f"i{k}": v for k, v in enumerate(values)} for name, values in metrics.items()}


def test_the_gate_compares_with_the_best_prompted_baseline():
    cfg = GateConfig(task_metric="task_score", min_task_gain=0.1, general_tolerance={},
                     min_gain_over_prompting=0.0)
    items = {"base": _items(task_score=[0, 0, 0, 0]),
             "prompted-1shot": _items(task_score=[1, 1, 0, 0]),
             "prompted-3shot": _items(task_score=[1, 0, 0, 0]),
             "merged": _items(task_score=[1, 1, 1, 0])}
    names = ["prompted-1shot", "prompted-3shot"]
    assert best_prompted("task_score", items, names) == "prompted-1shot"
    [check] = check_prompting(cfg, items, names)
    assert check["reference"] == "prompted-1shot" and check["passed"]
    assert check["difference"] == pytest.approx(0.25) and check["n"] == 4
    assert "over the best prompted baseline, prompted-1shot" in check["reason"]
    strict = cfg.model_copy(update={"min_gain_over_prompting": 0.5})
    gate = decide(strict, items, None, "abc", baselines=names)
    assert not gate["passed"]
    assert any(r.startswith("FAIL: task_score: +0.25") for r in gate["reasons"])
    # A loss is lower-better: the best baseline has the lowest task_loss.
    losses = {"base": _items(task_loss=[3.0, 3.0]),
              "prompted-1shot": _items(task_loss=[2.0, 2.2]),
              "prompted-3shot": _items(task_loss=[2.5, 2.5]),
              "merged": _items(task_loss=[1.0, 1.2])}
    assert best_prompted("task_loss", losses, names) == "prompted-1shot"
    loss_cfg = cfg.model_copy(update={"task_metric": "task_loss"})
    assert check_prompting(loss_cfg, losses, names)[0]["difference"] == pytest.approx(1.0)


def test_the_prompting_check_can_be_off_and_fails_when_it_cannot_compare():
    cfg = GateConfig(task_metric="task_score", min_task_gain=0.0, general_tolerance={},
                     min_gain_over_prompting=None)
    items = {"base": _items(task_score=[0]), "prompted-1shot": _items(task_score=[1]),
             "merged": _items(task_score=[1])}
    assert check_prompting(cfg, items, ["prompted-1shot"]) == []
    on = cfg.model_copy(update={"min_gain_over_prompting": 0.0, "task_metric": "val_loss"})
    [check] = check_prompting(on, items, ["prompted-1shot"])
    assert not check["passed"] and "no prompted baseline measured val_loss" in check["reason"]
    gate = decide(cfg.model_copy(update={"min_gain_over_prompting": 0.0}), items, None, "abc")
    assert "no prompted baseline (eval.baseline): not compared with prompting" in gate["reasons"]


def test_summary_has_the_gain_over_prompting():
    cfg = GateConfig(task_metric="task_score", min_task_gain=0.0, general_tolerance={})
    items = {"base": _items(task_score=[0, 0]), "prompted-1shot": _items(task_score=[1, 0]),
             "merged": _items(task_score=[1, 1])}
    metrics = {name: {"task_score": sum(v["task_score"].values()) / 2, "general_loss": 2.0}
               for name, v in items.items()}
    out = summary(metrics, decide(cfg, items, None, "abc", baselines=["prompted-1shot"]))
    assert out["task_gain_over_prompting"] == pytest.approx(0.5)
    assert out["prompted"]["task_score_gain"] == pytest.approx(0.5)


def test_a_win_rate_gate_needs_the_judge():
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["gate"]["min_win_rate"] = 0.6
    with pytest.raises(ValueError, match="gate.min_win_rate=0.6: needs the judge"):
        parse_params(raw)
    raw["eval"]["judge"] = {"enabled": True}
    with pytest.raises(ValueError, match="exactly one of eval.judge.model"):
        parse_params(raw)
    raw["eval"]["judge"] = {"enabled": True, "model": "models/base"}
    assert parse_params(raw).gate.min_win_rate == 0.6
    raw["eval"]["judge"] = {"enabled": True, "model": "../elsewhere"}
    with pytest.raises(ValueError, match="eval.judge.model = '../elsewhere': must stay inside"):
        parse_params(raw)


def test_a_prompted_baseline_is_scored_with_its_examples_before_each_prompt(micro_model_dir):
    from pedigree.evals.suite import evaluate_prompted
    from pedigree.model.load import load_causal_lm, load_tokenizer
    from pedigree.model.measure import completion_nll, greedy_answers

    model, tokenizer = load_causal_lm(micro_model_dir), load_tokenizer(micro_model_dir)
    tasks = [{"id": f"t{i}", "task": "add", "prompt": f"Add the two numbers.\n\n{i} + 4",
              "reference": str(i + 4), "match": "numeric"} for i in range(4)]
    cfg = EvalConfig(max_new_tokens=6, batch_size=2, max_length=64)
    example = [{"role": "user", "content": "Add the two numbers.\n\n1 + 1"},
               {"role": "assistant", "content": "2"}]
    got = evaluate_prompted(model, tokenizer, tasks, lambda row: example, 1, cfg)
    prompts = [[*example, {"role": "user", "content": t["prompt"]}] for t in tasks]
    assert got.answers == greedy_answers(model, tokenizer, prompts, 6, 1)
    rows = [{"prompt": p, "completion": [{"role": "assistant", "content": t["reference"]}]}
            for p, t in zip(prompts, tasks, strict=True)]
    nll = completion_nll(model, tokenizer, rows, 128, 1)  # (k + 1) x max_length of room
    assert got.items["task_loss"] == pytest.approx({t["id"]: s / n for t, (s, n)
                                                    in zip(tasks, nll, strict=True)})
    assert set(got.items["task_score"]) == {"t0", "t1", "t2", "t3"}
    assert "general_loss" not in got.metrics and "task_score.add" in got.metrics
