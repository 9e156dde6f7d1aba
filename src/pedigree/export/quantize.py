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

gguf-lora ships the policy unmerged: the model its adapters sit on as a GGUF file, and the LoRA
chain as one llama.cpp GGUF LoRA adapter beside it (export/gguf_lora.py), with a Modelfile that
names both (`FROM` the base, `ADAPTER` the adapter). It is read back as the base plus the
adapter's updates, and by llama.cpp with the adapter applied, and checked against the merged model
like every format. A policy llama.cpp cannot apply as an adapter (another family, DoRA, trained
base weights, a QLoRA adapter on its dequantized base) is refused before anything is written.
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
from pedigree.export.gguf_lora import (
    AdapterExportError,
    check_llama_cpp_lora,
    read_gguf_lora,
    write_gguf_lora,
    write_peft_adapter,
)
from pedigree.export.template_parity import check_template_parity
from pedigree.files import read_json
from pedigree.lineage import sha256_file
from pedigree.model.chat import encode_completion
from pedigree.model.load import SOFT_PROMPT_DIR, soft_prompt_of, with_soft_prompt
from pedigree.model.measure import chat_inputs, distribution_compare, greedy_answers, logits_of
from pedigree.quant_formats import DEFAULT_PERPLEXITY_GATES, FORMATS

# The merged GGUF formats of the registry and their file types: written by export/gguf.py
# directly or (the K-quants) by llama.cpp from its F16 file (export/kquants.py).
GGUF_QTYPES = {f.name: f.gguf_type for f in FORMATS.values() if f.reader == "gguf"}
GGUF_READERS = ("gguf", "gguf-lora")  # every format whose model is a GGUF file
LORA_FILE = "adapter-F32.gguf"  # gguf-lora's adapter, beside the base's model-<qtype>.gguf
PEFT_DIR = "peft"  # gguf-lora's same adapter as a PEFT directory, for vLLM and SGLang


@dataclass(frozen=True)
class AdapterChain:
    """What gguf-lora ships: the model the adapters sit on, and the adapters in training order."""

    base: Path
    adapters: tuple[Path, ...]


@dataclass(frozen=True)
class Sources:
    """What a writer reads: the merged model, and for gguf-lora the unmerged chain."""

    merged: Path
    chain: AdapterChain | None = None


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
    """The format's GGUF file (gguf-lora: its base)."""
    return out_dir / fmt / f"model-{FORMATS[fmt].gguf_type}.gguf"


def lora_path(out_dir: Path, fmt: str) -> Path | None:
    """The GGUF LoRA adapter a format applies to its GGUF file, or None."""
    return out_dir / fmt / LORA_FILE if FORMATS[fmt].reader == "gguf-lora" else None


def adapter_chain(policy, base: Path, qlora_base: str = "dequantized") -> AdapterChain:
    """The policy as gguf-lora ships it, or an AdapterExportError saying why it cannot be: only
    LoRA adapters on the model SFT started from (`base`) apply in llama.cpp."""
    from pedigree.model.policy import base_kind

    advice = "ship a merged format instead (quantize.formats: gguf-q8_0 or another)"
    if policy.get("weights"):
        raise AdapterExportError(f"sft.method={policy['sft_method']} trained the base's own "
                                 f"weights ({policy['weights']}): there is no adapter; {advice}")
    if base_kind(policy, qlora_base) != "original":
        raise AdapterExportError(
            f"the QLoRA adapter sits on the {base_kind(policy, qlora_base)} base, which no GGUF "
            f"base reproduces: set merge.qlora_base=original (merged onto the original weights), "
            f"or {advice}")
    for adapter in policy["adapters"]:
        check_llama_cpp_lora(Path(adapter))
    return AdapterChain(Path(base), tuple(Path(a) for a in policy["adapters"]))


