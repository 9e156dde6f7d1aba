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
    """Trained weights that cannot be saved (sharded past gathering) or laid over this base
    (foreign names)."""


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
        tensor = tensors[name].detach()
        if hasattr(tensor, "to_local"):  # an FSDP2 shard: the slice this rank holds
            tensor = tensor.to_local()
        tensor = tensor.contiguous().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _sharding(model) -> str | None:
    """"fsdp2" when the trained parameters are DTensor shards (FSDP2's fully_shard), "zero3"
    when they are DeepSpeed ZeRO-3 placeholders, None when every rank holds them whole."""
    trained = [t for _, t in model.named_parameters() if t.requires_grad]
    if any(type(t).__name__ == "DTensor" for t in trained):
        return "fsdp2"
    if any(hasattr(t, "ds_id") for t in trained):
        return "zero3"
    # An empty trained tensor that is neither: FSDP1's flattened parameters (accelerate's
    # fsdp_version 1), whose names are not the model's. (AdaLoRA's *saved* state may hold empty
    # tensors for pruned targets; its parameters never are.)
    empty = [name for name, t in model.named_parameters() if t.requires_grad and t.numel() == 0]
    if empty:
        raise TrainedWeightsError(
            f"the trained weights are sharded ({empty[0]} and {len(empty) - 1} more) in a way "
            "pedigree does not gather (FSDP1's flat parameters?): use FSDP2 (fsdp_version: 2, "
            "conf/accelerate/fsdp.yaml), DeepSpeed ZeRO-3 or DDP")
    return None


def gathered_state(model) -> dict[str, Any] | None:
    """Every parameter whole, on the CPU, as the unsharded model names them; {} on ranks other
    than 0 when the model is sharded. Under FSDP2 and ZeRO-3 this is a collective: every rank
    must call it, as the HF Trainer's save_model does (FSDP2: torch.distributed.checkpoint's
    get_model_state_dict with full_state_dict and cpu_offload; ZeRO-3: its gathered 16-bit
    weights, deepspeed.zero.GatheredParameters). None when nothing is sharded."""
    sharding = _sharding(model)
    if sharding == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if sharding == "zero3":
        import deepspeed
        import torch.distributed as dist

        trained = [p for p in model.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(trained, modifier_rank=None):
            if dist.get_rank() != 0:
                return {}
            return {n: p.detach().cpu().clone() for n, p in model.named_parameters()
                    if p.requires_grad}
    return None


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
    for QLoRA the 4-bit settings of the base it trained against). Every rank calls it: a sharded
    model's weights are gathered whole first (`gathered_state`), and ranks other than 0 of a
    sharded model write nothing (their output is a scratch directory)."""
    from safetensors.torch import save_file

    full = gathered_state(model)
    if full == {}:
        return  # a sharded model's rank > 0: rank 0 holds the gathered weights
    if full is not None and getattr(model, INITIAL_ADAPTER, None) is not None:
        raise TrainedWeightsError("a PiSSA or OLoRA adapter trained sharded cannot be converted "
                                  "to a plain LoRA here: train it with DDP (sft.lora.init)")
    if method in ADAPTER_METHODS:
        if full is None:
            _save_adapter(model, out)
        else:  # PEFT keeps the adapter's tensors of the full state dict
            model.save_pretrained(out, state_dict=full)
        (out / "README.md").unlink(missing_ok=True)  # PEFT's empty card template
        _sort_target_modules(out / "adapter_config.json")
        kind = "adapter"
    else:
        trained = [name for name, p in model.named_parameters() if p.requires_grad]
        source = trained_state(model) if full is None else {n: full[n] for n in trained}
        tensors = {k: v.detach().contiguous().cpu() for k, v in source.items()}
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
