"""Resolving the base model (built, Hub at a pinned revision, or local) and loading models.

Weights load from safetensors only: a pickle checkpoint (`.bin`, `.pt`, `.pth`, `.ckpt`) can run
code when loaded, so a directory that has no safetensors weights is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pedigree.config import ModelConfig, QuantConfig
from pedigree.errors import PedigreeError
from pedigree.files import PICKLE_SUFFIXES
from pedigree.lineage import MANIFEST, file_hashes, hash_of_hashes

# What a model directory needs: weights, config, tokenizer, chat template, generation settings.
MODEL_FILE_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja",
                       "tokenizer.model", "*.txt"]


class ModelLoadError(PedigreeError, ValueError):
    """A base model that cannot be used; the message names the file and what to do."""


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: not valid JSON ({err}); the file is corrupted or "
                             "truncated: re-download or re-export it") from None


def check_safetensors(path: Path) -> None:
    """The header parses and the file is exactly as long as the header says: a truncated or
    corrupted file fails here, named, instead of deep inside a loader. (Flipped bytes inside the
    tensor data keep the length: the manifests' sha256 and `pedigree audit` catch those.)"""
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing")
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")  # u64 little-endian header length
            if size < 8 or length > size - 8:
                raise ValueError(f"header of {length} bytes does not fit in {size}")
            header = json.loads(f.read(length))
        ends = [entry["data_offsets"][1] for name, entry in header.items()
                if name != "__metadata__"]
        if not all(type(end) is int for end in ends):
            raise ValueError("tensor data offsets are not integers")
        data_end = max(ends, default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise ModelLoadError(f"{path}: not a valid safetensors file ({err}); the file is "
                             "corrupted or truncated: re-download or re-export it") from None
    if size != 8 + length + data_end:
        raise ModelLoadError(f"{path}: {size:,} bytes but its header describes "
                             f"{8 + length + data_end:,}; the file is truncated or corrupted: "
                             "re-download or re-export it")


def check_model_dir(path: Path) -> None:
    """Everything loading needs is there and readable; each failure names the file."""
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}/config.json: missing; not a transformers model directory")
    _read_json(path / "config.json")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = f" (found pickle checkpoints {pickles}, which are refused)" if pickles else ""
        raise ModelLoadError(
            f"{path}: no .safetensors weights{hint}; convert the checkpoint to safetensors"
        )
    for index in path.glob("*.safetensors.index.json"):
        content = _read_json(index)
        shards = content.get("weight_map") if isinstance(content, dict) else None
        if not isinstance(shards, dict) or not all(isinstance(v, str) for v in shards.values()):
            raise ModelLoadError(f"{index}: no weight_map of tensor names to shard files")
        for shard in sorted(set(shards.values())):
            if not (path / shard).is_file():
                raise ModelLoadError(f"{path / shard}: missing; {index.name} lists it")
    for weight in weights:
        check_safetensors(weight)
    # A fast tokenizer only: a bare sentencepiece `tokenizer.model` needs the sentencepiece
    # package, which is not installed, and GGUF export reads tokenizer.json.
    if not (path / "tokenizer.json").is_file():
        raise ModelLoadError(f"{path}/tokenizer.json: missing; the model must ship its fast "
                             "tokenizer (AutoTokenizer.from_pretrained(...).save_pretrained(dir) "
                             "writes one)")
    _read_json(path / "tokenizer.json")


def check_adapter_dir(path: Path) -> None:
    """A PEFT adapter directory: its config parses and its weights are whole safetensors (PEFT
    would fall back to a pickle `adapter_model.bin`; that is refused here)."""
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        pickles = sorted(p.name for p in path.glob("*") if p.suffix in PICKLE_SUFFIXES)
        hint = f" (found pickle weights {pickles}, which are refused)" if pickles else ""
        raise ModelLoadError(f"{weights}: missing{hint}; an adapter must be saved as safetensors")
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"{path}/adapter_config.json: missing; not a PEFT adapter directory")
    _read_json(path / "adapter_config.json")
    check_safetensors(weights)


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


def model_identity(cfg: ModelConfig, model_dir: Path,
                   gguf: dict[str, Any] | None = None) -> dict[str, Any]:
    """The base model root recorded in every downstream manifest; `gguf`: for a model
    dequantized from a GGUF file, its origin, sha256 and quantization."""
    hashes = file_hashes(model_dir, exclude=(MANIFEST,))
    identity = {
        "id": cfg.id,
        "source": cfg.source,
        "revision": cfg.revision,
        "sha256": hash_of_hashes(hashes),
        "files": hashes,
    }
    if gguf is not None:
        identity["gguf"] = gguf
    return identity


