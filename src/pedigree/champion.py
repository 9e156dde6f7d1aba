"""The champion record, champion.json: which model `pedigree promote` made the champion, with its
eval results per item, so the eval stage's gate can compare the next candidate with it. Git
tracks it (commit it after promoting) and `dvc.yaml` lists it as an eval dependency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pedigree.errors import PedigreeError

CHAMPION_FILE = "champion.json"


def candidate_dir(candidate: str) -> str:
    """The stage output that holds a gate candidate: its manifest hash is what the gate judged."""
    return "models/merged" if candidate == "merged" else "models/quantized"


def candidate_files(candidate: str) -> str:
    """The candidate's own files, which the registry points at (one quantized format)."""
    return "models/merged" if candidate == "merged" else f"models/quantized/{candidate}"


def read_champion(root: Path) -> dict[str, Any] | None:
    path = root / CHAMPION_FILE
    if not path.is_file():
        raise PedigreeError(f"{path}: not found; it ships with the repository "
                            '(`{"champion": null}` before the first promotion)')
    return json.loads(path.read_text(encoding="utf-8")).get("champion")
