"""How trainable parameters enter the model: LoRA, QLoRA, DoRA (adapters) or partial and full
fine-tuning (base weights train directly).

`prepare_model` returns the model to train and, for the adapter methods, the PEFT config the
trainer wraps it with. `save_trained` writes only what training changed: the adapter, or for
partial and full the trained tensors (`trained.safetensors`), which `apply_trained` lays back over
the base. `training.json` says which of the two a directory holds.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from pedigree.config import ADAPTER_METHODS, LoraConfig, PartialConfig, QuantConfig, SFTConfig
from pedigree.errors import PedigreeError
from pedigree.train.load import check_safetensors, from_pretrained, load_causal_lm

TRAINED_WEIGHTS = "trained.safetensors"
TRAINING_FILE = "training.json"


class MethodError(PedigreeError, ValueError):
    """A method setting that does not fit the model (no module matches, no bitsandbytes)."""


def peft_lora(cfg: LoraConfig, dora: bool = False):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_rslora=cfg.use_rslora,
        use_dora=dora,
        task_type="CAUSAL_LM",
    )


def load_4bit(path: Path, quant: QuantConfig, trust_remote_code: bool = False,
              for_training: bool = True):
    """The frozen base in 4-bit (NF4 by default, double-quantized), prepared for k-bit training.

    Never save it after a forward pass: on CPUs with AVX512-BF16 bitsandbytes repacks the weights
    in eval-mode forwards and the saved file drifts (reloaded logits off by up to 8e-3 on the
    micro model; tests/test_training.py::test_4bit_model_survives_save_and_reload).
    """
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise MethodError("sft.method=qlora needs bitsandbytes: pip install bitsandbytes") from None
    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute,
    )
    model = from_pretrained(path, quantization_config=quant, dtype=compute,
                            trust_remote_code=trust_remote_code)
    if not for_training:
        return model
    # Gradient checkpointing off: ~25% faster for small models; memory is not the limit here.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def load_dequantized(path: Path, quant: QuantConfig, trust_remote_code: bool = False):
    """The base as a QLoRA adapter saw it: quantized to 4-bit, then dequantized to fp32.

    Merging or evaluating a QLoRA adapter on the original weights puts it on weights it never
    trained against (logits off by ~0.2 on the micro model, against ~0.01 for these).
    """
    import torch

    model = load_4bit(path, quant, trust_remote_code, for_training=False).dequantize()
    return model.to(torch.float32)


def unfreeze(model, cfg: PartialConfig) -> list[str]:
    """Freeze everything, then unfreeze the last blocks and the named modules; their names."""
    prefix, count = _blocks(model)
    patterns = [*cfg.modules,
                *(f"{prefix}.{i}" for i in range(max(count - cfg.last_blocks, 0), count))]
    for param in model.parameters():
        param.requires_grad_(False)
    chosen = []
    names = [name for name, _ in model.named_modules() if name]
    for pattern in patterns:
        matched = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise MethodError(
                f"sft.partial.modules: {pattern!r} matches no module of the model "
                f"(top-level modules: {sorted({n.split('.')[0] for n in names})})"
            )
        for name in matched:
            model.get_submodule(name).requires_grad_(True)
        chosen.extend(matched)
    return chosen


def _blocks(model) -> tuple[str, int]:
    """The name and length of the transformer blocks: the model's longest ModuleList."""
    import torch

    lists = [(name, len(m)) for name, m in model.named_modules()
             if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise MethodError("sft.partial.last_blocks: the model has no list of blocks")
    return max(lists, key=lambda item: item[1])


def prepare_model(base: Path, cfg: SFTConfig, trust_remote_code: bool = False):
    """(model, peft config or None, details) for `cfg.method`."""
    if cfg.method == "qlora":
        model = load_4bit(base, cfg.quant, trust_remote_code)
    else:
        model = load_causal_lm(base, trust_remote_code)
    details: dict[str, Any] = {"method": cfg.method}
    if cfg.method in ADAPTER_METHODS:
        return model, peft_lora(cfg.lora, dora=cfg.method == "dora"), details
    if cfg.method == "partial":
        details["trained_modules"] = unfreeze(model, cfg.partial)
    else:
        model.requires_grad_(True)
    return model, None, details


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as their unpacked size."""
    if hasattr(model, "get_nb_trainable_parameters"):  # PEFT knows how 4-bit weights pack
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def trained_state(model) -> dict[str, Any]:
    """What training changed, as tensors: the adapter weights, or the unfrozen base weights."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def state_digest(tensors: dict[str, Any]) -> str:
    """sha256 over names, shapes, dtypes and bytes: equal digests mean identical weights."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_gathered(tensors: dict[str, Any]) -> None:
    """Refuse to save shards: under FSDP or DeepSpeed ZeRO-3 each rank holds only a slice (or an
    empty placeholder) of every weight, and saving it would write a broken model silently."""
    sharded = [name for name, t in tensors.items()
               if t.numel() == 0 or type(t).__name__ == "DTensor"]
    if sharded:
        raise MethodError(
            f"the trained weights are sharded ({sharded[0]} and {len(sharded) - 1} more): saving "
            "under FSDP or DeepSpeed ZeRO-3 is not supported yet; use conf/accelerate/ddp.yaml "
            "or deepspeed_zero2.yaml"
        )


def save_trained(model, out: Path, method: str, quant: QuantConfig | None = None) -> None:
    """The adapter (PEFT layout) or the trained tensors, plus training.json naming the kind (and
    for QLoRA the 4-bit settings of the base it trained against)."""
    from safetensors.torch import save_file

    _check_gathered(trained_state(model))
    if method in ADAPTER_METHODS:
        model.save_pretrained(out)
        (out / "README.md").unlink(missing_ok=True)  # PEFT's empty card template
        _sort_target_modules(out / "adapter_config.json")
        kind = "adapter"
    else:
        tensors = {k: v.detach().contiguous().cpu() for k, v in trained_state(model).items()}
        save_file(tensors, out / TRAINED_WEIGHTS)
        kind = "weights"
    info: dict[str, Any] = {"method": method, "kind": kind}
    if method == "qlora" and quant is not None:
        info["quant"] = quant.model_dump()
    (out / TRAINING_FILE).write_text(json.dumps(info, indent=2) + "\n")


def _sort_target_modules(config: Path) -> None:
    """PEFT keeps resolved target modules ("all-linear") in a set and writes them in its
    iteration order, which changes with each process's string hash seed: two identical runs
    would write different adapter_config.json bytes. Sorted, the file depends on the run only."""
    data = json.loads(config.read_text())
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def training_info(path: Path) -> dict[str, Any]:
    """training.json; directories from before it existed hold LoRA adapters."""
    file = path / TRAINING_FILE
    return json.loads(file.read_text()) if file.is_file() else {"method": "lora", "kind": "adapter"}


def trained_kind(path: Path) -> str:
    """"adapter" or "weights"."""
    return training_info(path)["kind"]


def apply_trained(model, path: Path):
    """Lay trained tensors (partial or full fine-tuning) over a loaded base, in place."""
    from safetensors.torch import load_file

    check_safetensors(path / TRAINED_WEIGHTS)
    tensors = load_file(path / TRAINED_WEIGHTS)
    missing = set(tensors) - {name for name, _ in model.named_parameters()}
    if missing:
        raise MethodError(f"{path / TRAINED_WEIGHTS}: tensors not in the base model: "
                          f"{sorted(missing)[:5]}; was it trained on another base?")
    model.load_state_dict(tensors, strict=False)
    return model
