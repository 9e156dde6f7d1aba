"""Step 1 of curation, one raw row at a time: parse, validate and normalise, the tool-call check,
placeholder answers and repetition. A row comes out a `Candidate` (with the keys and match texts
the later steps need) or a reject record (`reject`: file, line, reason, detail, the row as it was).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from pedigree.config import CurateConfig
from pedigree.data.formats import normalise_row
from pedigree.data.readers import LONE_SURROGATE, RawRow, RowError
from pedigree.data.sources import Source
from pedigree.data.text import match_text, normalise_text, repetition
from pedigree.data.tools import ToolSupport
from pedigree.data_layouts import MESSAGE_FIELDS
from pedigree.lineage import canonical_json, sha256_bytes

REPETITION_MIN_WORDS = 16  # shorter answers (numbers, names, lists) repeat by nature


@dataclass(slots=True)
class Candidate:
    """A row that passed the per-row checks."""

    file: str
    line: int
    raw: str  # the row as it appeared in its file
    kind: str  # "sft", "preference", "unpaired", "task" or "text"
    format: str  # the format the row was read as (detected when the source says auto)
    id: str
    row: str  # the canonical row, as JSON
    exact_key: bytes
    group: str  # rows are near duplicates only within a group: their kind (and label)
    dedup_text: str  # match text of the compared fields (near duplicates)
    row_text: str  # match text of the whole row (decontamination)
    prompt_text: str  # match text of the prompt (exact eval-prompt matches)
    text: str  # all message contents (the token-length bounds)


def reject(file: str, line: int, raw: str | None, reason: str, detail: str, **extra: Any) -> dict:
    """A reject record, as rejects.jsonl holds it."""
    return {"file": file, "line": line, "reason": reason, "detail": detail, **extra, "raw": raw}


def _answers(kind: str, content: dict[str, Any]) -> list[str]:
    """The texts a filter on answers looks at: the chosen answer of a preference row; every
    target turn (an assistant turn not marked weight 0) of an SFT row, the last one first,
    since training may learn each; the completion of an unpaired row labelled desirable (a bad
    answer labelled undesirable is a legitimate negative, as a preference pair's rejected
    answer is). A task row has no answer, and neither has a document (its repetition is checked
    on the whole text)."""
    if kind == "preference":
        return [content["chosen"][-1]["content"]]
    if kind in ("task", "text") or (kind == "unpaired" and not content["label"]):
        return []
    turns = [*content["prompt"], *content["completion"]] if kind == "sft" else content["completion"]
    return [m["content"] for m in turns[::-1]
            if m["role"] == "assistant" and "weight" not in m and m["content"]]


def _joined(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


def _exact_key(kind: str, content: dict[str, Any], fields: str) -> bytes:
    """The normalised text of the compared message fields (the prompt, or every one), then the
    values that are not text as canonical JSON: an unpaired row's label always (the same answer
    labelled desirable and undesirable is two rows), a task's match, reference and schema when
    whole rows are compared. A document is compared whole, whatever `fields` says: it has no
    prompt."""
    if kind == "text":
        text = f"{kind}\0{normalise_text(content['text'])}"
        return hashlib.blake2b(text.encode(), digest_size=16).digest()
    keys = ["prompt"] if fields == "prompt" else [k for k in sorted(content)
                                                  if k in MESSAGE_FIELDS]
    # NUL separates the parts: unlike \x1f it is not white space, so normalising keeps it.
    text = normalise_text("\0".join([kind] + [
        " ".join(f"{m['role']}: {m['content']}" for m in content[k]) for k in keys]))
    values = {k: v for k, v in content.items()
              if k not in MESSAGE_FIELDS and (fields != "prompt" or k == "label")}
    if values:
        text += "\0" + canonical_json(values)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _texts(kind: str, content: dict[str, Any]) -> dict[str, str]:
    """The texts of a row by field, in conversation order (prompt, then answers): a document is
    its one text."""
    if kind == "text":
        return {"text": content["text"]}
    return {k: _joined(content[k]) for k in MESSAGE_FIELDS if k in content}


def _encode_row(content: dict[str, Any], source: str, meta: dict[str, Any]) -> tuple[str, str]:
    """(row id, the row as canonical JSON), encoding the messages once: the id is the sha256 of
    the content's canonical JSON (`row_id`), and the row reuses the same pieces."""
    pieces = {k: canonical_json(v) for k, v in content.items()}
    # surrogatepass: a row with a lone surrogate is rejected once encoded; its id must not raise.
    rid = sha256_bytes(("{" + ",".join(f'"{k}":{pieces[k]}' for k in sorted(pieces)) + "}")
                       .encode("utf-8", "surrogatepass"))
    pieces.update(id=f'"{rid}"', meta=canonical_json(meta), source=canonical_json(source))
    return rid, "{" + ",".join(f'"{k}":{pieces[k]}' for k in sorted(pieces)) + "}"


