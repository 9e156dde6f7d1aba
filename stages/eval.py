"""Stage `eval`: every model of the pipeline on the same sets, and the promotion gate -> metrics/.

Run alone:  dvc repro eval        (or: python stages/eval.py)
Read:       dvc metrics show      (and `dvc metrics diff` against another commit or experiment)
            dvc plots show        (one chart per metric across models, and the training curves)
            metrics/gate.json     (pass or fail, with every reason; `pedigree promote` acts on it)

Models: the base, the base well prompted (a system prompt and k examples from the training split:
prompted-<k>shot), the SFT policy (base + adapter, or its trained weights), the aligned policy
when it ran, the merged model and each quantized format. Measured: task scores (exact, normalised,
numeric, JSON), the loss of the reference answers, validation loss, the forgetting probe
(general-text loss and cloze prompts the base completes) and preference accuracy on held-out
pairs; the prompted baselines on the task prompts only. With eval.judge, a judge compares the
candidate's answers with the base's and the champion's (metrics/judge.json). A failed gate is a
result, not an error: the stage succeeds and gate.json says why.
"""

from pathlib import Path

from pedigree.champion import candidate_dir, read_champion
from pedigree.config import ConfigError, load_params
from pedigree.evals.eval_rows import read_rows
from pedigree.evals.gate import decide, export_check
from pedigree.evals.judge import judge_inputs, run_judge
from pedigree.evals.models import pipeline_models
from pedigree.evals.outputs import write_outputs
from pedigree.evals.prompting import baselines
from pedigree.evals.suite import answers_table, evaluate, evaluate_prompted, load_eval_sets
from pedigree.files import read_json
from pedigree.lineage import read_manifest
from pedigree.model.load import load_tokenizer
from pedigree.pipeline import stage_out
from pedigree.records import GATE_FILE
from pedigree.stage import stage_run

params = load_params()
cfg, trust = params.eval, params.model.trust_remote_code

with stage_run("eval", [p for p in (cfg.judge.model, cfg.judge.template) if p]) as run:
    sets = load_eval_sets(Path(params.data.eval_dir), stage_out("split"), cfg)
    tokenizer = load_tokenizer(stage_out("sft"), trust)  # the template the policy trained with
    models = pipeline_models(Path("."), trust)
    if params.gate.candidate not in models:
        raise ConfigError(f"gate.candidate={params.gate.candidate!r}: this pipeline evaluated "
                          f"only {', '.join(models)}")
    train_file = stage_out("split") / "sft_train.jsonl"
    prompted = baselines(cfg.baseline, read_rows(train_file, ("id",)),
                         [t["task"] for t in sets.tasks], params.seed, str(train_file))
    judging = judge_inputs(cfg.judge, Path(params.data.eval_dir)) if cfg.judge.enabled else None

    results = {}

    def report(name: str) -> None:  # a line per model: progress
        print(f"[eval] {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in
                                             results[name].metrics.items() if "." not in k),
              flush=True)

    for number, (name, load) in enumerate(models.items(), start=1):
        print(f"[eval] {name} ({number}/{len(models)})...", flush=True)
        model = load()
        results[name] = evaluate(model, tokenizer, sets, cfg)
        report(name)
        for baseline in prompted if name == "base" else []:  # the base, well prompted
            print(f"[eval] {baseline.name} (the base, task prompts)...", flush=True)
            results[baseline.name] = evaluate_prompted(
                model, tokenizer, sets.tasks, lambda row, b=baseline: b.context(row["task"]),
                baseline.k, cfg)
            report(baseline.name)
        del model

    champion = read_champion(Path("."))
    judged = None
    if judging is not None:
        print("[eval] judge: the candidate's answers against the base's and the champion's...",
              flush=True)
        judged = run_judge(cfg.judge, judging, trust, cfg.batch_size, sets.tasks,
                           params.gate.candidate, {n: r.answers for n, r in results.items()},
                           champion)
        scored = results[params.gate.candidate]
        for opponent, verdicts in judged["verdicts"].items():
            key = f"judge_win_rate.{opponent}"
            scored.metrics[key] = judged["against"][opponent]["win_rate"]
            scored.items[key] = {i: v["score"] for i, v in verdicts.items()}
            print(f"[eval] judge: win rate over the {opponent} {scored.metrics[key]:.3g}",
                  flush=True)

    candidate = read_manifest(Path(candidate_dir(params.gate.candidate)))
    quantized = read_json(stage_out("quantize") / "report.json")
    exported = export_check(params.gate.candidate, quantized)
    lower_is_better = set().union(*(r.lower_is_better for r in results.values()))
    items = {n: r.items for n, r in results.items()}
    gate = decide(params.gate, items, champion, candidate["outputs_sha256"], exported,
                  lower_is_better, [b.name for b in prompted],
                  judged["against"] if judged else None)
    print(f"[eval] gate: {'PASSED' if gate['passed'] else 'FAILED'} ({params.gate.candidate})")
    for reason in gate["reasons"]:
        print(f"[eval]   {reason}")

    metrics = {name: r.metrics for name, r in results.items()}
    write_outputs(run.dir, metrics=metrics, items=items, gate=gate,
                  baselines={b.name: b.record() for b in prompted}, judged=judged)
    (run.dir / "answers.jsonl").write_text(answers_table(sets, {n: r.answers
                                                                for n, r in results.items()}))
    # The quantize stage's per-format figures, beside the eval metrics, so that `dvc metrics
    # show/diff` covers both (the figures are quantize's; metrics/ is this stage's output).
    (run.dir / "quantize.json").write_text((stage_out("quantize") / "metrics.json").read_text())
    run.details["gate"] = {"passed": gate["passed"], "candidate": gate["candidate"],
                           "champion": gate["champion"]}
    run.metrics = {f"{m}.{k}": v for m, r in metrics.items() for k, v in r.items()}
    run.metrics["gate.passed"] = float(gate["passed"])
    run.artifacts = ["eval.json", "summary.json", GATE_FILE, "answers.jsonl", "quantize.json",
                     "baselines.json", *(["judge.json"] if judged else [])]
