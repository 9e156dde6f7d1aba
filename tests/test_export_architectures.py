"""Merge and every GGUF type, end to end, for each architecture the exporter supports.

A tiny random Llama, Mistral, Qwen2, Qwen3 and Gemma 3 (each with a BPE tokenizer trained here
and a chat template) get a random LoRA adapter, which `merge_policy` folds in; the merged
directory goes through `export_format` for every GGUF type, and transformers' GGUF reader must
give back the merged model's tokens and, within each type's tolerance, its logits; so must
llama.cpp's, where llama-cpp-python is installed (`make kquants`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize
from tokenizers import Regex, pre_tokenizers
from transformers import (
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from pedigree.export.gguf import SUPPORTED_QTYPES
from pedigree.export.merge import merge_policy
from pedigree.export.quantize import (
    GGUF_QTYPES,
    ExportCheckError,
    Reference,
    check_llama_cpp_tokens,
    export_format,
    gguf_path,
    llama_cpp_available,
    llama_cpp_logits,
)
from pedigree.model.load import load_causal_lm, load_tokenizer
from pedigree.model.measure import chat_inputs, compare_logits, distribution_compare, logits_of
from tests.tiny_checkpoints import (
    LLAMA3_SPLIT,
    SAMPLES,
    gpt2_pre_tokenizer,
    llama3_pre_tokenizer,
    llama_config,
    random_model,
    save_tokenizer,
)

MAX_LENGTH = 128
ROWS = [
    {
        "id": f"row{i}",
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": completion}],
    }
    for i, (prompt, completion) in enumerate(
        [
            ("Hello there, how are you?", "I'm fine: 12345 tokens!"),
            ("the quick brown fox jumps over the lazy dog", "café naïve — 😀 ünïcödé 3.14159"),
            ("Fine tune the model on 2024 data.", "Done: loss 0.333, 22 steps."),
            ("  leading spaces,\ttabs and\nnew lines", "don't you're\n\nok"),
        ]
    )
]
TEXTS = [*SAMPLES, "1 22 333 4444 55555 2024-11-23", "日本語のテキスト ÅÄÖ ß ∑ 🚀🚀", "x"]


def _qwen2_pre_tokenizer():
    split = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")  # Qwen2 splits digits one by one
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


# Rows of 256 values are whole blocks of every GGUF type, K-quants' 256-value super-blocks
# included (llama.cpp stores narrower rows in a fallback type, which would test something else).
SIZES = {
    "hidden_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,  # GQA: K and V have 2 heads to Q's 8
    "intermediate_size": 512,
    "vocab_size": 416,  # padded past the tokenizer's 400
    "max_position_embeddings": 256,
}


def _small_config(config_class, **overrides):
    return config_class(**(SIZES | overrides))


# name: (config, model class, pre-tokenizer, whether encoding adds the bos token)
ARCHITECTURES = {
    "llama": (  # untied output layer, Llama-3 pre-tokenizer, bos added
        lambda: llama_config(**SIZES, tie_word_embeddings=False),
        LlamaForCausalLM,
        llama3_pre_tokenizer,
        True,
    ),
    "mistral": (
        lambda: _small_config(MistralConfig, sliding_window=None, tie_word_embeddings=True),
        MistralForCausalLM,
        gpt2_pre_tokenizer,
        False,
    ),
    "qwen2": (  # Q/K/V biases; the Qwen2 pre-tokenizer
        lambda: _small_config(Qwen2Config, rope_theta=50000.0, tie_word_embeddings=True),
        Qwen2ForCausalLM,
        _qwen2_pre_tokenizer,
        False,
    ),
    # Q/K norms, heads wider than hidden / heads. transformers 5.23's GGUF reader ignores
    # attention.key_length for qwen3 and takes Qwen3Config's default head_dim, 128, which every
    # released Qwen3 has; with any other it would misread the file (load_gguf says so)
    "qwen3": (
        lambda: _small_config(Qwen3Config, head_dim=128, tie_word_embeddings=True),
        Qwen3ForCausalLM,
        _qwen2_pre_tokenizer,
        False,
    ),
    # (1 + w) norms; 4-token sliding windows in five layers of six, the sixth full, each kind with
    # its rope base. transformers' GGUF reader assumes what every released Gemma 3 but the 27B
    # has: five sliding layers in six and queries scaled by 1/sqrt(256), so the heads are 256 wide
    # (llama.cpp reads the layers' flags, and scales by 1/sqrt(head_dim))
    "gemma3": (
        lambda: _small_config(
            Gemma3TextConfig, num_hidden_layers=6, num_attention_heads=2, num_key_value_heads=1,
            head_dim=256, query_pre_attn_scalar=256, sliding_window=4, tie_word_embeddings=True,
        ),
        Gemma3ForCausalLM,
        llama3_pre_tokenizer,
        True,
    ),
}

# Bounds on the reader's logits against the merged model's, over the rows' real tokens: max
# |difference|, top-1 agreement and mean KL(merged || reader) in nats per token. The merged
# models' logits reach |1.3| to |1.6| (std 0.32): random weights give nearly flat distributions,
# so 4- to 6-bit rounding flips many close top-1 calls. Measured (llama / mistral / qwen2):
#   F32     0 / 0 / 0 (the reader dequantizes to the very weights)
#   F16     max 2.6e-3 / 2.1e-3 / 5.4e-4, top-1 1.0, KL 5.5e-8 / 5.7e-8 / 7.5e-9
#   Q8_0    max 0.054 / 0.055 / 0.014, top-1 0.94 / 0.96 / 0.97, KL 3.6e-5 / 3.6e-5 / 5.0e-6
#   Q6_K    max 0.20 / 0.18 / 0.052, top-1 0.87 / 0.88 / 0.92, KL 3.9e-4 / 4.2e-4 / 5.8e-5
#   Q5_K_M  max 0.34 / 0.26 / 0.073, top-1 0.72 / 0.83 / 0.86, KL 1.6e-3 / 1.1e-3 / 1.4e-4
#   Q4_K_M  max 0.60 / 0.51 / 0.14, top-1 0.54 / 0.69 / 0.75, KL 5.3e-3 / 3.9e-3 / 4.5e-4
#   Q4_0    max 0.84 / 0.78 / 0.25, top-1 0.44 / 0.53 / 0.64, KL 8.9e-3 / 9.0e-3 / 1.5e-3
# Qwen2's figures are smaller, probably as its large random Q/K/V biases dilute the rounding. The
# quantized bounds are loose enough to hide a misplaced tensor: the exact test below covers that.
TOLERANCES = {
    "gguf-f32": {"max_abs": 1e-5, "top1": 1.0, "kl": 1e-10},
    "gguf-f16": {"max_abs": 8e-3, "top1": 1.0, "kl": 2e-7},
    "gguf-q8_0": {"max_abs": 0.15, "top1": 0.85, "kl": 1e-4},
    "gguf-q6_k": {"max_abs": 0.5, "top1": 0.7, "kl": 1.2e-3},
    "gguf-q5_k_m": {"max_abs": 0.8, "top1": 0.5, "kl": 5e-3},
    "gguf-q4_k_m": {"max_abs": 1.5, "top1": 0.35, "kl": 0.015},
    "gguf-q4_0": {"max_abs": 2.0, "top1": 0.3, "kl": 0.025},
}


@dataclass
class Exported:
    arch: str
    merged_dir: Path
    out_dir: Path
    parity: dict[str, Any]
    adapter_effect: float  # max |logit change| the adapter makes to the base model
    ids: torch.Tensor
    mask: torch.Tensor
    merged_logits: torch.Tensor
    formats: dict[str, tuple[torch.Tensor, dict[str, Any]]]  # fmt -> (reader's logits, info)


def _build_base(directory: Path, arch: str) -> Path:
    make_config, model_class, pre_tokenizer, add_bos = ARCHITECTURES[arch]
    save_tokenizer(directory, pre_tokenizer(), add_bos=add_bos)
    model = random_model(make_config(), model_class)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):  # zero at init: random ones, so a lost bias shows
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.save_pretrained(directory)
    return directory


def _save_random_adapter(base_dir: Path, adapter_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"],
    )
    torch.manual_seed(2)
    model = get_peft_model(load_causal_lm(base_dir), config)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # non-zero, so the adapter changes the model
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    model.save_pretrained(adapter_dir)


def _missing_quantizer(fmt: str) -> str | None:
    """Why `fmt` cannot be written here, if it cannot: the gguf package writes the legacy types,
    llama.cpp's quantizer the K-quants, and it is an optional dependency."""
    if GGUF_QTYPES[fmt] in SUPPORTED_QTYPES:
        return None
    from pedigree.export import kquants

    try:
        kquants.quantizer()
    except kquants.KQuantError as err:
        return str(err)
    return None


