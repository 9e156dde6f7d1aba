"""Deployment formats, each written to its own subdirectory and checked against the merged model.

Every format is read back through an independent reader (transformers' GGUF loader, which
dequantizes the file, and llama.cpp itself when llama-cpp-python is installed; or plain
`from_pretrained` for bitsandbytes and torchao checkpoints) and
compared with the merged model on held-out rows: perplexity ratio, KL divergence and top-1
agreement of the next-token distributions, and greedy answers to golden prompts through the chat
template. A GGUF file's tokenizer must also encode the rows identically. A format past its
perplexity gate is reported with `passed: false`; nothing downstream may promote it.

A merged model with a soft prompt (merge writes the base weights plus `soft_prompt/`) is exported
as its base weights, and the soft prompt is shipped beside each format (`<format>/soft_prompt/`):
the format's model is read back with it applied and checked against the merged model with it
applied, like with like. llama.cpp cannot apply a PEFT soft prompt (its `--lora` takes LoRA
adapters only): its reading of a GGUF file is checked against the merged base weights alone, and
no Ollama Modelfile is written (it would deploy the base without the prompt).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pedigree.config import QuantizeConfig
from pedigree.errors import PedigreeError
from pedigree.export import kquants
from pedigree.export.gguf import write_gguf
from pedigree.lineage import sha256_file
from pedigree.model.chat import encode_completion
from pedigree.model.load import SOFT_PROMPT_DIR, soft_prompt_of, with_soft_prompt
from pedigree.model.measure import chat_inputs, distribution_compare, greedy_answers, logits_of
from pedigree.quant_formats import DEFAULT_PERPLEXITY_GATES, FORMATS

# The GGUF formats of the registry and their file types: written by export/gguf.py directly or
# (the K-quants) by llama.cpp from its F16 file (export/kquants.py).
GGUF_QTYPES = {f.name: f.gguf_type for f in FORMATS.values() if f.reader == "gguf"}


class ExportCheckError(PedigreeError, RuntimeError):
    """An exported model that does not reproduce the merged model's tokenizer."""


@dataclass(frozen=True)
class Reference:
    """The merged model's behaviour on the check rows, computed once for every format."""

    ids: Any  # token ids of the rows through the chat template (right-padded)
    mask: Any
    logits: Any
    prompts: list[list[dict[str, str]]]
    answers: list[str]
    texts: tuple[str, ...] = ()  # the rows as the chat template renders them, before tokenizing
    base_logits: Any = None  # a soft-prompt model's base weights alone: what llama.cpp can run


def reference(merged, tokenizer, rows: list[dict[str, Any]], cfg: QuantizeConfig) -> Reference:
    """`rows`: held-out rows; the first check_rows are scored, the first golden_prompts answered."""
    checked = rows[: cfg.check_rows]
    ids, mask = chat_inputs(tokenizer, checked, cfg.max_length)
    texts = tuple(tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
                  for row in checked)
    prompts = [row["prompt"] for row in rows[: cfg.golden_prompts]]
    answers = greedy_answers(merged, tokenizer, prompts, cfg.max_new_tokens, len(prompts) or 1)
    base_logits = None
    if hasattr(merged, "disable_adapter"):  # base weights + soft prompt (load_deployable)
        with merged.disable_adapter():
            base_logits = logits_of(merged, ids, mask)
    return Reference(ids, mask, logits_of(merged, ids, mask), prompts, answers, texts,
                     base_logits)


def gguf_path(out_dir: Path, fmt: str) -> Path:
    return out_dir / fmt / f"model-{GGUF_QTYPES[fmt]}.gguf"


