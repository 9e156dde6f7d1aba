"""Outputs that appear atomically: written into a temporary sibling, renamed into place."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pedigree.errors import MissingInputError, PedigreeError

# Weight files in Python's pickle format: loading one can run code, so they are never read or
# written (safetensors only).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def replace_dir(src: Path, dst: Path) -> None:
    """Put `src` at `dst`; the old `dst`, if any, is moved aside first and removed after."""
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `out` when the block succeeds and is
    removed when it fails, so a crash never leaves a half-written output."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file through a temporary sibling and a rename: readers never see half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path, hint: str = "run `dvc repro` first") -> dict[str, Any]:
    """A JSON object the pipeline wrote or the user edited; a missing or broken file is a
    PedigreeError naming it (a missing one with `hint`: what to do), not a traceback."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingInputError(f"{path}: not found; {hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PedigreeError(f"{path}: not valid JSON ({err}); was it edited by hand?") from None
    if not isinstance(value, dict):
        raise PedigreeError(f"{path}: expected a JSON object, got {type(value).__name__}; "
                            "was it edited by hand?")
    return value