class RowChecker:
    """Step 1: one raw row -> a candidate, or a reject record."""

    def __init__(self, cfg: CurateConfig, tools: ToolSupport | None):
        self.cfg = cfg
        self.tools = tools
        self.placeholders = {normalise_text(p) for p in cfg.placeholder_outputs}

    def __call__(self, raw: RawRow, src: Source) -> Candidate | dict:
        if raw.error:
            return reject(raw.file, raw.line, raw.text, raw.error.reason, raw.error.detail)
        try:
            norm = normalise_row(raw.value, src.format, src.columns)
        except RowError as err:
            return reject(raw.file, raw.line, raw.text, err.reason, err.detail)
        kind, content = norm.kind, norm.content
        if self.tools is not None and (problem := self.tools.problem(content)):
            return reject(raw.file, raw.line, raw.text, *problem)
        meta: dict[str, Any] = {"file": raw.file, "line": raw.line, "format": norm.format}
        if isinstance(raw.value.get("task"), str):
            meta["task"] = raw.value["task"]
        rid, row = _encode_row(content, src.name, meta)
        if not row.isascii() and (lone := LONE_SURROGATE.search(row)):
            # Valid JSON ("\ud800" without its pair) but not text: no output could hold it.
            return reject(raw.file, raw.line, raw.text, "invalid_utf8",
                           f"a string holds {lone.group()!r}, half of a UTF-16 surrogate pair, "
                           "which is not a character and cannot be written as UTF-8")
        for n, answer in enumerate(_answers(kind, content)):
            which = "the answer" if n == 0 else f"an earlier assistant turn ({n} before the last)"
            if normalise_text(answer) in self.placeholders:
                return reject(raw.file, raw.line, raw.text, "placeholder_output",
                               f"{which} is {answer!r}")
            if problem := self._repetitive(answer, which):
                return reject(raw.file, raw.line, raw.text, "repetitive", problem)
        # A document looping on itself is the classic filter of pretraining text.
        if kind == "text" and (problem := self._repetitive(content["text"], "the document")):
            return reject(raw.file, raw.line, raw.text, "repetitive", problem)
        # In conversation order, prompt then answer(s): the shingles across a boundary are the
        # words of the prompt's end and the answer's start, whatever the source's key order.
        texts = _texts(kind, content)
        parts = {k: match_text(v) for k, v in texts.items()}
        # A document has no prompt: "" matches no eval text (EvalIndex keeps none of no words).
        prompt_text, row_text = parts.get("prompt", ""), " ".join(p for p in parts.values() if p)
        return Candidate(
            file=raw.file, line=raw.line, raw=raw.text, kind=kind,
            format=norm.format, id=rid, row=row,
            exact_key=_exact_key(kind, content, self.cfg.dedup_fields),
            # Two answers to one prompt, one desirable and one not, are a contrast to learn
            # from however alike their words (as a preference pair's are): never near duplicates.
            group=f"unpaired:{content['label']}" if kind == "unpaired" else kind,
            # A document is compared whole, whatever curate.dedup_fields says.
            dedup_text=(prompt_text if self.cfg.dedup_fields == "prompt" and kind != "text"
                        else row_text),
            row_text=row_text, prompt_text=prompt_text,
            text="\n".join(texts.values()),
        )

    def _repetitive(self, text: str, which: str) -> str | None:
        """Why `text` is a degenerate loop (more than curate.max_repetition of its word 3-grams
        repeat), or None; a text under REPETITION_MIN_WORDS words is not checked."""
        # Words with their punctuation: "a-z0-9" in a regex is one word, not four.
        words = normalise_text(text)
        if len(words.split()) < REPETITION_MIN_WORDS:
            return None
        rep = repetition(words, above=self.cfg.max_repetition)
        if rep <= self.cfg.max_repetition:
            return None
        return (f"{rep:.2f} of {which}'s word 3-grams repeat "
                f"(> curate.max_repetition={self.cfg.max_repetition})")

