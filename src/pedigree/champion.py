"""The champion record, champion.json: which model `pedigree promote` made the champion, with its
eval results per item, so the eval stage's gate can compare the next candidate with it. Git
tracks it (commit it after promoting) and `dvc.yaml` lists it as an eval dependency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pedigree.errors import PedigreeError
from pedigree.files import read_json
from pedigree.pipeline import stage_out
from pedigree.records import ChampionRef

CHAMPION_FILE = "champion.json"


def candidate_dir(candidate: str, root: Path = Path(".")) -> str:
    """The stage output that holds a gate candidate: its manifest hash is what the gate judged."""
    return stage_out("merge" if candidate == "merged" else "quantize", root).as_posix()


def candidate_files(candidate: str, root: Path = Path(".")) -> str:
    """The candidate's own files, which the registry points at (one quantized format)."""
    out = candidate_dir(candidate, root)
    return out if candidate == "merged" else f"{out}/{candidate}"


# What the gate and `pedigree promote` read from a champion record.
CHAMPION_KEYS = (*ChampionRef.__annotations__, "items")


def read_champion(root: Path) -> dict[str, Any] | None:
    path = root / CHAMPION_FILE
    data = read_json(path, 'it ships with the repository (`{"champion": null}` before the first '
                     "promotion): restore it with `git checkout champion.json`")
    if "champion" not in data:
        raise PedigreeError(f'{path}: no "champion" key; expected {{"champion": null}} or the '
                            "record `pedigree promote` writes: restore it with `git checkout "
                            "champion.json`")
    record = data["champion"]
    if record is None:
        return None
    missing = [k for k in CHAMPION_KEYS if k not in record] if isinstance(record, dict) \
        else list(CHAMPION_KEYS)
    if missing:
        raise PedigreeError(f"{path}: the champion record lacks {', '.join(missing)}; it is "
                            "written by `pedigree promote`: restore it with `git checkout "
                            "champion.json`")
    return record
