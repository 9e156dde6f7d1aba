"""Quantized deployment checkpoints that plain `AutoModelForCausalLM.from_pretrained` reads back.

    info = write_quantized("bnb-nf4", Path("models/merged"), Path("models/tmp-nf4"))
    model = load_quantized("bnb-nf4", Path("models/tmp-nf4"))

The merged model (fp32 or bf16 safetensors + tokenizer) is loaded with the format's quantization
config and saved at once: the quantization config goes into config.json, so a consumer needs
nothing but transformers and the format's library. Weights are written as safetensors only, never
pickle. transformers 5 removed `save_pretrained(safe_serialization=...)` (safetensors is the only
format; the keyword would be silently swallowed), so it is not passed, and the output is checked.

The model is saved BEFORE any forward pass: on CPUs with AVX512-BF16, bitsandbytes 4-bit repacks
its weights during an eval-mode forward, and a model saved afterwards is silently corrupted (even
with double quantization the reloaded logits drift by ~5e-3..8e-3; without it by ~0.15, measured
on the micro model; tests/test_training.py::test_4bit_model_survives_save_and_reload).
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from pedigree.errors import MissingInputError, PedigreeError
from pedigree.files import PICKLE_SUFFIXES
from pedigree.quant_formats import FORMATS as REGISTRY
from pedigree.quant_formats import written_by

# The formats the registry (quant_formats.py) has written here.
FORMATS = written_by("transformers")

# Copied from the merged directory when present. save_pretrained writes its own
# generation_config.json; the merged one replaces it so that generation settings are unchanged.
# tokenizer.model / vocab.json / merges.txt / added_tokens.json: slow-tokenizer files of bases
# that ship them.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
    "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
)


# bitsandbytes logs this once per int8 matmul (7 per decoder layer per forward) whenever the
# activations are not fp16: the int8 kernel always quantizes activations from fp16, so the cast is
# expected and the message carries no information.
_INT8_CAST_NOTICE = "MatMul8bitLt: inputs will be cast from"


class HFQuantError(PedigreeError, RuntimeError):
    """A quantized checkpoint that cannot be written or read (missing library, wrong format)."""


def _require_library(fmt: str) -> None:
    if fmt not in FORMATS:
        raise HFQuantError(f"unknown quantized format {fmt!r}; expected one of {', '.join(FORMATS)}")
    library = REGISTRY[fmt].library  # its import name and its pip package
    try:
        importlib.import_module(library)
    except ImportError as err:
        raise HFQuantError(
            f"format {fmt} needs the {library} library, which cannot be imported ({err}): "
            f"pip install {library}"
        ) from None


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _compute_dtype():
    """bf16 on CUDA; fp32 on CPU, where bf16 matmuls are slow and less exact."""
    import torch

    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def _nf4_config():
    from transformers import BitsAndBytesConfig

    # Double quantization also quantizes the per-block (64 weights) absmax scales: ~0.4 bit per
    # weight saved.
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=_compute_dtype(),
    )


def _is_nf4(quant: dict[str, Any]) -> bool:
    return (quant.get("quant_method") == "bitsandbytes" and bool(quant.get("load_in_4bit"))
            and quant.get("bnb_4bit_quant_type") == "nf4")


def _int8_config():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def _is_int8(quant: dict[str, Any]) -> bool:
    return quant.get("quant_method") == "bitsandbytes" and bool(quant.get("load_in_8bit"))


def _torchao_int8_config():
    from torchao.quantization import Int8WeightOnlyConfig, PerRow
    from transformers import TorchAoConfig

    # Symmetric int8 with one scale per output row; version 2 is the Int8Tensor layout whose
    # safetensors form (qdata, scale, zero_point + JSON metadata) transformers reads back.
    return TorchAoConfig(Int8WeightOnlyConfig(granularity=PerRow(), version=2))


def _is_torchao_int8(quant: dict[str, Any]) -> bool:
    if quant.get("quant_method") != "torchao":
        return False
    kind = (quant.get("quant_type") or {}).get("default", {}).get("_type")
    return kind == "Int8WeightOnlyConfig"


# Each format of FORMATS: (its transformers quantization config, whether a config.json's
# quantization_config describes it).
_FORMATS = {
    "bnb-nf4": (_nf4_config, _is_nf4),
    "bnb-int8": (_int8_config, _is_int8),
    "torchao-int8": (_torchao_int8_config, _is_torchao_int8),
}


def quantization_config(fmt: str):
    """The transformers quantization config of a format (raises HFQuantError if unusable)."""
    _require_library(fmt)
    return _FORMATS[fmt][0]()


def _saved_format(config: dict[str, Any]) -> str | None:
    """The format of FORMATS that a config.json's quantization_config describes, if any."""
    quant = config.get("quantization_config") or {}
    return next((fmt for fmt in FORMATS if _FORMATS[fmt][1](quant)), None)


