"""The policy's LoRA chain as one adapter: llama.cpp's GGUF LoRA file, and a PEFT directory for
vLLM and SGLang.

    info = write_gguf_lora([Path("models/sft"), Path("models/align")], base_config,
                           Path("models/quantized/gguf-lora/adapter-F32.gguf"))

llama.cpp (`llama-cli --lora`, llama-cpp-python's `lora_path`, Ollama's `ADAPTER`) adds
`scale * B @ A` to each adapted weight of a base GGUF at run time, where `scale` is
`adapter.lora.alpha / rank` (rank: B's columns), or 1 when alpha is 0. PEFT scales each adapter by
its own alpha / r (alpha / sqrt(r) for rsLoRA), and the policy may be a chain (the SFT adapter,
then the DPO adapter trained on it). LoRA updates add up, so the chain is one adapter:

    W + s1 B1 A1 + s2 B2 A2  =  W + [s1 B1 | s2 B2] @ [A1; A2]

Each B is multiplied by its PEFT scale here and the stacked pair is written with scale 1 (alpha =
rank when every tensor has the same stacked rank, else alpha 0). Tensors are named as in the base
GGUF (`blk.0.attn_q.weight.lora_a` / `.lora_b`, as llama.cpp's convert_lora_to_gguf.py names
them), and B's rows of Q and K get the base's rope permutation (export/gguf.py).

What llama.cpp cannot apply is refused, with the advice to merge instead: every family but LoRA,
DoRA's magnitude vectors, `modules_to_save` (whole trained copies of layers), trained biases,
per-module ranks or alphas (`rank_pattern`), and adapters on the embeddings or the LM head.

The same stacked chain is also written as one PEFT LoRA directory (`write_peft_adapter`), the
layout vLLM's and SGLang's `--lora-modules` load: every module padded with zeros to one rank R
(which changes no product), alpha = R, no rsLoRA, DoRA, biases or modules_to_save, and checked
against what vLLM's PEFTHelper requires (`check_vllm_adapter`).

No torch here: the checks (export/quantize.py) add the read-back deltas to the base they loaded,
and load the PEFT directory onto it.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf.utility import SafetensorsLocal

from pedigree.errors import PedigreeError
from pedigree.export.gguf import TensorNames, permute_rows, unpermute_rows
from pedigree.lineage import sha256_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_A, _B = ".lora_A.weight", ".lora_B.weight"
_MERGE_INSTEAD = ("llama.cpp cannot apply it as an adapter: ship a merged format instead "
                  "(quantize.formats: gguf-q8_0 or another)")


class AdapterExportError(PedigreeError, ValueError):
    """An adapter that llama.cpp's LoRA format cannot express."""


def lora_scale(config: dict[str, Any]) -> float:
    """PEFT's scale of a LoRA adapter's update: alpha / r, or alpha / sqrt(r) for rsLoRA."""
    r = config["r"]
    return config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)


def check_llama_cpp_lora(adapter: Path) -> dict[str, Any]:
    """The adapter's config, or an AdapterExportError saying why llama.cpp cannot apply it."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    where = f"{adapter}/adapter_config.json"
    refusals = {
        "peft_type": (config.get("peft_type") != "LORA",
                      f"a {config.get('peft_type')} adapter, not LoRA"),
        "use_dora": (bool(config.get("use_dora")),
                     "DoRA: its magnitude vectors rescale whole weights"),
        "modules_to_save": (bool(config.get("modules_to_save")),
                            f"whole trained copies of {config.get('modules_to_save')}"),
        "bias": (config.get("bias", "none") != "none", "trained biases"),
        "rank_pattern": (bool(config.get("rank_pattern") or config.get("alpha_pattern")),
                         "per-module ranks or alphas"),
    }
    for field, (refused, what) in refusals.items():
        if refused:
            raise AdapterExportError(f"{where}: {field}: {what}; {_MERGE_INSTEAD}")
    return config


# vLLM's `--max-lora-rank` choices (vllm.config.LoRAConfig, 0.6 to 0.11); the server must be
# started with one at least the adapter's rank.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The layers vLLM applies LoRA to in decoder-only models (its Llama, Qwen2 and Gemma 3
# implementations, q/k/v and gate/up packed): an adapter naming another module fails to load.
VLLM_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# adapter_config.json keys whose non-default values vLLM refuses (PEFTHelper._validate_features)
_VLLM_REFUSES = {"use_dora": False, "modules_to_save": None, "bias": "none"}


def _read_pairs(adapter: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{checkpoint weight name: (A, B)} of one PEFT LoRA adapter, as float32."""
    pairs: dict[str, dict[str, np.ndarray]] = {}
    with SafetensorsLocal(adapter / ADAPTER_WEIGHTS) as tensors:
        for key, tensor in tensors.items():
            name = key.removeprefix(_PEFT_PREFIX)
            if "embed_tokens" in name or "lm_head" in name:
                raise AdapterExportError(
                    f"{adapter / ADAPTER_WEIGHTS}: {key!r} adapts the embeddings or the LM head; "
                    f"{_MERGE_INSTEAD}")
            if not name.endswith((_A, _B)):
                raise AdapterExportError(
                    f"{adapter / ADAPTER_WEIGHTS}: tensor {key!r} is not a LoRA A or B matrix; "
                    f"{_MERGE_INSTEAD}")
            target = name[: -len(_A)] + ".weight"
            values = tensor.mmap_bytes().view(_numpy_dtype(tensor.dtype)).reshape(tensor.shape)
            pairs.setdefault(target, {})["A" if name.endswith(_A) else "B"] = _float32(
                values, tensor.dtype)
    return {target: (ab["A"], ab["B"]) for target, ab in pairs.items()}