def training_device() -> dict[str, Any]:
    """CUDA with bf16 when a GPU is present, CPU fp32 otherwise; nothing else assumes either."""
    import torch

    if torch.cuda.is_available():
        return {"use_cpu": False, "bf16": torch.cuda.is_bf16_supported()}
    return {"use_cpu": True, "bf16": False}


def load_causal_lm(path: Path, trust_remote_code: bool = False):
    """A model for training or evaluation, in fp32 (training casts via bf16 autocast on GPU)."""
    import torch

    return from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)


def from_pretrained(path: Path, **kwargs):
    """AutoModelForCausalLM from a checked directory, safetensors only; a refusal (custom code
    with trust_remote_code off, an unknown architecture) is one named error."""
    from transformers import AutoModelForCausalLM

    check_model_dir(path)
    try:
        return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path}: cannot load the model ({err})") from None


# A soft prompt (PEFT prompt tuning, prefix tuning, p-tuning) folds into no weight: a deployable
# directory that needs one carries it in this subdirectory, beside the base weights it applies to.
SOFT_PROMPT_DIR = "soft_prompt"
SOFT_PROMPT_TYPES = ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING")


def peft_type(adapter: Path) -> str:
    """The adapter's family as PEFT names it (LORA also for DoRA and QLoRA adapters)."""
    return json.loads((Path(adapter) / "adapter_config.json").read_text())["peft_type"]


def is_soft_prompt(adapter: Path) -> bool:
    return peft_type(adapter) in SOFT_PROMPT_TYPES


def soft_prompt_of(model_dir: Path) -> Path | None:
    """The soft prompt a model directory ships with, or None."""
    path = Path(model_dir) / SOFT_PROMPT_DIR
    return path if (path / "adapter_config.json").is_file() else None


def with_soft_prompt(model, model_dir: Path):
    """`model` (read from `model_dir`, in any format) with the soft prompt the directory ships
    with applied (a PeftModel), or `model` itself when it ships none."""
    adapter = soft_prompt_of(model_dir)
    if adapter is None:
        return model
    from peft import PeftModel

    check_adapter_dir(adapter)
    return PeftModel.from_pretrained(model, str(adapter))


def load_deployable(path: Path, trust_remote_code: bool = False):
    """A merged model as it deploys: its weights (fp32), plus its soft prompt when it ships one."""
    return with_soft_prompt(load_causal_lm(path, trust_remote_code), path)


def load_tokenizer(path: Path, trust_remote_code: bool = False, require_template: bool = True):
    """The tokenizer, its chat template checked to render. `require_template=False` where the
    template may be missing or replaced (a base model: `sft.chat_template` may supply one, and
    the sft stage checks the template it trains with)."""
    from transformers import AutoTokenizer

    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (path / name).is_file():
            _read_json(path / name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ModelLoadError(f"{path}: cannot load the tokenizer ({type(err).__name__}: {err}); "
                             "it needs tokenizer.json and tokenizer_config.json") from None
    if require_template:
        if tokenizer.chat_template is None:
            raise ModelLoadError(f"{path}: the tokenizer has no chat template; put one in the "
                                 "model directory or set sft.chat_template")
        source = path / "chat_template.jinja"
        check_chat_template(tokenizer,
                            source if source.is_file() else path / "tokenizer_config.json")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# A user turn and an assistant turn: every chat template must render at least this.
_PROBE = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]


def check_chat_template(tokenizer, source: Path | str) -> None:
    """The template renders a conversation and a generation prompt; a broken one fails here,
    naming where it came from, instead of mid-training."""
    try:
        tokenizer.apply_chat_template(_PROBE, tokenize=False)
        tokenizer.apply_chat_template(_PROBE[:1], tokenize=False, add_generation_prompt=True)
    except Exception as err:  # Jinja raises many types (syntax, undefined, raise_exception)
        raise ModelLoadError(f"{source}: the chat template does not render "
                             f"({type(err).__name__}: {err})") from None


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
        raise ModelLoadError("sft.method=qlora needs bitsandbytes: pip install bitsandbytes") from None
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
