"""The `pedigree` command.

    pedigree compose [OVERRIDES...]      compose conf/ into params.yaml (as `dvc exp run` does)
    pedigree params [KEY] [--markdown]   every params.yaml key: type, default, allowed, meaning
    pedigree lineage PATH [--format ...] the chain from an artifact back to the raw data
    pedigree audit [PATH] [--no-mlflow]  recompute every hash; check manifests, dvc.lock, MLflow
    pedigree report [--out FILE]         one self-contained HTML page: lineage, evals, curves
    pedigree report --compare            a Markdown table of the DVC experiments
    pedigree promote [--dry-run]         make the gated model the champion (MLflow registry)
    pedigree sweep -m OVERRIDES...       Hydra multirun: one DVC experiment per configuration
    pedigree base check [--format json]  is a newer revision of a pinned base model out?
    pedigree rebase MODEL [--revision R] the pipeline on a new base model, as a DVC experiment
    pedigree hash PATH                   the content hash pedigree records for a file or directory
    pedigree curate INPUT... --out DIR   curate any files, as the curate stage does
    pedigree split CURATED --out DIR     split a curation output, as the split stage does

Commands that only read manifests import neither torch nor MLflow: they answer at once.
The exit codes are pedigree.errors' EXIT_* constants, documented in the README (Exit codes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pedigree import lineage
from pedigree.errors import (
    EXIT_NEWER,
    EXIT_OK,
    EXIT_USER,
    MissingInputError,
    PedigreeError,
    UsageError,
    exit_code,
)


def _compose(args: argparse.Namespace) -> int:
    # The same call `dvc exp run -S` makes, so params.yaml is byte-identical either way.
    from dvc.utils.hydra import compose_and_dump
    from hydra.errors import HydraException

    from pedigree.config import parse_params, read_yaml

    out = Path(args.output)
    # The suffix picks DVC's dumper: keep .yaml so the bytes match what `dvc exp run` writes.
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    try:
        compose_and_dump(tmp, str(Path(args.config_dir).resolve()), None, "config", "",
                         args.overrides)
    except HydraException as err:  # a bad override: Hydra's own message says what to change
        raise PedigreeError(f"{args.config_dir}/: {err}") from None
    try:
        parse_params(read_yaml(tmp), out)  # a ConfigError names the key; `out` stays as it was
    except PedigreeError:
        tmp.unlink()
        raise
    tmp.replace(out)
    print(f"wrote {out}")
    return EXIT_OK


def _params(args: argparse.Namespace) -> int:
    # Read from the schemas alone: no params.yaml, no torch.
    from pedigree import paramdoc

    if args.write:
        if args.key or args.markdown:
            raise UsageError("--write regenerates the whole reference: give no KEY or --markdown")
        for path in paramdoc.write(Path(".")):
            print(f"wrote {path}")
        return EXIT_OK
    selected = paramdoc.select(args.key)  # an unknown key: a PedigreeError naming close ones
    print(paramdoc.as_markdown(selected) if args.markdown else paramdoc.as_text(selected), end="")
    return EXIT_OK


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
        runs = m.get("mlflow_runs")
        if runs is not None:
            lines.append(f"  mlflow   {', '.join(runs) if runs else 'no run found'}")
        for up in m["upstream"]:
            lines.append(f"  <- {up['path']} ({up['stage']}) {up['outputs_sha256'][:12]}")
        if not m["upstream"]:
            sources = sorted({str(Path(i["path"]).parent) for i in m["inputs"]})
            lines.append(f"  <- source files: {', '.join(sources) or 'none'}")
    roots = chain[0]["roots"]
    base = roots.get("base_model") or {}
    lines.append("roots")
    lines.append(f"  raw data     sha256 {roots.get('data_sha256') or '-'}")
    if roots.get("replay_sha256"):  # general data sft.replay mixed in
        lines.append(f"  replay data  sha256 {roots['replay_sha256']}")
    lines.append(f"  base model   {base.get('id', '-')} @ {base.get('revision') or '-'} "
                 f"sha256 {base.get('sha256') or '-'}")
    if base.get("gguf"):
        lines.append(f"  dequantized  {lineage.gguf_origin(base['gguf'])}")
    return "\n".join(lines)


def _lineage(args: argparse.Namespace) -> int:
    chain = lineage.lineage_chain(Path(args.path))
    if not args.no_mlflow:
        from pedigree.tracking import runs_for_output

        try:
            for m in chain:
                m["mlflow_runs"] = runs_for_output(Path("."), m["outputs_sha256"])
        except Exception as err:  # noqa: BLE001 - a store that cannot answer: no runs shown
            print(f"pedigree lineage: MLflow runs not looked up ({type(err).__name__}: {err})",
                  file=sys.stderr)
    if args.format == "json":
        print(json.dumps(chain, indent=2, sort_keys=True))
    elif args.format == "mermaid":
        print(lineage.mermaid(chain))
    else:
        print(format_text(chain))
    return EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    from pedigree.audit import audit
    from pedigree.config import load_params

    experiment = None
    if not args.no_mlflow:
        tracking = load_params().tracking
        if tracking.enabled:
            experiment = tracking.experiment
        else:
            print("pedigree audit: tracking.enabled is false; MLflow runs not checked")
    findings = audit(Path("."), Path(args.path) if args.path else None, experiment)
    if findings:  # a result, not an exception: every finding is listed
        print(f"audit failed: {findings[0]}", file=sys.stderr)
        for finding in findings[1:]:
            print(f"  also: {finding}", file=sys.stderr)
        return EXIT_USER
    checked = "manifests, dvc.lock" + (" and MLflow runs" if experiment else "")
    print(f"audit passed: every file hashes as recorded; {checked} agree")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from pedigree.files import atomic_write_text
    from pedigree.report import build_report

    if args.compare:
        from pedigree.compare import compare

        text = compare(Path("."))
        if args.out:
            atomic_write_text(Path(args.out), text)
        print(text, end="")
        return EXIT_OK
    out = Path(args.out or "report.html")
    text = build_report(Path("."), out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    print(f"wrote {out}")
    return EXIT_OK


def _promote(args: argparse.Namespace) -> int:
    from pedigree.promote import promote

    return promote(Path("."), args.name, args.dry_run)


def _sweep(args: argparse.Namespace) -> int:
    from pedigree.sweep import main

    if not args.overrides:
        raise UsageError("give overrides, e.g. -m sft.learning_rate=1e-4,3e-4 sft=lora,dora")
    if ":" not in args.objective:
        raise UsageError(f"--objective {args.objective}: expected METRICS_FILE:KEY, e.g. "
                         f"{args.objective}:val_loss")
    return main(args.overrides, Path("."), args.objective, args.direction)


def _base_check(args: argparse.Namespace) -> int:
    from pedigree.basecheck import as_json, as_text, check

    pins = check(Path(args.conf), Path(args.mirror) if args.mirror else None, args.model)
    if args.format == "json":
        print(json.dumps(as_json(pins), indent=2))
    else:
        print(as_text(pins), end="")
    return EXIT_NEWER if any(p.changed for p in pins) else EXIT_OK


def _rebase(args: argparse.Namespace) -> int:
    from pedigree.rebase import rebase

    return rebase(Path("."), args.model, args.revision, args.promote, args.set or [])


def _hash(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        raise MissingInputError(f"{path}: no such file or directory")
    print(lineage.sha256_dir(path, exclude=(lineage.MANIFEST,) if args.artifact else ()))
    return EXIT_OK


# The schema key each `curate` and `split` option sets, for messages about a bad value.
OPTION_KEYS = {"--tokenizer": "tokenizer", "--min-tokens": "min_tokens",
               "--max-tokens": "max_tokens", "--dedup-fields": "dedup_fields",
               "--threshold": "near_dedup.threshold", "--ngram": "decontaminate.ngram",
               "--min-kept-fraction": "min_kept_fraction", "--workers": "workers",
               "--val-fraction": "validation_fraction", "--salt": "salt",
               "--stratify": "stratify"}


def _options(schema, values: dict):
    """A config section from command-line options, checked by its schema as params.yaml is. An
    option not given (None) takes the schema's default; a bad value is a usage error naming the
    option."""
    from pydantic import ValidationError

    def given(d: dict) -> dict:
        return {k: given(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

    try:
        return schema.model_validate(given(values))
    except ValidationError as err:
        flags = {key: flag for flag, key in OPTION_KEYS.items()}
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            where = f"{flags.get(key, key)} {e['input']!r}: " if key else ""
            problems.append(where + e["msg"].removeprefix("Value error, "))
        raise UsageError("; ".join(problems)) from None


def _curate(args: argparse.Namespace) -> int:
    # The same library code as stages/curate.py, on any files; no params.yaml, no MLflow.
    from pedigree.config import CurateConfig, DataConfig
    from pedigree.data.curate import check_kept, curate, eval_files, summary, write_curation
    from pedigree.data.decontaminate import EvalIndex, eval_items
    from pedigree.data.formats import check_format, parse_columns
    from pedigree.data.lengths import TokenCounter
    from pedigree.data.sources import sources_from_paths
    from pedigree.data.tools import ToolSupport
    from pedigree.data_layouts import CURATED_FILES
    from pedigree.files import atomic_dir

    tokenizer = args.tokenizer
    default = CurateConfig.model_fields["tokenizer"].default  # the base stage's output
    if tokenizer is None and default and (Path(default) / "tokenizer.json").is_file():
        tokenizer = default
    cfg = _options(CurateConfig, {
        "tokenizer": tokenizer, "min_tokens": args.min_tokens, "max_tokens": args.max_tokens,
        "dedup_fields": args.dedup_fields,
        "near_dedup": {"enabled": not args.no_near_dedup, "threshold": args.threshold},
        "decontaminate": {"ngram": args.ngram}, "min_kept_fraction": args.min_kept_fraction,
        "workers": args.workers,
    })
    data = DataConfig.model_fields  # the defaults of --format and --eval-dir
    fmt = args.format or data["format"].default
    try:
        columns = parse_columns(args.columns) if args.columns else {}
    except ValueError as err:
        raise UsageError(f"--columns {args.columns}: {err}") from None
    try:
        check_format(fmt)
    except ValueError as err:
        raise UsageError(f"--format: {err}") from None
    sources = sources_from_paths([Path(p) for p in args.inputs], fmt, columns)
    against = eval_files(Path(args.eval_dir or data["eval_dir"].default),
                         [Path(p) for p in args.against])
    index = EvalIndex(eval_items(against), cfg.decontaminate.ngram,
                      cfg.decontaminate.min_words) if against else None
    counter = TokenCounter(tokenizer) if tokenizer else None
    result = curate(sources, cfg, index, counter, ToolSupport(tokenizer) if tokenizer else None,
                    progress=lambda line: print(line, file=sys.stderr, flush=True))
    with atomic_dir(Path(args.out)) as tmp:
        report = write_curation(result, tmp)
    print(summary(report))
    print(f"length bounds: {f'tokens of {tokenizer}' if tokenizer else 'off (no --tokenizer)'}; "
          f"decontaminated against {len(against)} file(s)")
    print(f"wrote {args.out}/ ({', '.join(name for _, name in CURATED_FILES)}, rejects.jsonl, "
          "report.json)")
    check_kept(result, cfg.min_kept_fraction)  # after writing: the rejects are there to read
    return EXIT_OK


def _split(args: argparse.Namespace) -> int:
    from pedigree.config import SplitConfig
    from pedigree.data.split import ASSIGNMENTS, read_assignments, split_curated
    from pedigree.files import atomic_dir

    curated, out = Path(args.curated), Path(args.out)
    if not (curated / "report.json").is_file():
        raise MissingInputError(f"{curated}: not a curation output (no report.json)")
    cfg = _options(SplitConfig, {"validation_fraction": args.val_fraction, "salt": args.salt,
                                 "stratify": args.stratify})
    table = read_assignments(out / ASSIGNMENTS)
    with atomic_dir(out) as tmp:
        report = split_curated(curated, tmp, cfg, table)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(report["summary"])
    print(f"wrote {out}/")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    # Option values and defaults come from where they are defined, never restated here: an
    # option's value is checked by its schema when the command runs (`_options`), so building
    # the parser imports no pydantic (`pedigree lineage` answers in ~0.1 s).
    from pedigree.data_layouts import FORMATS
    from pedigree.sweep import DEFAULT_OBJECTIVE

    parser = argparse.ArgumentParser(prog="pedigree", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compose", help="compose conf/ into params.yaml")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. sft.learning_rate=1e-3")
    p.add_argument("--config-dir", default="conf")
    p.add_argument("--output", default="params.yaml")
    p.set_defaults(func=_compose)

    p = sub.add_parser("params", help="every params.yaml key: type, default, allowed values, "
                       "meaning (from the schemas)")
    p.add_argument("key", nargs="?", help="a section or key, e.g. sft or sft.lora.r (default: all)")
    p.add_argument("--markdown", action="store_true", help="Markdown tables, one per section")
    p.add_argument("--write", action="store_true", help="regenerate conf/schema_defaults.yaml and "
                   "README.md's reference from the schemas (run from the project root)")
    p.set_defaults(func=_params)

    p = sub.add_parser("lineage", help="trace an artifact back to the raw data")
    p.add_argument("path", help="a stage output directory or any file inside one")
    p.add_argument("--format", choices=("text", "json", "mermaid"), default="text")
    p.add_argument("--no-mlflow", action="store_true", help="do not look up the MLflow runs")
    p.set_defaults(func=_lineage)

    p = sub.add_parser("audit", help="recompute every hash and check manifests, dvc.lock, MLflow")
    p.add_argument("path", nargs="?", help="audit this artifact's lineage only (default: all)")
    p.add_argument("--no-mlflow", action="store_true", help="skip the MLflow run checks")
    p.set_defaults(func=_audit)

    p = sub.add_parser("report", help="one self-contained HTML page of the pipeline")
    p.add_argument("--out", help="where to write (default report.html; with --compare: "
                   "stdout only unless given)")
    p.add_argument("--compare", action="store_true",
                   help="a Markdown table of the DVC experiments (e.g. one per SFT method)")
    p.set_defaults(func=_report)

    p = sub.add_parser("promote", help="make the gated model the champion (MLflow registry)")
    p.add_argument("--dry-run", action="store_true", help="check and say what it would do")
    p.add_argument("--name", help="registered model name (default: gate.registered_model)")
    p.set_defaults(func=_promote)

    p = sub.add_parser("sweep", help="Hydra multirun: one DVC experiment per configuration")
    p.add_argument("--objective", default=DEFAULT_OBJECTIVE,
                   help="metrics file:key that the jobs return (default: %(default)s)")
    p.add_argument("--direction", choices=("minimize", "maximize"), default="minimize")
    p.add_argument("-m", "--multirun", action="store_true",
                   help="accepted for Hydra's spelling; a sweep is always a multirun")
    p.add_argument("overrides", nargs="*",
                   help="Hydra overrides, e.g. sft.learning_rate=1e-4,3e-4 sft=lora,dora "
                   "hydra/sweeper=tpe hydra/launcher=parallel")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("base", help="base models: is a newer revision out?")
    base_sub = p.add_subparsers(dest="base_command", required=True)
    p = base_sub.add_parser("check", help="compare each pinned hub model with the latest "
                            f"revision (exits {EXIT_NEWER}, EXIT_NEWER, when one is newer; "
                            "README: Exit codes)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--mirror", help="a local Hugging Face cache directory to ask instead of the "
                   "Hub (default offline: HF_HUB_CACHE)")
    p.add_argument("--model", help="only this conf/model file")
    p.add_argument("--conf", default="conf", help=argparse.SUPPRESS)
    p.set_defaults(func=_base_check)

    p = sub.add_parser("rebase", help="run the pipeline on a new base model as a DVC experiment")
    p.add_argument("model", help="a conf/model/ file name, e.g. llama")
    p.add_argument("--revision", help="the new 40-character revision (default: the file's)")
    p.add_argument("--promote", action="store_true", help="promote when the gate passes")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="another override for the experiment (repeatable)")
    p.set_defaults(func=_rebase)

    p = sub.add_parser("hash", help="content hash of a file or directory, as manifests record it")
    p.add_argument("path")
    p.add_argument("--artifact", action="store_true",
                   help="leave out lineage.json (a stage output's outputs_sha256)")
    p.set_defaults(func=_hash)

    schema_defaults = ("An option not given takes the default of its key in the config schema "
                       "(src/pedigree/config.py), not params.yaml's value.")
    p = sub.add_parser("curate", help="validate, filter, deduplicate and decontaminate files",
                       description=schema_defaults)
    p.add_argument("inputs", nargs="+", help=".jsonl/.json/.parquet/.csv/.arrow files, .txt (one "
                   "document a line), or directories")
    p.add_argument("--out", required=True, help="output directory (replaced atomically)")
    p.add_argument("--format", help="auto (the default: each row's layout is detected), a "
                   f"format ({', '.join(FORMATS)}) or a layout name from the README's table")
    p.add_argument("--columns", help="canonical=yours, e.g. prompt=question,completion=answer")
    p.add_argument("--against", nargs="*", default=[], metavar="FILE",
                   help="more eval files to decontaminate against")
    p.add_argument("--eval-dir", help="always checked when it exists (default: data.eval_dir)")
    p.add_argument("--tokenizer", help="directory with tokenizer.json for the length bounds "
                   "(default: curate.tokenizer's default when it holds one, the base model; "
                   "otherwise no length bounds)")
    p.add_argument("--min-tokens", type=int, help="default: curate.min_tokens")
    p.add_argument("--max-tokens", type=int, help="default: curate.max_tokens")
    p.add_argument("--threshold", type=float,
                   help="near-duplicate Jaccard (default: curate.near_dedup.threshold)")
    p.add_argument("--dedup-fields", help="default and values: `pedigree params "
                   "curate.dedup_fields`")
    p.add_argument("--no-near-dedup", action="store_true")
    p.add_argument("--ngram", type=int, help="decontamination n-gram, words (default: "
                   "curate.decontaminate.ngram)")
    p.add_argument("--min-kept-fraction", type=float,
                   help="fail (exit 1) when a file keeps a smaller fraction of its rows; 0: "
                   "only when it keeps none (default: curate.min_kept_fraction)")
    p.add_argument("--workers", type=int, help="processes for the per-row checks (default: "
                   "curate.workers, every core); the output is the same for any number")
    p.set_defaults(func=_curate)

    p = sub.add_parser("split", help="split a curation output into train and validation",
                       description=schema_defaults)
    p.add_argument("curated", help="a directory written by `pedigree curate` or the stage")
    p.add_argument("--out", required=True,
                   help="output directory; its assignments.tsv, if any, keeps rows' sides")
    p.add_argument("--val-fraction", type=float, help="default: split.validation_fraction")
    p.add_argument("--salt", help="default: split.salt")
    p.add_argument("--stratify", help="default and values: `pedigree params split.stratify`")
    p.set_defaults(func=_split)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a command line it refuses exits EXIT_USAGE
    try:
        return args.func(args)
    except PedigreeError as err:
        # The one handler: a user error is one message naming what to fix, no traceback.
        command = " ".join(filter(None, (args.command, getattr(args, "base_command", None))))
        print(f"pedigree {command}: {err}", file=sys.stderr)
        return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
