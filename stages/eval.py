"""Stage `eval`: every model of the pipeline on the same sets -> metrics/eval.json.

Run alone:  dvc repro eval        (or: python stages/eval.py)
Read:       dvc metrics show      (and `dvc metrics diff` against another commit or experiment)
            metrics/eval.json, and metrics/quantize.json: each format's figures from quantize

Models: the base, the SFT policy (base + adapter, or its trained weights), the DPO policy when it ran, the merged model and
each quantized format. Measured: validation loss/perplexity, general-text loss/perplexity (the
forgetting probe), task exact match and task score.
"""

import json
from pathlib import Path

from pedigree.config import load_params
from pedigree.evals.suite import answers_table, evaluate, load_eval_sets
from pedigree.export.merge import with_adapters
from pedigree.export.quantize import load_format
from pedigree.stage import stage_run
from pedigree.train.load import load_causal_lm, load_tokenizer
from pedigree.train.policy import load_sft, policy_base

params = load_params()
cfg, trust = params.eval, params.model.trust_remote_code
base = Path("models/base")

with stage_run("eval", out="metrics",
               inputs=["models/base", "models/sft", "models/dpo", "models/merged",
                       "models/quantized", "data/split", params.data.eval_dir],
               params=["model", "data", "eval", "tracking"]) as run:
    sets = load_eval_sets(Path(params.data.eval_dir), Path("data/split/sft_validation.jsonl"), cfg)
    tokenizer = load_tokenizer(Path("models/sft"), trust)  # the template the policy trained with
    policy = json.loads(Path("models/dpo/policy.json").read_text())
    quantized = json.loads(Path("models/quantized/report.json").read_text())

    models = {
        "base": lambda: load_causal_lm(base, trust),
        "sft": lambda: load_sft(base, Path("models/sft"), trust),
        "merged": lambda: load_causal_lm(Path("models/merged"), trust),
    }
    if policy["dpo"]:
        models["dpo"] = lambda: with_adapters(policy_base(base, policy, trust),
                                              [Path(a) for a in policy["adapters"]])[0]
    for fmt in quantized:
        models[fmt] = lambda fmt=fmt: load_format(fmt, Path("models/quantized"))

    results, answers = {}, {}
    for name, load in models.items():
        results[name], answers[name] = evaluate(load(), tokenizer, sets, cfg)
        print(f"[eval] {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in results[name].items()
                                             if "." not in k))

    (run.dir / "eval.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (run.dir / "answers.jsonl").write_text(answers_table(sets, answers))
    run.metrics = {f"{m}.{k}": v for m, r in results.items() for k, v in r.items()}
    # The quantize stage's per-format figures, beside the eval metrics, so that `dvc metrics
    # show/diff` covers both (the figures are quantize's; metrics/ is this stage's output).
    (run.dir / "quantize.json").write_text(Path("models/quantized/metrics.json").read_text())
    run.artifacts = ["eval.json", "answers.jsonl", "quantize.json"]