def load_gguf(path: Path):
    """(model, tokenizer) read back from a GGUF file by transformers, dequantized to fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, loading = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, output_loading_info=True)
    # transformers re-initializes, with only a warning, a weight whose shape its GGUF reader got
    # wrong (as for a Qwen3 head wider than hidden / heads): that would be a random model
    wrong = {kind: keys for kind, keys in loading.items() if keys and kind != "unexpected_keys"}
    if wrong:
        raise ExportCheckError(f"{path}: transformers reads this file wrongly: {wrong}")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def _read_gguf(fmt: str, out_dir: Path):
    return load_gguf(gguf_path(out_dir, fmt))[0]


def _read_transformers(fmt: str, out_dir: Path):
    from pedigree.export.hf_quant import load_quantized

    return load_quantized(fmt, out_dir / fmt)


# Each reader of the registry (quant_formats.READERS): (format, out_dir) -> the model read back.
READERS = {"gguf": _read_gguf, "transformers": _read_transformers}


def load_format(fmt: str, out_dir: Path):
    """The model of a written format, as its reader gives it back, with the soft prompt shipped
    beside it applied (when the policy has one)."""
    return with_soft_prompt(READERS[FORMATS[fmt].reader](fmt, out_dir), out_dir / fmt)


# What a soft-prompt export's report and card say about llama.cpp.
LLAMA_CPP_SOFT_PROMPT = ("llama.cpp (and Ollama) cannot apply a PEFT soft prompt: a GGUF file "
                         "of this policy runs there as the base model only.")


def ship_soft_prompt(fmt: str, merged_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Copy the merged model's soft prompt (if any) into the format's directory; its facts."""
    adapter = soft_prompt_of(merged_dir)
    if adapter is None:
        return {}
    shutil.copytree(adapter, out_dir / fmt / SOFT_PROMPT_DIR, dirs_exist_ok=True)
    gguf = FORMATS[fmt].reader == "gguf"
    return {"soft_prompt": {"dir": SOFT_PROMPT_DIR, "note": "Load the format with transformers "
                            "and apply it (pedigree.model.load.with_soft_prompt)."
                            + (" " + LLAMA_CPP_SOFT_PROMPT if gguf else "")}}


def _check_tokenizer(path: Path, tokenizer, exported, rows: list[dict[str, Any]],
                     max_length: int) -> None:
    for row in rows:
        ours = encode_completion(tokenizer, row, max_length).input_ids
        theirs = encode_completion(exported, row, max_length).input_ids
        if ours != theirs:
            raise ExportCheckError(
                f"{path}: the exported tokenizer encodes row {row['id'][:12]} differently "
                f"({len(theirs)} vs {len(ours)} tokens); the export would answer nonsense"
            )


def write_modelfile(gguf: Path, tokenizer) -> dict[str, Any]:
    """An Ollama Modelfile beside the GGUF file, its template derived from the chat template the
    model trained with. A template family we cannot translate exactly gets no Modelfile (a near
    miss would prompt the model wrongly without any error); the report says why."""
    from pedigree.export.modelfile import ModelfileError, modelfile, template_family

    try:
        text = modelfile(gguf.name, tokenizer.chat_template, {"eos_token": tokenizer.eos_token})
    except ModelfileError as err:
        print(f"[quantize] {gguf.name}: no Ollama Modelfile: {err}")
        return {"modelfile": None, "modelfile_error": str(err)}
    (gguf.parent / "Modelfile").write_text(text)
    return {"modelfile": "Modelfile", "template_family": template_family(tokenizer.chat_template)}


def write_kquant(fmt: str, merged_dir: Path, path: Path) -> dict[str, Any]:
    """An F16 GGUF from our writer, quantized by llama.cpp; the F16 file is removed after."""
    kquants.quantizer()  # fail before writing anything when there is no quantizer
    f16 = path.with_name(path.stem + ".f16.tmp.gguf")
    try:
        write_gguf(merged_dir, f16, "F16")
        how = kquants.quantize(fmt, f16, path)
    finally:
        f16.unlink(missing_ok=True)
    return {"qtype": GGUF_QTYPES[fmt], "quantizer": f"llama.cpp ({how})",
            "file_sha256": sha256_file(path), "size_bytes": path.stat().st_size}


def _write_gguf(fmt: str, merged_dir: Path, path: Path) -> dict[str, Any]:
    return write_gguf(merged_dir, path, GGUF_QTYPES[fmt])


def _write_transformers(fmt: str, merged_dir: Path, directory: Path) -> dict[str, Any]:
    from pedigree.export.hf_quant import write_quantized

    return write_quantized(fmt, merged_dir, directory)


# Each writer of the registry (quant_formats.WRITERS): (format, merged_dir, the GGUF file or the
# checkpoint directory to write) -> file facts.
WRITERS = {"gguf": _write_gguf, "llama.cpp": write_kquant, "transformers": _write_transformers}


