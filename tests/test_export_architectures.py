"""Merge and every GGUF type, end to end, for each architecture the exporter supports.

A tiny random Llama, Mistral and Qwen2 (each with a BPE tokenizer trained here and a chat
template) get a random LoRA adapter, which `merge_policy` folds in; the merged directory goes
through `export_format` for every GGUF type, and transformers' GGUF reader must give back the
merged model's tokens and, within each type's tolerance, its logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Regex, pre_tokenizers
from transformers import (
    AutoTokenizer,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from pedigree.evals.measure import chat_inputs, compare_logits, distribution_compare, logits_of
from pedigree.export.merge import merge_policy
from pedigree.export.quantize import GGUF_QTYPES, export_format, gguf_path
from pedigree.train.load import load_causal_lm, load_tokenizer
from tests.test_gguf import (
    LLAMA3_SPLIT,
    SAMPLES,
    _gpt2_pre_tokenizer,
    _llama3_pre_tokenizer,
    _llama_config,
    _random_model,
    _save_tokenizer,
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


def _small_config(config_class, **overrides):
    values = dict(
        hidden_size=64,  # a multiple of 32: every row is whole Q8_0 / Q4_0 blocks
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        intermediate_size=128,
        vocab_size=416,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return config_class(**(values | overrides))


# name: (config, model class, pre-tokenizer, whether encoding adds the bos token)
ARCHITECTURES = {
    "llama": (  # untied output layer, Llama-3 pre-tokenizer, bos added
        lambda: _llama_config(tie_word_embeddings=False),
        LlamaForCausalLM,
        _llama3_pre_tokenizer,
        True,
    ),
    "mistral": (
        lambda: _small_config(MistralConfig, sliding_window=None),
        MistralForCausalLM,
        _gpt2_pre_tokenizer,
        False,
    ),
    "qwen2": (  # Q/K/V biases; the Qwen2 pre-tokenizer
        lambda: _small_config(Qwen2Config, rope_theta=50000.0),
        Qwen2ForCausalLM,
        _qwen2_pre_tokenizer,
        False,
    ),
}

# Bounds on max |logit difference| over the rows' real tokens, with the merged model's logits
# reaching |6| or so, and on top-1 agreement / mean KL (nats) of the next-token distributions.
# Measured (llama, mistral, qwen2): F32 ..., F16 ..., Q8_0 ..., Q4_0 ....
TOLERANCES = {
    "gguf-f32": {"max_abs": 1e-4, "top1": 1.0, "kl": 1e-8},
    "gguf-f16": {"max_abs": 1e-2, "top1": 1.0, "kl": 1e-5},
    "gguf-q8_0": {"max_abs": 0.1, "top1": 0.9, "kl": 1e-3},
    "gguf-q4_0": {"max_abs": 1.0, "top1": 0.6, "kl": 0.1},
}


@dataclass
class Exported:
    merged_dir: Path
    out_dir: Path
    tokenizer: Any
    parity: dict[str, Any]
    adapter_effect: float  # max |logit change| the adapter makes to the base model
    ids: torch.Tensor
    mask: torch.Tensor
    merged_logits: torch.Tensor
    formats: dict[str, tuple[torch.Tensor, dict[str, Any]]]  # fmt -> (reader's logits, info)


def _build_base(directory: Path, arch: str) -> Path:
    make_config, model_class, pre_tokenizer, add_bos = ARCHITECTURES[arch]
    _save_tokenizer(directory, pre_tokenizer(), add_bos=add_bos)
    model = _random_model(make_config(), model_class)
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
        model, info = export_format(fmt, merged_dir, out_dir, tokenizer, ROWS, MAX_LENGTH)
        formats[fmt] = (logits_of(model, ids, mask), info)
    adapter_effect = compare_logits(base_logits, merged_logits, mask)["max_abs_logit_diff"]
    return Exported(merged_dir, out_dir, tokenizer, parity, adapter_effect, ids, mask,
                    merged_logits, formats)


def test_merge_is_exact_and_the_adapter_matters(exported):
    assert exported.parity["max_abs_logit_diff"] <= 1e-4
    assert exported.parity["tolerance"] == 1e-4 and exported.parity["adapters"] == 1
    assert exported.adapter_effect > 0.1
    # the merged directory reloads as the model that was checked
    reloaded = logits_of(load_causal_lm(exported.merged_dir), exported.ids, exported.mask)
    assert torch.equal(reloaded, exported.merged_logits)


@pytest.mark.parametrize("fmt", GGUF_QTYPES)
def test_gguf_tokenizer_gives_the_same_ids(exported, fmt):
    path = gguf_path(exported.out_dir, fmt)
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    merged = AutoTokenizer.from_pretrained(exported.merged_dir)
    for text in TEXTS:
        ids = merged(text).input_ids
        assert loaded(text).input_ids == ids, text
        assert loaded.decode(ids) == merged.decode(ids)
    ids, mask = chat_inputs(loaded, ROWS, MAX_LENGTH)
    assert torch.equal(ids, exported.ids) and torch.equal(mask, exported.mask)


@pytest.mark.parametrize("fmt", GGUF_QTYPES)
def test_gguf_logits_match_the_merged_model(exported, fmt):
    logits, info = exported.formats[fmt]
    bounds = TOLERANCES[fmt]
    diff = compare_logits(exported.merged_logits, logits, exported.mask)
    figures = distribution_compare(exported.merged_logits, logits, exported.ids, exported.mask)
    print(fmt, diff, figures)  # noqa: T201
    assert info["qtype"] == GGUF_QTYPES[fmt]
    assert diff["max_abs_logit_diff"] <= bounds["max_abs"]
    assert diff["top1_agreement"] >= bounds["top1"]
    assert figures["kl_divergence"] <= bounds["kl"]
