"""Stage `sft`: supervised fine-tuning of models/base (models/cpt when continued pretraining ran)
on data/split -> models/sft/.

Run alone:  dvc repro sft         (or: python stages/sft.py)
Method:     dvc exp run -S sft=qlora      (lora, qlora, dora, ia3, loha, lokr, vera, adalora,
                                          prompt_tuning, prefix_tuning, p_tuning, partial, full:
                                          conf/sft/)
Try a value without editing conf/:  dvc exp run -S sft.learning_rate=1e-3
Against forgetting:  dvc exp run -S sft.replay.fraction=0.1   (general rows from data/replay/)

Checkpoints go to checkpoints/sft/; a killed run resumes from the last one on the next
`dvc repro`, unless the data, base model or params changed since.
"""

import json
from pathlib import Path

from pedigree.config import load_params
from pedigree.data.jsonl import read_jsonl
from pedigree.data.replay import curated_replay, mix_replay, replay_sha256
from pedigree.launch import gather, is_main_process, relaunch_under_accelerate
from pedigree.model.load import check_chat_template, load_tokenizer
from pedigree.model.trained import save_trained, state_digest, trained_state
from pedigree.perf import measured, write_perf
from pedigree.pipeline import stage_out, start_model
from pedigree.stage import stage_run
from pedigree.train.checkpoints import CheckpointStore, fingerprint
from pedigree.train.methods import prepare_model
from pedigree.train.sft import chat_template, train_sft
from pedigree.train.trainer import curve_csv

params = load_params()
relaunch_under_accelerate(params.accelerate)
cfg, trust = params.sft, params.model.trust_remote_code
base, split = start_model(), stage_out("split")  # models/cpt when it ran

# A chat template file is an input: its hash goes into the manifest and the resume fingerprint.
template_file = [cfg.chat_template] if (cfg.chat_template or "").endswith(".jinja") else []
with stage_run("sft", extra_inputs=template_file) as run:
    tokenizer = load_tokenizer(base, trust, require_template=not cfg.chat_template)
    if cfg.chat_template:
        tokenizer.chat_template = chat_template(cfg.chat_template)
        check_chat_template(tokenizer, template_file[0] if template_file else "sft.chat_template")
    model, peft_config, run.details["training"] = prepare_model(base, cfg, trust)
    run.details["start_model"] = base.as_posix()  # models/base, or models/cpt when it trained
    train = read_jsonl(split / "sft_train.jsonl")
    validation = read_jsonl(split / "sft_validation.jsonl")  # the task's alone: no replay
    replay = cfg.replay
    if replay.fraction:
        general, report = curated_replay(replay, params.curate, Path(params.data.eval_dir))
        train, replayed = mix_replay(train, general, replay.fraction, params.seed)
        run.roots["replay_sha256"] = replay_sha256(replay)
        run.details["replay"] = {"source": replay.source, "fraction": replay.fraction,
                                 "rows_kept": len(general), "rows_replayed": replayed,
                                 "dropped": report["dropped"]}
        print(f"[sft] replay: {replayed} rows of {replay.source} ({len(general)} kept) among "
              f"{len(train)} training rows")
    store = CheckpointStore(Path("checkpoints/sft"),
                            fingerprint(run.input_hashes, run.recorded_params,
                                        run.code["source_sha256"]))

    with measured() as perf:  # time and peak memory: to perf/sft.json and MLflow, not the output
        trained, metrics, curve = train_sft(model, tokenizer, peft_config, train, validation, cfg,
                                            params.seed, store)

    # Every rank holds the weights; under DDP they must agree, and the manifest shows they do.
    run.details["training"]["rank_sha256"] = gather(state_digest(trained_state(trained)))
    save_trained(trained, run.dir, cfg.method, cfg.quant)
    # On disk, what a deployment of this method ships beyond the base (the adapter, or every
    # weight for partial and full): the comparison's "adapter size".
    metrics["saved_weights_bytes"] = float(sum(
        p.stat().st_size for p in run.dir.rglob("*.safetensors")))
    metrics["replay_rows"] = float(run.details.get("replay", {}).get("rows_replayed", 0))
    tokenizer.save_pretrained(run.dir)  # with the chat template the model was trained on
    (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (run.dir / "train_loss.csv").write_text(curve_csv(curve, "loss"))
    (run.dir / "val_loss.csv").write_text(curve_csv(curve, "eval_loss"))
    run.metrics = {**metrics, "train_seconds": perf["seconds"],
                   "peak_rss_gib": perf["peak_rss_gib"]}
    run.history = curve
    run.artifacts = ["metrics.json", "train_loss.csv", "val_loss.csv"]
    if is_main_process():
        print(f"[sft] {cfg.method}: {metrics['trainable_params']:,.0f} trainable parameters "
              f"({metrics['trainable_fraction']:.2%}); validation loss "
              f"{metrics['val_loss_base']:.3f} (base) -> {metrics['val_loss']:.3f}")
if is_main_process():
    write_perf("sft", {**perf, "method": cfg.method,
                       "trainable_params": int(metrics["trainable_params"])})
store.clear()  # only once the output is published: a failure before keeps them for resume
