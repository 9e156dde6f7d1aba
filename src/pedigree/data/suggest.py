"""What would read rows that were rejected as unreadable: the hint a failed curation gives.

A suggestion is made only when it was tried: every sample row must normalise with it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from pedigree.data.formats import normalise_row
from pedigree.data.readers import RowError

# Field names that usually hold the question and the answer, most telling first; a field
# matches when its lower-cased name contains one ("question_text").
PROMPT_NAMES = ("instruction", "prompt", "question", "query", "problem", "input", "request",
                "context", "source", "post", "title", "user", "human", "text")
ANSWER_NAMES = ("output", "response", "answer", "completion", "solution", "target", "reply",
                "summary", "assistant", "gpt", "bot", "result", "label")
CHOSEN_NAMES = ("chosen", "preferred", "better", "accepted", "good", "winner")
REJECTED_NAMES = ("rejected", "dispreferred", "worse", "bad", "loser")


def suggest(rows: list[Any], fmt: str, columns: Mapping[str, str]) -> str | None:
    """A format or column mapping that reads every row of `rows` (sample rows the source's
    `fmt` and `columns` could not read), as the config and command line spell it; None when
    nothing tried reads them all."""
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows or any(r.get("label") is not None for r in rows):
        # Labelled rows are KTO feedback with labels not understood: a mapping that reads them
        # without their label would teach the undesirable answers as good ones.
        return None
    if (fmt != "auto" or columns) and _reads(rows, "auto", {}):
        found = Counter(normalise_row(r, "auto").format for r in rows).most_common(1)[0][0]
        undo = " and no column mapping" if columns else ""
        return f"format: auto{undo} reads them (as the {found} layout)"
    fields = [f for f in rows[0] if all(isinstance(r.get(f), str) for r in rows)]
    for kind, first, second in (("prompt_completion", "prompt", "completion"),
                                ("preference", "chosen", "rejected")):
        names = (PROMPT_NAMES, ANSWER_NAMES) if kind == "prompt_completion" else (
            CHOSEN_NAMES, REJECTED_NAMES)
        for a in _matching(fields, names[0]):
            for b in _matching(fields, names[1]):
                mapping = {first: a, second: b}
                if kind == "preference":
                    prompts = [p for p in _matching(fields, PROMPT_NAMES) if p not in (a, b)]
                    if not prompts:
                        continue
                    mapping = {"prompt": prompts[0], **mapping}
                if a != b and _reads(rows, kind, mapping):
                    spec = ",".join(f"{k}={v}" for k, v in mapping.items())
                    yaml = ", ".join(f"{k}: {v}" for k, v in mapping.items())
                    return (f"format: {kind} with columns: {{{yaml}}} reads them "
                            f"(command line: --format {kind} --columns {spec})")
    return None


def _matching(fields: list[str], names: tuple[str, ...]) -> list[str]:
    """`fields` whose names contain one of `names`, in the order of `names`."""
    out: list[str] = []
    for name in names:
        out.extend(f for f in fields if name in f.lower() and f not in out)
    return out


def _reads(rows: list[dict[str, Any]], fmt: str, columns: Mapping[str, str]) -> bool:
    try:
        for row in rows:
            normalise_row(row, fmt, columns)
    except RowError:
        return False
    return True
