"""GGUF export: write tiny random checkpoints, read them back with transformers' GGUF loader.

transformers reads a GGUF by undoing what llama.cpp's converter does (tensor names, the Q/K
permutation, the tokenizer as metadata), so a file that round-trips to the same tokens and logits
is laid out as llama.cpp expects. The rope test checks the permutation against llama.cpp's rope
directly, without transformers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, TokenType
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from pedigree.export.gguf import SUPPORTED_QTYPES, GGUFExportError, write_gguf
from tests.tiny_checkpoints import (
    CHAT_TEMPLATE,
    SAMPLES,
    SPECIAL_TOKENS,
    gpt2_pre_tokenizer,
    llama3_pre_tokenizer,
    llama_config,
    random_model,
    save_checkpoint,
    save_tokenizer,
)

MESSAGES = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]

# Bounds on max |logit difference| / max |reference logit| (0.71 here), and on the share of the
# 76 positions whose top-1 token must agree. Measured: F16 3.7e-4, BF16 3.3e-3, Q8_0 9.5e-3 (75 of
# 76 top-1 equal), Q5_1 0.088 (91%), Q5_0 0.074 (88%), Q4_1 0.14 (82%), Q4_0 0.16 (71%). Random
# weights give nearly flat logits (std 0.16), so 4- and 5-bit rounding flips close calls: their
# top-1 bounds are loose on purpose.
TOLERANCES = {
    "F16": (1e-3, 1.0),
    "BF16": (1e-2, 1.0),
    "Q8_0": (0.03, 0.95),
    "Q5_1": (0.15, 0.75),
    "Q5_0": (0.15, 0.75),
    "Q4_1": (0.25, 0.6),
    "Q4_0": (0.3, 0.5),
}


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("llama"), llama_config())


@pytest.fixture(scope="module")
def exports(llama_dir, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """The untied Llama written once per qtype: {qtype: (path, write_gguf's report)}."""
    out_dir = tmp_path_factory.mktemp("gguf")
    return {
        qtype: (
            out_dir / f"model-{qtype}.gguf",
            write_gguf(llama_dir, out_dir / f"model-{qtype}.gguf", qtype),
        )
        for qtype in SUPPORTED_QTYPES
    }


# ---- helpers --------------------------------------------------------------------------------


def _logits(model, text_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(text_ids).logits[0]


def _compare_logits(model_dir: Path, gguf_path: Path) -> tuple[float, float, float]:
    """(max |diff|, that over max |reference|, share of positions with the same top-1 token)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(" ".join(SAMPLES), return_tensors="pt").input_ids
    reference = _logits(AutoModelForCausalLM.from_pretrained(model_dir), ids)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    logits = _logits(loaded, ids)
    max_diff = (logits - reference).abs().max().item()
    agreement = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    return max_diff, max_diff / reference.abs().max().item(), agreement


def _metadata(gguf_path: Path) -> dict:
    reader = GGUFReader(gguf_path)
    return {key: field.contents() for key, field in reader.fields.items()}


def _tensor_types(gguf_path: Path) -> dict[str, GGMLQuantizationType]:
    return {tensor.name: tensor.tensor_type for tensor in GGUFReader(gguf_path).tensors}


# ---- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_0"])
def test_tokenizer_and_chat_template_survive(llama_dir, exports, qtype):
    path, _ = exports[qtype]
    original = AutoTokenizer.from_pretrained(llama_dir)
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in SAMPLES:
        assert loaded(text).input_ids == original(text).input_ids, text
        assert loaded.decode(loaded(text).input_ids) == text
    assert loaded.chat_template == original.chat_template == CHAT_TEMPLATE
    assert loaded.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == (
        original.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    )
    specials = (loaded.bos_token, loaded.eos_token, loaded.pad_token)
    assert specials == ("<|bos|>", "<|end|>", "<|pad|>")


def test_f32_logits_match_exactly(llama_dir, exports):
    max_diff, _, agreement = _compare_logits(llama_dir, exports["F32"][0])
    assert max_diff < 1e-4
    assert agreement == 1.0


@pytest.mark.parametrize("qtype", TOLERANCES)
def test_quantized_logits_stay_close(llama_dir, exports, qtype):
    max_relative, min_agreement = TOLERANCES[qtype]
    _, relative, agreement = _compare_logits(llama_dir, exports[qtype][0])
    assert relative < max_relative
    assert agreement >= min_agreement


def test_quantized_files_are_smaller(exports):
    sizes = {qtype: report["size_bytes"] for qtype, (_, report) in exports.items()}
    assert sizes["F32"] > sizes["F16"] == sizes["BF16"] > sizes["Q8_0"]
    assert sizes["Q8_0"] > sizes["Q5_1"] > sizes["Q5_0"] > sizes["Q4_1"] > sizes["Q4_0"]
    for path, report in exports.values():
        assert path.stat().st_size == report["size_bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == report["file_sha256"]


def test_report_and_storage_types(exports):
    path, report = exports["Q8_0"]
    types = _tensor_types(path)
    # 2 layers x (4 attention + 3 FFN) weights, embedding and output; 2 norms per layer + final
    assert report["tensor_types"] == {"Q8_0": 16, "F32": 5}
    assert report["n_tensors"] == len(types) == 21
    assert report["qtype"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32
    assert types["output_norm.weight"] == GGMLQuantizationType.F32
    assert types["blk.1.attn_k.weight"] == GGMLQuantizationType.Q8_0
    assert types["output.weight"] == GGMLQuantizationType.Q8_0


def test_metadata(exports):
    meta = _metadata(exports["Q4_0"][0])
    assert meta["general.architecture"] == "llama"
    assert meta["general.file_type"] == 2  # llama.cpp's MOSTLY_Q4_0
    assert meta["llama.context_length"] == 256
    assert meta["llama.embedding_length"] == 64
    assert meta["llama.block_count"] == 2
    assert meta["llama.feed_forward_length"] == 128
    assert meta["llama.attention.head_count"] == 4
    assert meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.rope.dimension_count"] == 16
    assert meta["llama.rope.freq_base"] == 50000.0
    assert meta["llama.vocab_size"] == 416
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 416
    assert all(types[tokens.index(token)] == TokenType.CONTROL for token in SPECIAL_TOKENS)
    assert tokens[410] == "[PAD410]" and types[410] == TokenType.UNUSED
    assert meta["tokenizer.ggml.eos_token_id"] == tokens.index("<|end|>")
    assert meta["tokenizer.ggml.padding_token_id"] == tokens.index("<|pad|>")
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert all(merge.count(" ") == 1 for merge in meta["tokenizer.ggml.merges"])


# ---- variants -------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_output_tensor_only_when_untied(tmp_path, tied):
    model_dir = save_checkpoint(tmp_path / "model", llama_config(tie_word_embeddings=tied))
    path = tmp_path / "model.gguf"
    write_gguf(model_dir, path, "F32")
    assert ("output.weight" in _tensor_types(path)) is not tied
    max_diff, _, _ = _compare_logits(model_dir, path)
    assert max_diff < 1e-4


@pytest.mark.parametrize(
    ("config_class", "model_class", "gguf_arch"),
    [(Qwen2Config, Qwen2ForCausalLM, "qwen2"), (MistralConfig, MistralForCausalLM, "llama")],
)
def test_other_architectures(tmp_path, config_class, model_class, gguf_arch):
    config = config_class(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=416,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    model_dir = save_checkpoint(tmp_path / "model", config, model_class)
    path = tmp_path / "model.gguf"
    write_gguf(model_dir, path, "F32")
    assert _metadata(path)["general.architecture"] == gguf_arch
    # Qwen2 has Q/K/V biases, and uses HF's rope layout in llama.cpp too: no permutation
    assert ("blk.0.attn_q.bias" in _tensor_types(path)) is (gguf_arch == "qwen2")
    max_diff, _, _ = _compare_logits(model_dir, path)
    assert max_diff < 1e-4


def test_rows_that_are_not_whole_blocks_fall_back_to_f16(tmp_path):
    # 80 is not a multiple of Q8_0's 32-value blocks: ffn_down's rows are 80 long
    model_dir = save_checkpoint(tmp_path / "model", llama_config(intermediate_size=80))
    path = tmp_path / "model.gguf"
    report = write_gguf(model_dir, path, "Q8_0")
    assert report["tensor_types"] == {"F16": 2, "F32": 5, "Q8_0": 14}
    assert _tensor_types(path)["blk.0.ffn_down.weight"] == GGMLQuantizationType.F16
    _, relative, _ = _compare_logits(model_dir, path)
    assert relative < TOLERANCES["Q8_0"][0]


def test_llama3_pre_tokenizer_with_bos(tmp_path):
    model_dir = tmp_path / "model"
    save_tokenizer(model_dir, llama3_pre_tokenizer(), add_bos=True)
    random_model(llama_config()).save_pretrained(model_dir)
    path = tmp_path / "model.gguf"
    write_gguf(model_dir, path, "F16")
    meta = _metadata(path)
    assert meta["tokenizer.ggml.pre"] == "llama-bpe"
    assert meta["tokenizer.ggml.add_bos_token"] is True
    original = AutoTokenizer.from_pretrained(model_dir)
    loaded = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in SAMPLES:
        assert original(text).input_ids[0] == original.bos_token_id
        assert loaded(text).input_ids == original(text).input_ids, text


def test_bf16_and_sharded_checkpoints(tmp_path):
    model = random_model(llama_config()).to(torch.bfloat16)
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    for directory, shard_size in ((whole, "10GB"), (sharded, "100KB")):
        save_tokenizer(directory, gpt2_pre_tokenizer())
        model.save_pretrained(directory, max_shard_size=shard_size)
    assert (sharded / "model.safetensors.index.json").is_file()
    reports = [write_gguf(d, tmp_path / f"{d.name}.gguf", "F32") for d in (whole, sharded)]
    assert reports[0]["file_sha256"] == reports[1]["file_sha256"]
    # bf16 -> f32 is exact, so the loaded weights are the checkpoint's bit for bit
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="whole.gguf")
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value.float()), name


def test_chat_template_from_tokenizer_config(llama_dir, tmp_path):
    """transformers 4.x kept the template in tokenizer_config.json, not chat_template.jinja."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for file in llama_dir.iterdir():
        if file.name != "chat_template.jinja":
            (model_dir / file.name).write_bytes(file.read_bytes())
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = CHAT_TEMPLATE
    (model_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    path = tmp_path / "model.gguf"
    write_gguf(model_dir, path, "Q8_0")
    assert _metadata(path)["tokenizer.chat_template"] == CHAT_TEMPLATE


def test_rope_scaling_metadata(tmp_path):
    rope = {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    model_dir = save_checkpoint(tmp_path / "model", llama_config(rope_parameters=rope))
    path = tmp_path / "model.gguf"
    write_gguf(model_dir, path, "F16")
    meta = _metadata(path)
    assert meta["llama.rope.scaling.type"] == "linear"
    assert meta["llama.rope.scaling.factor"] == 4.0


def test_llama3_rope_factors_match_transformers(tmp_path):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    config = llama_config(rope_parameters=rope)
    model_dir = save_checkpoint(tmp_path / "model", config)
    path = tmp_path / "model.gguf"
    write_gguf(model_dir, path, "F32")
    rope_freqs = next(t for t in GGUFReader(path).tensors if t.name == "rope_freqs.weight").data
    # llama.cpp divides each unscaled frequency by its factor
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    head_dim = config.head_dim
    unscaled = 1.0 / 500000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    np.testing.assert_allclose(unscaled.numpy() / rope_freqs, scaled.numpy(), rtol=1e-5)


def test_qk_permutation_matches_llama_cpp_rope():
    """llama.cpp's default rope rotates adjacent pairs (x[2i], x[2i+1]), HF's Llama the halves
    (x[i], x[i + d/2]) of each head; with permuted Q/K rows both give the same attention scores."""
    from pedigree.export.gguf import permute_rows, unpermute_rows

    n_head, head_dim, hidden = 4, 8, 32
    rng = np.random.default_rng(0)
    w_q, w_k = rng.normal(size=(2, n_head * head_dim, hidden))
    x_query, x_key = rng.normal(size=(2, hidden))
    inv_freq = 10000.0 ** (-np.arange(0, head_dim, 2) / head_dim)

    def rope_halves(v, position):  # transformers' rotate_half
        cos, sin = np.cos(position * inv_freq), np.sin(position * inv_freq)
        first, second = v[..., : head_dim // 2], v[..., head_dim // 2 :]
        return np.concatenate([first * cos - second * sin, second * cos + first * sin], -1)

    def rope_pairs(v, position):  # llama.cpp's LLAMA_ROPE_TYPE_NORM
        cos, sin = np.cos(position * inv_freq), np.sin(position * inv_freq)
        even, odd = v[..., 0::2], v[..., 1::2]
        return np.stack([even * cos - odd * sin, even * sin + odd * cos], -1).reshape(v.shape)

    def scores(w_q, w_k, rope):  # per head: query at position 7 . key at position 2
        query = rope((w_q @ x_query).reshape(n_head, head_dim), 7)
        key = rope((w_k @ x_key).reshape(n_head, head_dim), 2)
        return (query * key).sum(-1)

    permuted = permute_rows(w_q, n_head), permute_rows(w_k, n_head)
    np.testing.assert_array_equal(unpermute_rows(permuted[0], n_head), w_q)
    hf = scores(w_q, w_k, rope_halves)
    np.testing.assert_allclose(scores(*permuted, rope_pairs), hf, rtol=1e-10)
    assert not np.allclose(scores(w_q, w_k, rope_pairs), hf)  # the permutation is needed


# ---- errors, determinism, atomicity ---------------------------------------------------------


def test_unsupported_architecture_is_rejected(tmp_path):
    config = GPT2Config(n_embd=32, n_layer=1, n_head=2, architectures=["GPT2LMHeadModel"])
    config.save_pretrained(tmp_path)
    with pytest.raises(GGUFExportError, match="GPT2LMHeadModel.*LlamaForCausalLM"):
        write_gguf(tmp_path, tmp_path / "model.gguf", "F16")
    assert not (tmp_path / "model.gguf").exists()


def test_unsupported_qtype_and_pre_tokenizer_are_rejected(llama_dir, tmp_path):
    with pytest.raises(GGUFExportError, match="Q4_K"):
        write_gguf(llama_dir, tmp_path / "model.gguf", "Q4_K")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for file in llama_dir.iterdir():
        (model_dir / file.name).write_bytes(file.read_bytes())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Whitespace"}
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(GGUFExportError, match="pre-tokenizer"):
        write_gguf(model_dir, tmp_path / "model.gguf", "F16")


def test_deterministic(llama_dir, exports, tmp_path):
    again = write_gguf(llama_dir, tmp_path / "again.gguf", "Q8_0")
    assert again["file_sha256"] == exports["Q8_0"][1]["file_sha256"]
    assert (tmp_path / "again.gguf").read_bytes() == exports["Q8_0"][0].read_bytes()


def test_failed_write_leaves_previous_file(llama_dir, tmp_path, monkeypatch):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"previous")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("gguf.quants.quantize", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_gguf(llama_dir, path, "Q8_0")
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]  # no temp file left behind


# ---- SentencePiece vocabularies (Gemma) and Gemma 3's checks ---------------------------------


def _sentencepiece_tokenizer_json(**changes) -> dict:
    """A tokenizer.json laid out as transformers writes Gemma's: BPE over "▁"-for-space text with
    byte fallback, a normalizer that replaces spaces, a no-op split on spaces."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<0x0A>": 4, "▁": 5, "a": 6, "b": 7,
             "ab": 8, "▁ab": 9, "abab": 10}
    return {
        "model": {"type": "BPE", "vocab": vocab, "byte_fallback": True, "unk_token": "<unk>",
                  "merges": [["a", "b"], ["▁", "ab"], ["ab", "ab"]]},
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                          "behavior": "MergedWithPrevious", "invert": False},
        "added_tokens": [{"id": i, "content": t, "special": True}
                         for t, i in list(vocab.items())[:4]],
        **changes,
    }


def test_sentencepiece_vocabulary_scores_follow_the_merges(tmp_path):
    from pedigree.export.gguf import _read_vocab

    (tmp_path / "tokenizer.json").write_text(json.dumps(_sentencepiece_tokenizer_json()))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
         "add_bos_token": True}))
    vocab = _read_vocab(tmp_path, {"vocab_size": 12})
    assert (vocab.model, vocab.pre, vocab.merges, vocab.add_space_prefix) == (
        "llama", "default", [], False)
    assert vocab.token_types[:5] == [TokenType.CONTROL] * 4 + [TokenType.BYTE]
    assert vocab.token_types[11] == TokenType.UNUSED  # the padded embedding row
    # llama.cpp joins the best-scoring pair first: "ab" (merge 0) before "▁ab" (1) before "abab"
    scores = dict(zip(vocab.tokens, vocab.scores, strict=True))
    assert scores["ab"] > scores["▁ab"] > scores["abab"] > scores["a"] == scores["<eos>"]


@pytest.mark.parametrize(("change", "expected"), [
    ({"normalizer": {"type": "Sequence", "normalizers": [
        {"type": "NFKC"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}},
     "SentencePiece normalizer"),
    ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}, "SentencePiece pre-tokenizer"),
])
def test_sentencepiece_layouts_llama_cpp_would_split_otherwise_are_refused(tmp_path, change,
                                                                           expected):
    from pedigree.export.gguf import _read_vocab

    (tmp_path / "tokenizer.json").write_text(json.dumps(_sentencepiece_tokenizer_json(**change)))
    with pytest.raises(GGUFExportError, match=expected):
        _read_vocab(tmp_path, {"vocab_size": 12})


@pytest.mark.parametrize(("change", "expected"), [
    ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ({"query_pre_attn_scalar": 64}, "query_pre_attn_scalar 64 is not the 32"),
])
def test_gemma3_that_llama_cpp_would_compute_differently_is_refused(tmp_path, change, expected):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                              intermediate_size=128, vocab_size=416, max_position_embeddings=256)
    model_dir = save_checkpoint(tmp_path / "model", config, Gemma3ForCausalLM)
    raw = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(raw | change))
    with pytest.raises(GGUFExportError, match=expected):
        write_gguf(model_dir, tmp_path / "model.gguf", "F16")
    assert not (tmp_path / "model.gguf").exists()