def with_gguf_lora(model, adapter: Path):
    """`model` (a base read back from GGUF) with a GGUF LoRA adapter's updates added to its
    weights, as llama.cpp applies them."""
    import torch

    params = dict(model.named_parameters())
    # transformers' GGUF loader leaves `architectures` empty: the model's class names it
    config = {**model.config.to_dict(), "architectures": [type(model).__name__]}
    deltas = read_gguf_lora(adapter, config, list(params))
    with torch.no_grad():
        for name, delta in deltas.items():
            params[name].add_(torch.from_numpy(delta).to(params[name].dtype))
    return model


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


def _start_model_sha(adapter: Path) -> tuple[str, str | None]:
    """(the model a pedigree SFT output started from, that model's outputs_sha256)."""
    from pedigree.lineage import read_manifest

    manifest = read_manifest(adapter)
    start = manifest.get("details", {}).get("start_model") or "models/base"
    return start, next((u["outputs_sha256"] for u in manifest["upstream"]
                        if u["path"] == start), None)


def ship_more_adapters(fmt: str, out_dir: Path, base: Path, extras: dict[str, list[Path]],
                       tokenizer, rows: list[dict[str, Any]], cfg: QuantizeConfig,
                       merged_bytes: int, result: dict[str, Any]) -> dict[str, Any]:
    """Other runs' LoRA chains over gguf-lora's base, each in adapters/<name>/ as a GGUF LoRA
    file and a PEFT directory, read back onto the base and checked against its own chain merged
    (export/merge.py). Each must have started from the same model and trained under the same
    chat template as this policy, or the shared base and Modelfile would prompt it wrongly.
    Returns what to add to the format's `result`: each adapter's checks, the sizes of one base
    plus every adapter against as many merged models, and whether all passed."""
    from pedigree.export.merge import merge_policy
    from pedigree.lineage import read_manifest
    from pedigree.model.load import load_causal_lm, load_tokenizer

    ours = read_manifest(base)["outputs_sha256"]
    results = {}
    for name, chain in extras.items():
        start, theirs = _start_model_sha(chain[0])
        if theirs != ours:
            raise AdapterExportError(
                f"quantize.adapters.{name}: {chain[0]} was trained on {start} "
                f"{(theirs or 'unknown')[:12]}, the shipped base is {base} {ours[:12]}")
        if load_tokenizer(chain[0]).chat_template != tokenizer.chat_template:
            raise AdapterExportError(
                f"quantize.adapters.{name}: {chain[0]} trained under another chat template "
                "than this policy's, which the shared GGUF base and Modelfile carry")
        for adapter in chain:
            check_llama_cpp_lora(adapter)
        folder = out_dir / fmt / "adapters" / name
        folder.mkdir(parents=True)
        info = {**write_gguf_lora(chain, read_json(base / "config.json"), folder / LORA_FILE),
                **write_peft_adapter(chain, folder / PEFT_DIR, base.as_posix())}
        merged, _ = merge_policy(load_causal_lm(base), tokenizer, chain, rows, "float32", None,
                                 cfg.max_length)
        model = with_gguf_lora(load_gguf(gguf_path(out_dir, fmt))[0], folder / LORA_FILE)
        info["size_bytes"] = info["adapter_bytes"]
        results[name] = check_format(fmt, model, tokenizer, reference(merged, tokenizer, rows, cfg),
                                     cfg, merged_bytes, info)
        r = results[name]
        print(f"[quantize] {fmt} adapters/{name}: {r['adapter_bytes'] / 1e6:.2f} MB, perplexity "
              f"ratio {r['perplexity_ratio']:.4f} against its chain merged -> "
              f"{'passed' if r['passed'] else 'FAILED'}")
    models = len(results) + 1
    return {"adapters": results,
            "shared_base": {"models": models, "merged_bytes": models * merged_bytes,
                            "base_plus_adapters_bytes": result["size_bytes"] + sum(
                                r["adapter_bytes"] for r in results.values())},
            "passed": result["passed"] and all(r["passed"] for r in results.values())}


