"""The `pedigree` command.

    pedigree compose [OVERRIDES...]      compose conf/ into params.yaml (as `dvc exp run` does)
    pedigree lineage PATH [--format ...] the chain from an artifact back to the raw data
    pedigree hash PATH                   the content hash pedigree records for a file or directory

Commands that only read manifests import neither torch nor MLflow: they answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pedigree import lineage


def _compose(args: argparse.Namespace) -> int:
    # The same call `dvc exp run -S` makes, so params.yaml is byte-identical either way.
    from dvc.utils.hydra import compose_and_dump

    from pedigree.config import ConfigError, load_params

    out = Path(args.output)
    # The suffix picks DVC's dumper: keep .yaml so the bytes match what `dvc exp run` writes.
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    compose_and_dump(tmp, str(Path(args.config_dir).resolve()), None, "config", "", args.overrides)
    try:
        load_params(tmp)
    except ConfigError as err:
        tmp.unlink()
        print(err, file=sys.stderr)
        return 2
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "-"


def format_text(chain: list[dict]) -> str:
    lines = []
    for m in chain:
        code = m["code"]
        dirty = "+dirty" if code.get("dirty") else ""
        lines.append(f"{m['path']}  (stage {m['stage']})")
        lines.append(f"  outputs  {m['outputs_sha256']}")
        lines.append(f"  params   {m['params_sha256'][:12]}   seed {m['seed']}   "
                     f"code {_short(code.get('git_commit'))}{dirty} "
                     f"src {code['source_sha256'][:12]}")
        for up in m["upstream"]:
            lines.append(f"  <- {up['path']} ({up['stage']}) {up['outputs_sha256'][:12]}")
        if not m["upstream"]:
            sources = sorted({str(Path(i["path"]).parent) for i in m["inputs"]})
            lines.append(f"  <- source files: {', '.join(sources) or 'none'}")
    roots = chain[0]["roots"]
    base = roots.get("base_model") or {}
    lines.append("roots")
    lines.append(f"  raw data     sha256 {roots.get('data_sha256') or '-'}")
    lines.append(f"  base model   {base.get('id', '-')} @ {base.get('revision') or '-'} "
                 f"sha256 {base.get('sha256') or '-'}")
    return "\n".join(lines)


def format_mermaid(chain: list[dict]) -> str:
    lines = ["graph LR"]
    node = {m["path"]: f"n{i}" for i, m in enumerate(chain)}
    for m in chain:
        lines.append(f'  {node[m["path"]]}["{m["stage"]}<br/>{m["path"]}<br/>'
                     f'{m["outputs_sha256"][:12]}"]')
    for m in chain:
        for up in m["upstream"]:
            if up["path"] in node:
                lines.append(f"  {node[up['path']]} --> {node[m['path']]}")
    data = chain[0]["roots"].get("data_sha256")
    if data:
        lines.append(f'  raw[("raw data<br/>{data[:12]}")]')
        for m in chain:
            if m["roots"].get("data_sha256") and not m["upstream"]:
                lines.append(f"  raw --> {node[m['path']]}")
    return "\n".join(lines)


def _lineage(args: argparse.Namespace) -> int:
    try:
        chain = lineage.lineage_chain(Path(args.path))
    except FileNotFoundError as err:
        print(f"pedigree lineage: {err}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(chain, indent=2, sort_keys=True))
    elif args.format == "mermaid":
        print(format_mermaid(chain))
    else:
        print(format_text(chain))
    return 0


def _hash(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        print(f"pedigree hash: {path}: no such file or directory", file=sys.stderr)
        return 1
    print(lineage.sha256_dir(path, exclude=(lineage.MANIFEST,) if args.artifact else ()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pedigree", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compose", help="compose conf/ into params.yaml")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. sft.learning_rate=1e-3")
    p.add_argument("--config-dir", default="conf")
    p.add_argument("--output", default="params.yaml")
    p.set_defaults(func=_compose)

    p = sub.add_parser("lineage", help="trace an artifact back to the raw data")
    p.add_argument("path", help="a stage output directory or any file inside one")
    p.add_argument("--format", choices=("text", "json", "mermaid"), default="text")
    p.set_defaults(func=_lineage)

    p = sub.add_parser("hash", help="content hash of a file or directory, as manifests record it")
    p.add_argument("path")
    p.add_argument("--artifact", action="store_true",
                   help="leave out lineage.json (a stage output's outputs_sha256)")
    p.set_defaults(func=_hash)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