def export_format(fmt: str, merged_dir: Path, out_dir: Path, tokenizer,
                  rows: list[dict[str, Any]], max_length: int) -> tuple[Any, dict[str, Any]]:
    """Write `fmt` under out_dir/fmt and read it back: (the reader's model, file facts)."""
    spec = FORMATS[fmt]
    write = WRITERS[spec.writer]
    if spec.reader == "gguf":
        path = gguf_path(out_dir, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = write(fmt, merged_dir, path)
        soft = ship_soft_prompt(fmt, merged_dir, out_dir)
        model, exported_tokenizer = load_gguf(path)
        _check_tokenizer(path, tokenizer, exported_tokenizer, rows, max_length)
        modelfile = write_modelfile(path, tokenizer) if not soft else {
            "modelfile": None, "modelfile_error": LLAMA_CPP_SOFT_PROMPT}
        return with_soft_prompt(model, path.parent), {
            "file": path.relative_to(out_dir).as_posix(), **info, **modelfile, **soft}
    info = write(fmt, merged_dir, out_dir / fmt)
    soft = ship_soft_prompt(fmt, merged_dir, out_dir)
    return load_format(fmt, out_dir), {"file": fmt, **info, **soft}


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def check_llama_cpp_tokens(path: Path, ref: Reference) -> None:
    """llama.cpp must tokenize the rendered rows as the merged model's tokenizer did (the chat
    template's control tokens parsed as such), or a deployed model sees other tokens."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text, ids, mask in zip(ref.texts, ref.ids, ref.mask, strict=True):
        ours = ids[mask.bool()].tolist()
        theirs = vocab.tokenize(text.encode(), add_bos=False, special=True)[: len(ours)]
        if theirs != ours:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(theirs))
            raise ExportCheckError(
                f"{path}: llama.cpp tokenizes a check row differently from token {at} on "
                f"({theirs[at:at + 5]} vs {ours[at:at + 5]}); the deployed model would see other "
                "tokens"
            )


def llama_cpp_logits(path: Path, ref: Reference):
    """Logits of a GGUF file as llama.cpp computes them (llama-cpp-python), on the reference
    rows' token ids, row by row; padded positions copy the reference (they are masked anyway)."""
    import llama_cpp.llama_cpp as raw
    import torch
    from llama_cpp import Llama

    # llama.cpp's AMX buffer type (chosen on CPUs with AMX-INT8) segfaulted in decode on our Q8_0
    # and Q4_0 files (llama-cpp-python 0.3.36); plain CPU buffers run them and compute the same
    # model. The Llama class has no switch for it, so its defaults are patched while it loads.
    defaults = raw.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    width = max(ref.ids.size(1), 32)
    raw.llama_model_default_params = without_extra_buffers
    try:
        llm = Llama(model_path=str(path), n_ctx=width, n_batch=width, logits_all=True,
                    verbose=False, seed=0, n_threads=2)
    finally:
        raw.llama_model_default_params = defaults
    out = ref.logits.clone()
    for i, (ids, mask) in enumerate(zip(ref.ids, ref.mask, strict=True)):
        tokens = ids[mask.bool()].tolist()
        llm.reset()
        llm.eval(tokens)
        out[i, : len(tokens)] = torch.from_numpy(llm.scores[: len(tokens)].copy()).float()
    return out


def check_format(fmt: str, model, tokenizer, ref: Reference, cfg: QuantizeConfig,
                 merged_bytes: int, info: dict[str, Any], out_dir: Path | None = None,
                 ) -> dict[str, Any]:
    """The format's figures against the merged model, and whether it passes its gate. GGUF files
    are also read by llama.cpp itself when llama-cpp-python is installed; both must pass."""
    figures = distribution_compare(ref.logits, logits_of(model, ref.ids, ref.mask), ref.ids,
                                   ref.mask)
    gate = cfg.max_perplexity_ratio.get(fmt, DEFAULT_PERPLEXITY_GATES[fmt])
    llama_cpp = None
    if FORMATS[fmt].reader == "gguf" and out_dir is not None and llama_cpp_available():
        check_llama_cpp_tokens(gguf_path(out_dir, fmt), ref)
        # llama.cpp runs the base weights only: with a soft prompt, against the merged base's
        base = ref.logits if ref.base_logits is None else ref.base_logits
        theirs = llama_cpp_logits(gguf_path(out_dir, fmt), ref)
        llama_cpp = distribution_compare(base, theirs, ref.ids, ref.mask)
    answers = greedy_answers(model, tokenizer, ref.prompts, cfg.max_new_tokens,
                             len(ref.prompts) or 1)
    same = [a == b for a, b in zip(ref.answers, answers, strict=True)]
    return {
        "format": fmt,
        **info,
        "size_ratio_to_merged": info["size_bytes"] / merged_bytes,
        "compression": merged_bytes / info["size_bytes"],
        **figures,
        "golden_agreement": sum(same) / len(same) if same else None,
        "golden_differences": [
            {"prompt": p[-1]["content"][:200], "merged": a, "format": b}
            for p, a, b, ok in zip(ref.prompts, ref.answers, answers, same, strict=True) if not ok
        ],
        "llama_cpp": llama_cpp,  # None: llama-cpp-python not installed, or not a GGUF
        "max_perplexity_ratio": gate,
        "passed": figures["perplexity_ratio"] <= gate
        and (llama_cpp is None or llama_cpp["perplexity_ratio"] <= gate),
    }