def _numpy_dtype(dtype: str):
    if dtype not in ("F32", "F16", "BF16"):
        raise AdapterExportError(f"adapter tensors in {dtype} are not read; F32, F16 or BF16 are")
    return {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[dtype]


def _float32(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":  # a bf16 number is the top half of the float32 with the same bits
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)


def stacked_chain(adapters: list[Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{checkpoint weight name: (A, B)} of the whole chain: each B times its adapter's scale,
    the adapters' pairs stacked along the rank, in chain order."""
    stacked: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for adapter in adapters:
        scale = np.float32(lora_scale(check_llama_cpp_lora(Path(adapter))))
        for target, (a, b) in _read_pairs(Path(adapter)).items():
            stacked.setdefault(target, []).append((a, b * scale))
    return {target: (np.concatenate([a for a, _ in pairs], axis=0),
                     np.concatenate([b for _, b in pairs], axis=1))
            for target, pairs in sorted(stacked.items())}


def write_gguf_lora(adapters: list[Path], base_config: dict[str, Any], out_path: Path) -> dict:
    """Write the chain `adapters` (PEFT LoRA directories, in training order) as one GGUF LoRA
    adapter for the base whose config.json is `base_config`. Atomic; the same inputs always give
    the same bytes. Returns the file's facts."""
    names = TensorNames(base_config)
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[names.arch.arch])
    pairs = stacked_chain(adapters)
    ranks = {a.shape[0] for a, _ in pairs.values()}
    alpha = float(ranks.pop()) if len(ranks) == 1 else 0.0  # scale = alpha / rank = 1
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for target, (a, b) in pairs.items():
        found = names.get(target)
        if found is None:
            raise AdapterExportError(f"{adapters}: {target} has no llama.cpp name; "
                                     f"{_MERGE_INSTEAD}")
        name, heads = found
        writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{name}.lora_b",
                          np.ascontiguousarray(b if heads is None else permute_rows(b, heads)))
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"adapter_file": out_path.name, "adapter_sha256": sha256_file(out_path),
            "adapter_bytes": out_path.stat().st_size, "adapter_alpha": alpha,
            "adapter_tensors": 2 * len(pairs),
            "adapter_ranks": dict(sorted(Counter(a.shape[0] for a, _ in pairs.values()).items())),
            "chain": [Path(a).as_posix() for a in adapters]}


