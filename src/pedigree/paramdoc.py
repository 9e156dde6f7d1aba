"""`pedigree params`: every key of params.yaml with its type, default, allowed values and meaning,
read from the schemas in pedigree.config (no torch, no Hydra).

The schema is where a default lives. Two files are generated from it, and tests check both are
current (`pedigree params --write` rewrites them):

- `conf/schema_defaults.yaml`, the first entry of conf/config.yaml's defaults list: every default
  as Hydra composes it, so that `dvc exp run` (which composes conf/ itself) writes the complete
  params.yaml. Required keys are `???` there (a conf/model file gives them); the group files in
  conf/ hold only what their choice changes.
- README.md's configuration reference, between `<!-- params:begin -->` and `<!-- params:end -->`.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pedigree.config import Params
from pedigree.errors import MissingInputError, PedigreeError

SCHEMA_DEFAULTS = Path("conf/schema_defaults.yaml")
README = Path("README.md")
BEGIN, END = "<!-- params:begin -->", "<!-- params:end -->"

# Keys the schema fills in but params.yaml does not carry: adding them to the composition would
# change the params its stages are recorded with (dvc.lock), and so re-run them for nothing.
NOT_COMPOSED = ("eval.harness",)

REQUIRED = "required"


@dataclass(frozen=True)
class Param:
    key: str  # dotted; the keys of a list's entries under `[]`: data.sources[].path
    type: str  # int, float, str, bool, list[str], dict[str, float], section, list[section]
    default: str  # as YAML writes it; "required" when the schema has none
    allowed: str  # Literal choices, numeric and length bounds; "" when the type says it all
    description: str
    section: bool = False  # a mapping of keys of its own (they follow it)


def _strip(annotation: Any) -> Any:
    """The type under `Annotated[...]` (validators and constraints are not the type)."""
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _members(annotation: Any) -> list[Any]:
    annotation = _strip(annotation)
    if get_origin(annotation) in (typing.Union, types.UnionType):
        return [_strip(a) for a in get_args(annotation)]
    return [annotation]


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _type_name(annotation: Any) -> str:
    annotation = _strip(annotation)
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(annotation))
    if origin is Literal:
        return " | ".join(sorted({type(v).__name__ for v in get_args(annotation)}))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(annotation))}]"
    if annotation is type(None):
        return "null"
    if _is_section(annotation):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _choices(annotation: Any) -> list[str]:
    """The Literal values of the type: its own (`a | b`, `a | b, or a list[str]` when other
    types are allowed too) or its list items' (`each: a | b`)."""
    members = _members(annotation)
    direct = [v for m in members if get_origin(m) is Literal for v in get_args(m)]
    others = [m for m in members if get_origin(m) is not Literal and m is not type(None)]
    if direct:
        text = " | ".join(_value(v) for v in direct)
        return [text + (f", or a {' | '.join(map(_type_name, others))}" if others else "")]
    items = [v for m in others if get_origin(m) is list
             for i in _members(get_args(m)[0]) if get_origin(i) is Literal for v in get_args(i)]
    return ["each: " + " | ".join(_value(v) for v in items)] if items else []


_BOUNDS = ((at.Ge, "ge", ">="), (at.Gt, "gt", ">"), (at.Le, "le", "<="), (at.Lt, "lt", "<"))


def _allowed(field: Any) -> str:
    parts = _choices(field.annotation)
    text = _strip(field.annotation) is str
    for item in field.metadata:
        for kind, attr, sign in _BOUNDS:
            if isinstance(item, kind):
                parts.append(f"{sign} {_value(getattr(item, attr))}")
        if isinstance(item, at.MinLen):
            n = item.min_length
            parts.append("not empty" if n == 1 else
                         f"at least {n} {'characters' if text else 'items'}")
        if isinstance(item, at.MaxLen):
            parts.append(f"at most {item.max_length} {'characters' if text else 'items'}")
    return ", ".join(parts)


def _value(value: Any) -> str:
    """A value as it is written in conf/ (YAML flow style)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _default(field: Any) -> Any:
    if field.default_factory is not None:
        return field.default_factory()
    return field.default


def params(model: type[BaseModel] = Params, prefix: str = "",
           defaults: BaseModel | None = None) -> list[Param]:
    """Every key of `model`, depth first in schema order. `defaults`: the instance the section's
    own default is (`align.lora` is a LoraConfig with r=8): its values are the keys' defaults."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if defaults is not None:
            value = getattr(defaults, name)
        else:
            value = PydanticUndefined if field.is_required() else _default(field)
        members = _members(field.annotation)
        sections = [m for m in members if _is_section(m)]
        lists = [get_args(m)[0] for m in members if get_origin(m) is list
                 and _is_section(get_args(m)[0])]
        if sections or lists:
            kind = "section" if sections else "list[section]"
            if type(None) in members:
                kind += " | null"
            # A section params.yaml always has shows no default; its keys show theirs.
            shown = "" if value is PydanticUndefined or isinstance(value, BaseModel) else (
                _value(value))
            out.append(Param(key, kind, shown, "", field.description or "", section=True))
            inner = value if isinstance(value, BaseModel) else None
            if sections:
                out += params(sections[0], f"{key}.", inner)
            else:
                out += params(lists[0], f"{key}[].")
            continue
        shown = REQUIRED if value is PydanticUndefined else _value(value)
        out.append(Param(key, _type_name(field.annotation), shown, _allowed(field),
                         field.description or ""))
    return out


