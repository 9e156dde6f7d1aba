"""Continued pretraining: documents in EOS-ended blocks, every weight trained on the next-token
loss, resumable; the `cpt` stage in a scratch project, and SFT starting from its output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import TrainerCallback

from pedigree.config import CPTConfig
from pedigree.errors import PedigreeError
from pedigree.model.load import load_causal_lm, load_tokenizer
from pedigree.model.trained import state_digest
from pedigree.pipeline import start_model
from pedigree.train.checkpoints import CheckpointStore, fingerprint
from pedigree.train.cpt import token_blocks, train_cpt
from tests.micro_training import TRAIN, VALIDATION

REPO = Path(__file__).resolve().parents[1]
# Plain text in the micro model's own world (it was pretrained on sentences like these).
DOCS = [f"The {a} {b} lives by the {c} and eats {n} apples every day."
        for n, (a, b, c) in enumerate([("small", "fox", "river"), ("old", "owl", "forest"),
                                       ("brave", "goat", "hill"), ("quiet", "duck", "lake"),
                                       ("happy", "bear", "valley"), ("tired", "wolf", "field"),
                                       ("young", "deer", "meadow"), ("slow", "frog", "garden")] * 6)]
FAST = CPTConfig(enabled=True, learning_rate=3e-3, max_steps=8, batch_size=4, block_size=32,
                 eval_steps=8, save_steps=2, warmup_steps=1)


@pytest.fixture(scope="module")
def tokenizer(micro_model_dir):
    return load_tokenizer(micro_model_dir)


def test_blocks_end_each_document_with_eos(tokenizer):
    blocks = token_blocks(tokenizer, ["one two three", "four five"], block_size=4)
    stream = [t for b in blocks for t in b]
    assert all(len(b) == 4 for b in blocks)
    assert stream.count(tokenizer.eos_token_id) >= 1
    whole = token_blocks(tokenizer, ["one two three", "four five"], block_size=1000)
    assert len(whole) == 1 and whole[0][-1] == tokenizer.eos_token_id  # shorter than a block
    assert whole[0].count(tokenizer.eos_token_id) == 2
    assert len(stream) == len(whole[0]) // 4 * 4  # only the tail shorter than a block is left
    assert token_blocks(tokenizer, [], block_size=8) == []


def test_cpt_lowers_the_loss_on_held_out_text(micro_model_dir, tokenizer):
    model, metrics, curve = train_cpt(load_causal_lm(micro_model_dir), tokenizer, DOCS[:40],
                                      DOCS[40:], FAST, seed=0)
    assert metrics["val_loss"] < metrics["val_loss_base"] - 0.1
    assert metrics["trainable_params"] == sum(p.numel() for p in model.parameters())
    assert metrics["steps"] == 8 and curve[0][0] == 0  # the base's loss first


def test_no_validation_text_is_an_error(micro_model_dir, tokenizer):
    with pytest.raises(PedigreeError, match="1 training and 0 validation blocks"):
        train_cpt(load_causal_lm(micro_model_dir), tokenizer, DOCS[:2], [], FAST, seed=0)


class _Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 5:
            raise KeyboardInterrupt  # as a killed run stops: after checkpoint-4, mid-run


def test_a_stopped_run_resumes_to_the_same_weights(micro_model_dir, tokenizer, tmp_path,
                                                   monkeypatch):
    whole, _, _ = train_cpt(load_causal_lm(micro_model_dir), tokenizer, DOCS[:40], DOCS[40:],
                            FAST, seed=0)
    store = CheckpointStore(tmp_path / "ckpt", fingerprint({}, {"cpt": 1}, "code"))
    import transformers

    real = transformers.Trainer.__init__

    def crashing(self, *args, callbacks=None, **kwargs):
        real(self, *args, callbacks=[*(callbacks or []), _Crash()], **kwargs)

    monkeypatch.setattr(transformers.Trainer, "__init__", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_cpt(load_causal_lm(micro_model_dir), tokenizer, DOCS[:40], DOCS[40:], FAST, 0,
                  store)
    monkeypatch.setattr(transformers.Trainer, "__init__", real)
    resumed, _, _ = train_cpt(load_causal_lm(micro_model_dir), tokenizer, DOCS[:40], DOCS[40:],
                              FAST, 0, store)
    a, b = whole.state_dict(), resumed.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


# ----------------------------------------------------------------------------- the stage
def _project(root: Path, base: Path, cpt: dict) -> Path:
    """A scratch project: the code, a micro base, a split with SFT and text rows, params."""
    root.mkdir()
    for name in ("dvc.yaml",):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "stages", root / "stages")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for data in ("data/eval", "data/replay"):
        shutil.copytree(REPO / data, root / data)
    shutil.copytree(base, root / "models/base")
    split = root / "data/split"
    split.mkdir(parents=True)
    files = {"sft_train": TRAIN, "sft_validation": VALIDATION,
             "text_train": [{"text": d} for d in DOCS[:40]],
             "text_validation": [{"text": d} for d in DOCS[40:]]}
    for name, rows in files.items():
        (split / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tracking"]["enabled"] = False
    raw["cpt"].update(FAST.model_dump(), **cpt)
    raw["sft"].update(max_steps=2, batch_size=8, max_length=64, eval_steps=2, save_steps=2)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root


def _stage(root: Path, name: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(root / "src"))
    proc = subprocess.run([sys.executable, f"stages/{name}.py"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_sft_starts_from_the_continued_pretraining(tmp_path, micro_model_dir):
    root = _project(tmp_path / "p", micro_model_dir, {"enabled": True})
    out = _stage(root, "cpt")
    assert "validation loss" in out and "(base) ->" in out
    cpt = root / "models/cpt"
    assert json.loads((cpt / "cpt.json").read_text()) == {"trained": True}
    assert start_model(root) == Path("models/cpt")
    manifest = json.loads((cpt / "lineage.json").read_text())
    assert {"models/base", "data/split"} <= {Path(i["path"]).parts[0] + "/" + Path(i["path"])
                                              .parts[1] for i in manifest["inputs"]}
    trained = load_causal_lm(cpt)
    assert state_digest(trained.state_dict()) != state_digest(
        load_causal_lm(micro_model_dir).state_dict())
    assert not (root / "checkpoints/cpt").exists()  # cleared once published

    _stage(root, "sft")
    sft = json.loads((root / "models/sft/lineage.json").read_text())
    assert "cpt" in [u["stage"] for u in sft["upstream"]]
    assert sft["details"]["start_model"] == "models/cpt"


@pytest.mark.slow
def test_disabled_cpt_trains_nothing_and_sft_starts_from_the_base(tmp_path, micro_model_dir):
    root = _project(tmp_path / "p", micro_model_dir, {"enabled": False})
    assert "nothing trained" in _stage(root, "cpt")
    assert sorted(p.name for p in (root / "models/cpt").iterdir()) == ["cpt.json", "lineage.json"]
    assert start_model(root) == Path("models/base")


@pytest.mark.slow
def test_enabled_without_text_is_a_clear_error(tmp_path, micro_model_dir):
    root = _project(tmp_path / "p", micro_model_dir, {"enabled": True})
    (root / "data/split/text_train.jsonl").write_text("")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(root / "src"))
    proc = subprocess.run([sys.executable, "stages/cpt.py"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode != 0
    assert "cpt.enabled=true, but the split has 0 training" in proc.stderr
    assert not (root / "models/cpt").exists()  # nothing published