def _written(exported: Exported, fmt: str) -> tuple[torch.Tensor, dict[str, Any]]:
    if fmt not in exported.formats:
        pytest.skip(_missing_quantizer(fmt))
    return exported.formats[fmt]


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def exported(request, tmp_path_factory) -> Exported:
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    base_dir = _build_base(root / "base", arch)
    _save_random_adapter(base_dir, root / "adapter")
    tokenizer = load_tokenizer(base_dir)
    ids, mask = chat_inputs(tokenizer, ROWS, MAX_LENGTH)
    base_logits = logits_of(load_causal_lm(base_dir), ids, mask)

    merged, parity = merge_policy(load_causal_lm(base_dir), tokenizer, [root / "adapter"], ROWS,
                                  "float32", None, MAX_LENGTH)
    merged_dir = root / "merged"
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    merged_logits = logits_of(merged, ids, mask)

    out_dir = root / "export"
    formats = {}
    for fmt in GGUF_QTYPES:
        if _missing_quantizer(fmt) is None:
            model, info = export_format(fmt, merged_dir, out_dir, tokenizer, ROWS, MAX_LENGTH)
            formats[fmt] = (logits_of(model, ids, mask), info)
    adapter_effect = compare_logits(base_logits, merged_logits, mask)["max_abs_logit_diff"]
    return Exported(arch, merged_dir, out_dir, parity, adapter_effect, ids, mask,
                    merged_logits, formats)


