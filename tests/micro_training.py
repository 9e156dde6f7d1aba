"""Training on the micro model, shared by the training, merge and stage tests: rows of facts to
learn (each thing has one colour), an SFT config small enough for a CPU, and a random LoRA."""

from __future__ import annotations

from pathlib import Path

import torch

from pedigree.config import SFTConfig
from pedigree.model.load import load_causal_lm, load_tokenizer
from pedigree.train.methods import prepare_model
from pedigree.train.sft import train_sft

COLOURS = ["red", "blue", "green", "black", "white", "yellow", "brown", "pink"]
THINGS = ["car", "house", "cup", "door", "shirt", "bird", "book", "lamp"]


def _row(i: int) -> dict:
    """A fact to learn: each thing has one colour; the prompts differ by a number."""
    thing, colour = THINGS[i % 8], COLOURS[i % 8]
    return {
        "id": f"r{i}",
        "prompt": [{"role": "user", "content": f"Question {i}: what colour is the {thing}?"}],
        "completion": [{"role": "assistant", "content": f"The {thing} is {colour}."}],
    }


TRAIN = [_row(i) for i in range(48)]
VALIDATION = [_row(i) for i in range(48, 64)]


def sft_config(method: str, **overrides) -> SFTConfig:
    """A CPU-sized SFT config for `method`, with `overrides`."""
    rates = {"full": 3e-3, "partial": 5e-3}
    values = {"method": method, "learning_rate": rates.get(method, 3e-3), "max_steps": 32,
              "batch_size": 8, "max_length": 64, "warmup_steps": 0, "eval_steps": 8,
              "save_steps": 8, "lora": {"r": 8, "alpha": 32},
              "partial": {"last_blocks": 1, "modules": ["lm_head"]}}
    values.update(overrides)
    return SFTConfig.model_validate(values)


def train_micro(micro_model_dir, cfg: SFTConfig, store=None):
    """(trained model, metrics, curve, method details) of `cfg` on TRAIN."""
    tokenizer = load_tokenizer(micro_model_dir)
    model, peft_config, details = prepare_model(micro_model_dir, cfg)
    trained, metrics, curve = train_sft(model, tokenizer, peft_config, TRAIN, VALIDATION, cfg,
                                        seed=0, store=store)
    return trained, metrics, curve, details


def random_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA with random (non-zero) B matrices on every linear layer, saved to `out`."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(load_causal_lm(model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapter actually change the model
            torch.nn.init.normal_(p, std=0.05)
    model.save_pretrained(out)
    return out
