"""The records stages hand to each other: `policy.json` (align -> merge, eval) and `gate.json`
(eval -> promote, rebase, report), each read and written here and nowhere else.

Each is a TypedDict, so code reads it by key with its type known, and is checked against that type
on read and on write (pydantic): a record from an older pipeline, or edited by hand, fails with
its path and the field at fault instead of a KeyError later. `schema_version` changes when a field
changes meaning; a reader refuses a version it does not know.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, NotRequired, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from pedigree.errors import PedigreeError
from pedigree.files import read_json

POLICY_FILE = "policy.json"
GATE_FILE = "gate.json"
POLICY_VERSION = 2  # the schema_version written; the types below accept only it (2: `align`)
GATE_VERSION = 1
_STRICT = ConfigDict(extra="forbid", strict=True)


@with_config(_STRICT)
class Policy(TypedDict):
    """The chain that makes the final policy: base, then SFT's trained weights (partial, full) or
    adapter, then the alignment adapter. Paths are relative to the project root."""

    schema_version: Literal[POLICY_VERSION]
    sft_method: str  # sft.method: an adapter family (lora ... p_tuning), partial or full
    quant: dict[str, Any] | None  # QLoRA: config.QuantConfig, the 4-bit base it trained on
    weights: str | None  # the directory whose trained tensors replace base weights
    adapters: list[str]  # adapter directories active on top, in training order
    align: str | None  # align.method when its adapter is part of the chain (the last one)


@with_config(_STRICT)
class GateCheck(TypedDict):
    """One check of the gate: `reason` says what was compared and against what bound."""

    check: str
    passed: bool
    reason: str
    metric: NotRequired[str]
    required: NotRequired[float]  # the least gain that passes
    allowed: NotRequired[float]  # the largest loss that passes (negative)
    difference: NotRequired[float]  # mean paired difference, candidate minus reference
    se: NotRequired[float]  # its standard error
    n: NotRequired[int]  # items paired
    unpaired: NotRequired[int]  # items only one side has
    error: NotRequired[str]  # why the comparison could not be made
    reference: NotRequired[str]  # the model compared with, where several could be
    value: NotRequired[float]  # a figure checked on its own (the judge's win rate)
    ci95: NotRequired[list[float]]  # its 95 % interval


@with_config(_STRICT)
class ChampionRef(TypedDict, total=False):
    """The champion a gate compared with (the keys `pedigree promote` recorded)."""

    registered_model: str
    version: str | int
    outputs_sha256: str


@with_config(_STRICT)
class Gate(TypedDict):
    """The promotion gate's decision on one candidate."""

    schema_version: Literal[GATE_VERSION]
    passed: bool
    candidate: str  # "merged" or a quantized format name
    candidate_sha256: str  # outputs_sha256 of the stage output holding it
    champion: ChampionRef | None  # None: no champion yet, compared with the base only
    task_metric: str
    checks: list[GateCheck]
    reasons: list[str]  # one line per check, "pass: ..." or "FAIL: ..."
    lower_is_better: list[str]  # metrics whose names do not say it


Record = TypeVar("Record", Policy, Gate)
_ADAPTERS: dict[type, TypeAdapter[Any]] = {Policy: TypeAdapter(Policy), Gate: TypeAdapter(Gate)}


def _check(kind: type[Record], value: Any, where: str) -> Record:
    try:
        return _ADAPTERS[kind].validate_python(value)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(record)"
        raise PedigreeError(f"{where}: not a valid {kind.__name__.lower()} record ({field}: "
                            f"{first['msg']}); it is written by the pipeline: run `dvc repro`"
                            ) from None


def _write(kind: type[Record], record: Record, path: Path) -> None:
    _check(kind, record, str(path))
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _read(kind: type[Record], path: Path) -> Record:
    return _check(kind, read_json(path, "the pipeline writes it: run `dvc repro`"), str(path))


def write_policy(policy: Policy, out_dir: Path) -> None:
    _write(Policy, policy, out_dir / POLICY_FILE)


def read_policy(out_dir: Path) -> Policy:
    return _read(Policy, out_dir / POLICY_FILE)


def write_gate(gate: Gate, out_dir: Path) -> None:
    _write(Gate, gate, out_dir / GATE_FILE)


def read_gate(out_dir: Path) -> Gate:
    return _read(Gate, out_dir / GATE_FILE)