def _weight_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def _check_inputs(merged_dir: Path) -> None:
    if not _weight_files(merged_dir):
        raise MissingInputError(f"{merged_dir}: no *.safetensors weights of a merged model")
    if not any((merged_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise MissingInputError(
            f"{merged_dir}: no tokenizer.json or tokenizer.model; a quantized checkpoint "
            "without its tokenizer cannot be deployed"
        )


def _copy_tokenizer(merged_dir: Path, out_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        if (merged_dir / name).is_file():
            shutil.copyfile(merged_dir / name, out_dir / name)


def _check_no_pickle(out_dir: Path) -> None:
    pickled = sorted(p.name for p in out_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)  # fail the export
    if pickled or not _weight_files(out_dir):
        raise HFQuantError(
            f"{out_dir}: save_pretrained wrote {pickled or 'no safetensors'} instead of "
            "safetensors weights; pickled checkpoints are not accepted"
        )


def _clear(out_dir: Path, created: bool) -> None:
    """Remove what a failed write left: all of out_dir's contents (it was empty before)."""
    if not out_dir.exists():
        return
    if created:
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    for path in out_dir.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def write_quantized(fmt: str, merged_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Quantize the merged model in `merged_dir` to `fmt` and save it (+ tokenizer) in `out_dir`.

    `out_dir` must be new or empty (the caller renames it into place); on any error everything
    written there is removed. Returns {"format", "size_bytes" (weight files), "files"}.
    """
    from transformers import AutoModelForCausalLM

    quant = quantization_config(fmt)
    _check_inputs(merged_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise HFQuantError(f"{out_dir}: must be new or empty to receive the {fmt} checkpoint")
    created = not out_dir.exists()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            merged_dir, quantization_config=quant, dtype=_compute_dtype(), device_map=_device(),
            use_safetensors=True,
        )
        # Saved right after loading, before any forward pass (see the module docstring).
        model.save_pretrained(out_dir)
        del model
        _copy_tokenizer(merged_dir, out_dir)
        _check_no_pickle(out_dir)
    except BaseException:
        _clear(out_dir, created)
        raise
    return {
        "format": fmt,
        "size_bytes": sum(p.stat().st_size for p in _weight_files(out_dir)),
        "files": sorted(p.name for p in out_dir.iterdir()),
    }


class _DropInt8CastNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_INT8_CAST_NOTICE)


def _silence_int8_cast_notice() -> None:
    """Drop bitsandbytes' per-matmul fp16-cast message (only it) from its logger, once."""
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastNotice) for f in logger.filters):
        logger.addFilter(_DropInt8CastNotice())


def load_quantized(fmt: str, path: Path):
    """The model of a checkpoint written by `write_quantized`, in eval mode.

    Plain `from_pretrained`: the quantization config comes from config.json. The checkpoint must
    hold `fmt` (a directory of another format raises HFQuantError instead of loading silently).
    """
    from transformers import AutoModelForCausalLM

    _require_library(fmt)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise MissingInputError(f"{path}: no config.json of a quantized checkpoint")
    saved = _saved_format(json.loads(config_path.read_text(encoding="utf-8")))
    if saved != fmt:
        raise HFQuantError(f"{path}: holds a {saved or 'non-quantized'} checkpoint, not {fmt}")
    if fmt == "bnb-int8":
        _silence_int8_cast_notice()
    # dtype="auto": the dtype written in config.json (the compute dtype used when writing).
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype="auto", device_map=_device(), use_safetensors=True,
    )
    return model.eval()
