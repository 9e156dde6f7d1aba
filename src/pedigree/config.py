"""Typed schemas for `params.yaml`, the composed configuration every stage reads.

`conf/` is the authored Hydra tree; `params.yaml` is its composition (`pedigree compose`). Stages
load the sections they use with `load_params`, which rejects a wrong value before any work, naming
the key, the value and what is allowed. Unknown keys are errors: a typo must not be ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pedigree.errors import PedigreeError

PARAMS_FILE = Path("params.yaml")


class Section(BaseModel):
    """Base for every config section: strict about unknown keys, immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- model
class TinyModelConfig(Section):
    """The embedded default: a small Llama built and pretrained here, deterministically."""

    vocab_size: int = Field(1024, ge=256, le=65536, description="BPE vocabulary incl. specials")
    hidden_size: int = Field(256, ge=32, description="K-quants need rows that are multiples of 256")
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1, description="< num_heads gives grouped-query attention")
    intermediate_size: int = Field(768, ge=32)
    max_position_embeddings: int = Field(256, ge=32)
    corpus: str = Field("data/corpus/general.txt", description="general text for pretraining")
    pretrain_steps: int = Field(160, ge=1, description="optimizer steps of pretraining")
    batch_size: int = Field(16, ge=1, description="sequences per step")
    seq_len: int = Field(128, ge=16, description="tokens per sequence")
    learning_rate: float = Field(3e-3, gt=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be divisible by num_kv_heads={self.num_kv_heads}"
            )
        if self.seq_len > self.max_position_embeddings:
            raise ValueError("seq_len must not exceed max_position_embeddings")
        return self


class ModelConfig(Section):
    """The base model: built here (`build`), from the Hub at a pinned revision, or a local dir."""

    name: str = Field(description="short name used in tags and reports")
    source: Literal["build", "hub", "local"]
    id: str = Field(description="Hub repo id, or a descriptive id for built/local models")
    revision: str | None = Field(None, description="40-hex commit; required for source=hub")
    path: str | None = Field(None, description="directory with the model; source=local only")
    trust_remote_code: bool = Field(False, description="never on unless the model needs it")
    build: TinyModelConfig | None = None

    @model_validator(mode="after")
    def _source_fields(self) -> ModelConfig:
        if self.source == "hub":
            rev = self.revision or ""
            if len(rev) != 40 or any(c not in "0123456789abcdef" for c in rev):
                raise ValueError(
                    f"revision={self.revision!r}: a hub model must be pinned by its full "
                    "40-character lowercase hex commit (find it on the model page, 'Files' tab)"
                )
        if self.source == "local" and not self.path:
            raise ValueError("path: required when source=local")
        if self.source == "build" and self.build is None:
            raise ValueError("build: required when source=build")
        return self


# ----------------------------------------------------------------------------- data
class DataConfig(Section):
    raw_dir: str = Field("data/raw", description="every .jsonl/.json file here is read")
    eval_dir: str = Field("data/eval", description="eval sets: task.jsonl, general.jsonl")
    format: Literal["auto", "alpaca", "prompt_completion", "messages", "preference"] = Field(
        "auto", description="row format; auto detects it per row from the fields present"
    )


class CurateConfig(Section):
    max_chars: int = Field(4000, ge=1, description="longest prompt+completion kept, characters")
    placeholder_outputs: list[str] = Field(
        default_factory=lambda: ["<noinput>", "<no output>", "<nooutput>", "n/a", "none"],
        description="completions equal to one of these (case-insensitive) are dropped",
    )
    decontaminate: bool = Field(True, description="drop rows whose prompt is in an eval set")


class SplitConfig(Section):
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    salt: str = Field("pedigree", description="changes the hash-based assignment of rows")


# ----------------------------------------------------------------------------- training
class LoraConfig(Section):
    r: int = Field(16, ge=1, description="rank of the update")
    alpha: int = Field(32, ge=1, description="scale = alpha / r; usually alpha = 2 * r")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class SFTConfig(Section):
    method: Literal["lora"] = Field("lora", description="how trainable parameters enter the model")
    learning_rate: float = Field(2e-3, gt=0, lt=1)
    max_steps: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(128, ge=16, description="tokens per row; longer rows are truncated")
    completion_only_loss: bool = Field(True, description="mask the prompt tokens in the loss")
    lr_scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_steps: int = Field(10, ge=0)
    eval_steps: int = Field(50, ge=1, description="validation loss every N steps")
    lora: LoraConfig = LoraConfig()


class DPOConfig(Section):
    enabled: bool = Field(True, description="false: no training, the SFT model is the policy")
    beta: float = Field(0.1, gt=0, description="strength of the KL tie to the SFT policy")
    loss_type: Literal["sigmoid", "hinge", "ipo"] = "sigmoid"
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    max_steps: int = Field(30, ge=1)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(128, ge=16)
    precompute_ref_log_probs: bool = Field(True, description="~40% faster on CPU")
    lora: LoraConfig = LoraConfig(r=8, alpha=16)


# ----------------------------------------------------------------------------- export
class MergeConfig(Section):
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    parity_rows: int = Field(8, ge=1, description="validation rows used for the logit check")
    parity_tolerance: float = Field(1e-4, gt=0, description="max abs logit diff, merged vs adapter")
    max_length: int = Field(256, ge=16, description="tokens per parity row")


class QuantizeConfig(Section):
    formats: list[Literal["gguf-f32", "gguf-f16", "gguf-q8_0", "gguf-q4_0"]] = Field(
        default_factory=lambda: ["gguf-q8_0"], min_length=1
    )
    check_rows: int = Field(8, ge=1, description="validation rows used for the logit check")
    max_length: int = Field(256, ge=16, description="tokens per check row")


class EvalConfig(Section):
    max_new_tokens: int = Field(32, ge=1, description="greedy generation length for task evals")
    batch_size: int = Field(32, ge=1)
    max_task_rows: int | None = Field(None, ge=1, description="None: every row of task.jsonl")
    max_loss_rows: int | None = Field(None, ge=1, description="None: every validation row")
    max_length: int = Field(256, ge=16, description="tokens per row for the loss measurements")


class TrackingConfig(Section):
    enabled: bool = True
    experiment: str = Field("pedigree", min_length=1, description="MLflow experiment name")


class Params(Section):
    """The whole of `params.yaml`."""

    seed: int = Field(42, ge=0)
    model: ModelConfig
    data: DataConfig
    curate: CurateConfig
    split: SplitConfig
    sft: SFTConfig
    dpo: DPOConfig
    merge: MergeConfig
    quantize: QuantizeConfig
    eval: EvalConfig
    tracking: TrackingConfig


class ConfigError(PedigreeError, ValueError):
    """A params file that does not match the schema; the message is meant for the user."""


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        value = e.get("input")
        allowed = e.get("ctx", {}).get("expected") or e["msg"]
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {value!r}); check its spelling in conf/")
        elif e["type"] == "missing":
            lines.append(f"  {key}: missing")
        else:
            lines.append(f"  {key} = {value!r}: {allowed}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], path: Path = PARAMS_FILE) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(path, err)) from None


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate the whole params file."""
    if not path.exists():
        raise ConfigError(f"{path}: not found; run `pedigree compose` to create it from conf/")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return parse_params(raw, path)


def section_dict(params: Params, keys: list[str]) -> dict[str, Any]:
    """The named top-level sections as plain data, as recorded in manifests and MLflow."""
    return {k: params.model_dump(mode="json")[k] for k in keys}
