"""Deployment formats, each written to its own subdirectory and checked against the merged model.

A GGUF file is read back through transformers' GGUF loader (which dequantizes it) and compared
with the merged model on held-out rows: its tokenizer must encode them identically, and the logit
error and top-1 agreement are recorded, so a broken export is caught here and not in production.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pedigree.errors import PedigreeError
from pedigree.evals.measure import chat_logits, compare_logits
from pedigree.export.gguf import write_gguf
from pedigree.train.chat import encode_completion

GGUF_QTYPES = {"gguf-f32": "F32", "gguf-f16": "F16", "gguf-q8_0": "Q8_0", "gguf-q4_0": "Q4_0"}


class ExportCheckError(PedigreeError, RuntimeError):
    """An exported model that does not reproduce the merged model's tokenizer."""


def gguf_path(out_dir: Path, fmt: str) -> Path:
    return out_dir / fmt / f"model-{GGUF_QTYPES[fmt]}.gguf"


def load_gguf(path: Path):
    """(model, tokenizer) read back from a GGUF file by transformers, dequantized to fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def export_gguf(fmt: str, merged_dir: Path, out_dir: Path, merged, tokenizer,
                rows: list[dict[str, Any]], max_length: int) -> dict[str, Any]:
    path = gguf_path(out_dir, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = write_gguf(merged_dir, path, GGUF_QTYPES[fmt])
    model, gguf_tokenizer = load_gguf(path)
    for row in rows:
        ours = encode_completion(tokenizer, row, max_length).input_ids
        theirs = encode_completion(gguf_tokenizer, row, max_length).input_ids
        if ours != theirs:
            raise ExportCheckError(
                f"{path}: the GGUF tokenizer encodes row {row['id'][:12]} differently "
                f"({len(theirs)} vs {len(ours)} tokens); the export would answer nonsense"
            )
    reference, mask = chat_logits(merged, tokenizer, rows, max_length)
    candidate, _ = chat_logits(model, tokenizer, rows, max_length)
    merged_bytes = sum(p.stat().st_size for p in merged_dir.glob("*.safetensors"))
    return {
        "format": fmt,
        "file": path.relative_to(out_dir).as_posix(),
        **info,
        "size_ratio_to_merged": info["size_bytes"] / merged_bytes,
        "tokenizer_roundtrip": True,
        **compare_logits(reference, candidate, mask),
    }
