"""Quantized HF checkpoints: write each format from the micro base, reload, compare with fp32.

The micro base (hidden 64, 2 layers, vocab 512, tied embeddings) is small enough that 4-bit
rounding is visible in its logits, so the tolerances below are per format, set at 2-3x the error
measured on it (max |logit diff|: nf4 0.21, bnb int8 0.014, torchao int8 0.043; top-1 agreement
0.964, 1.0, 1.0 over 192 tokens of its pretraining corpus).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from pedigree.export import hf_quant
from pedigree.export.hf_quant import FORMATS, HFQuantError, load_quantized, write_quantized

REPO = Path(__file__).resolve().parents[1]

# format -> (max |logit diff|, mean |logit diff|, min top-1 agreement) against the fp32 model
TOLERANCES = {
    "bnb-nf4": (0.5, 0.03, 0.9),
    "bnb-int8": (0.04, 0.004, 0.98),
    "torchao-int8": (0.1, 0.003, 0.98),
}
LINEARS = [f"self_attn.{name}" for name in ("q_proj", "k_proj", "v_proj", "o_proj")] + [
    f"mlp.{name}" for name in ("gate_proj", "up_proj", "down_proj")
]


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids.to(model.device)).logits.float().cpu()


@pytest.fixture(scope="module")
def token_ids(micro_model_dir) -> torch.Tensor:
    """4 sequences of 48 tokens of the corpus the micro base was pretrained on."""
    tokenizer = AutoTokenizer.from_pretrained(micro_model_dir)
    text = (REPO / "data/corpus/general.txt").read_text(encoding="utf-8")[:8000]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[: 4 * 48]).view(4, 48)


@pytest.fixture(scope="module")
def reference(micro_model_dir, token_ids) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(micro_model_dir, dtype=torch.float32)
    return _logits(model, token_ids)


@pytest.fixture(scope="module")
def written(micro_model_dir, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Every format written once: fmt -> (directory, write_quantized's summary)."""
    root = tmp_path_factory.mktemp("hf-quant")
    return {fmt: (root / fmt, write_quantized(fmt, micro_model_dir, root / fmt))
            for fmt in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_reloaded_logits_close_to_fp32(fmt, written, reference, token_ids):
    path, _ = written[fmt]
    candidate = _logits(load_quantized(fmt, path), token_ids)
    diff = (candidate - reference).abs()
    top1 = float((candidate.argmax(-1) == reference.argmax(-1)).float().mean())
    rel = float(diff.max() / reference.abs().max())
    print(f"{fmt}: max|d|={float(diff.max()):.4f} mean|d|={float(diff.mean()):.4f} "
          f"rel={rel:.4f} top1={top1:.3f}")
    max_abs, mean_abs, min_top1 = TOLERANCES[fmt]
    assert float(diff.max()) < max_abs
    assert float(diff.mean()) < mean_abs
    assert top1 >= min_top1


@pytest.mark.parametrize("fmt", FORMATS)
def test_checkpoint_is_quantized_safetensors_with_tokenizer(fmt, written, micro_model_dir):
    path, info = written[fmt]
    fp32_bytes = sum(p.stat().st_size for p in micro_model_dir.glob("*.safetensors"))
    print(f"{fmt}: {info['size_bytes']} bytes, {info['size_bytes'] / fp32_bytes:.3f} of fp32")
    assert info["format"] == fmt
    assert info["files"] == sorted(p.name for p in path.iterdir())
    assert info["size_bytes"] < fp32_bytes
    assert not [name for name in info["files"] if name.endswith((".bin", ".pt", ".pth"))]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "generation_config.json"):
        assert (path / name).read_bytes() == (micro_model_dir / name).read_bytes(), name
    config = json.loads((path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] in {"bitsandbytes", "torchao"}
    # Every linear weight is stored as 8-bit integers (nf4: two 4-bit codes per uint8); the tied
    # embedding and the norms stay fp32, which is why the micro model shrinks less than 4x.
    with safe_open(path / "model.safetensors", "pt") as f:
        names = f.keys()  # a safe_open handle is not iterable
        dtypes = {name: f.get_slice(name).get_dtype() for name in names}
    for layer in range(2):
        for linear in LINEARS:
            # bnb keeps the name `.weight`; torchao flattens its tensor into `._weight_qdata`
            prefix = f"model.layers.{layer}.{linear}"
            weights = [dtypes.get(f"{prefix}.{name}") for name in ("weight", "_weight_qdata")]
            weights = [d for d in weights if d]
            assert weights and set(weights) <= {"U8", "I8"}, (prefix, weights)
    assert dtypes["model.embed_tokens.weight"] == "F32"


@pytest.mark.parametrize("fmt", FORMATS)
def test_reload_is_deterministic_and_saved_before_inference(fmt, written, micro_model_dir,
                                                            token_ids):
    path, _ = written[fmt]
    first = _logits(load_quantized(fmt, path), token_ids)
    second = _logits(load_quantized(fmt, path), token_ids)
    assert torch.equal(first, second)
    # The checkpoint holds the weights as quantized at load time, untouched by any forward pass:
    # it reproduces exactly the in-memory model's first forward. (A bnb 4-bit model saved after a
    # forward on an AVX512-BF16 CPU would reload ~5e-3 off, as
    # test_training.py::test_4bit_model_survives_save_and_reload shows.)
    in_memory = AutoModelForCausalLM.from_pretrained(
        micro_model_dir, quantization_config=hf_quant.quantization_config(fmt),
        dtype=hf_quant._compute_dtype(), device_map=hf_quant._device(),
    )
    assert torch.equal(_logits(in_memory, token_ids), first)


@pytest.mark.parametrize(("fmt", "module"), [("bnb-nf4", "bitsandbytes"),
                                             ("bnb-int8", "bitsandbytes"),
                                             ("torchao-int8", "torchao")])
def test_missing_library_names_the_package(fmt, module, micro_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(HFQuantError, match=f"pip install {module}"):
        write_quantized(fmt, micro_model_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(HFQuantError, match=f"pip install {module}"):
        load_quantized(fmt, tmp_path)


def test_failed_write_leaves_no_files(micro_model_dir, tmp_path, monkeypatch):
    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(hf_quant, "_copy_tokenizer", fail)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError, match="disk full"):
        write_quantized("torchao-int8", micro_model_dir, out)
    assert out.is_dir() and not any(out.iterdir())
    with pytest.raises(OSError, match="disk full"):
        write_quantized("torchao-int8", micro_model_dir, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_rejects_wrong_format_and_nonempty_output(written, micro_model_dir, tmp_path):
    with pytest.raises(HFQuantError, match="holds a bnb-nf4 checkpoint, not bnb-int8"):
        load_quantized("bnb-int8", written["bnb-nf4"][0])
    with pytest.raises(HFQuantError, match="non-quantized"):
        load_quantized("torchao-int8", micro_model_dir)
    with pytest.raises(HFQuantError, match="unknown quantized format"):
        write_quantized("gptq", micro_model_dir, tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(HFQuantError, match="new or empty"):
        write_quantized("bnb-int8", micro_model_dir, tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "x"
