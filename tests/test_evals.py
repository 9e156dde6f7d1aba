"""Eval scoring, the eval sets, one model's evaluation, and the promotion gate's arithmetic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pedigree.config import EvalConfig, GateConfig
from pedigree.evals.gate import check_base, check_champion, decide, paired_difference
from pedigree.evals.outputs import plot_tables, summary
from pedigree.evals.scorers import (
    check_task_row,
    continuation_answer,
    json_match,
    json_valid,
    normalised_match,
    numeric_match,
    row_score,
    score_task_rows,
    task_row_problem,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = {"type": "object", "required": ["name", "age"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}


def test_matchers():
    assert normalised_match("  The Answer: Paris! ", "the answer paris")
    assert not normalised_match("Paris", "Rome")
    assert numeric_match("It is 155.", "155") and numeric_match("155.0", "155")
    assert not numeric_match("15", "155") and not numeric_match("no number", "1")
    # An instruct model restates the sum before answering: the last number is the answer.
    assert numeric_match("99 + 56 = 155", "155") and not numeric_match("155 + 1 = 156", "155")
    assert json_match('{"b": 1, "a": [1, 2]}', '{"a":[1,2],"b":1}')
    assert not json_match('{"a": 1', '{"a": 1}') and not json_match('{"a": 2}', '{"a": 1}')
    assert json_valid('{"name": "Nora", "age": 3}', SCHEMA)
    assert not json_valid('{"name": "Nora", "age": "3"}', SCHEMA)  # wrong type
    assert not json_valid('{"name": "Nora"}', SCHEMA)  # missing required key
    assert json_valid("[1, 2]") and not json_valid("[1, 2")
    # Code fences an instruct model writes around (or only after) the record are not the answer.
    fenced = ['```json\n{"a": 1}\n```', '{\n  "a": 1\n}\n```', '```\n{"a": 1}```']
    assert all(json_match(answer, '{"a": 1}') for answer in fenced)
    assert not json_match('Here it is: {"a": 1}', '{"a": 1}') and not json_valid("```\n```")
    assert continuation_answer(" Germany. The sum of") == "Germany"


def test_row_score_uses_the_rows_matcher():
    row = {"id": "a", "task": "t", "prompt": "p", "reference": "plum, wolf", "match": "exact"}
    assert row_score(row, "plum, wolf") == 1.0 and row_score(row, "Plum wolf") == 0.0
    assert row_score({**row, "match": "normalised"}, "Plum wolf") == 1.0
    schema_row = {"id": "b", "task": "t", "prompt": "p", "match": "json_valid", "schema": SCHEMA}
    assert row_score(schema_row, '{"name": "x", "age": 1}') == 1.0


@pytest.mark.parametrize("row, expected", [
    ({"id": "a", "task": "t"}, "missing fields ['prompt']"),
    ({"id": "a", "task": "t", "prompt": "p", "reference": "x", "match": "fuzzy"},
     "match='fuzzy': expected one of"),
    ({"id": "a", "task": "t", "prompt": "p", "match": "exact"}, "reference: a string is required"),
    ({"id": "a", "task": "t", "prompt": "p", "reference": "ten", "match": "numeric"},
     "reference='ten' is not a number"),
    ({"id": "a", "task": "t", "prompt": "p", "reference": "{", "match": "json"},
     "reference is not valid JSON"),
    ({"id": "a", "task": "t", "prompt": "p", "match": "json_valid", "schema": {"type": 3}},
     "schema: not a valid JSON Schema"),
    ({"id": "a", "task": "t", "prompt": "p", "match": "json_valid", "schema": True},
     "schema: a JSON Schema object is required, not bool"),
    ({"id": "a", "task": "t", "prompt": "p", "match": "json_valid", "reference": ["x"]},
     "reference: must be a string, not list"),
])
def test_bad_task_rows_are_named(row, expected):
    with pytest.raises(ValueError, match="task.jsonl:7: ") as err:
        check_task_row(row, "data/eval/task.jsonl:7")
    assert expected in str(err.value)
    # The same rule, without the place, is what curation rejects a GRPO task row for.
    if "missing fields" not in expected:
        assert expected in task_row_problem(row)


def test_a_usable_task_check_has_no_problem():
    assert task_row_problem({"match": "numeric", "reference": "1.5"}) is None
    assert task_row_problem({"reference": "x"}) is None  # match defaults to exact
    assert task_row_problem({"match": "json_valid", "schema": SCHEMA}) is None
    assert task_row_problem({"match": "json", "reference": "[" * 100_000}) == (
        "reference is not valid JSON (match=json)")  # nested too deep: not a crash


def test_score_task_rows_keeps_every_row():
    rows = [
        {"id": "a1", "task": "add", "prompt": "1+1", "reference": "2", "match": "numeric"},
        {"id": "a2", "task": "add", "prompt": "1+2", "reference": "3", "match": "numeric"},
        {"id": "j1", "task": "json", "prompt": "p", "reference": '{"a": 1}', "match": "json"},
        {"id": "r1", "task": "rev", "prompt": "p", "reference": "b, a", "match": "exact"},
    ]
    items = score_task_rows(rows, ["2", "it is 4", '{"a": 2}', "B, A"])
    assert items["task_score"] == {"a1": 1.0, "a2": 0.0, "j1": 0.0, "r1": 0.0}
    assert items["task_exact_match"] == {"a1": 1.0, "a2": 0.0, "j1": 0.0, "r1": 0.0}
    assert items["task_normalised_match"]["r1"] == 1.0
    assert items["task_json_valid"] == {"j1": 1.0}  # the format was right, the value not
    assert items["task_score.add"] == {"a1": 1.0, "a2": 0.0}
    with pytest.raises(ValueError, match="4 task rows but 3 answers"):
        score_task_rows(rows, ["2", "3", "x"])


def _write(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.fixture
def eval_sets_dir(tmp_path) -> tuple[Path, Path]:
    eval_dir, split = tmp_path / "eval", tmp_path / "split"
    eval_dir.mkdir(), split.mkdir()
    _write(eval_dir / "task.jsonl", [
        {"id": f"t{i}", "task": "add", "prompt": f"Add the two numbers.\n\n{i} + 1",
         "reference": str(i + 1), "match": "numeric"} for i in range(5)])
    _write(eval_dir / "general.jsonl", [
        {"id": "g0", "text": "Berlin is a city in Germany. The sum of 2 and 3 is 5."},
        {"id": "g1", "text": "The quiet frog slept past the bridge."}])
    _write(eval_dir / "general_tasks.jsonl", [
        {"id": "c0", "task": "fact", "prompt": "Berlin is a city in", "reference": "Germany"},
        {"id": "c1", "task": "fact", "prompt": "Paris is a city in", "reference": "France"}])
    chat = lambda role, text: [{"role": role, "content": text}]
    _write(split / "sft_validation.jsonl", [
        {"id": f"v{i}", "prompt": chat("user", f"Add the two numbers.\n\n{i} + 2"),
         "completion": chat("assistant", str(i + 2))} for i in range(3)])
    _write(split / "preference_validation.jsonl", [
        {"id": f"p{i}", "prompt": chat("user", f"Add the two numbers.\n\n{i} + 3"),
         "chosen": chat("assistant", str(i + 3)), "rejected": chat("assistant", str(i + 30))}
        for i in range(3)])
    return eval_dir, split


def test_eval_set_errors_name_file_line_and_field(eval_sets_dir):
    from pedigree.evals.suite import load_eval_sets

    eval_dir, split = eval_sets_dir
    cfg = EvalConfig()
    assert len(load_eval_sets(eval_dir, split, cfg).tasks) == 5
    _write(eval_dir / "general.jsonl", [{"id": "g0", "text": "fine"}, '{"id": "g1", "text": '])
    with pytest.raises(ValueError, match=r"general.jsonl:2: not valid JSON"):
        load_eval_sets(eval_dir, split, cfg)
    _write(eval_dir / "general.jsonl", [{"id": "g0", "text": "fine"}, {"id": "g1", "text": 3}])
    with pytest.raises(ValueError, match=r"general.jsonl:2: text: a non-empty string"):
        load_eval_sets(eval_dir, split, cfg)
    _write(eval_dir / "general.jsonl", [{"id": "g0", "text": "a"}, {"id": "g0", "text": "b"}])
    with pytest.raises(ValueError, match=r"general.jsonl: id 'g0' appears more than once"):
        load_eval_sets(eval_dir, split, cfg)
    (eval_dir / "general.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"general.jsonl: no rows"):
        load_eval_sets(eval_dir, split, cfg)


def test_evaluate_a_model_on_every_set(micro_model_dir, eval_sets_dir):
    from pedigree.evals.suite import evaluate, load_eval_sets
    from pedigree.model.load import load_causal_lm, load_tokenizer
    from pedigree.model.measure import completion_nll

    eval_dir, split = eval_sets_dir
    model, tokenizer = load_causal_lm(micro_model_dir), load_tokenizer(micro_model_dir)
    sets = load_eval_sets(eval_dir, split, EvalConfig(max_new_tokens=6, batch_size=4))
    result = evaluate(model, tokenizer, sets, EvalConfig(max_new_tokens=6, batch_size=4))
    m, items = result.metrics, result.items
    for key in ("val_loss", "general_loss", "task_loss", "task_score", "task_exact_match",
                "task_normalised_match", "general_task_score", "pref_accuracy"):
        assert key in m and math.isfinite(m[key]), key
    assert set(items["task_score"]) == {f"t{i}" for i in range(5)}
    assert set(items["general_loss"]) == {"g0", "g1"} and set(items["pref_accuracy"]) == {
        "p0", "p1", "p2"}
    assert m["val_perplexity"] == pytest.approx(math.exp(m["val_loss"]))
    # Preference accuracy is chosen-vs-rejected summed log-probability, pair by pair.
    pairs = sets.preferences
    chosen = completion_nll(model, tokenizer, [{**p, "completion": p["chosen"]} for p in pairs],
                            256, 1)
    rejected = completion_nll(model, tokenizer,
                              [{**p, "completion": p["rejected"]} for p in pairs], 256, 1)
    assert items["pref_accuracy"] == {p["id"]: float(c[0] < r[0])
                                      for p, c, r in zip(pairs, chosen, rejected, strict=True)}
    # Batching (left padding for generation, right padding for losses) changes nothing.
    one = evaluate(model, tokenizer, sets, EvalConfig(max_new_tokens=6, batch_size=1))
    assert one.answers == result.answers
    assert one.metrics["general_loss"] == pytest.approx(m["general_loss"], abs=1e-5)


# --- the gate -----------------------------------------------------------------------------

def _items(**metrics: list[float]) -> dict[str, dict[str, float]]:
    return {name: {f"i{k}": v for k, v in enumerate(values)} for name, values in metrics.items()}


def test_paired_difference_is_signed_better_positive():
    cand = _items(task_score=[1, 1, 0, 1], general_loss=[2.0, 2.2, 2.4, 2.2])
    ref = _items(task_score=[0, 1, 0, 0], general_loss=[2.0, 2.0, 2.0, 2.0])
    score = paired_difference("task_score", cand, ref)
    assert score["difference"] == pytest.approx(0.5) and score["n"] == 4
    # d = [1, 0, 0, 1]: sd = sqrt(1/3), se = sd / 2
    assert score["se"] == pytest.approx(math.sqrt(1 / 3) / 2)
    loss = paired_difference("general_loss", cand, ref)
    assert loss["difference"] == pytest.approx(-0.2)  # higher loss: worse, so negative
    partial = paired_difference("task_score", cand, {"task_score": {"i0": 0.0, "x": 1.0}})
    assert partial["n"] == 1 and partial["unpaired"] == 3
    assert "error" in paired_difference("pref_accuracy", cand, ref)


def test_gate_against_the_base():
    cfg = GateConfig(task_metric="task_score", min_task_gain=0.3,
                     general_tolerance={"general_loss": 0.1})
    base = _items(task_score=[0, 0, 0, 0], general_loss=[2.0] * 4)
    good = _items(task_score=[1, 1, 0, 0], general_loss=[2.05] * 4)
    forgetful = _items(task_score=[1, 1, 0, 0], general_loss=[2.5] * 4)
    no_gain = _items(task_score=[1, 0, 0, 0], general_loss=[2.0] * 4)
    assert all(c["passed"] for c in check_base(cfg, good, base))
    checks = {c["metric"]: c for c in check_base(cfg, forgetful, base)}
    assert checks["task_score"]["passed"] and not checks["general_loss"]["passed"]
    assert "general_loss: -0.5 vs the base (may worsen by at most 0.1)" in \
        checks["general_loss"]["reason"]
    assert not check_base(cfg, no_gain, base)[0]["passed"]


def test_gate_against_the_champion_allows_noise_not_regressions():
    cfg = GateConfig(champion_tolerance={"task_score": 0.0}, standard_errors=2.0)
    champion = _items(task_score=[1.0] * 50 + [0.0] * 50)
    # Three flips the other way out of 100: within 2 standard errors of the paired difference
    # (d has three -1s: sd 0.171, se 0.0171).
    noisy = _items(task_score=[1.0] * 47 + [0.0] * 3 + [0.0] * 50)
    [check] = check_champion(cfg, noisy, champion)
    assert check["difference"] == pytest.approx(-0.03)
    assert check["passed"], check["reason"]
    # Thirty of them is a regression, far beyond 2 standard errors.
    worse = _items(task_score=[1.0] * 20 + [0.0] * 80)
    [check] = check_champion(cfg, worse, champion)
    assert not check["passed"] and "vs the champion" in check["reason"]
    # The absolute tolerance applies when it is larger than the noise.
    loose = GateConfig(champion_tolerance={"task_score": 0.5})
    assert check_champion(loose, worse, champion)[0]["passed"]


def test_decide_records_every_reason():
    cfg = GateConfig(task_metric="task_score", min_task_gain=0.1,
                     general_tolerance={"general_loss": 0.5},
                     champion_tolerance={"task_score": 0.0})
    base = _items(task_score=[0, 0, 0, 0], general_loss=[2.0] * 4)
    merged = _items(task_score=[1, 1, 1, 0], general_loss=[2.1] * 4)
    gate = decide(cfg, {"base": base, "merged": merged}, None, "abc")
    assert gate["passed"] and gate["champion"] is None
    assert "no champion yet: compared with the base only" in gate["reasons"]
    champion = {"registered_model": "pedigree", "version": "3", "outputs_sha256": "f" * 64,
                "items": _items(task_score=[1, 1, 1, 1])}
    gate = decide(cfg, {"base": base, "merged": merged}, champion, "abc")
    assert gate["champion"]["version"] == "3"
    assert gate["passed"]  # one flip in four is within two standard errors
    champion["items"] = _items(task_score=[1] * 40)
    many = {"base": _items(task_score=[0] * 40, general_loss=[2.0] * 40),
            "merged": _items(task_score=[1] * 20 + [0] * 20, general_loss=[2.0] * 40)}
    gate = decide(cfg, many, champion, "abc")
    assert not gate["passed"]
    assert any(r.startswith("FAIL: task_score") and "champion" in r for r in gate["reasons"])
    json.dumps(gate)  # the record is plain JSON


def test_a_harness_metric_declared_lower_is_better_is_ranked_so():
    """An error rate from a harness task: fewer errors is the gain the gate asks for, in the
    gate and in summary.json, because the harness says so (the name does not)."""
    metric = "harness.local_add_errors.wrong"
    cfg = GateConfig(task_metric=metric, min_task_gain=0.25, general_tolerance={},
                     champion_tolerance={metric: 0.0})
    items = {"base": _items(**{metric: [1] * 8}), "merged": _items(**{metric: [0] * 4 + [1] * 4})}
    gate = decide(cfg, items, None, "abc", lower_is_better={metric})
    assert gate["passed"] and gate["lower_is_better"] == [metric]
    assert gate["checks"][0]["difference"] == pytest.approx(0.5)
    assert not decide(cfg, items, None, "abc")["passed"]  # read as a score it got worse
    champion = {"items": _items(**{metric: [0] * 8})}  # the champion made fewer errors
    gate = decide(cfg, items, champion, "abc", lower_is_better={metric})
    assert not gate["passed"] and gate["checks"][-1]["difference"] == pytest.approx(-0.5)
    metrics = {"base": {metric: 1.0, "task_score": 0.0, "general_loss": 2.0},
               "merged": {metric: 0.5, "task_score": 0.0, "general_loss": 2.0}}
    assert summary(metrics, gate)["merged"]["task_gain"] == pytest.approx(0.5)


def test_gate_config_rejects_unknown_metrics():
    with pytest.raises(ValueError, match="unknown metric 'task_acc'"):
        GateConfig(task_metric="task_acc")
    with pytest.raises(ValueError, match="must be >= 0"):
        GateConfig(general_tolerance={"general_loss": -1})
    with pytest.raises(ValueError):
        GateConfig(candidate="nowhere")
    GateConfig(task_metric="task_score.add", candidate="gguf-q8_0")


def test_summary_and_plot_tables():
    metrics = {
        "base": {"task_loss": 8.0, "task_score": 0.0, "general_loss": 1.2,
                 "general_task_score": 0.8},
        "sft": {"task_loss": 3.0, "task_score": 0.1, "general_loss": 2.0,
                "general_task_score": 0.5},
        "merged": {"task_loss": 3.1, "task_score": 0.1, "general_loss": 2.1,
                   "general_task_score": 0.5},
    }
    gate = {"passed": False, "candidate": "merged", "task_metric": "task_loss", "checks": []}
    out = summary(metrics, gate)
    assert out["gate_passed"] == 0
    assert out["sft"]["task_gain"] == pytest.approx(5.0)
    assert out["sft"]["general_loss_change"] == pytest.approx(0.8)
    assert out["merged"]["general_task_score_change"] == pytest.approx(-0.3)
    plots = plot_tables(metrics)
    assert plots["task_loss"] == [{"model": "base", "value": 8.0}, {"model": "sft", "value": 3.0},
                                  {"model": "merged", "value": 3.1}]
    assert "pref_accuracy" not in plots


def test_a_quantized_candidate_must_have_passed_its_export_checks():
    from pedigree.evals.gate import export_check

    cfg = GateConfig(task_metric="task_score", min_task_gain=0.0, general_tolerance={},
                     candidate="gguf-q4_0")
    items = {"base": _items(task_score=[0, 0]), "gguf-q4_0": _items(task_score=[1, 1])}
    report = {"gguf-q4_0": {"passed": False}, "gguf-q8_0": {"passed": True}}
    gate = decide(cfg, items, None, "abc", export_check("gguf-q4_0", report))
    assert not gate["passed"]
    assert gate["reasons"][0].startswith("FAIL: gguf-q4_0: quantize checks failed")
    report["gguf-q4_0"]["passed"] = True
    assert decide(cfg, items, None, "abc", export_check("gguf-q4_0", report))["passed"]
    assert export_check("merged", report) == []  # the merged model has parity checks of its own


def test_gate_candidates_are_deployable_models():
    with pytest.raises(ValueError, match="candidate"):
        GateConfig(candidate="sft")  # sft and align are folded into merged: promote that


def test_answers_stop_at_the_templates_end_of_turn(micro_model_dir):
    """A model trained under Gemma's format ends its answer with <end_of_turn>, not <eos>: the
    evals' generation must stop there too, or it talks on into a turn of its own."""
    from pedigree.model.chat import stop_token_ids
    from pedigree.model.load import load_tokenizer
    from pedigree.train.sft import chat_template

    tokenizer = load_tokenizer(micro_model_dir)
    assert stop_token_ids(tokenizer) == [tokenizer.eos_token_id]  # its template ends with eos
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = chat_template(str(REPO / "conf/chat/gemma.jinja"))
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert stop_token_ids(tokenizer) == [tokenizer.eos_token_id, end_of_turn]
