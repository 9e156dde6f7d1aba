"""Export a Hugging Face checkpoint (Llama, Mistral, Qwen2, Qwen3, Gemma 3) to one GGUF file, for
llama.cpp and friends.

    info = write_gguf(Path("models/sft"), Path("models/gguf/model-Q8_0.gguf"), "Q8_0")

Reads what `save_pretrained` writes (config.json, safetensors, tokenizer.json,
tokenizer_config.json, the chat template) and writes the file with the `gguf` package. Wherever
llama.cpp's convert_hf_to_gguf.py makes a choice (tensor names, the Q/K row permutation, Gemma's
norm offset, which tensors stay F32, the F16 fallback, token types) this module makes the same
one, so that llama.cpp and transformers both read the result. The script itself is not used: it
is not installed here, and it rejects locally trained tokenizers, because it names the
pre-tokenizer by hashing the tokens of a fixed string; here the pre-tokenizer is read from
tokenizer.json instead. Gemma's SentencePiece vocabulary is written as llama.cpp's "llama"
tokenizer, its scores derived from tokenizer.json's merges, as a checkpoint without
tokenizer.model has no others.

Only safetensors in F32, F16 or BF16 are read, without torch: tensors are memory-mapped and written
one at a time, so memory holds one tensor, not the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, GGMLQuantizationType, TokenType
from gguf.utility import LocalTensor, SafetensorsLocal

from pedigree.errors import PedigreeError

# Every type the gguf package can quantize ordinary weights to. It has no K- or I-quants
# (llama.cpp's llama-quantize makes those); its TQ1_0/TQ2_0 and MXFP4 are for ternary and MoE
# expert weights.
SUPPORTED_QTYPES = ("F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")


class GGUFExportError(PedigreeError, ValueError):
    """The checkpoint cannot be written as a GGUF file that llama.cpp would read correctly."""


@dataclass(frozen=True)
class _Architecture:
    """How llama.cpp's graph for one Hugging Face architecture differs from transformers'."""

    arch: MODEL_ARCH
    # llama.cpp's Llama rope rotates adjacent pairs where HF's rotates the two halves of a head, so
    # Q/K rows are reordered; Qwen and Gemma run llama.cpp's NeoX rope, which is HF's.
    permute_qk: bool = False
    # added to every norm weight: Gemma's RMSNorm scales by (1 + w), llama.cpp's by w
    norm_shift: float = 0.0


# Hugging Face architecture -> llama.cpp architecture. Mistral is a Llama to llama.cpp.
_ARCHITECTURES = {
    "LlamaForCausalLM": _Architecture(MODEL_ARCH.LLAMA, permute_qk=True),
    "MistralForCausalLM": _Architecture(MODEL_ARCH.LLAMA, permute_qk=True),
    "Qwen2ForCausalLM": _Architecture(MODEL_ARCH.QWEN2),
    "Qwen3ForCausalLM": _Architecture(MODEL_ARCH.QWEN3),
    "Gemma3ForCausalLM": _Architecture(MODEL_ARCH.GEMMA3, norm_shift=1.0),
}

# The split regexes of tokenizer.json pre-tokenizers that llama.cpp implements, under the names it
# looks up in `tokenizer.ggml.pre` (transformers' GGUF reader knows the same names).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_SPLIT_PRE_TOKENIZERS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}
# A bare ByteLevel pre-tokenizer splits with GPT-2's regex: llama.cpp calls that "gpt-2", and
# transformers, which has no entry for it, keeps GPT-2's split, which is the right one.
_GPT2_PRE_TOKENIZER = "gpt-2"

_SPECIAL_TOKENS = ("bos", "eos", "unk", "pad")
_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")
# safetensors dtypes this module reads, as numpy dtypes; numpy has no bfloat16, so its bits
_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


@dataclass(frozen=True)
class _Tensor:
    """One tensor of the output file: its llama.cpp name, where its values come from, its type."""

    name: str
    shape: tuple[int, ...]  # numpy order, rows last
    ggml_type: GGMLQuantizationType
    source: LocalTensor | np.ndarray  # in the checkpoint, or computed here
    permute_heads: int | None = None  # Q/K weights: rows reordered per head for llama.cpp's rope
    shift: float = 0.0  # added to every value (Gemma's norms)


@dataclass(frozen=True)
class _Vocab:
    model: str  # llama.cpp's tokenizer: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    tokens: list[str]
    token_types: list[int]
    merges: list[str]  # gpt2 only
    scores: list[float] | None  # llama only: llama.cpp merges the best-scoring pair first
    add_space_prefix: bool  # llama only: SentencePiece's "▁" before the text
    pre: str
    special_ids: dict[str, int]  # "bos" -> id
    add_bos: bool
    add_eos: bool
    chat_template: str | list[dict[str, str]] | None


def write_gguf(model_dir: Path, out_path: Path, qtype: str,
               tokenizer_dir: Path | None = None) -> dict:
    """Write the checkpoint in `model_dir` to `out_path` with 2-D weights in `qtype`.

    `tokenizer_dir`: where the tokenizer and chat template come from, when not from `model_dir`
    (a base model shipped for an adapter carries the template the adapter trained with).

    The file is written next to `out_path` under a temporary name and renamed onto it when
    complete. The same inputs always give the same bytes. Returns the file's qtype, sha256,
    size, number of tensors and how many tensors each storage type got.
    """
    if qtype not in SUPPORTED_QTYPES:
        raise GGUFExportError(f"qtype {qtype!r} is not supported; use one of {SUPPORTED_QTYPES}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    config = _read_json(model_dir / "config.json")
    arch = architecture(config)

    # Everything is read and checked before the output file is created.
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch.arch])
    _add_model_metadata(writer, config, arch, qtype)
    _add_vocab(writer, _read_vocab(Path(tokenizer_dir or model_dir), config))
    tensors = _plan_tensors(model_dir, config, arch, qtype)

    tmp_path = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        _write_file(writer, tmp_path, tensors)
        digest = _sha256_synced(tmp_path)
        os.replace(tmp_path, out_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return {
        "qtype": qtype,
        "file_sha256": digest,
        "size_bytes": out_path.stat().st_size,
        "tensor_types": dict(sorted(Counter(t.ggml_type.name for t in tensors).items())),
        "n_tensors": len(tensors),
    }


def _read_json(path: Path, required: bool = True) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise GGUFExportError(f"{path} is missing")
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def architecture(config: dict[str, Any]) -> _Architecture:
    names = config.get("architectures") or []
    for name in names:
        if name in _ARCHITECTURES:
            return _ARCHITECTURES[name]
    raise GGUFExportError(
        f"architecture {', '.join(names) or '(none in config.json)'} cannot be exported to GGUF; "
        f"supported: {', '.join(_ARCHITECTURES)}"
    )


# ---- model metadata ---------------------------------------------------------------------------


def _head_dim(config: dict[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _rope(config: dict[str, Any], layer_type: str = "full_attention") -> dict[str, Any]:
    """Rope theta and scaling as one dict: transformers 5 writes them together as
    `rope_parameters` (one per layer type where sliding and full attention layers differ, as in
    Gemma 3), 4.x wrote `rope_theta` and `rope_scaling` side by side."""
    parameters = config.get("rope_parameters") or {}
    rope = dict(config.get("rope_scaling") or {})
    rope.update(parameters.get(layer_type, parameters))
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def _add_model_metadata(
    writer: gguf.GGUFWriter, config: dict[str, Any], arch: _Architecture, qtype: str
) -> None:
    n_head = config["num_attention_heads"]
    file_type = "ALL_F32" if qtype == "F32" else f"MOSTLY_{qtype}"
    writer.add_file_type(gguf.LlamaFileType[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    # llama.cpp assumes hidden_size / n_head per head unless told otherwise
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    rope = _rope(config)
    writer.add_rope_freq_base(rope["rope_theta"])
    _add_rope_scaling(writer, rope)
    if arch.arch == MODEL_ARCH.GEMMA3:
        _add_gemma3_metadata(writer, config)


def _add_gemma3_metadata(writer: gguf.GGUFWriter, config: dict[str, Any]) -> None:
    """Sliding-window attention, its own rope base, and the checks that llama.cpp's Gemma 3 graph
    computes what transformers' does (convert_hf_to_gguf.py's Gemma3Model)."""
    if config.get("attn_logit_softcapping") is not None:
        raise GGUFExportError("Gemma 3 with attn_logit_softcapping: llama.cpp has no such step")
    # llama.cpp scales queries by 1/sqrt(head_dim), and by 1/sqrt(hidden/heads) for the 62-layer
    # 27B; a checkpoint that asks for another scale would silently compute something else
    scale = config["hidden_size"] // config["num_attention_heads"]
    expected = scale if config["num_hidden_layers"] == 62 else _head_dim(config)
    if config.get("query_pre_attn_scalar", expected) != expected:
        raise GGUFExportError(
            f"query_pre_attn_scalar {config['query_pre_attn_scalar']} is not the {expected} "
            "llama.cpp uses for this Gemma 3 size"
        )
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(config["final_logit_softcapping"])
    layer_types = config.get("layer_types") or []
    if config.get("sliding_window") and "sliding_attention" in layer_types:
        writer.add_sliding_window(config["sliding_window"])
        # which layers slide, one flag per layer (llama.cpp would otherwise assume every 6th is
        # full)
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in layer_types])
        writer.add_rope_freq_base_swa(_rope(config, "sliding_attention")["rope_theta"])


def _add_rope_scaling(writer: gguf.GGUFWriter, rope: dict[str, Any]) -> None:
    kind = rope["rope_type"]
    if kind in ("default", "llama3"):  # llama3 scaling travels as the rope_freqs tensor
        return
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    else:
        raise GGUFExportError(
            f"rope scaling {kind!r} is not supported; supported: linear, yarn, llama3"
        )


# ---- tokenizer --------------------------------------------------------------------------------


def _read_vocab(model_dir: Path, config: dict[str, Any]) -> _Vocab:
    tokenizer = _read_json(model_dir / "tokenizer.json")
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json", required=False)
    model = tokenizer["model"]
    if model.get("type") != "BPE":
        raise GGUFExportError(
            f"tokenizer model {model.get('type')!r} is not supported; only BPE is"
        )
    space_prefix = _sentencepiece_space_prefix(tokenizer)
    tokens, token_types = _tokens_and_types(
        tokenizer, config["vocab_size"], byte_tokens=space_prefix is not None
    )
    special_ids = _special_token_ids(model_dir, config, tokenizer_config, tokens)

    def adds(kind: str) -> bool:
        token = tokens[special_ids[kind]] if kind in special_ids else None
        return _adds_special(tokenizer, tokenizer_config, kind, token)

    merges = _merges(model.get("merges", []))
    if space_prefix is None:  # byte-level BPE
        model_name, pre, scores = "gpt2", _pre_tokenizer_name(tokenizer.get("pre_tokenizer")), None
    else:
        model_name, pre, scores = "llama", "default", _merge_scores(tokens, token_types, merges)
    return _Vocab(
        model=model_name,
        tokens=tokens,
        token_types=token_types,
        merges=merges if scores is None else [],
        scores=scores,
        add_space_prefix=bool(space_prefix),
        pre=pre,
        special_ids=special_ids,
        add_bos=adds("bos"),
        add_eos=adds("eos"),
        chat_template=_chat_template(model_dir, tokenizer_config),
    )


def _sentencepiece_space_prefix(tokenizer: dict[str, Any]) -> bool | None:
    """For a SentencePiece vocabulary in tokenizer.json (BPE over "▁"-for-space text, unknown bytes
    as <0xNN> tokens, as Gemma's): whether a "▁" is put before the text. None: not one."""
    model = tokenizer["model"]
    normalizer = tokenizer.get("normalizer") or {}
    steps = normalizer.get("normalizers") or [normalizer]
    replaces_spaces = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    if not model.get("byte_fallback") or replaces_spaces not in steps:
        return None
    # what the normalizer does besides: nothing, or a "▁" prepended (Llama 2's older files)
    others = [step for step in steps if step != replaces_spaces]
    if others not in ([], [{"type": "Prepend", "prepend": "\u2581"}]):
        raise GGUFExportError(f"SentencePiece normalizer {json.dumps(normalizer)} is not supported")
    # after the normalizer no space is left, so a split on spaces changes nothing
    pre_tokenizer = tokenizer.get("pre_tokenizer")
    if pre_tokenizer not in (None, {"type": "Split", "pattern": {"String": " "},
                                    "behavior": "MergedWithPrevious", "invert": False}):
        raise GGUFExportError(
            f"SentencePiece pre-tokenizer {json.dumps(pre_tokenizer)} is not supported"
        )
    return bool(others)


def _merge_scores(tokens: list[str], token_types: list[int], merges: list[str]) -> list[float]:
    """llama.cpp's SentencePiece tokenizer repeatedly joins the adjacent pair whose joined token
    scores best; BPE applies the earliest merge. A token scores minus the rank of the first merge
    that makes it, so both join in the same order. Tokens no merge makes (characters, bytes,
    control tokens) are never the result of a join: they score below every merged token."""
    rank_of: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ")
        rank_of.setdefault(left + right, rank)
    floor = -float(len(merges) + 1)
    return [
        -float(rank_of[token]) if kind == TokenType.NORMAL and token in rank_of else floor
        for token, kind in zip(tokens, token_types, strict=True)
    ]


def _pre_tokenizer_name(pre_tokenizer: dict[str, Any] | None) -> str:
    """llama.cpp's name for how this tokenizer splits text before BPE runs on the pieces."""
    steps = (pre_tokenizer or {}).get("pretokenizers") or [pre_tokenizer or {}]
    *split, byte_level = steps
    if byte_level.get("type") == "ByteLevel" and not byte_level.get("add_prefix_space"):
        uses_gpt2_regex = byte_level.get("use_regex", True)
        if not split and uses_gpt2_regex:
            return _GPT2_PRE_TOKENIZER
        if len(split) == 1 and not uses_gpt2_regex and _is_isolating_split(split[0]):
            name = _SPLIT_PRE_TOKENIZERS.get(split[0]["pattern"].get("Regex"))
            if name is not None:
                return name
    raise GGUFExportError(
        f"pre-tokenizer {json.dumps(pre_tokenizer)} has no llama.cpp equivalent; supported: "
        "ByteLevel with GPT-2's regex and no prefix space, or a Llama-3 or Qwen2 Split "
        "followed by ByteLevel without regex"
    )


def _is_isolating_split(step: dict[str, Any]) -> bool:
    return (
        step.get("type") == "Split"
        and step.get("behavior") == "Isolated"
        and not step.get("invert")
        and "Regex" in step.get("pattern", {})
    )


def _tokens_and_types(
    tokenizer: dict[str, Any], vocab_size: int, byte_tokens: bool = False
) -> tuple[list[str], list[int]]:
    """Every id's token and llama.cpp token type; `byte_tokens`: <0xNN> tokens are raw bytes
    (SentencePiece's byte fallback)."""
    by_id = {index: token for token, index in tokenizer["model"]["vocab"].items()}
    added = {entry["id"]: entry for entry in tokenizer.get("added_tokens", [])}
    by_id.update({index: entry["content"] for index, entry in added.items()})
    if max(by_id) >= vocab_size:
        raise GGUFExportError(
            f"tokenizer has token id {max(by_id)} but config vocab_size is {vocab_size}"
        )
    tokens, token_types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            # an embedding row no token uses (vocabularies are padded for speed): llama.cpp's filler
            tokens.append(f"[PAD{index}]")
            token_types.append(TokenType.UNUSED)
        else:
            tokens.append(by_id[index])
            token_types.append(_token_type(by_id[index], added.get(index), byte_tokens))
    return tokens, token_types


def _token_type(token: str, added_entry: dict[str, Any] | None, byte_tokens: bool) -> TokenType:
    if added_entry is None:
        if byte_tokens and _BYTE_TOKEN.fullmatch(token):
            return TokenType.BYTE
        return TokenType.NORMAL
    # As llama.cpp: special added tokens, and added ones spelled like "<|...|>", are control tokens,
    # matched whole only where the caller asks for special tokens to be parsed. Other added tokens
    # are user-defined: always matched whole, and decoded as ordinary text.
    if added_entry.get("special") or (token.startswith("<|") and token.endswith("|>")):
        return TokenType.CONTROL
    return TokenType.USER_DEFINED


def _merges(merges: list[str] | list[list[str]]) -> list[str]:
    """Merges as GGUF stores them, "left right". tokenizers writes either that string or, since
    transformers 4.45, a [left, right] pair, which may hold a space; llama.cpp spells such a space
    as U+0120, the byte-level alphabet's space, and so does this."""
    return [
        merge if isinstance(merge, str) else " ".join(p.replace(" ", "\u0120") for p in merge)
        for merge in merges
    ]


def _special_token_ids(
    model_dir: Path, config: dict[str, Any], tokenizer_config: dict[str, Any], tokens: list[str]
) -> dict[str, int]:
    """bos/eos/unk/pad ids: the tokens tokenizer_config.json names come first, as they are what the
    tokenizer uses; config.json, then generation_config.json, fill in the ones it lacks."""
    token_ids = {token: index for index, token in enumerate(tokens)}
    fallbacks = [config, _read_json(model_dir / "generation_config.json", required=False)]
    ids = {}
    for kind in _SPECIAL_TOKENS:
        token = tokenizer_config.get(f"{kind}_token")
        if isinstance(token, dict):  # a serialized AddedToken
            token = token.get("content")
        candidates = [token_ids.get(token)]
        candidates += [source.get(f"{kind}_token_id") for source in fallbacks]
        for candidate in candidates:
            if isinstance(candidate, list):  # generation_config may list several eos ids
                candidate = candidate[0] if candidate else None
            # an id outside the vocabulary is a config default left over from another tokenizer
            if isinstance(candidate, int) and 0 <= candidate < len(tokens):
                ids[kind] = candidate
                break
    return ids


def _adds_special(
    tokenizer: dict[str, Any], tokenizer_config: dict[str, Any], kind: str, token: str | None
) -> bool:
    """Whether encoding adds the bos (or eos) token: tokenizer_config.json's add_<kind>_token if
    set, else whether tokenizer.json's post-processor template starts (ends) with that token."""
    flag = tokenizer_config.get(f"add_{kind}_token")
    if isinstance(flag, bool):
        return flag
    post_processor = tokenizer.get("post_processor") or {}
    for step in post_processor.get("processors") or [post_processor]:
        template = step.get("single") if step.get("type") == "TemplateProcessing" else None
        if template:
            edge = template[0] if kind == "bos" else template[-1]
            return token is not None and edge.get("SpecialToken", {}).get("id") == token
    return False


def _chat_template(
    model_dir: Path, tokenizer_config: dict[str, Any]
) -> str | list[dict[str, str]] | None:
    # transformers 5 saves the template to chat_template.jinja; 4.x kept it in tokenizer_config.json
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return tokenizer_config.get("chat_template")


def _add_vocab(writer: gguf.GGUFWriter, vocab: _Vocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.scores is None:
        writer.add_token_merges(vocab.merges)
    else:
        writer.add_token_scores(vocab.scores)
        writer.add_add_space_prefix(vocab.add_space_prefix)
    for kind, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


# ---- tensors ----------------------------------------------------------------------------------


class TensorNames:
    """llama.cpp's names for a checkpoint's tensors, and the row permutation each one needs.

    Shared with the adapter writer (export/gguf_lora.py), whose tensors must be named and laid out
    like the base weights they modify."""

    def __init__(self, config: dict[str, Any]):
        self.arch = architecture(config)
        self._map = gguf.get_tensor_name_map(self.arch.arch, config["num_hidden_layers"])
        n_head = config["num_attention_heads"]
        self._heads = {MODEL_TENSOR.ATTN_Q: n_head,
                       MODEL_TENSOR.ATTN_K: config.get("num_key_value_heads") or n_head,
                       } if self.arch.permute_qk else {}

    def get(self, hf_name: str) -> tuple[str, int | None] | None:
        """(llama.cpp's name, the head count to `permute_rows` by, or None) for a checkpoint
        tensor; None for a tensor llama.cpp has no name for."""
        found = self._map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None:
            return None
        kind, name = found
        return name, self._heads.get(kind)


def _plan_tensors(
    model_dir: Path, config: dict[str, Any], arch: _Architecture, qtype: str
) -> list[_Tensor]:
    stored = _checkpoint_tensors(model_dir)
    tied = config.get("tie_word_embeddings", False) or "lm_head.weight" not in stored
    names = TensorNames(config)

    planned = []
    for hf_name, tensor in sorted(stored.items()):
        # old checkpoints store rope frequencies, which llama.cpp recomputes from the metadata;
        # a tied output layer is the embedding, which llama.cpp reuses when `output` is absent
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        found = names.get(hf_name)
        if found is None:
            raise GGUFExportError(
                f"tensor {hf_name!r} has no llama.cpp name in architecture "
                f"{gguf.MODEL_ARCH_NAMES[arch.arch]!r}"
            )
        if tensor.dtype not in _NUMPY_DTYPES:
            raise GGUFExportError(
                f"tensor {hf_name!r} is {tensor.dtype}; only {', '.join(_NUMPY_DTYPES)} are read"
            )
        name, heads = found
        planned.append(
            _Tensor(
                name=name,
                shape=tensor.shape,
                ggml_type=_storage_type(name, tensor.shape, qtype),
                source=tensor,
                permute_heads=heads,
                shift=arch.norm_shift if hf_name.endswith("norm.weight") else 0.0,
            )
        )

    rope = _rope(config)
    if rope["rope_type"] == "llama3":
        factors = _llama3_rope_factors(rope, _head_dim(config))
        name = gguf.TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS] + ".weight"
        planned.append(_Tensor(name, factors.shape, GGMLQuantizationType.F32, factors))
    return planned


def _checkpoint_tensors(model_dir: Path) -> dict[str, LocalTensor]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(_read_json(index)["weight_map"].values()))
    elif (model_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise GGUFExportError(f"{model_dir} has no model.safetensors(.index.json)")
    tensors: dict[str, LocalTensor] = {}
    for file in files:
        with SafetensorsLocal(model_dir / file) as part:
            tensors.update(part)
    return tensors


def _storage_type(name: str, shape: tuple[int, ...], qtype: str) -> GGMLQuantizationType:
    """The type convert_hf_to_gguf.py would store this tensor in."""
    # llama.cpp's kernels take 1-D tensors and norms only in F32
    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return GGMLQuantizationType.F32
    wanted = GGMLQuantizationType[qtype]
    block_size, _ = gguf.GGML_QUANT_SIZES[wanted]
    # quantized rows are whole blocks; a row that cannot be cut into blocks falls back to F16
    return wanted if shape[-1] % block_size == 0 else GGMLQuantizationType.F16


def _llama3_rope_factors(rope: dict[str, Any], head_dim: int) -> np.ndarray:
    """Llama 3.1's rope scaling as llama.cpp takes it: one divisor per rotary frequency (the
    rope_freqs tensor), computed as convert_hf_to_gguf.py does."""
    freqs = 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factor = rope["factor"]
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    wavelen = 2 * np.pi / freqs
    smooth = (old_context / wavelen - low) / (high - low)
    factors = np.where(
        wavelen < old_context / high,
        1.0,
        np.where(wavelen > old_context / low, factor, 1.0 / ((1 - smooth) / factor + smooth)),
    )
    return factors.astype(np.float32)


def _values(tensor: _Tensor) -> np.ndarray:
    """The tensor's values in float32, laid out as llama.cpp wants them."""
    if isinstance(tensor.source, np.ndarray):
        return tensor.source
    values = _to_float32(tensor.source)
    if tensor.permute_heads is not None:
        values = permute_rows(values, tensor.permute_heads)
    if tensor.shift:
        values = values + np.float32(tensor.shift)
    return values


def _to_float32(tensor: LocalTensor) -> np.ndarray:
    values = tensor.mmap_bytes().view(_NUMPY_DTYPES[tensor.dtype]).reshape(tensor.shape)
    if tensor.dtype == "BF16":
        # a bf16 number is the top half of the float32 with the same bits
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32, copy=False)


