"""`pedigree base check`: has a newer revision of any pinned base model appeared?

Each file in conf/model/ with `source: hub` pins `id` at a 40-character `revision`. Online, the
latest revision is the Hub's (`HfApi().model_info(id).sha`, the head of the default branch).
Offline (HF_HUB_OFFLINE=1, or `--mirror DIR`), it is read from a local mirror laid out as a
Hugging Face cache (`models--ORG--NAME/refs/main`, `snapshots/REVISION/`): the default
HF_HUB_CACHE, or the directory given. When both snapshots are in the mirror, the files that
changed between them are listed.

`pedigree base check` exits EXIT_NEWER when a newer revision exists (README: Exit codes).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pedigree.config import ConfigError, ModelConfig, format_errors, read_yaml
from pedigree.errors import MissingInputError, PedigreeError
from pedigree.lineage import file_hashes


@dataclass
class Pin:
    model: str  # the conf/model file's name
    id: str
    pinned: str
    latest: str | None = None
    source: str = ""  # "hub" or the mirror directory
    changed: bool = False
    files: dict[str, list[str]] = field(default_factory=dict)  # added / removed / modified


def hub_pins(conf_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    if not (conf_dir / "model").is_dir():
        raise MissingInputError(f"{conf_dir / 'model'}: not found; run from the project root")
    pins = []
    for path in sorted((conf_dir / "model").glob("*.yaml")):
        cfg = read_yaml(path) or {}
        if not isinstance(cfg, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        if cfg.get("source") == "hub":
            try:  # the schema's own check: a full 40-hex revision, as a string
                ModelConfig.model_validate(cfg)
            except ValidationError as err:
                raise PedigreeError(format_errors(path, err)) from None
            pins.append((path.stem, cfg))
    return pins


def _repo_dir(mirror: Path, repo_id: str) -> Path:
    return mirror / ("models--" + repo_id.replace("/", "--"))


def mirror_latest(mirror: Path, repo_id: str) -> str:
    ref = _repo_dir(mirror, repo_id) / "refs" / "main"
    if not ref.is_file():
        raise PedigreeError(f"{ref}: not found; the mirror has no {repo_id}")
    return ref.read_text().strip()


def hub_latest(repo_id: str) -> str:
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(repo_id).sha
    except Exception as err:  # the hub client raises many types; the user needs one line
        raise PedigreeError(f"{repo_id}: cannot ask the Hub ({type(err).__name__}: {err}); "
                            "offline, set HF_HUB_OFFLINE=1 and use a mirror") from None


def changed_files(mirror: Path, repo_id: str, old: str, new: str) -> dict[str, list[str]]:
    snapshots = _repo_dir(mirror, repo_id) / "snapshots"
    if not (snapshots / old).is_dir() or not (snapshots / new).is_dir():
        return {}
    a, b = file_hashes(snapshots / old), file_hashes(snapshots / new)
    return {"added": sorted(set(b) - set(a)), "removed": sorted(set(a) - set(b)),
            "modified": sorted(f for f in set(a) & set(b) if a[f] != b[f])}


def default_mirror() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def check(conf_dir: Path, mirror: Path | None = None, only: str | None = None) -> list[Pin]:
    offline = mirror is not None or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    mirror = mirror or (default_mirror() if offline else None)
    pins = []
    for name, cfg in hub_pins(conf_dir):
        if only and name != only:
            continue
        pin = Pin(model=name, id=cfg["id"], pinned=cfg["revision"])
        if mirror is not None:
            pin.latest, pin.source = mirror_latest(mirror, pin.id), str(mirror)
            pin.changed = pin.latest != pin.pinned
            if pin.changed:
                pin.files = changed_files(mirror, pin.id, pin.pinned, pin.latest)
        else:
            pin.latest, pin.source = hub_latest(pin.id), "hub"
            pin.changed = pin.latest != pin.pinned
        pins.append(pin)
    if only and not pins:
        if not (conf_dir / "model" / f"{only}.yaml").is_file():
            known = sorted(p.stem for p in (conf_dir / "model").glob("*.yaml"))
            raise MissingInputError(f"{conf_dir}/model/{only}.yaml: not found; --model takes "
                                    f"one of {', '.join(known)}")
        raise PedigreeError(f"conf/model/{only}.yaml: not a hub model (source: hub) in {conf_dir}")
    return pins


def as_json(pins: list[Pin]) -> list[dict[str, Any]]:
    return [asdict(p) for p in pins]


def as_text(pins: list[Pin]) -> str:
    if not pins:
        return "no hub models pinned in conf/model/ (source: hub)\n"
    lines = []
    for p in pins:
        if not p.changed:
            lines.append(f"{p.model}: {p.id} @ {p.pinned[:12]} is current ({p.source})")
            continue
        lines.append(f"{p.model}: {p.id} has a newer revision: {p.pinned[:12]} -> "
                     f"{p.latest} ({p.source})")
        for kind in ("added", "removed", "modified"):
            for name in p.files.get(kind, []):
                lines.append(f"    {kind}: {name}")
        lines.append(f"    rebase: pedigree rebase {p.model} --revision {p.latest}")
    return "\n".join(lines) + "\n"
