"""Outputs that appear atomically: written into a temporary sibling, renamed into place."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
