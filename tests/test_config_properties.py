"""Property-based tests over the config schemas: every key rejects a bad value before any work,
naming the key, the value and what is allowed; an unknown key anywhere is an error.

The keys are walked from the pydantic models themselves, so a key added later is covered without
touching this file. Each example takes the committed params.yaml, breaks one key (or adds one),
and validates it.
"""

from __future__ import annotations

import copy
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types as at
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from pedigree.config import REPO_PATH_KEYS, ConfigError, Params, Section, parse_params

REPO = Path(__file__).resolve().parents[1]
# The committed params with every default filled in, so keys left at their defaults are covered.
# One source entry and a combine block too, so the keys inside lists and optional sections are.
_COMMITTED = yaml.safe_load((REPO / "params.yaml").read_text())
_COMMITTED["data"]["sources"] = [{"path": "mine.jsonl", "limit": 10, "format": "alpaca",
                                  "columns": {"prompt": "question"}}]
_COMMITTED["merge"]["combine"] = {"method": "ties", "adapters": ["../other/adapter"],
                                  "weights": [0.5, 0.5], "density": 0.5}
RAW = parse_params(_COMMITTED).model_dump(mode="json")
# The default base comes from a GGUF package; the embedded model's `model.build` keys are walked
# on the same params with conf/model/tiny.yaml as the model.
_TINY = {**_COMMITTED, "model": yaml.safe_load((REPO / "conf/model/tiny.yaml").read_text())}
RAW_TINY = parse_params(_TINY).model_dump(mode="json")


def _base_of(path: tuple[str, ...]) -> dict:
    """The valid params a key's bad value goes into: the tiny model's for `model.build.*`."""
    return RAW_TINY if path[:2] == ("model", "build") else RAW
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]
    annotation: Any
    metadata: tuple[Any, ...]

    @property
    def key(self) -> str:
        return ".".join(self.path)


def _optional(annotation: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (annotation, False)."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) < len(get_args(annotation)) and len(args) == 1:
            return args[0], True
    return annotation, False


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def leaves(model: type[Section], raw: dict, prefix: tuple[str, ...] = ()) -> list[Leaf]:
    """Every key of `model` present in `raw` (the committed params), descending into sections
    and into the first entry of a list of sections (`data.sources.0.path`)."""
    out = []
    for name, field in model.model_fields.items():
        if name not in raw:
            continue
        inner, _ = _optional(field.annotation)
        item = get_args(inner)[0] if get_origin(inner) is list else None
        if _is_section(inner) and isinstance(raw[name], dict):
            out.append(Leaf((*prefix, name), inner, ()))  # the section itself: not a mapping
            out += leaves(inner, raw[name], (*prefix, name))
        elif _is_section(item) and raw[name]:
            out.append(Leaf((*prefix, name), field.annotation, tuple(field.metadata)))
            out += leaves(item, raw[name][0], (*prefix, name, "0"))
        else:
            out.append(Leaf((*prefix, name), field.annotation, tuple(field.metadata)))
    return out


def sections(model: type[Section], raw: dict, prefix: tuple[str, ...] = ()):
    yield prefix
    for name, field in model.model_fields.items():
        inner, _ = _optional(field.annotation)
        item = get_args(inner)[0] if get_origin(inner) is list else None
        if _is_section(inner) and isinstance(raw.get(name), dict):
            yield from sections(inner, raw[name], (*prefix, name))
        elif _is_section(item) and raw.get(name):
            yield from sections(item, raw[name][0], (*prefix, name, "0"))


LEAVES = leaves(Params, RAW) + [leaf for leaf in leaves(Params, RAW_TINY)
                                if leaf.path[:2] == ("model", "build")]
SECTIONS = list(sections(Params, RAW)) + [s for s in sections(Params, RAW_TINY)
                                          if s[:2] == ("model", "build")]
NOT_A_NUMBER = st.one_of(st.text(min_size=1).filter(lambda s: not _numeric(s)),
                         st.lists(st.integers(), max_size=2), st.dictionaries(st.text(), st.none()))


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _bounds_broken(metadata: tuple[Any, ...], integer: bool) -> list[Any]:
    """Values just outside each bound the field declares."""
    step = 1 if integer else 1e-9
    out: list[Any] = []
    for m in metadata:
        if isinstance(m, at.Ge):
            out.append(m.ge - step)
        elif isinstance(m, at.Gt):
            out.append(m.gt)
        elif isinstance(m, at.Le):
            out.append(m.le + step)
        elif isinstance(m, at.Lt):
            out.append(m.lt)
        elif isinstance(m, at.MinLen) and m.min_length > 0:
            out.append([] if not integer else "")
    return out


def bad_values(leaf: Leaf) -> st.SearchStrategy[Any]:
    """Values the schema must refuse for this key."""
    annotation, nullable = _optional(leaf.annotation)
    if get_origin(annotation) is Annotated:  # e.g. a column map with its own validator
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation)
    never_none = st.nothing() if nullable else st.none()
    if _is_section(annotation):
        return st.one_of(st.integers(), st.text(), st.lists(st.integers(), min_size=1))
    if annotation is bool:
        return st.one_of(st.integers(min_value=2), st.text(min_size=1), st.floats(), never_none)
    if annotation is int:
        return st.one_of(NOT_A_NUMBER, st.booleans(), never_none,
                         st.floats(allow_nan=False).filter(lambda x: not x.is_integer()),
                         st.sampled_from(_bounds_broken(leaf.metadata, True) or [[1]]))
    if annotation is float:
        return st.one_of(NOT_A_NUMBER, st.booleans(), never_none,
                         st.sampled_from([math.nan, math.inf, -math.inf]),
                         st.sampled_from(_bounds_broken(leaf.metadata, False) or [[1.0]]))
    if annotation is str:
        broken = [v for v in _bounds_broken(leaf.metadata, True) if v == ""]
        return st.one_of(st.integers(), st.floats(), st.booleans(), st.lists(st.text()),
                         never_none, st.sampled_from(broken or [{"a": 1}]))
    if origin is Literal:
        allowed = get_args(annotation)
        return st.one_of(st.text().filter(lambda s: s not in allowed), st.integers(), never_none)
    if origin is list:
        return st.one_of(st.integers(), st.text(min_size=1), st.dictionaries(st.text(), st.none(),
                                                                              min_size=1),
                         st.lists(st.dictionaries(st.text(), st.none(), min_size=1), min_size=1),
                         never_none)
    if origin is dict:
        return st.one_of(st.integers(), st.text(min_size=1), st.lists(st.integers(), min_size=1),
                         never_none)
    if origin in (typing.Union, types.UnionType):  # e.g. list[str] | Literal["all-linear"]
        return st.one_of(st.integers(), st.floats(), st.dictionaries(st.text(), st.none()),
                         never_none)
    raise AssertionError(f"{leaf.key}: no strategy for {annotation!r}: extend bad_values")


