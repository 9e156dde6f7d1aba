"""Resolving the base model (built, Hub at a pinned revision, or local) and loading models.

Weights load from safetensors only: a pickle checkpoint (`.bin`, `.pt`, `.pth`, `.ckpt`) can run
code when loaded, so a directory that has no safetensors weights is refused.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pedigree.config import ModelConfig
from pedigree.errors import PedigreeError
from pedigree.lineage import MANIFEST, file_hashes, hash_of_hashes

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# What a model directory needs: weights, config, tokenizer, chat template, generation settings.
MODEL_FILE_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja",
                       "tokenizer.model", "*.txt"]


class ModelLoadError(PedigreeError, ValueError):
    """A base model that cannot be used; the message names the file and what to do."""


def check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}/config.json: missing; not a transformers model directory")
    if not list(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = f" (found pickle checkpoints {pickles}, which are refused)" if pickles else ""
        raise ModelLoadError(
            f"{path}: no .safetensors weights{hint}; convert the checkpoint to safetensors"
        )
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer.model").is_file():
        raise ModelLoadError(f"{path}/tokenizer.json: missing; the tokenizer must ship with it")


def fetch_hub_model(repo_id: str, revision: str) -> Path:
    """Snapshot of the pinned revision (from the local cache when HF_HUB_OFFLINE=1)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=MODEL_FILE_PATTERNS))
    except Exception as err:  # the hub client raises many types; the user needs one message
        raise ModelLoadError(
            f"model.id={repo_id} revision={revision}: cannot fetch ({type(err).__name__}: {err}). "
            "Offline, the revision must already be in the Hugging Face cache (HF_HOME)."
        ) from None


def copy_model_files(src: Path, dst: Path) -> None:
    """Copy what a model needs (never pickle files) into the stage's output directory."""
    check_model_dir(src)
    for pattern in MODEL_FILE_PATTERNS:
        for path in sorted(src.glob(pattern)):
            shutil.copy2(path.resolve(), dst / path.name)


def model_identity(cfg: ModelConfig, model_dir: Path) -> dict[str, Any]:
    """The base model root recorded in every downstream manifest."""
    hashes = file_hashes(model_dir, exclude=(MANIFEST,))
    return {
        "id": cfg.id,
        "source": cfg.source,
        "revision": cfg.revision,
        "sha256": hash_of_hashes(hashes),
        "files": hashes,
    }


def training_device() -> dict[str, Any]:
    """CUDA with bf16 when a GPU is present, CPU fp32 otherwise; nothing else assumes either."""
    import torch

    if torch.cuda.is_available():
        return {"use_cpu": False, "bf16": torch.cuda.is_bf16_supported()}
    return {"use_cpu": True, "bf16": False}


def load_causal_lm(path: Path, trust_remote_code: bool = False):
    """A model for training or evaluation, in fp32 (training casts via bf16 autocast on GPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    check_model_dir(path)
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code
    )


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"{path}: the tokenizer has no chat template; set one in the model dir")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