def _normalise(key: str) -> str:
    """`data.sources.0.path`, `data.sources[0].path` and `data.sources.path` all name
    `data.sources[].path`."""
    key = re.sub(r"\[\d*\]", "", key.strip())
    return ".".join(part for part in key.split(".") if part and not part.isdigit())


def select(key: str | None, every: list[Param] | None = None) -> list[Param]:
    """The key itself and, for a section, everything under it; an unknown key is an error naming
    the keys it may have meant."""
    every = params() if every is None else every
    if not key:
        return every
    wanted = _normalise(key)
    found = [p for p in every if _normalise(p.key) == wanted
             or _normalise(p.key).startswith(wanted + ".")]
    if found:
        return found
    names = {_normalise(p.key): p.key for p in every}  # as typed -> as printed
    close = difflib.get_close_matches(wanted, list(names), n=5, cutoff=0.6)
    leaf = wanted.rsplit(".", 1)[-1]
    close += [n for n in names if n.rsplit(".", 1)[-1] == leaf and n not in close]
    hint = f"; did you mean: {', '.join(names[n] for n in close[:8])}" if close else ""
    raise PedigreeError(f"unknown key {key!r}{hint} (`pedigree params` lists every key)")


def as_text(selected: list[Param]) -> str:
    lines = []
    for p in selected:
        head = f"{p.key}: {p.type}"
        if p.default:
            head += f" = {p.default}" if p.default != REQUIRED else " (required)"
        if p.allowed:
            head += f"   allowed: {p.allowed}"
        lines.append(head)
        if p.description:
            lines.append(f"    {p.description}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Table cell text: pipes escaped, and a tag-like `<x` outside code spans (HTML would eat
    <format>)."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(part if i % 2 else re.sub(r"<(?=[A-Za-z/!?])", "&lt;", part)
                    for i, part in enumerate(parts))


def as_markdown(selected: list[Param]) -> str:
    """One table per top-level section (the keys directly under the root in one table)."""
    groups: dict[str, list[Param]] = {}
    heads: dict[str, Param] = {}
    for p in selected:
        top = p.key.split(".", 1)[0].split("[", 1)[0]
        if p.key == top and p.section:
            heads[top] = p
            groups.setdefault(top, [])
        else:
            groups.setdefault(top if top in heads else "", []).append(p)
    out = []
    for top, rows in groups.items():
        head = heads.get(top)
        if head is not None:
            out.append(f"**`{top}`**: {head.description}" if head.description else f"**`{top}`**")
        elif not rows:
            continue
        out += ["", "| Key | Type | Default | Allowed | Description |",
                "| --- | --- | --- | --- | --- |"]
        for p in rows:
            default = p.default.replace("|", "\\|")  # in a code span: only pipes need escaping
            default = f"`{default}`" if p.default and p.default != REQUIRED else default
            out.append(f"| `{p.key}` | {_cell(p.type)} | {default} | {_cell(p.allowed)} | "
                       f"{_cell(p.description)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _skeleton(model: type[BaseModel], prefix: str, defaults: BaseModel | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if key in NOT_COMPOSED:
            continue
        if defaults is not None:
            value = getattr(defaults, name)
        else:
            value = PydanticUndefined if field.is_required() else _default(field)
        sections = [m for m in _members(field.annotation) if _is_section(m)]
        if sections and (value is PydanticUndefined or isinstance(value, BaseModel)):
            inner = value if isinstance(value, BaseModel) else None
            out[name] = _skeleton(sections[0], f"{key}.", inner)
        elif value is PydanticUndefined:
            out[name] = "???"  # Hydra's mandatory value: a conf/ group file must give it
        else:
            out[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return out


def schema_defaults_yaml() -> str:
    """conf/schema_defaults.yaml: every default of the schema, in params.yaml's order."""
    header = (
        "# GENERATED from the schemas in src/pedigree/config.py by `pedigree params --write`: do\n"
        "# not edit (a test checks it is current). Every default lives in the schema; this file\n"
        "# hands them to Hydra, first in conf/config.yaml's defaults list, so that params.yaml\n"
        "# (composed by `pedigree compose` or `dvc exp run`) carries every key. The files of\n"
        "# conf/'s groups and presets hold only what their choice changes. `???`: a value conf/\n"
        "# must give (the model's). Meaning, types and bounds: `pedigree params [KEY]`.\n"
    )
    body = yaml.safe_dump(_skeleton(Params, "", None), sort_keys=False, width=100,
                          allow_unicode=True)
    return header + body


def readme_section() -> str:
    return (f"{BEGIN}\n<!-- generated by `pedigree params --write` from src/pedigree/config.py; "
            f"a test checks it is current -->\n\n{as_markdown(params())}\n{END}")


def with_readme_section(text: str) -> str:
    """README text with its reference section regenerated."""
    if BEGIN not in text or END not in text:
        raise PedigreeError(f"{README}: no {BEGIN} ... {END} section to fill")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + readme_section() + text[end:]


def write(root: Path = Path(".")) -> list[Path]:
    """Regenerate conf/schema_defaults.yaml and README.md's reference; the paths rewritten."""
    from pedigree.files import atomic_write_text

    for need in (root / README, (root / SCHEMA_DEFAULTS).parent):
        if not need.exists():
            raise MissingInputError(f"{need}: not found; run from the project root")
    changed = []
    for path, new in ((root / SCHEMA_DEFAULTS, schema_defaults_yaml()),
                      (root / README, with_readme_section((root / README).read_text()))):
        if not path.exists() or path.read_text() != new:
            atomic_write_text(path, new)
            changed.append(path)
    return changed
