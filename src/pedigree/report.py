"""`pedigree report`: one self-contained HTML file a person can read.

The lineage graph of the whole pipeline, the eval table, the training curves and eval charts, and
links to the model cards, the Modelfiles and the MLflow runs. Everything is drawn as inline SVG
from the manifests, metrics and curve files: no script, no network, no file beside it.
"""

from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path
from typing import Any

from pedigree import lineage
from pedigree.errors import MissingInputError
from pedigree.eval_metrics import REPORT_CHARTS
from pedigree.files import read_json
from pedigree.pipeline import stage_out
from pedigree.records import GATE_FILE, read_gate
from pedigree.tracking import runs_for_output, tracking_uri
from pedigree.urls import public_url

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
td pre { white-space: pre-wrap; text-align: left; margin: 0; max-width: 22em; }
th:first-child, td:first-child { text-align: left; }
code { font-size: 0.85em; } .node rect { fill: #eef4fb; stroke: #1f77b4; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _depths(chain: list[dict[str, Any]]) -> dict[str, int]:
    """Layer of each artifact: 0 for those made from sources, else 1 + deepest upstream."""
    by_path = {m["path"]: m for m in chain}
    depth: dict[str, int] = {}

    def visit(path: str) -> int:
        if path not in depth:
            ups = [u["path"] for u in by_path[path]["upstream"] if u["path"] in by_path]
            depth[path] = 1 + max((visit(u) for u in ups), default=-1)
        return depth[path]

    for path in by_path:
        visit(path)
    return depth


def lineage_svg(chain: list[dict[str, Any]]) -> str:
    """The DAG, one column per layer, an arrow per upstream edge."""
    depth = _depths(chain)
    columns: dict[int, list[str]] = {}
    for path in sorted(depth, key=lambda p: (depth[p], p)):
        columns.setdefault(depth[path], []).append(path)
    width, height, gap_x, gap_y = 170, 54, 60, 24
    pos = {path: (20 + d * (width + gap_x), 20 + i * (height + gap_y))
           for d, paths in columns.items() for i, path in enumerate(paths)}
    total_w = 40 + len(columns) * (width + gap_x)
    total_h = 40 + max(len(p) for p in columns.values()) * (height + gap_y)
    parts = [(f'<svg id="lineage-graph" xmlns="http://www.w3.org/2000/svg" '
              f'viewBox="0 0 {total_w} {total_h}" width="100%" role="img" '
              f'aria-label="lineage graph">'),
             ('<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
              'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/>'
              '</marker></defs>')]
    for m in chain:
        x, y = pos[m["path"]]
        for up in m["upstream"]:
            if up["path"] in pos:
                ux, uy = pos[up["path"]]
                parts.append(f'<line x1="{ux + width}" y1="{uy + height / 2}" x2="{x}" '
                             f'y2="{y + height / 2}" stroke="#555" marker-end="url(#arrow)"/>')
    for m in chain:
        x, y = pos[m["path"]]
        parts.append(
            f'<g class="node"><rect x="{x}" y="{y}" width="{width}" height="{height}" rx="6"/>'
            f'<text x="{x + 8}" y="{y + 18}" font-weight="bold">{_esc(m["stage"])}</text>'
            f'<text x="{x + 8}" y="{y + 33}" font-size="11">{_esc(m["path"])}</text>'
            f'<text x="{x + 8}" y="{y + 47}" font-size="10" font-family="monospace">'
            f'{_esc(m["outputs_sha256"][:16])}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(chart_id: str, series: dict[str, list[tuple[float, float]]], x_label: str,
               y_label: str) -> str:
    """A line chart of named (x, y) series, with axes, ticks and a legend."""
    points = [p for s in series.values() for p in s]
    if not points:
        return f'<p id="{chart_id}">no data</p>'
    w, h, left, bottom = 520, 260, 55, 35
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - 10)

    def sy(y: float) -> float:
        return h - bottom - (y - y0) / (y1 - y0) * (h - bottom - 10)

    parts = [(f'<svg id="{chart_id}" xmlns="http://www.w3.org/2000/svg" width="{w}" '
              f'height="{h}" role="img" aria-label="{_esc(y_label)} by {_esc(x_label)}">'),
             f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" stroke="#333"/>',
             f'<line x1="{left}" y1="10" x2="{left}" y2="{h - bottom}" stroke="#333"/>']
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        parts.append(f'<text x="{left - 5}" y="{sy(yv) + 4}" font-size="10" '
                     f'text-anchor="end">{yv:.3g}</text>')
        xv = x0 + (x1 - x0) * i / 4
        parts.append(f'<text x="{sx(xv)}" y="{h - bottom + 14}" font-size="10" '
                     f'text-anchor="middle">{xv:.4g}</text>')
    parts.append(f'<text x="{w / 2}" y="{h - 4}" font-size="11" text-anchor="middle">'
                 f'{_esc(x_label)}</text>')
    for i, (name, data) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(data))
        parts.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{coords}"/>')
        parts.append(f'<text x="{left + 10 + 110 * i}" y="20" font-size="11" fill="{colour}">'
                     f'{_esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(chart_id: str, values: dict[str, float], label: str) -> str:
    w, bar, left = 520, 22, 110
    top = max(values.values(), default=1.0) or 1.0
    h = 20 + len(values) * (bar + 8)
    parts = [(f'<svg id="{chart_id}" xmlns="http://www.w3.org/2000/svg" width="{w}" '
              f'height="{h}" role="img" aria-label="{_esc(label)}">')]
    for i, (name, value) in enumerate(values.items()):
        y = 10 + i * (bar + 8)
        length = max(value, 0) / top * (w - left - 70)
        parts.append(f'<text x="{left - 6}" y="{y + 15}" font-size="11" text-anchor="end">'
                     f'{_esc(name)}</text><rect class="bar" x="{left}" y="{y}" '
                     f'width="{length:.1f}" height="{bar}" fill="{COLOURS[i % len(COLOURS)]}"/>'
                     f'<text x="{left + length + 4}" y="{y + 15}" font-size="11">{value:.4g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _curve(path: Path) -> list[tuple[float, float]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [(float(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def _mlflow_link(root: Path, run_id: str) -> str:
    """Where a run shows in the MLflow UI: the team server, or `mlflow ui` on the local store."""
    uri = tracking_uri(root)
    base = public_url(uri) if uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/runs/{run_id}"


def eval_table(results: dict[str, dict[str, float]]) -> str:
    keys = sorted({k for r in results.values() for k in r if "." not in k})
    head = "".join(f"<th>{_esc(k)}</th>" for k in keys)
    rows = "".join(
        f"<tr><td>{_esc(model)}</td>"
        + "".join(f"<td>{r[k]:.4g}</td>" if k in r else "<td>-</td>" for k in keys) + "</tr>"
        for model, r in results.items())
    return f'<table id="eval-table"><tr><th>model</th>{head}</tr>{rows}</table>'


SIDE_BY_SIDE = 8  # answers shown in the report's side-by-side table


def side_by_side(eval_dir: Path, candidate: str, reference: str | None,
                 limit: int = SIDE_BY_SIDE) -> str:
    """The answers of the base, the best prompted baseline (`reference`) and the candidate to a
    sample of task prompts where they differ, each with its task score and the judge's verdict:
    the first `limit` by id where the scores differ, then where only the answers do."""
    rows = [json.loads(line) for line in
            (eval_dir / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    items = read_json(eval_dir / "items.json")
    judged = read_json(eval_dir / "judge.json") if (eval_dir / "judge.json").is_file() else {}
    verdicts = judged.get("verdicts", {}).get("base", {})
    models = [m for m in ("base", reference, candidate) if m]

    def score(model: str, row_id: str) -> float | None:
        return items.get(model, {}).get("task_score", {}).get(row_id)

    differ = [r for r in sorted(rows, key=lambda r: r["id"])
              if len({r["answers"].get(m) for m in models}) > 1]
    differ.sort(key=lambda r: len({score(m, r["id"]) for m in models}) == 1)  # stable
    if not differ:
        return '<p id="side-by-side">every model gave the same answers</p>'
    head = "".join(f"<th>{_esc(m)}</th>" for m in models)
    body = []
    for r in differ[:limit]:
        cells = []
        for m in models:
            note = f"score {score(m, r['id']):g}" if score(m, r["id"]) is not None else ""
            if m == candidate and r["id"] in verdicts:
                note += f"; judge vs base {verdicts[r['id']]['score']:g}"
            cells.append(f"<td><pre>{_esc(r['answers'].get(m, '-'))}</pre><small>{_esc(note)}"
                         "</small></td>")
        body.append(f"<tr><td><pre>{_esc(r['prompt'])}</pre></td>{''.join(cells)}</tr>")
    return (f'<table id="side-by-side"><tr><th>prompt</th>{head}</tr>{"".join(body)}</table>'
            f"<p>{min(limit, len(differ))} of the {len(differ)} task prompts where the answers "
            "differ, those where the scores differ first; every answer is in "
            f"<code>{_esc((eval_dir / 'answers.jsonl').name)}</code>.</p>")


def judge_summary(judged: dict[str, Any]) -> str:
    """The judge's win rates and its agreement with people, from metrics/judge.json."""
    lines = []
    for opponent, w in judged["against"].items():
        if "win_rate" in w:
            lines.append(f"over the {opponent}: win rate {w['win_rate']:.3f} (95 % CI "
                         f"{w['ci95'][0]:.3f}-{w['ci95'][1]:.3f}; {w['wins']} won, {w['ties']} "
                         f"tied, {w['losses']} lost of {w['n']})")
        else:
            lines.append(f"over the {opponent}: not judged ({w['not_judged']})")
    cal = judged.get("calibration")
    if cal:
        kappa = "undefined" if cal["kappa"] is None else f"{cal['kappa']:.3f}"
        lines.append(f"against people on {cal['n']} labelled pairs: agreement "
                     f"{cal['agreement']:.3f}, Cohen's kappa {kappa}")
    who = judged["judge"]
    name = who.get("endpoint") or who.get("model")
    return (f'<ul id="judge"><li>judge: {_esc(name)} ({_esc(who.get("model"))})</li>'
            + "".join(f"<li>{_esc(line)}</li>" for line in lines) + "</ul>")


def build_report(root: Path, out_dir: Path) -> str:
    """The report's HTML for the pipeline whose last stage is eval; links are relative to
    `out_dir`, where the file will be."""
    root = root.resolve()
    final = stage_out("eval", root).as_posix()
    if not (root / final / lineage.MANIFEST).is_file():
        raise MissingInputError(f"{final}/{lineage.MANIFEST}: not found; run `dvc repro` first "
                                "(the report covers a finished pipeline)")
    chain = lineage.lineage_chain(root / final, root)
    roots = chain[0]["roots"]
    base = roots.get("base_model") or {}
    sections = [(f"<h1>pedigree report</h1><p>Raw data <code>{_esc(roots.get('data_sha256'))}"
                 f"</code>; base model <code>{_esc(base.get('id'))}</code> @ "
                 f"<code>{_esc(base.get('revision'))}</code> (sha256 "
                 f"<code>{_esc(base.get('sha256'))}</code>).</p>")]
    sections.append("<h2>Lineage</h2>" + lineage_svg(chain))
    rows = []
    for m in chain:
        runs = runs_for_output(root, m["outputs_sha256"])
        links = " ".join(f'<a class="mlflow-run" href="{_esc(_mlflow_link(root, r))}">'
                         f"{_esc(r[:8])}</a>" for r in runs) or "none"
        rows.append(f"<tr><td>{_esc(m['stage'])}</td><td>{_esc(m['path'])}</td>"
                    f"<td><code>{_esc(m['outputs_sha256'][:16])}</code></td>"
                    f"<td><code>{_esc(m['params_sha256'][:12])}</code></td>"
                    f"<td><code>{_esc((m['code'].get('git_commit') or '-')[:12])}</code></td>"
                    f"<td>{links}</td></tr>")
    sections.append('<table id="stages"><tr><th>stage</th><th>output</th><th>sha256</th>'
                    "<th>params</th><th>commit</th><th>MLflow runs</th></tr>"
                    + "".join(rows) + "</table>")
    out = {stage: root / stage_out(stage, root) for stage in ("sft", "align", "merge", "quantize",
                                                             "eval")}
    eval_file = out["eval"] / "eval.json"
    if eval_file.is_file():
        results = read_json(eval_file)
        sections.append("<h2>Evaluation</h2>" + eval_table(results))
        if (out["eval"] / GATE_FILE).is_file():
            gate = read_gate(out["eval"])
            verdict = "PASSED" if gate["passed"] else "FAILED"
            sections.append(f'<h3 id="gate">Promotion gate: {verdict} '
                            f"({_esc(gate['candidate'])})</h3><ul>" + "".join(
                                f"<li>{_esc(r)}</li>" for r in gate["reasons"]) + "</ul>")
            prompted = next((c.get("reference") for c in gate["checks"]
                             if c["check"] == "gain over prompting"), None)
            if (out["eval"] / "answers.jsonl").is_file():
                sections.append("<h3>Answers side by side</h3>" + side_by_side(
                    out["eval"], gate["candidate"], prompted))
            if (out["eval"] / "judge.json").is_file():
                sections.append("<h3>Pairwise judge</h3>"
                                + judge_summary(read_json(out["eval"] / "judge.json")))
        for key in REPORT_CHARTS:
            values = {m: r[key] for m, r in results.items() if key in r}
            sections.append(f"<h3>{_esc(key)}</h3>" + bar_chart(f"eval-{key}", values, key))
    sections.append("<h2>Training</h2><h3>SFT loss</h3>" + line_chart(
        "sft-curve", {"train": _curve(out["sft"] / "train_loss.csv"),
                      "validation": _curve(out["sft"] / "val_loss.csv")}, "step",
        "SFT loss"))
    align = _curve(out["align"] / "train_loss.csv")
    if align:
        sections.append("<h3>Alignment loss</h3>"
                        + line_chart("align-curve", {"train": align}, "step", "alignment loss"))
    cards = [p for p in (out["merge"] / "README.md",) if p.is_file()]
    cards += sorted(out["quantize"].glob("*/Modelfile"))
    sections.append("<h2>Model cards and deployment files</h2><ul>" + "".join(
        f'<li><a class="card" href="{_esc(Path(os.path.relpath(p, out_dir.resolve())).as_posix())}">'
        f"{_esc(p.relative_to(root).as_posix())}</a></li>" for p in cards) + "</ul>")
    sections.append("<h2>Lineage (Mermaid source)</h2><pre>"
                    + _esc(lineage.mermaid(chain)) + "</pre>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>pedigree report</title><style>{STYLE}</style></head><body>"
            + "".join(sections) + "</body></html>\n")

