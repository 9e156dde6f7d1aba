"""The datasets curation reads: files under data/raw, each with its format, column mapping,
row limit and mixture weight."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pedigree.config import DataConfig
from pedigree.data.readers import READABLE_SUFFIXES
from pedigree.errors import MissingInputError, PedigreeError


@dataclass(frozen=True)
class Source:
    name: str  # kept as `source` on every row
    files: tuple[Path, ...]
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    limit: int | None = None  # rows read from the source (over all its files), None: all
    weight: float = 1.0  # mixture weight, applied to the training split


def readable_files(path: Path) -> list[Path]:
    """The file itself, or every readable file under a directory (sorted, so order is stable)."""
    if path.is_file():
        if path.suffix not in READABLE_SUFFIXES:
            raise PedigreeError(f"{path}: unsupported file type; readable: {READABLE_SUFFIXES}")
        return [path]
    if not path.is_dir():
        raise MissingInputError(f"{path}: no such file or directory")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in READABLE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise MissingInputError(f"{path}: no {'/'.join(READABLE_SUFFIXES)} files to read")
    return files


def resolve_sources(data: DataConfig) -> list[Source]:
    """`data.sources`, or one source per readable file under `data.raw_dir` when none are named."""
    raw_dir = Path(data.raw_dir)
    if not data.sources:
        return [Source(p.relative_to(raw_dir).as_posix(), (p,), data.format, dict(data.columns))
                for p in readable_files(raw_dir)]
    sources = []
    for i, sc in enumerate(data.sources):
        path = raw_dir / sc.path
        if not path.exists():
            raise MissingInputError(f"data.sources[{i}].path = {sc.path}: {path} does not exist")
        sources.append(Source(
            name=sc.name or sc.path,
            files=tuple(readable_files(path)),
            format=sc.format or data.format,
            columns=dict(data.columns if sc.columns is None else sc.columns),
            limit=sc.limit,
            weight=sc.weight,
        ))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise PedigreeError(f"data.sources: names must be unique, got {names}")
    return sources


def sources_from_paths(paths: list[Path], fmt: str = "auto",
                       columns: dict[str, str] | None = None) -> list[Source]:
    """One source per file, for the command line (`pedigree curate FILE...`). A file named twice
    (`pedigree curate data data/a.jsonl`) is read once."""
    files = dict.fromkeys(p for path in paths for p in readable_files(path))
    return [Source(p.as_posix(), (p,), fmt, dict(columns or {})) for p in files]
