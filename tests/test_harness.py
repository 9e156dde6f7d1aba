"""lm-evaluation-harness as the optional evaluator: offline, local task files, loaded models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pedigree.config import EvalConfig, HarnessConfig
from pedigree.errors import PedigreeError

pytest.importorskip("lm_eval", reason="lm-evaluation-harness not installed (make install)")

TASK_YAML = """\
task: local_add
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{reference}}}}"
target_delimiter: ""
generation_kwargs:
  until: ["<|end|>"]
  do_sample: false
  max_gen_toks: 8
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

ERRORS_YAML = TASK_YAML.replace("task: local_add", "task: local_add_errors").replace(
    """metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true""", """process_results: !function local_errors.process_results
metric_list:
  - metric: wrong
    aggregation: mean
    higher_is_better: false""")
ERRORS_PY = """\
def process_results(doc, results):
    return {"wrong": float(results[0] != doc["reference"])}
"""


def test_harness_scores_what_our_own_generation_produces(micro_model_dir, tmp_path,
                                                         monkeypatch):
    """References set to our own greedy answers: the harness, generating through the same chat
    template from the same loaded model, must match every one (exact match 1.0)."""
    from pedigree.evals.harness import run_harness
    from pedigree.model.load import load_causal_lm, load_tokenizer
    from pedigree.model.measure import greedy_answers

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    model, tokenizer = load_causal_lm(micro_model_dir), load_tokenizer(micro_model_dir)
    prompts = [f"Add the two numbers.\n\n{i} + {2 * i}" for i in range(6)]
    ours = greedy_answers(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                          8, 3)
    data = tmp_path / "local_add.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p, "reference": a}) + "\n"
                            for i, (p, a) in enumerate(zip(prompts, ours, strict=True))))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "local_add.yaml").write_text(TASK_YAML.format(data=data))

    # The same documents scored as an error rate, a metric of the task's own that the task
    # declares lower-is-better: pedigree must take the direction from the harness.
    (tasks / "local_add_errors.yaml").write_text(ERRORS_YAML.format(data=data))
    (tasks / "local_errors.py").write_text(ERRORS_PY)

    result = run_harness(model, tokenizer, HarnessConfig(tasks=["local_add", "local_add_errors"],
                                                         include_path=str(tasks)), 4)
    assert result.metrics["harness.local_add.exact_match"] == 1.0
    assert result.items["harness.local_add.exact_match"] == {f"q{i}": 1.0 for i in range(6)}
    assert result.metrics["harness.local_add_errors.wrong"] == 0.0
    assert result.items["harness.local_add_errors.wrong"] == {f"q{i}": 0.0 for i in range(6)}
    assert result.lower_is_better == {"harness.local_add_errors.wrong"}

    with pytest.raises(PedigreeError, match=r"\['nope'\] not found in .*it defines: local_add"):
        run_harness(model, tokenizer, HarnessConfig(tasks=["nope"], include_path=str(tasks)), 4)


def test_shipped_harness_task_runs_offline_through_evaluate(micro_model_dir, monkeypatch,
                                                            tmp_path):
    """The shipped data/eval/harness task, through the eval suite, like the stage runs it."""
    from pedigree.evals.suite import evaluate, load_eval_sets
    from pedigree.model.load import load_causal_lm, load_tokenizer

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # task data paths are relative to the repository root
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    split = tmp_path / "split"  # held-out rows: two made-up ones (the split is not built here)
    split.mkdir()
    (split / "sft_validation.jsonl").write_text("".join(json.dumps({
        "id": f"v{i}", "prompt": [{"role": "user", "content": f"Add the two numbers.\n\n{i} + 1"}],
        "completion": [{"role": "assistant", "content": str(i + 1)}]}) + "\n" for i in range(2)))
    cfg = EvalConfig(max_new_tokens=4, max_task_rows=4,
                     harness=HarnessConfig(tasks=["pedigree_tasks"], limit=4))
    sets = load_eval_sets(repo / "data/eval", split, cfg)
    model, tokenizer = load_causal_lm(micro_model_dir), load_tokenizer(micro_model_dir)
    result = evaluate(model, tokenizer, sets, cfg)
    assert 0.0 <= result.metrics["harness.pedigree_tasks.exact_match"] <= 1.0
    assert len(result.items["harness.pedigree_tasks.exact_match"]) == 4
