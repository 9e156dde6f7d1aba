"""What a training stage leaves behind, written and read here: the adapter (PEFT layout) or, for
partial and full fine-tuning, the trained tensors (`trained.safetensors`), which `apply_trained`
lays back over the base; `training.json` says which of the two a directory holds (and for QLoRA
the 4-bit settings of the base it trained against).

Every adapter is saved relative to the original base: PiSSA and OLoRA start by moving part of
each base weight into the adapter, so theirs is written as the plain LoRA that takes the original
base to the trained model (PEFT's weight conversion, from the initial adapter kept in memory by
`remember_initial_adapter`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pedigree.config import ADAPTER_METHODS, QuantConfig
from pedigree.errors import PedigreeError
from pedigree.model.load import check_safetensors

TRAINED_WEIGHTS = "trained.safetensors"
TRAINING_FILE = "training.json"
# The attribute of a PeftModel holding its initial adapter's tensors (PiSSA, OLoRA).
INITIAL_ADAPTER = "pedigree_initial_adapter"


class TrainedWeightsError(PedigreeError, ValueError):
    """Trained weights that cannot be saved (sharded) or laid over this base (foreign names)."""


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


def _check_gathered(model) -> None:
    """Refuse to save shards: under FSDP or DeepSpeed ZeRO-3 each rank holds only a slice (or an
    empty placeholder) of every weight, and saving it would write a broken model silently. The
    parameters are checked, not the state to save: AdaLoRA's saved state legitimately holds
    empty tensors, for targets pruned to rank 0."""
    sharded = [name for name, t in model.named_parameters()
               if t.requires_grad and (t.numel() == 0 or type(t).__name__ == "DTensor")]
    if sharded:
        raise TrainedWeightsError(
            f"the trained weights are sharded ({sharded[0]} and {len(sharded) - 1} more): saving "
            "under FSDP or DeepSpeed ZeRO-3 is not supported yet; use conf/accelerate/ddp.yaml "
            "or deepspeed_zero2.yaml"
        )


def remember_initial_adapter(model) -> None:
    """Keep a copy of the adapter as it is now, before training: PiSSA and OLoRA subtracted it
    from the base weights, and save_trained needs it to write the adapter relative to the
    original base."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model)
    setattr(model, INITIAL_ADAPTER, {k: v.detach().clone().cpu() for k, v in state.items()})


def _save_adapter(model, out: Path) -> None:
    """save_pretrained; for PiSSA and OLoRA, as the plain LoRA of rank 2r that takes the original
    base to the trained model (B' = [B | -B0], A' = [A ; A0]: B'A' = BA - B0A0)."""
    import tempfile

    from safetensors.torch import save_file

    initial = getattr(model, INITIAL_ADAPTER, None)
    if initial is None:
        model.save_pretrained(out)
        return
    with tempfile.TemporaryDirectory(prefix="pedigree-initial-") as scratch:
        path = Path(scratch) / "initial"  # PEFT writes the config here and loads both back
        path.mkdir()
        save_file(initial, path / "adapter_model.safetensors")
        model.save_pretrained(out, path_initial_model_for_weight_conversion=str(path))


def save_trained(model, out: Path, method: str, quant: QuantConfig | None = None) -> None:
    """The adapter (PEFT layout) or the trained tensors, plus training.json naming the kind (and
    for QLoRA the 4-bit settings of the base it trained against)."""
    from safetensors.torch import save_file

    _check_gathered(model)
    if method in ADAPTER_METHODS:
        _save_adapter(model, out)
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
        raise TrainedWeightsError(f"{path / TRAINED_WEIGHTS}: tensors not in the base model: "
                          f"{sorted(missing)[:5]}; was it trained on another base?")
    model.load_state_dict(tensors, strict=False)
    return model
