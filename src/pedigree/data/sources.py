"""The datasets curation reads: files under data/raw, each with its format, column mapping,
row limit and mixture weight.

A directory is read as datasets are published and saved (`readable_files`):

- every readable file under it (see `readers.READABLE_SUFFIXES`: `.jsonl.gz` counts by its
  whole suffix), in name order; names starting with "." are skipped, and so are the metadata
  files `datasets` and the Hub keep beside data (`dataset_info.json`, `dataset_infos.json`);
- a directory `datasets`' `save_to_disk` wrote (it holds `state.json` and `dataset_info.json`):
  exactly the `.arrow` files `state.json` lists, in that order, as `load_from_disk` reads them;
  nothing else there is data (the two `.json` files are metadata; any other `.arrow` file, such
  as a `cache-*.arrow`, is not part of the saved dataset);
- a `DatasetDict` saved so (it holds `dataset_dict.json`): its splits, in the order listed there.

With no `data.sources`, `resolve_sources` makes one source per dataset found under
`data.raw_dir` (and `sources_from_paths` does under a directory named on the command line):
- a file;
- a `save_to_disk` directory, named by the directory (a `DatasetDict` gives one source per
  split: `squad/train`, `squad/validation`);
- the shards of one file in one directory, `train-00000-of-00003.parquet` ... (any readable
  suffix; also C4's `c4-train.00000-of-01024.json.gz`), named `dir/train`; shards of `train`
  and `test` side by side, as the Hub lays them out, are two sources. A missing shard is not
  an error: taking the first few shards of a large dataset is common.

A source whose files are all plain text (`.txt`, one document a line) and whose format is auto
is read with format text: its rows are documents (continued pretraining), not conversations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pedigree.config import DataConfig
from pedigree.data.readers import READABLE_SUFFIXES, is_plain_text, readable_suffix
from pedigree.errors import MissingInputError, PedigreeError

SAVED_STATE, SAVED_INFO, SAVED_DICT = "state.json", "dataset_info.json", "dataset_dict.json"
# `train-00000-of-00003.parquet` (the Hub, `datasets`), `c4-train.00000-of-01024.json.gz` (C4).
_SHARD = re.compile(r"(?P<stem>.+)[-.](?P<index>\d+)-of-(?P<total>\d+)$")
_METADATA = {SAVED_INFO, "dataset_infos.json"}  # JSON, but not rows: never read as data


@dataclass(frozen=True)
class Source:
    name: str  # kept as `source` on every row
    files: tuple[Path, ...]
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    limit: int | None = None  # rows read from the source (over all its files), None: all
    weight: float = 1.0  # mixture weight, applied to the training split


def readable_files(path: Path) -> list[Path]:
    """The file itself, or every file read under a directory (in a stable order)."""
    if path.is_file():
        if readable_suffix(path) is None:
            raise PedigreeError(f"{path}: unsupported file type; readable: {READABLE_SUFFIXES}")
        return [path]
    if not path.is_dir():
        raise MissingInputError(f"{path}: no such file or directory")
    files = [p for _, unit in _datasets(path) for p in unit]
    if not files:
        raise MissingInputError(f"{path}: no {'/'.join(READABLE_SUFFIXES)} files to read")
    return files


def _datasets(directory: Path) -> Iterator[tuple[Path, list[Path]]]:
    """The datasets under `directory`, in name order: (what names it, its files). A file is a
    dataset; so are a `save_to_disk` directory and the shards of one file in one directory."""
    if (directory / SAVED_STATE).is_file() and (directory / SAVED_INFO).is_file():
        yield directory, _saved_files(directory)
        return
    if (directory / SAVED_DICT).is_file():
        for split in _saved_splits(directory):
            yield from _datasets(directory / split)
        return
    units: list[tuple[Path, list[Path]]] = []
    shards: dict[tuple[str, str, str], list[Path]] = {}  # (stem, total, suffix): the shards
    number: dict[Path, int] = {}  # of each shard
    # The order of sorted(rglob()): children by name, a directory where its name sorts. A link
    # to a directory is not followed (as rglob), a link to a file is (DVC's link cache types).
    for child in sorted(directory.iterdir()):
        if child.name.startswith(".") or child.name in _METADATA:
            continue
        if child.is_dir() and not child.is_symlink():
            units.extend(_datasets(child))
            continue
        suffix = readable_suffix(child)
        if suffix is None or not child.is_file():
            continue
        shard = _SHARD.fullmatch(child.name[:-len(suffix)])
        if shard is None:
            units.append((child, [child]))
            continue
        key = (shard["stem"], shard["total"], suffix)
        if key not in shards:
            shards[key] = []
            units.append((directory / shard["stem"], shards[key]))  # the same list
        shards[key].append(child)
        number[child] = int(shard["index"])
    for files in shards.values():
        files.sort(key=number.__getitem__)  # by number, not name: widths vary by publisher
    yield from units


def _saved_files(directory: Path) -> list[Path]:
    """The data files of a `save_to_disk` directory, as its state.json lists them: reading them
    all in that order is reading the dataset (`load_from_disk` does the same)."""
    state = directory / SAVED_STATE
    try:
        names = [entry["filename"] for entry in json.loads(state.read_text("utf-8"))["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PedigreeError(f"{state}: not a `datasets` save_to_disk state: no list of data "
                            f"files ({type(err).__name__}: {err})") from None
    files = []
    for name in names:
        # A bare .arrow name: state.json must not send the reader out of the directory.
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".arrow"):
            raise PedigreeError(f"{state}: {name!r} is not the name of an .arrow file here")
        if not (directory / name).is_file():
            raise MissingInputError(f"{state} lists {name}, which is missing")
        files.append(directory / name)
    return files


def _saved_splits(directory: Path) -> list[str]:
    listing = directory / SAVED_DICT
    try:
        splits = json.loads(listing.read_text("utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PedigreeError(f"{listing}: not a `datasets` DatasetDict listing: no splits "
                            f"({type(err).__name__}: {err})") from None
    if not isinstance(splits, list) or not all(
            isinstance(s, str) and s and Path(s).name == s for s in splits):
        raise PedigreeError(f"{listing}: splits must be a list of directory names, got {splits}")
    for split in splits:
        if not (directory / split).is_dir():
            raise MissingInputError(f"{listing} lists split {split}, which is missing")
    return splits


def resolve_sources(data: DataConfig) -> list[Source]:
    """`data.sources`, or one source per dataset under `data.raw_dir` when none are named (a
    file, a `save_to_disk` directory or one file's shards: see the module's docstring)."""
    raw_dir = Path(data.raw_dir)
    if not data.sources:
        found = list(_datasets(raw_dir)) if raw_dir.is_dir() else []
        if not found:  # missing, empty, or a file: readable_files' error, or the file alone
            found = [(raw_dir, readable_files(raw_dir))]
        sources = [Source(_name(where, raw_dir), tuple(files), _format(files, data.format),
                          dict(data.columns)) for where, files in found]
        _check_names(sources, f"the datasets found under {raw_dir}")
        return sources
    sources = []
    for i, sc in enumerate(data.sources):
        path = raw_dir / sc.path
        if not path.exists():
            raise MissingInputError(f"data.sources[{i}].path = {sc.path}: {path} does not exist")
        files = readable_files(path)
        sources.append(Source(
            name=sc.name or sc.path,
            files=tuple(files),
            format=_format(files, sc.format or data.format),
            columns=dict(data.columns if sc.columns is None else sc.columns),
            limit=sc.limit,
            weight=sc.weight,
        ))
    _check_names(sources, "data.sources")
    return sources


def _format(files: list[Path], fmt: str) -> str:
    """`fmt`, except that auto reads a source of plain text files alone (`.txt`: one document a
    line) as format text: a line of prose has no fields to detect a layout by."""
    return "text" if fmt == "auto" and files and all(map(is_plain_text, files)) else fmt


def _name(where: Path, raw_dir: Path) -> str:
    name = where.relative_to(raw_dir).as_posix()
    return raw_dir.name if name == "." else name  # raw_dir is itself a dataset


def _check_names(sources: list[Source], what: str) -> None:
    # Found sources may clash too: shards `train-*-of-00002` and `train-*-of-00003` in one
    # directory are both `train`.
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise PedigreeError(f"{what}: names must be unique, got {names}")


def sources_from_paths(paths: list[Path], fmt: str = "auto",
                       columns: dict[str, str] | None = None) -> list[Source]:
    """For the command line (`pedigree curate PATH...`): one source per file named, and one per
    dataset under a directory named (as `resolve_sources` finds them under raw_dir). A file
    named twice (`pedigree curate data data/a.jsonl`) is read once, the first time."""
    seen: set[Path] = set()
    sources = []
    for path in paths:
        found = list(_datasets(path)) if path.is_dir() else []
        if not found:  # a file; or readable_files' error for a missing or empty directory
            found = [(path, readable_files(path))]
        for where, files in found:
            new = [p for p in files if p not in seen]
            seen.update(new)
            if new:
                sources.append(Source(where.as_posix(), tuple(new), _format(new, fmt),
                                      dict(columns or {})))
    _check_names(sources, "the datasets named")
    return sources
