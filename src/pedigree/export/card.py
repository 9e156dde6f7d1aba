"""The model card (`README.md` with Hugging Face front matter) written beside a merged model.

It states the provenance a reader needs to trust the weights: the raw-data hash, the base model's
id, revision and content hash, the training method, the params hash, the validation figures and
the merge parity check. Everything comes from the manifests and reports, so the card is as
deterministic as they are (no dates).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from pedigree.lineage import gguf_origin

if TYPE_CHECKING:  # the type only: quantize, which writes cards, does not read policy.json
    from pedigree.records import Policy


def _tags(policy: Policy) -> list[str]:
    tags = ["pedigree", "fine-tuned", f"sft-{policy['sft_method']}"]
    return [*tags, policy["align"]] if policy["align"] else tags


def _figures(title: str, metrics: dict[str, float]) -> list[str]:
    return [f"| {title}: {k} | {v:.6g} |" for k, v in sorted(metrics.items())]


def model_card(
    roots: dict[str, Any],
    policy: Policy,
    params_sha256: dict[str, str],
    training: dict[str, dict[str, float]],
    parity: dict[str, Any],
    merge_base: str,
) -> str:
    """Card text. `params_sha256` and `training`: stage name -> its params hash and its
    metrics.json; `parity`: the merge's check."""
    base = roots.get("base_model") or {}
    front = {
        "base_model": base.get("id"),
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": _tags(policy),
    }
    rows = [
        "| | |",
        "| --- | --- |",
        f"| raw data sha256 | `{roots.get('data_sha256')}` |",
        f"| base model | `{base.get('id')}` revision `{base.get('revision')}` |",
        f"| base model sha256 | `{base.get('sha256')}` |",
        *([f"| base model weights | {gguf_origin(base['gguf'])}: not the authors' original "
           + "weights |"] if base.get("gguf") else []),
        f"| method | SFT {policy['sft_method']}"
        + (f" + {policy['align']} (LoRA)" if policy["align"] else "") + " |",
        f"| merged onto | {merge_base} base weights |",
        *(f"| params sha256 ({stage}) | `{digest}` |" for stage, digest in params_sha256.items()),
        (f"| parity | max abs logit diff {parity['max_abs_logit_diff']:.3g} "
         f"(tolerance {parity['tolerance']:g}, {parity['dtype']}), "
         f"top-1 agreement {parity['top1_agreement']:.4f} |"),
        *([(f"| soft prompt | {soft['peft_type']}, not folded: these are the base weights; the "
            f"model is them plus the adapter in `{soft['dir']}/` (PEFT "
            "`PeftModel.from_pretrained`) |")] if (soft := parity.get("soft_prompt")) else []),
    ]
    for stage, metrics in training.items():
        rows += _figures(stage, metrics)
    return "\n".join([
        "---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
        f"# Fine-tuned {base.get('id')}", "",
        ("Made by the pedigree pipeline. Every figure below is copied from the pipeline's "
         "manifests (`lineage.json`) and reports; `pedigree lineage` walks them back to the raw "
         "data."), "",
        *rows, "",
    ])


def quantized_card(merged_card: str, fmt: str, result: dict[str, Any]) -> str:
    """The merged model's card with this format's facts added: file, hash and the checks
    against the merged model. The merged card's provenance is kept whole."""
    _, front, body = merged_card.split("---", 2)
    meta = yaml.safe_load(front)
    meta["tags"] = [*meta.get("tags", []), fmt, "gguf" if fmt.startswith("gguf") else "quantized"]
    rows = [
        f"## This file: {fmt}", "",
        "| | |", "| --- | --- |",
        f"| file | `{result['file']}` |",
        *([f"| file sha256 | `{result['file_sha256']}` |"] if result.get("file_sha256") else []),
        f"| size | {result['size_bytes']:,} bytes ({result['compression']:.2f}x smaller) |",
        (f"| against the merged model | perplexity ratio {result['perplexity_ratio']:.4f} "
         f"(gate {result['max_perplexity_ratio']}), KL {result['kl_divergence']:.3g}, "
         f"top-1 agreement {result['top1_agreement']:.4f} |"),
        *([(f"| soft prompt | `{soft['dir']}/`: these are the base weights; apply the adapter "
            f"(PEFT) or they answer as the base. {soft['note']} |")]
          if (soft := result.get("soft_prompt")) else []),
        f"| passed | {'yes' if result['passed'] else 'no: not for promotion'} |", "",
        *(_serving_adapter(result) if result.get("adapter_file") else []),
    ]
    return "\n".join(["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---"]) \
        + body.rstrip("\n") + "\n\n" + "\n".join(rows)


def _serving_adapter(result: dict[str, Any]) -> list[str]:
    """How to serve gguf-lora's adapter over its base, in each runtime it was written for."""
    base, adapter, peft = result["file"].split("/")[-1], result["adapter_file"], result["peft_dir"]
    return [
        "## Serving the adapter over the base", "",
        (f"The base `{base}` ({result['base_bytes']:,} bytes) is shared; each fine-tune adds "
         f"`{adapter}` ({result['adapter_bytes']:,} bytes), or `{peft}/` for vLLM and SGLang."),
        "",
        "```bash",
        f"llama-server -m {base} --lora {adapter}",
        "ollama create my-model -f Modelfile   # FROM the base, ADAPTER the adapter",
        (f"vllm serve {result['base']} --enable-lora --max-lora-rank "
         f"{result['vllm_max_lora_rank']} --lora-modules my-model=./{peft}"),
        (f"python -m sglang.launch_server --model-path {result['base']} --lora-paths "
         f"my-model=./{peft}"),
        "```", "",
        *([(f"With the other runs' adapters in `adapters/` ({', '.join(sorted(result['adapters']))}"
            f"), one base plus {shared['models']} adapters is {shared['base_plus_adapters_bytes']:,}"
            f" bytes, against {shared['merged_bytes']:,} for {shared['models']} merged models."),
           ""] if (shared := result.get("shared_base")) else []),
    ]