def read_gguf_lora(path: Path, base_config: dict[str, Any],
                   hf_names: list[str]) -> dict[str, np.ndarray]:
    """{checkpoint weight name: the update llama.cpp adds to it} of a GGUF LoRA adapter, in the
    checkpoint's row order. `hf_names`: the base model's weight names, to name them back."""
    names = TensorNames(base_config)
    by_gguf = {}
    for hf_name in hf_names:
        found = names.get(hf_name)
        if found is not None:
            by_gguf[found[0]] = (hf_name, found[1])
    reader = gguf.GGUFReader(path)
    field = reader.get_field(gguf.Keys.Adapter.LORA_ALPHA)
    alpha = float(field.contents()) if field is not None else 0.0
    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    deltas = {}
    for key in sorted(tensors):
        if not key.endswith(".lora_a"):
            continue
        name = key.removesuffix(".lora_a")
        a, b = tensors[key], tensors[name + ".lora_b"]
        if name not in by_gguf:
            raise AdapterExportError(f"{path}: {name} is not a weight of the base")
        hf_name, heads = by_gguf[name]
        scale = alpha / a.shape[0] if alpha else 1.0
        delta = scale * (b @ a)
        deltas[hf_name] = delta if heads is None else unpermute_rows(delta, heads)
    return deltas


def write_peft_adapter(adapters: list[Path], out_dir: Path, base_model: str) -> dict[str, Any]:
    """The chain as one PEFT LoRA directory (adapter_config.json, adapter_model.safetensors) in
    `out_dir`, which must not exist; written whole under a temporary name, then renamed.
    `base_model`: what its config names as the base (a hub id or a path)."""
    from safetensors.numpy import save_file

    pairs = stacked_chain(adapters)
    rank = max(a.shape[0] for a, _ in pairs.values())
    tensors = {}
    for target, (a, b) in pairs.items():
        pad = rank - a.shape[0]  # zero rows of A and columns of B add nothing to B @ A
        module = _PEFT_PREFIX + target.removesuffix(".weight")
        tensors[module + _A] = np.ascontiguousarray(np.pad(a, ((0, pad), (0, 0))))
        tensors[module + _B] = np.ascontiguousarray(np.pad(b, ((0, 0), (0, pad))))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": rank, "lora_alpha": rank, "use_rslora": False, "use_dora": False, "bias": "none",
        "modules_to_save": None, "lora_dropout": 0.0, "fan_in_fan_out": False,
        "inference_mode": True,
        "target_modules": sorted({t.removesuffix(".weight").rsplit(".", 1)[-1] for t in pairs}),
    }
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True)
    try:
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True)
                                                 + "\n")
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            for path in tmp.iterdir():
                path.unlink()
            tmp.rmdir()
    return {"peft_dir": out_dir.name, "peft_bytes": sum(p.stat().st_size
                                                        for p in out_dir.iterdir()),
            **check_vllm_adapter(out_dir)}


def check_vllm_adapter(adapter: Path) -> dict[str, Any]:
    """What vLLM requires of a LoRA directory it serves, checked on the files: the required keys,
    none of the features it refuses, modules it applies LoRA to, PEFT's tensor names with shapes
    of the config's rank. Returns the `--max-lora-rank` to serve it with."""
    where = adapter / "adapter_config.json"
    config = json.loads(where.read_text(encoding="utf-8"))
    problems = [f"missing {key}" for key in ("r", "lora_alpha", "target_modules")
                if key not in config]
    problems += [f"{key}={config[key]!r} (vLLM accepts only {value!r})"
                 for key, value in _VLLM_REFUSES.items() if config.get(key, value) != value]
    stray = sorted(set(config.get("target_modules") or []) - set(VLLM_LORA_MODULES))
    problems += [f"target_modules {stray}: vLLM applies LoRA to {', '.join(VLLM_LORA_MODULES)}"
                 ] if stray else []
    rank = config.get("r", 0)
    if rank > VLLM_MAX_LORA_RANKS[-1]:
        problems.append(f"r={rank} is above vLLM's largest --max-lora-rank "
                        f"{VLLM_MAX_LORA_RANKS[-1]}")
    with SafetensorsLocal(adapter / ADAPTER_WEIGHTS) as tensors:
        for key, tensor in tensors.items():
            name = key.removeprefix(_PEFT_PREFIX)
            if not key.startswith(_PEFT_PREFIX) or not name.endswith((_A, _B)):
                problems.append(f"tensor {key!r} is not a PEFT LoRA A or B matrix")
            elif (tensor.shape[0] if name.endswith(_A) else tensor.shape[1]) != rank:
                problems.append(f"tensor {key!r} has shape {tensor.shape}, not rank {rank}")
    if problems:
        raise AdapterExportError(f"{where}: vLLM would refuse this adapter: "
                                 + "; ".join(problems))
    return {"vllm_max_lora_rank": next(r for r in VLLM_MAX_LORA_RANKS if r >= rank)}
