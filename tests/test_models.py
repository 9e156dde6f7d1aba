"""The base model: built deterministically, or loaded from a local dir or the Hub cache offline,
safetensors only; merging adapters is checked against the unmerged model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pedigree.config import ModelConfig
from pedigree.export.merge import ParityError, merge_policy
from pedigree.lineage import sha256_dir
from pedigree.model.chat import IGNORE_INDEX, encode_completion
from pedigree.model.load import (
    ModelLoadError,
    copy_model_files,
    fetch_hub_model,
    load_causal_lm,
    load_tokenizer,
    model_identity,
)
from pedigree.train.tiny import build_tiny

from .conftest import micro_build_config
from .micro_training import random_adapter

ROW = {"id": "r", "prompt": [{"role": "user", "content": "Add the two numbers.\n\n2 + 3"}],
       "completion": [{"role": "assistant", "content": "5"}]}


def test_tiny_build_is_deterministic_and_in_spec(micro_model_dir, tmp_path):
    again = tmp_path / "again"
    again.mkdir()
    report = build_tiny(micro_build_config(), seed=0, out_dir=again)
    assert sha256_dir(again) == sha256_dir(micro_model_dir)
    assert report["pretrain_loss_final"] < report["pretrain_loss_first"]


def test_tiny_base_size_is_in_spec():
    """conf/model/tiny.yaml's Llama has 3-6M parameters (counted without building weights)."""
    import yaml
    from transformers import LlamaConfig

    from pedigree.config import ModelConfig

    conf = Path(__file__).resolve().parents[1] / "conf/model/tiny.yaml"
    cfg = ModelConfig(**yaml.safe_load(conf.read_text())).build
    llama = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                        tie_word_embeddings=True)
    with torch.device("meta"):
        from transformers import LlamaForCausalLM

        n = sum(p.numel() for p in LlamaForCausalLM(llama).parameters())
    assert 3_000_000 <= n <= 6_000_000
    assert cfg.hidden_size >= 256


def test_chat_template_masks_the_prompt_and_marks_generation(micro_model_dir):
    tokenizer = load_tokenizer(micro_model_dir)
    enc = encode_completion(tokenizer, ROW, 128)
    answer = [t for t, label in zip(enc.input_ids, enc.labels, strict=True)
              if label != IGNORE_INDEX]
    assert tokenizer.decode(answer) == "5<|end|>"
    marked = tokenizer.apply_chat_template(ROW["prompt"] + ROW["completion"], tokenize=True,
                                           return_dict=True, return_assistant_tokens_mask=True)
    assert sum(marked["assistant_masks"]) == len(answer)  # the {% generation %} block


def test_local_model_offline(micro_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ModelConfig(name="local", source="local", id="me/micro", path=str(micro_model_dir))
    copy_model_files(micro_model_dir, tmp_path)
    identity = model_identity(cfg, tmp_path)
    assert identity["sha256"] == sha256_dir(micro_model_dir)
    model = load_causal_lm(tmp_path)
    assert model.config.model_type == "llama"


def test_pickle_checkpoints_are_refused(micro_model_dir, tmp_path):
    shutil.copy(micro_model_dir / "config.json", tmp_path)
    shutil.copy(micro_model_dir / "tokenizer.json", tmp_path)
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin.*refused"):
        load_causal_lm(tmp_path)


def test_hub_model_from_the_offline_cache(micro_model_dir, tmp_path, monkeypatch):
    """A pinned revision already in the HF cache loads with HF_HUB_OFFLINE=1; another does not."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--micro"
    shutil.copytree(micro_model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    path = fetch_hub_model("org/micro", revision)
    assert sha256_dir(path) == sha256_dir(micro_model_dir)
    with pytest.raises(ModelLoadError, match="revision=fedcba"):
        fetch_hub_model("org/micro", "fedcba9876543210fedcba9876543210fedcba98")


def test_merge_matches_stacked_adapters(micro_model_dir, tmp_path):
    tokenizer = load_tokenizer(micro_model_dir)
    adapters = [random_adapter(micro_model_dir, tmp_path / f"a{i}", i) for i in range(2)]
    merged, parity = merge_policy(load_causal_lm(micro_model_dir), tokenizer, adapters, [ROW],
                                  "float32", 1e-4, 64)
    assert parity["max_abs_logit_diff"] < 1e-4
    assert parity["top1_agreement"] == 1.0
    assert parity["adapters"] == 2
    base = load_causal_lm(micro_model_dir)
    changed = any(not torch.equal(a, b) for a, b in
                  zip(base.state_dict().values(), merged.state_dict().values(), strict=True))
    assert changed


def test_merge_past_tolerance_fails(micro_model_dir, tmp_path):
    tokenizer = load_tokenizer(micro_model_dir)
    adapter = random_adapter(micro_model_dir, tmp_path / "a", 0)
    with pytest.raises(ParityError, match="merge.parity_tolerance"):
        merge_policy(load_causal_lm(micro_model_dir), tokenizer, [adapter], [ROW],
                     "bfloat16", 1e-9, 64)
