"""Shared fixtures: a micro base model built the way the `base` stage builds the default."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# No test may reach a hub: anything that tries fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def micro_build_config(**overrides):
    from pedigree.config import TinyModelConfig

    values = dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                  intermediate_size=128, max_position_embeddings=128, pretrain_steps=20,
                  batch_size=8, seq_len=64, corpus=str(REPO / "data/corpus/general.txt"),
                  learning_rate=3e-3)
    values.update(overrides)
    return TinyModelConfig(**values)


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory) -> Path:
    """A tiny pretrained Llama + tokenizer + chat template in a directory (built once)."""
    from pedigree.train.tiny import build_tiny

    out = tmp_path_factory.mktemp("micro-base")
    build_tiny(micro_build_config(), seed=0, out_dir=out)
    return out


@pytest.fixture
def in_tmp_repo(tmp_path, monkeypatch) -> Path:
    """A scratch working directory with the repository's dvc.yaml (stages read it for code ids)."""
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path
