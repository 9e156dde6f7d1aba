"""Stage `sft`: LoRA supervised fine-tuning of models/base on data/split -> models/sft/.

Run alone:  dvc repro sft         (or: python stages/sft.py)
Try a value without editing conf/:  dvc exp run -S sft.learning_rate=1e-3
"""

import json
from pathlib import Path

from pedigree.config import load_params
from pedigree.data.jsonl import read_jsonl
from pedigree.stage import stage_run
from pedigree.train.load import load_causal_lm, load_tokenizer
from pedigree.train.sft import train_sft

params = load_params()
base = Path("models/base")

with stage_run("sft", out="models/sft", inputs=["models/base", "data/split"],
               params=["seed", "model", "sft", "tracking"]) as run:
    model = load_causal_lm(base, params.model.trust_remote_code)
    tokenizer = load_tokenizer(base, params.model.trust_remote_code)
    train = read_jsonl(Path("data/split/sft_train.jsonl"))
    validation = read_jsonl(Path("data/split/sft_validation.jsonl"))

    adapter, metrics, curve = train_sft(model, tokenizer, train, validation, params.sft, params.seed)

    adapter.save_pretrained(run.dir)
    (run.dir / "README.md").unlink()  # PEFT's empty card template; issue 5 writes real cards
    tokenizer.save_pretrained(run.dir)
    (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    run.metrics, run.history = metrics, curve
    run.artifacts = ["metrics.json", "adapter_config.json", "adapter_model.safetensors"]
    print(f"[sft] validation loss {metrics['val_loss_base']:.3f} (base) -> {metrics['val_loss']:.3f}")
