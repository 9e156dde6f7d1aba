"""How long evaluating every model of the default pipeline takes (after `dvc repro`): base, SFT,
DPO, merged and each quantized format, on every eval set, as the eval stage does it. Goal: <= 60 s
on 2 cores.

Prints the import time (a fresh process importing what the stage imports), each model's load and
evaluation time, and the total; the stage itself adds its manifest and MLflow run (~2 s).

    dvc repro && python bench/eval_speed.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

STAGE_IMPORTS = ("import pedigree.evals.suite, pedigree.evals.models, pedigree.evals.gate, "
                 "pedigree.stage")


def main() -> None:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", STAGE_IMPORTS], check=True, capture_output=True)
    imports = time.perf_counter() - start

    from pedigree.config import load_params
    from pedigree.evals.models import pipeline_models
    from pedigree.evals.suite import evaluate, load_eval_sets
    from pedigree.model.load import load_tokenizer

    params = load_params()
    sets = load_eval_sets(Path(params.data.eval_dir), Path("data/split"), params.eval)
    tokenizer = load_tokenizer(Path("models/sft"))
    print(f"sets: {len(sets.tasks)} task prompts, {len(sets.validation)} validation rows, "
          f"{len(sets.general)} general texts, {len(sets.general_tasks)} cloze prompts, "
          f"{len(sets.preferences)} preference pairs; batch {params.eval.batch_size}, "
          f"{params.eval.max_new_tokens} new tokens")
    print(f"imports (fresh process)  {imports:6.2f} s")
    total = imports
    for name, load in pipeline_models(Path(".")).items():
        t0 = time.perf_counter()
        model = load()
        t1 = time.perf_counter()
        evaluate(model, tokenizer, sets, params.eval)
        t2 = time.perf_counter()
        total += t2 - t0
        print(f"{name:<12} load {t1 - t0:5.2f} s   evaluate {t2 - t1:6.2f} s")
    print(f"total (imports + every model)  {total:.1f} s   goal <= 60 s")


if __name__ == "__main__":
    main()