def load_peft_dir(base: Path, adapter: Path):
    """`adapter` (a PEFT LoRA directory) on the model in `base`, as PEFT (and vLLM) apply it."""
    from peft import PeftModel

    from pedigree.model.load import load_causal_lm

    return PeftModel.from_pretrained(load_causal_lm(base), str(adapter)).eval()


def _read_gguf_lora(fmt: str, out_dir: Path):
    return with_gguf_lora(_read_gguf(fmt, out_dir), lora_path(out_dir, fmt))


# Each reader of the registry (quant_formats.READERS): (format, out_dir) -> the model read back.
READERS = {"gguf": _read_gguf, "transformers": _read_transformers,
           "gguf-lora": _read_gguf_lora}


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
    gguf = FORMATS[fmt].reader in GGUF_READERS
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


def write_modelfile(gguf: Path, tokenizer, adapter: Path | None = None) -> dict[str, Any]:
    """An Ollama Modelfile beside the GGUF file (and its `adapter`, if any), its template derived
    from the chat template the model trained with. A template family we cannot translate exactly
    gets no Modelfile (a near miss would prompt the model wrongly without any error); the report
    says why."""
    from pedigree.export.modelfile import ModelfileError, modelfile, template_family
    from pedigree.export.template_parity import gguf_chat

    # The template writes the BOS text itself ({{ bos_token }}), and llama.cpp will not add the
    # token: the Modelfile must write it, as training's rendering has it. (A template whose first
    # marker merely is the BOS token, as SmolLM2's <|im_start|>, renders it in every turn already.)
    probe = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    bos = tokenizer.bos_token
    bos_text = bos if (bos and "bos_token" in tokenizer.chat_template and probe.startswith(bos)
                       and not gguf_chat(gguf).add_bos) else ""
    try:
        text = modelfile(gguf.name, tokenizer.chat_template, {"eos_token": tokenizer.eos_token},
                         adapter=adapter.name if adapter else None, bos_text=bos_text)
    except ModelfileError as err:
        print(f"[quantize] {gguf.name}: no Ollama Modelfile: {err}")
        return {"modelfile": None, "modelfile_error": str(err)}
    (gguf.parent / "Modelfile").write_text(text)
    return {"modelfile": "Modelfile", "template_family": template_family(tokenizer.chat_template)}


def write_kquant(fmt: str, src: Sources, path: Path) -> dict[str, Any]:
    """An F16 GGUF from our writer, quantized by llama.cpp; the F16 file is removed after."""
    kquants.quantizer()  # fail before writing anything when there is no quantizer
    f16 = path.with_name(path.stem + ".f16.tmp.gguf")
    try:
        write_gguf(src.merged, f16, "F16")
        how = kquants.quantize(fmt, f16, path)
    finally:
        f16.unlink(missing_ok=True)
    return {"qtype": GGUF_QTYPES[fmt], "quantizer": f"llama.cpp ({how})",
            "file_sha256": sha256_file(path), "size_bytes": path.stat().st_size}


def _write_gguf(fmt: str, src: Sources, path: Path) -> dict[str, Any]:
    return write_gguf(src.merged, path, GGUF_QTYPES[fmt])


def _write_transformers(fmt: str, src: Sources, directory: Path) -> dict[str, Any]:
    from pedigree.export.hf_quant import write_quantized

    return write_quantized(fmt, src.merged, directory)


def _write_gguf_lora(fmt: str, src: Sources, path: Path) -> dict[str, Any]:
    """The base as a GGUF file (the tokenizer and chat template the policy trained with, from
    the merged model), the chain as a GGUF LoRA adapter beside it, and as a PEFT directory."""
    if src.chain is None:
        raise AdapterExportError(f"{fmt}: the writer needs the policy's adapters (adapter_chain)")
    adapters = list(src.chain.adapters)
    base = write_gguf(src.chain.base, path, FORMATS[fmt].gguf_type, tokenizer_dir=src.merged)
    adapter = write_gguf_lora(adapters, read_json(src.chain.base / "config.json"),
                              path.parent / LORA_FILE)
    peft = write_peft_adapter(adapters, path.parent / PEFT_DIR, src.chain.base.as_posix())
    return {**base, **adapter, **peft, "base": src.chain.base.as_posix(),
            "base_bytes": base["size_bytes"],
            "size_bytes": base["size_bytes"] + adapter["adapter_bytes"]}


