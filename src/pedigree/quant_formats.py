"""The registry of quantization formats: one record per format `quantize.formats` may name.

Every list of formats is read from here: the config schema (`quantize.formats`,
`quantize.max_perplexity_ratio`, `gate.candidate`), the default perplexity gates, and the export
code, which maps each record's `writer` and `reader` to its functions (export/quantize.py). No
torch and no export import here: config.py validates against it before any stage loads a model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# How a format is written, and by which module.
WRITERS = {
    "gguf": "the gguf package, through export/gguf.py",
    "llama.cpp": "an F16 GGUF file from export/gguf.py, quantized by llama.cpp's own quantizer "
                 "(`llama-quantize` or llama-cpp-python; export/kquants.py)",
    "transformers": "the merged model loaded with the format's quantization config and saved at "
                    "once (export/hf_quant.py)",
    "gguf-lora": "the model the adapters sit on (models/base, or models/cpt) as a GGUF file from "
                 "export/gguf.py, with the policy's tokenizer and chat template, and the policy's "
                 "LoRA chain as one llama.cpp GGUF LoRA adapter (export/gguf_lora.py)",
}

# The independent reader that reads a written format back for its checks.
READERS = {
    "gguf": "transformers' GGUF loader, dequantized to fp32 (its tokenizer must encode the check "
            "rows identically), and llama.cpp itself when llama-cpp-python is installed",
    "transformers": "plain `AutoModelForCausalLM.from_pretrained`",
    "gguf-lora": "transformers' GGUF loader for the base, with the adapter's updates as "
                 "export/gguf_lora.py reads them from the file added to its weights, and llama.cpp "
                 "running the base with the adapter (`lora_path`) when llama-cpp-python is "
                 "installed",
}


@dataclass(frozen=True)
class QuantFormat:
    name: str  # as params.yaml names it; also its directory under models/quantized/
    writer: str  # a key of WRITERS
    reader: str  # a key of READERS
    # Default gate: perplexity of the format / perplexity of the merged model on held-out rows
    # (`quantize.max_perplexity_ratio` overrides it per format).
    max_perplexity_ratio: float
    description: str
    gguf_type: str | None = None  # GGUF file type (the file is model-<gguf_type>.gguf; gguf-lora:
    # the base's)
    library: str | None = None  # the package writer and reader need (import name = pip name)


# Default gates: llama.cpp's published figures for 7B models are F16 +0.000, Q8_0 +0.0004
# (~1.0001), Q4_0 +0.25 on ~5.9 (~1.04). Small models lose more to quantization, so the 4-bit
# gates are looser; Q8_0's 1.005 is the bound the README states for the quantize stage.
_FORMATS = (
    QuantFormat("gguf-f32", "gguf", "gguf", 1.0001, "GGUF, 32-bit floats: the weights unchanged",
                gguf_type="F32"),
    QuantFormat("gguf-f16", "gguf", "gguf", 1.001, "GGUF, 16-bit floats", gguf_type="F16"),
    QuantFormat("gguf-q8_0", "gguf", "gguf", 1.005,
                "GGUF Q8_0: 8-bit weights in blocks of 32, one scale each", gguf_type="Q8_0"),
    QuantFormat("gguf-q4_0", "gguf", "gguf", 1.15,
                "GGUF Q4_0: 4-bit weights in blocks of 32, one scale each", gguf_type="Q4_0"),
    QuantFormat("gguf-q4_k_m", "llama.cpp", "gguf", 1.10,
                "GGUF Q4_K_M: llama.cpp's 4-bit K-quant mixture", gguf_type="Q4_K_M"),
    QuantFormat("gguf-q5_k_m", "llama.cpp", "gguf", 1.03,
                "GGUF Q5_K_M: llama.cpp's 5-bit K-quant mixture", gguf_type="Q5_K_M"),
    QuantFormat("gguf-q6_k", "llama.cpp", "gguf", 1.01,
                "GGUF Q6_K: llama.cpp's 6-bit K-quant", gguf_type="Q6_K"),
    QuantFormat("gguf-lora", "gguf-lora", "gguf-lora", 1.005,
                "GGUF Q8_0 base plus the LoRA chain as one llama.cpp GGUF LoRA adapter (F32): "
                "several fine-tunes share one base", gguf_type="Q8_0"),
    QuantFormat("bnb-nf4", "transformers", "transformers", 1.15,
                "bitsandbytes 4-bit NormalFloat with double quantization",
                library="bitsandbytes"),
    QuantFormat("bnb-int8", "transformers", "transformers", 1.01,
                "bitsandbytes LLM.int8()", library="bitsandbytes"),
    QuantFormat("torchao-int8", "transformers", "transformers", 1.01,
                "torchao int8 weight-only, one scale per output row", library="torchao"),
)

FORMATS: dict[str, QuantFormat] = {f.name: f for f in _FORMATS}
NAMES: tuple[str, ...] = tuple(FORMATS)
DEFAULT_PERPLEXITY_GATES: dict[str, float] = {f.name: f.max_perplexity_ratio for f in _FORMATS}


def written_by(writer: str) -> tuple[str, ...]:
    """The formats one writer makes, in registry order."""
    return tuple(f.name for f in _FORMATS if f.writer == writer)


def read_by(reader: str) -> tuple[str, ...]:
    """The formats one reader reads back, in registry order."""
    return tuple(f.name for f in _FORMATS if f.reader == reader)


def check_known(names: Iterable[str]) -> None:
    """A ValueError naming every format the registry does not hold, and those it does."""
    unknown = sorted(set(names) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown formats {unknown}; known: {', '.join(NAMES)}")
