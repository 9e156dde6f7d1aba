"""`pedigree rebase MODEL [--revision R] [--promote]`: the pipeline on a new base model.

Runs `dvc exp run -S model=MODEL [-S model.revision=R]` in the workspace, a DVC experiment whose
results land in the workspace (`dvc exp apply` or git brings back another). DVC re-runs what the
new base changes and reuses the rest: curation and split depend on the raw data and the base's
tokenizer only, so a new revision with the same tokenizer reuses them (the output says which
stages ran and which were reused). The eval stage gates the new candidate against the base and
the champion; the comparison prints as a table, and with --promote a passing candidate is
promoted (`pedigree promote`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pedigree.errors import EXIT_OK, PedigreeError
from pedigree.experiments import make_room, run_command, show_experiments
from pedigree.files import read_json
from pedigree.pipeline import stage_out
from pedigree.records import GATE_FILE, Gate, read_gate
from pedigree.stream import run_streamed


def experiment_name(model: str, revision: str | None) -> str:
    return f"rebase-{model}" + (f"-{revision[:8]}" if revision else "")


def experiment_command(model: str, revision: str | None, extra: list[str]) -> list[str]:
    # The revision quoted: one of digits (or like 1e5...) must stay a string.
    pin = [f"model.revision='{revision}'"] if revision else []
    return run_command(experiment_name(model, revision), [f"model={model}", *pin, *extra])


def stages_run(output: str) -> tuple[list[str], list[str]]:
    """(stages that ran, stages DVC reused) from `dvc exp run` output."""
    ran = re.findall(r"Running stage '([\w-]+)'", output)
    reused = re.findall(r"Stage '([\w-]+)' (?:didn't change|is cached)", output)
    return ran, [s for s in reused if s not in ran]


def comparison(gate: Gate, evaluated: dict[str, dict[str, float]],
               champion: dict[str, Any] | None) -> str:
    """Markdown: each gated metric for the base, the champion and the candidate, and the check."""
    cand = evaluated[gate["candidate"]]
    checks: dict[str, list[str]] = {}
    for c in gate["checks"]:
        if "metric" in c:
            checks.setdefault(c["metric"], []).append(("pass" if c["passed"] else "FAIL")
                                                      + f" ({c['check']})")
    champ = (champion or {}).get("metrics", {})
    lines = ["| metric | base | champion | candidate | gate |", "|---|---:|---:|---:|---|"]
    for metric in sorted(checks):
        cells = [f"{m[metric]:.4g}" if metric in m else "-"
                 for m in (evaluated["base"], champ, cand)]
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {'; '.join(checks[metric])} |")
    who = (f"champion: '{champion['registered_model']}' version {champion['version']}"
           if champion else "no champion yet")
    verdict = "PASSED" if gate["passed"] else "FAILED"
    return "\n".join(lines) + f"\n\ngate {verdict} for {gate['candidate']} ({who})\n"


def rebase(root: Path, model: str, revision: str | None, promote: bool,
           extra: list[str]) -> int:
    from pedigree.champion import read_champion

    if not (root / "conf" / "model" / f"{model}.yaml").is_file():
        known = sorted(p.stem for p in (root / "conf" / "model").glob("*.yaml"))
        raise PedigreeError(f"conf/model/{model}.yaml: no such model config; known: "
                            f"{', '.join(known) or 'none (run from the project root)'}")
    # A schedule re-runs the same rebase until the pin moves: the new run takes its place.
    make_room(root, show_experiments(root), experiment_name(model, revision))
    cmd = experiment_command(model, revision, extra)
    print("[rebase] " + " ".join(cmd[2:]), flush=True)
    code, output = run_streamed(cmd, root, "[rebase] | ")
    if code:
        raise PedigreeError(f"the experiment failed (exit {code}):\n{output[-3000:]}")
    ran, reused = stages_run(output)
    print(f"[rebase] re-ran: {', '.join(ran) or 'nothing'}")
    print(f"[rebase] reused: {', '.join(reused) or 'nothing'}")
    metrics_dir = root / stage_out("eval", root)
    gate = read_gate(metrics_dir)
    evaluated = read_json(metrics_dir / "eval.json")
    print(comparison(gate, evaluated, read_champion(root)), end="")
    if not promote:
        return EXIT_OK
    if not gate["passed"]:
        raise PedigreeError(f"not promoted: the gate failed ({metrics_dir / GATE_FILE}; the "
                            "table above says which check)")
    from pedigree.promote import promote as promote_candidate

    return promote_candidate(root)