# Each writer of the registry (quant_formats.WRITERS): (format, what it reads, the GGUF file or
# the checkpoint directory to write) -> file facts.
WRITERS = {"gguf": _write_gguf, "llama.cpp": write_kquant, "transformers": _write_transformers,
           "gguf-lora": _write_gguf_lora}


def export_format(fmt: str, merged_dir: Path, out_dir: Path, tokenizer,
                  rows: list[dict[str, Any]], max_length: int,
                  chain: AdapterChain | None = None) -> tuple[Any, dict[str, Any]]:
    """Write `fmt` under out_dir/fmt and read it back: (the reader's model, file facts).
    `chain`: the unmerged policy, which gguf-lora ships (adapter_chain)."""
    spec = FORMATS[fmt]
    write, src = WRITERS[spec.writer], Sources(merged_dir, chain)
    if spec.reader in GGUF_READERS:
        path = gguf_path(out_dir, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = write(fmt, src, path)
        soft = ship_soft_prompt(fmt, merged_dir, out_dir)
        model, exported_tokenizer = load_gguf(path)
        _check_tokenizer(path, tokenizer, exported_tokenizer, rows, max_length)
        adapter = lora_path(out_dir, fmt)
        if adapter is not None:
            model = with_gguf_lora(model, adapter)
        modelfile = write_modelfile(path, tokenizer, adapter) if not soft else {
            "modelfile": None, "modelfile_error": LLAMA_CPP_SOFT_PROMPT}
        written = path.parent / "Modelfile" if modelfile["modelfile"] else None
        parity = check_template_parity(tokenizer, path, written.read_text() if written else None,
                                       rows)
        return with_soft_prompt(model, path.parent), {
            "file": path.relative_to(out_dir).as_posix(), **info, **modelfile, **soft,
            "template_parity": parity}
    info = write(fmt, src, out_dir / fmt)
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


def llama_cpp_logits(path: Path, ref: Reference, lora: Path | None = None):
    """Logits of a GGUF file (with the GGUF LoRA adapter `lora` applied, if given) as llama.cpp
    computes them (llama-cpp-python), on the reference rows' token ids, row by row; padded
    positions copy the reference (they are masked anyway)."""
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
                    verbose=False, seed=0, n_threads=2,
                    lora_path=str(lora) if lora else None)
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
    peft = None
    if info.get("peft_dir") and out_dir is not None:  # gguf-lora's PEFT directory on its base
        peft = distribution_compare(
            ref.logits, logits_of(load_peft_dir(Path(info["base"]), out_dir / fmt / PEFT_DIR),
                                  ref.ids, ref.mask), ref.ids, ref.mask)
    llama_cpp = None
    if FORMATS[fmt].reader in GGUF_READERS and out_dir is not None and llama_cpp_available():
        check_llama_cpp_tokens(gguf_path(out_dir, fmt), ref)
        # llama.cpp runs the base weights only: with a soft prompt, against the merged base's
        base = ref.logits if ref.base_logits is None else ref.base_logits
        theirs = llama_cpp_logits(gguf_path(out_dir, fmt), ref, lora_path(out_dir, fmt))
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
        "peft": peft,  # gguf-lora: its PEFT directory (vLLM, SGLang) loaded on the base
        "max_perplexity_ratio": gate,
        "passed": figures["perplexity_ratio"] <= gate
        and all(other is None or other["perplexity_ratio"] <= gate
                for other in (llama_cpp, peft)),
    }