def _with(raw: dict, path: tuple[str, ...], value: Any) -> dict:
    out = copy.deepcopy(raw)
    node = out
    for part in path[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[path[-1]] = value
    return out


def _rejected(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    return str(err.value)


def test_the_walk_covers_every_section_and_leaf():
    keys = {leaf.key for leaf in LEAVES}
    assert {"seed", "model.build.hidden_size", "model.gguf.sha256", "sft.lora.r",
            "curate.near_dedup.threshold",
            "gate.general_tolerance", "quantize.formats", "eval.harness.tasks",
            "data.sources.0.weight", "merge.combine.density"} <= keys
    assert len(LEAVES) > 100, len(LEAVES)
    for leaf in LEAVES:  # every key has a strategy
        bad_values(leaf)


@pytest.mark.parametrize("leaf", LEAVES, ids=lambda leaf: leaf.key)  # every key, each run
@settings(SETTINGS, max_examples=8)
@given(data=st.data())
def test_every_key_rejects_a_bad_value_naming_key_value_and_allowed(leaf, data):
    value = data.draw(bad_values(leaf), label="value")
    message = _rejected(_with(_base_of(leaf.path), leaf.path, value))
    lines = [line for line in message.splitlines()[1:] if line.strip().startswith(leaf.key)]
    assert lines, f"{leaf.key} not named in:\n{message}"
    line = lines[0]
    if not isinstance(value, dict | list) and "missing" not in line:
        assert repr(value) in line, line  # the value, as given (max_new_tokens too)
    # ...and what is allowed (pydantic's constraint, the allowed literals, or our own text).
    assert line.split(":", 1)[1].strip(), line


@SETTINGS
@given(data=st.data())
def test_an_unknown_key_anywhere_is_an_error(data):
    section = data.draw(st.sampled_from(SECTIONS), label="section")
    name = data.draw(st.from_regex(r"[a-z][a-z_]{0,15}", fullmatch=True), label="key")
    node = _base_of(section)
    for part in section:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if name in node:  # an existing key: spell it wrong instead
        name += "_typo"
    value = data.draw(st.one_of(st.integers(), st.text(), st.booleans()), label="value")
    message = _rejected(_with(_base_of(section), (*section, name), value))
    assert f"{'.'.join((*section, name))}: unknown key" in message, message


SEGMENT = st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True).filter(lambda s: s != "..")
ESCAPING = st.one_of(
    st.lists(SEGMENT, max_size=3).map(lambda parts: "/" + "/".join(parts)),  # absolute
    st.tuples(st.lists(SEGMENT, max_size=2), st.lists(SEGMENT, max_size=2)).map(
        lambda t: "/".join([*t[0], "..", *t[1]])),  # climbs out somewhere along the way
    st.lists(SEGMENT, max_size=2).map(lambda parts: "~/" + "/".join(parts)),
)
INSIDE = st.lists(SEGMENT, min_size=1, max_size=3).map("/".join)


def _path_value(key: str, path: str) -> str:
    return f"{path}/template.jinja" if key == "sft.chat_template" else path


@SETTINGS
@given(key=st.sampled_from([*REPO_PATH_KEYS, "data.sources"]), path=ESCAPING)
def test_paths_in_config_cannot_escape_the_repository(key, path):
    if key == "data.sources":
        raw, named = _with(RAW, ("data", "sources"), [{"path": path}]), "data.sources.0.path"
    else:
        where = tuple(key.split("."))
        raw, named = _with(_base_of(where), where, _path_value(key, path)), key
    message = _rejected(raw)
    assert f"{named} = " in message and "must stay inside the repository" in message, message


@SETTINGS
@given(key=st.sampled_from(REPO_PATH_KEYS), path=INSIDE)
def test_paths_inside_the_repository_are_accepted(key, path):
    where = tuple(key.split("."))
    parse_params(_with(_base_of(where), where, _path_value(key, path)))


def test_the_filled_in_params_are_valid():
    parse_params(RAW)
    parse_params(RAW_TINY)