def permute_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Within each head, interleave the first and second half of the rows (LlamaModel.permute in
    convert_hf_to_gguf.py): the rotary pairs (i, i + d/2) of HF become the pairs (2i, 2i + 1)."""
    half_head = weights.shape[0] // n_head // 2
    return (
        weights.reshape(n_head, 2, half_head, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def unpermute_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_rows`: llama.cpp's row order back to the checkpoint's."""
    half_head = weights.shape[0] // n_head // 2
    return (
        weights.reshape(n_head, half_head, 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _write_file(writer: gguf.GGUFWriter, path: Path, tensors: list[_Tensor]) -> None:
    """Header, metadata and tensor table first, then each tensor converted as it is written."""
    for tensor in tensors:
        block_size, type_size = gguf.GGML_QUANT_SIZES[tensor.ggml_type]
        n_bytes = prod(tensor.shape) // block_size * type_size
        # given raw_dtype and a non-uint8 dtype, the writer takes `shape` as the element shape
        writer.add_tensor_info(
            tensor.name, tensor.shape, np.dtype(np.float32), n_bytes, raw_dtype=tensor.ggml_type
        )
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in tensors:
            writer.write_tensor_data(gguf.quants.quantize(_values(tensor), tensor.ggml_type))
    finally:
        writer.close()


def _sha256_synced(path: Path) -> str:
    """The file's sha256; the file is flushed to disk too, so the rename never publishes a file
    whose data a crash could still lose."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
        os.fsync(file.fileno())
    return digest.hexdigest()
