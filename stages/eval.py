"""Stage `eval`: every model of the pipeline on the same sets, and the promotion gate -> metrics/.

Run alone:  dvc repro eval        (or: python stages/eval.py)
Read:       dvc metrics show      (and `dvc metrics diff` against another commit or experiment)
            dvc plots show        (one chart per metric across models, and the training curves)
            metrics/gate.json     (pass or fail, with every reason; `pedigree promote` acts on it)

Models: the base, the SFT policy (base + adapter, or its trained weights), the aligned policy when
it ran, the merged model and each quantized format. Measured: task scores (exact, normalised,
numeric, JSON), the loss of the reference answers, validation loss, the forgetting probe
(general-text loss and cloze prompts the base completes) and preference accuracy on held-out
pairs. A failed gate is a result, not an error: the stage succeeds and gate.json says why.
"""

from pathlib import Path

from pedigree.champion import candidate_dir, read_champion
from pedigree.config import ConfigError, load_params
from pedigree.evals.gate import decide, export_check
from pedigree.evals.models import pipeline_models
from pedigree.evals.outputs import write_outputs
from pedigree.evals.suite import answers_table, evaluate, load_eval_sets
from pedigree.files import read_json
from pedigree.lineage import read_manifest
from pedigree.model.load import load_tokenizer
from pedigree.pipeline import stage_out
from pedigree.records import GATE_FILE
from pedigree.stage import stage_run

params = load_params()
cfg, trust = params.eval, params.model.trust_remote_code

with stage_run("eval") as run:
    sets = load_eval_sets(Path(params.data.eval_dir), stage_out("split"), cfg)
    tokenizer = load_tokenizer(stage_out("sft"), trust)  # the template the policy trained with
    models = pipeline_models(Path("."), trust)
    if params.gate.candidate not in models:
        raise ConfigError(f"gate.candidate={params.gate.candidate!r}: this pipeline evaluated "
                          f"only {', '.join(models)}")

    results = {}
    for number, (name, load) in enumerate(models.items(), start=1):  # a line per model: progress
        print(f"[eval] {name} ({number}/{len(models)})...", flush=True)
        results[name] = result = evaluate(load(), tokenizer, sets, cfg)
        print(f"[eval] {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items()
                                             if "." not in k), flush=True)

    candidate = read_manifest(Path(candidate_dir(params.gate.candidate)))
    quantized = read_json(stage_out("quantize") / "report.json")
    exported = export_check(params.gate.candidate, quantized)
    lower_is_better = set().union(*(r.lower_is_better for r in results.values()))
    gate = decide(params.gate, {n: r.items for n, r in results.items()},
                  read_champion(Path(".")), candidate["outputs_sha256"], exported,
                  lower_is_better)
    print(f"[eval] gate: {'PASSED' if gate['passed'] else 'FAILED'} ({params.gate.candidate})")
    for reason in gate["reasons"]:
        print(f"[eval]   {reason}")

    metrics = {name: r.metrics for name, r in results.items()}
    write_outputs(run.dir, metrics=metrics, items={n: r.items for n, r in results.items()},
                  gate=gate)
    (run.dir / "answers.jsonl").write_text(answers_table(sets, {n: r.answers
                                                                for n, r in results.items()}))
    # The quantize stage's per-format figures, beside the eval metrics, so that `dvc metrics
    # show/diff` covers both (the figures are quantize's; metrics/ is this stage's output).
    (run.dir / "quantize.json").write_text((stage_out("quantize") / "metrics.json").read_text())
    run.details["gate"] = {"passed": gate["passed"], "candidate": gate["candidate"],
                           "champion": gate["champion"]}
    run.metrics = {f"{m}.{k}": v for m, r in metrics.items() for k, v in r.items()}
    run.metrics["gate.passed"] = float(gate["passed"])
    run.artifacts = ["eval.json", "summary.json", GATE_FILE, "answers.jsonl", "quantize.json"]