def _simulated(merged_dir: Path, fmt: str) -> torch.nn.Module:
    """The merged model with each weight the exporter quantizes (every 2-D tensor; norms and
    biases stay F32) rounded through the gguf package's `fmt` quantizer and back, in place.
    A reader that gets these logits read every tensor where it belongs: what is left between it
    and the merged model is quantization error, not layout."""
    qtype = GGMLQuantizationType[GGUF_QTYPES[fmt]]
    model = load_causal_lm(merged_dir)
    with torch.no_grad():
        for parameter in model.parameters():  # a tied output layer is the embedding, once
            if parameter.ndim == 2:
                values = dequantize(quantize(parameter.numpy(), qtype), qtype)
                parameter.copy_(torch.from_numpy(values.reshape(parameter.shape)))
    return model


def test_merge_is_exact_and_the_adapter_matters(exported):
    assert exported.parity["max_abs_logit_diff"] <= 1e-4
    assert exported.parity["tolerance"] == 1e-3 and exported.parity["adapters"] == 1
    assert exported.adapter_effect > 0.5  # measured 0.84 to 1.31
    # the merged directory reloads as the model that was checked
    reloaded = logits_of(load_causal_lm(exported.merged_dir), exported.ids, exported.mask)
    assert torch.equal(reloaded, exported.merged_logits)


@pytest.mark.parametrize("fmt", GGUF_QTYPES)
def test_gguf_tokenizer_gives_the_same_ids(exported, fmt):
    _written(exported, fmt)  # export_format already compared the rows' chat-template ids
    path = gguf_path(exported.out_dir, fmt)
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    merged = AutoTokenizer.from_pretrained(exported.merged_dir)
    adds_bos = ARCHITECTURES[exported.arch][3]
    for text in TEXTS:
        ids = merged(text).input_ids
        assert (ids[0] == merged.bos_token_id) is adds_bos
        assert loaded(text).input_ids == ids, text
        assert loaded.decode(ids) == merged.decode(ids)
    ids, mask = chat_inputs(loaded, ROWS, MAX_LENGTH)
    assert torch.equal(ids, exported.ids) and torch.equal(mask, exported.mask)
    assert loaded.chat_template == merged.chat_template


@pytest.mark.parametrize("fmt", GGUF_QTYPES)
def test_gguf_logits_match_the_merged_model(exported, fmt):
    logits, info = _written(exported, fmt)
    bounds = TOLERANCES[fmt]
    diff = compare_logits(exported.merged_logits, logits, exported.mask)
    figures = distribution_compare(exported.merged_logits, logits, exported.ids, exported.mask)
    assert info["qtype"] == GGUF_QTYPES[fmt]
    assert diff["max_abs_logit_diff"] <= bounds["max_abs"]
    assert diff["top1_agreement"] >= bounds["top1"]
    assert figures["kl_divergence"] <= bounds["kl"]


@pytest.mark.parametrize("fmt", GGUF_QTYPES)
def test_every_weight_is_stored_in_the_format_type(exported, fmt):
    """No row falls back to another type: with 256-wide rows, K-quants are K-quants."""
    _written(exported, fmt)
    qtype = GGUF_QTYPES[fmt]
    main = qtype.removesuffix("_M")  # Q4_K_M is mostly Q4_K
    # llama.cpp's _M mixes keep a few tensors (output layer, some attn_v, ffn_down) in Q6_K
    allowed = {main, "Q6_K"} if qtype.endswith("_K_M") else {main}
    tensors = GGUFReader(gguf_path(exported.out_dir, fmt)).tensors
    weights = {t.tensor_type.name for t in tensors if len(t.shape) > 1}
    assert main in weights and weights <= allowed, weights
    # norms and Qwen2's biases stay F32 in every type
    assert {t.tensor_type.name for t in tensors if len(t.shape) == 1} == {"F32"}


@pytest.mark.parametrize("fmt", [f for f, q in GGUF_QTYPES.items() if q in SUPPORTED_QTYPES])
def test_gguf_logits_are_the_quantized_weights_logits(exported, fmt):
    """Quantization noise could hide a misplaced tensor in the bounds above; this cannot."""
    logits, _ = _written(exported, fmt)
    expected = logits_of(_simulated(exported.merged_dir, fmt), exported.ids, exported.mask)
    # measured 0.0 for every architecture and type: the reader returns exactly these weights
    assert compare_logits(expected, logits, exported.mask)["max_abs_logit_diff"] <= 1e-5


@pytest.mark.skipif(not llama_cpp_available(), reason="llama-cpp-python is not installed")
def test_llama_cpp_reads_the_gguf_file_as_the_merged_model(exported):
    """llama.cpp itself, not only transformers' reader: the same tokens for the same text (the
    control tokens of a chat template included) and, from the F16 file, the same logits."""
    from llama_cpp import Llama

    path = gguf_path(exported.out_dir, "gguf-f16")
    merged = AutoTokenizer.from_pretrained(exported.merged_dir)
    vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    chat = merged.apply_chat_template(ROWS[0]["prompt"] + ROWS[0]["completion"], tokenize=False)
    for text in [*TEXTS, chat]:
        ids = merged(text, add_special_tokens=False).input_ids
        assert vocab.tokenize(text.encode(), add_bos=False, special=True) == ids, text
    rendered = tuple(merged.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
                     for row in ROWS)
    reference = Reference(exported.ids, exported.mask, exported.merged_logits, [], [], rendered)
    check_llama_cpp_tokens(path, reference)  # what the quantize stage runs on its check rows
    with pytest.raises(ExportCheckError, match="tokenizes a check row differently"):
        check_llama_cpp_tokens(path, replace(reference, texts=(rendered[1], *rendered[1:])))
    logits = llama_cpp_logits(path, reference)
    figures = distribution_compare(exported.merged_logits, logits, exported.ids, exported.mask)
    assert figures["top1_agreement"] == 1.0 and figures["kl_divergence"] <= 2e-7, figures
