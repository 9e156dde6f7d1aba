"""Curation: every raw row is validated, normalised, filtered, decontaminated and deduplicated,
or quarantined.

Every input row ends in exactly one place: the curated file of its kind (SFT, preference,
unpaired, task or text rows: `data_layouts.CURATED_FILES`), or `rejects.jsonl` with its file,
line, reason, detail and the row as it was. The report reconciles:
`input_rows == kept_rows + sum(dropped.values())`.

The checks run in this order, so a row's reason is the first problem it has:
  1. per row, while reading: parse, validate and normalise, placeholder answer, repetition
     (of an answer, or of a whole document)
  2. length in base-model tokens (batched)
  3. decontamination against the eval sets (n-gram overlap)
  4. exact duplicates on normalised text (the first occurrence is kept)
  5. near duplicates (MinHash LSH, verified with exact Jaccard; with curate.near_dedup.cluster
     star a row goes only for an earlier kept row at or above the threshold)
A source that keeps too little fails (`check_kept`), naming the reason and what would read it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pedigree.config import CurateConfig
from pedigree.data import dedup
from pedigree.data.decontaminate import EvalIndex
from pedigree.data.formats import normalise_row
from pedigree.data.jsonl import write_jsonl
from pedigree.data.lengths import BATCH, TokenCounter
from pedigree.data.readers import LONE_SURROGATE, RawRow, RowError, read_rows
from pedigree.data.sources import Source, readable_files
from pedigree.data.suggest import suggest
from pedigree.data.text import match_text, normalise_text, repetition
from pedigree.data.tools import ToolSupport
from pedigree.data_layouts import CURATED_FILES, MESSAGE_FIELDS
from pedigree.errors import PedigreeError
from pedigree.lineage import canonical_json, sha256_bytes

REPETITION_MIN_WORDS = 16  # shorter answers (numbers, names, lists) repeat by nature
# Reject reasons that say the row's layout was not understood (a column mapping may read it).
UNREAD_REASONS = frozenset({"missing_field", "unknown_format", "wrong_type", "no_prompt",
                            "no_final_assistant", "no_speaker_labels", "not_an_object"})
_UNREAD_SAMPLES = 20  # rows a suggestion is tried on
_EXAMPLES = 3  # reject lines a failed source shows


class CurationError(PedigreeError):
    """A source kept nothing, or less than curate.min_kept_fraction of its rows."""


@dataclass(slots=True)
class _Candidate:
    """A row that passed the per-row checks, kept compact: a million of them stay in memory.
    Its canonical row and raw text wait in the spool file until the last step."""

    source: int  # index into the sources
    file: str
    line: int
    raw: str | None  # the row as it appeared in its file (None once spooled)
    kind: str  # "sft", "preference", "unpaired", "task" or "text"
    format: str  # the format the row was read as (detected when the source says auto)
    id: str
    row: str | None  # the canonical row, as JSON (None once spooled)
    exact_key: bytes
    group: str  # rows are near duplicates only within a group: their kind (and label)
    dedup_text: str  # match text of the compared fields (near duplicates)
    row_text: str  # match text of the whole row (decontamination)
    prompt_text: str  # match text of the prompt (exact eval-prompt matches)
    text: str = ""  # all message contents, until their tokens are counted
    tokens: int = -1  # tokens of `text` in the base tokenizer (-1: within bounds, not counted)
    reject: dict[str, Any] | None = None  # its reject record, when a later step drops it
    cluster: list[str] | None = None  # ids of the duplicates it stands for


@dataclass
class CurationResult:
    sources: list[Source]
    sft: list[str] = field(default_factory=list)  # canonical rows as JSON lines
    preference: list[str] = field(default_factory=list)
    unpaired: list[str] = field(default_factory=list)
    task: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    counts: list[Counter] = field(default_factory=list)  # per source
    truncated: list[bool] = field(default_factory=list)  # per source: its limit cut rows off
    file_formats: dict[str, Counter] = field(default_factory=dict)  # file -> layout -> rows
    # per source: rows read but not understood (their parsed values), for `check_kept`'s hint
    unread: list[list[Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def rows(self, kind: str) -> list[str]:
        """The kept rows of a kind (one of data_layouts.CURATED_FILES)."""
        return {"sft": self.sft, "preference": self.preference, "unpaired": self.unpaired,
                "task": self.task, "text": self.text}[kind]

    def report(self) -> dict[str, Any]:
        dropped = Counter(r["reason"] for r in self.rejects)
        kept = sum(len(self.rows(kind)) for kind, _ in CURATED_FILES)
        sources = {}
        for src, counts, truncated in zip(self.sources, self.counts, self.truncated, strict=True):
            sources[src.name] = {
                "files": [p.as_posix() for p in src.files],
                "format": src.format,
                "detected_formats": {k[7:]: n for k, n in sorted(counts.items())
                                     if k.startswith("format:")},
                "detected_formats_by_file": {
                    p.as_posix(): dict(sorted(self.file_formats.get(p.as_posix(), {}).items()))
                    for p in src.files},
                "columns": src.columns,
                "limit": src.limit,
                "truncated_by_limit": truncated,
                "weight": src.weight,
                "input_rows": counts["input_rows"],
                "kept_rows": counts["kept_rows"],
                "dropped": {k[8:]: n for k, n in sorted(counts.items()) if k.startswith("dropped:")},
            }
        return {
            "input_rows": kept + len(self.rejects),
            "kept_rows": kept,
            "kept_sft_rows": len(self.sft),
            "kept_preference_rows": len(self.preference),
            "kept_unpaired_rows": len(self.unpaired),
            "kept_task_rows": len(self.task),
            "kept_text_rows": len(self.text),
            "dropped": dict(sorted(dropped.items())),
            "sources": sources,
            **self.details,
        }


def _reject(file: str, line: int, raw: str | None, reason: str, detail: str, **extra: Any) -> dict:
    return {"file": file, "line": line, "reason": reason, "detail": detail, **extra, "raw": raw}


def _drop(c: _Candidate, result: CurationResult, reason: str, detail: str, **extra: Any) -> None:
    """Reject a spooled candidate; its raw text is filled in when the spool is read back."""
    c.reject = _reject(c.file, c.line, None, reason, detail, **extra)
    result.rejects.append(c.reject)


def _unspool(spool: IO[bytes], candidates: list[_Candidate], result: CurationResult) -> None:
    """The last step: read rows back in order, into the outputs or their reject records."""
    spool.seek(0)
    for c in candidates:
        row, raw = spool.readline()[:-1].decode(), spool.readline()
        if c.reject is not None:
            c.reject["raw"] = json.loads(raw)
            continue
        if c.cluster:
            parsed = json.loads(row)
            parsed["meta"]["cluster"] = c.cluster
            row = canonical_json(parsed)
        result.rows(c.kind).append(row)


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


class _RowChecker:
    """Step 1: one raw row -> a candidate, or a reject record."""

    def __init__(self, cfg: CurateConfig, tools: ToolSupport | None):
        self.cfg = cfg
        self.tools = tools
        self.placeholders = {normalise_text(p) for p in cfg.placeholder_outputs}

    def __call__(self, raw: RawRow, src_index: int, src: Source) -> _Candidate | dict:
        if raw.error:
            return _reject(raw.file, raw.line, raw.text, raw.error.reason, raw.error.detail)
        try:
            norm = normalise_row(raw.value, src.format, src.columns)
        except RowError as err:
            return _reject(raw.file, raw.line, raw.text, err.reason, err.detail)
        kind, content = norm.kind, norm.content
        if self.tools is not None and (problem := self.tools.problem(content)):
            return _reject(raw.file, raw.line, raw.text, *problem)
        meta: dict[str, Any] = {"file": raw.file, "line": raw.line, "format": norm.format}
        if isinstance(raw.value.get("task"), str):
            meta["task"] = raw.value["task"]
        rid, row = _encode_row(content, src.name, meta)
        if not row.isascii() and (lone := LONE_SURROGATE.search(row)):
            # Valid JSON ("\ud800" without its pair) but not text: no output could hold it.
            return _reject(raw.file, raw.line, raw.text, "invalid_utf8",
                           f"a string holds {lone.group()!r}, half of a UTF-16 surrogate pair, "
                           "which is not a character and cannot be written as UTF-8")
        for n, answer in enumerate(_answers(kind, content)):
            which = "the answer" if n == 0 else f"an earlier assistant turn ({n} before the last)"
            if normalise_text(answer) in self.placeholders:
                return _reject(raw.file, raw.line, raw.text, "placeholder_output",
                               f"{which} is {answer!r}")
            if problem := self._repetitive(answer, which):
                return _reject(raw.file, raw.line, raw.text, "repetitive", problem)
        # A document looping on itself is the classic filter of pretraining text.
        if kind == "text" and (problem := self._repetitive(content["text"], "the document")):
            return _reject(raw.file, raw.line, raw.text, "repetitive", problem)
        # In conversation order, prompt then answer(s): the shingles across a boundary are the
        # words of the prompt's end and the answer's start, whatever the source's key order.
        texts = _texts(kind, content)
        parts = {k: match_text(v) for k, v in texts.items()}
        # A document has no prompt: "" matches no eval text (EvalIndex keeps none of no words).
        prompt_text, row_text = parts.get("prompt", ""), " ".join(p for p in parts.values() if p)
        return _Candidate(
            source=src_index, file=raw.file, line=raw.line, raw=raw.text, kind=kind,
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


def _read_source(src: Source) -> tuple[itertools.chain[RawRow], Callable[[], bool]]:
    """The rows of a source up to its limit, and a check (after reading) whether it cut any."""
    rows = itertools.chain.from_iterable(read_rows(p, p.as_posix()) for p in src.files)
    if src.limit is None:
        return rows, lambda: False
    limited = itertools.islice(rows, src.limit)
    return limited, lambda: next(rows, None) is not None


def curate(sources: list[Source], cfg: CurateConfig, eval_index: EvalIndex | None = None,
           counter: TokenCounter | None = None, tools: ToolSupport | None = None
           ) -> CurationResult:
    """Curate `sources`. `eval_index` None skips decontamination, `counter` None skips the
    token-length bounds, `tools` None keeps tool calls and results unchecked."""
    _check_disjoint(sources)
    result = CurationResult(sources=sources)
    # Canonical rows and raw texts wait on disk, in candidate order: a million of each would
    # take gigabytes of memory, and only the last step needs them.
    with tempfile.TemporaryFile() as spool:
        candidates = _check_rows(sources, cfg, counter, tools, spool, result)
        kept = _length_bounds(candidates, cfg, result)
        kept = _decontaminate(kept, eval_index, result)
        kept = _deduplicate(kept, cfg, result)
        for c in kept:
            result.counts[c.source]["kept_rows"] += 1
        _unspool(spool, candidates, result)
    index = {src.name: i for i, src in enumerate(sources)}
    file_source = {p.as_posix(): index[s.name] for s in sources for p in s.files}
    for r in result.rejects:
        result.counts[file_source[r["file"]]][f"dropped:{r['reason']}"] += 1
    result.rejects.sort(key=lambda r: (file_source[r["file"]], r["file"], r["line"]))
    return result


def _check_disjoint(sources: list[Source]) -> None:
    """Each file in one source, once: rows are counted against the source of their file, so a
    file read twice would count its rows (and their duplicates) against one source twice."""
    seen: dict[str, str] = {}
    for src in sources:
        for p in src.files:
            name = p.as_posix()
            if name in seen:
                raise PedigreeError(f"{name}: read twice (by sources {seen[name]!r} and "
                                    f"{src.name!r}); each file may be read once")
            seen[name] = src.name


def _check_rows(sources: list[Source], cfg: CurateConfig, counter: TokenCounter | None,
                tools: ToolSupport | None, spool: IO[bytes],
                result: CurationResult) -> list[_Candidate]:
    """Step 1 (and the token counts of step 2) while the rows stream in."""
    check = _RowChecker(cfg, tools)
    candidates: list[_Candidate] = []
    lengths = _Lengths(counter, cfg)
    for i, src in enumerate(sources):
        counts, unread = Counter(), []
        result.counts.append(counts)
        result.unread.append(unread)
        rows, was_truncated = _read_source(src)
        for raw in rows:
            counts["input_rows"] += 1
            outcome = check(raw, i, src)
            if isinstance(outcome, dict):
                result.rejects.append(outcome)
                if outcome["reason"] in UNREAD_REASONS and len(unread) < _UNREAD_SAMPLES:
                    unread.append(raw.value)
                continue
            counts[f"format:{outcome.format}"] += 1
            result.file_formats.setdefault(raw.file, Counter())[outcome.format] += 1
            candidates.append(outcome)
            lengths.add(outcome)
            spool.write(f"{outcome.row}\n{json.dumps(outcome.raw)}\n".encode())
            outcome.row = outcome.raw = None
        result.truncated.append(was_truncated())
    lengths.flush()
    return candidates


class _Lengths:
    """Counts tokens in batches while rows stream in, so the texts need not stay in memory."""

    def __init__(self, counter: TokenCounter | None, cfg: CurateConfig):
        self.counter, self.cfg = counter, cfg
        self.pending: list[_Candidate] = []

    def add(self, c: _Candidate) -> None:
        if self.counter is None:
            c.text = ""
            return
        self.pending.append(c)
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            counts = self.counter.lengths([c.text for c in self.pending], self.cfg.min_tokens,
                                          self.cfg.max_tokens)
            for c, n in zip(self.pending, counts, strict=True):
                c.tokens, c.text = n, ""
            self.pending = []


def _length_bounds(candidates: list[_Candidate], cfg: CurateConfig,
                   result: CurationResult) -> list[_Candidate]:
    kept = []
    for c in candidates:
        if 0 <= c.tokens < cfg.min_tokens:
            _drop(c, result, "too_short", f"{c.tokens} tokens < curate.min_tokens={cfg.min_tokens}")
        elif c.tokens > cfg.max_tokens:
            _drop(c, result, "too_long", f"{c.tokens} tokens > curate.max_tokens={cfg.max_tokens}")
        else:
            kept.append(c)
    return kept


def _decontaminate(candidates: list[_Candidate], eval_index: EvalIndex | None,
                   result: CurationResult) -> list[_Candidate]:
    if eval_index is None:
        return candidates
    matches = eval_index.match([c.row_text for c in candidates],
                               [c.prompt_text for c in candidates])
    kept = []
    for c, match in zip(candidates, matches, strict=True):
        if match is None:
            kept.append(c)
        else:
            _drop(c, result, "eval_contamination", match.detail, eval_item=match.item)
    result.details["decontamination"] = eval_index.summary()
    return kept


def _deduplicate(candidates: list[_Candidate], cfg: CurateConfig,
                 result: CurationResult) -> list[_Candidate]:
    """Steps 4 and 5. Every dropped row names the kept row it duplicates (`duplicate_of`); every
    kept row lists the ids it stands for (`meta.cluster`), so the split keeps a cluster together.

    curate.near_dedup.cluster (see pedigree.data.dedup): "star" drops a row only for an earlier
    kept row with Jaccard >= threshold, so every near_duplicate reject's `jaccard` is at least
    the threshold; "connected" drops every row of a chain of such pairs but the first, so a
    reject's `jaccard` with the kept row it names may be lower (its detail says so)."""
    rep = list(range(len(candidates)))  # position of the row each candidate is a duplicate of
    why: dict[int, tuple[str, str, dict[str, Any]]] = {}
    if cfg.exact_dedup:
        first: dict[bytes, int] = {}
        for pos, c in enumerate(candidates):
            rep[pos] = first.setdefault(c.exact_key, pos)
            if rep[pos] != pos:
                why[pos] = ("exact_duplicate", "same normalised text as a kept row", {})
    if cfg.near_dedup.enabled:
        nd, stats = cfg.near_dedup, Counter()
        for group in dict.fromkeys(c.group for c in candidates):
            positions = [p for p, r in enumerate(rep) if r == p and candidates[p].group == group]
            found = dedup.near_duplicates(
                [candidates[p].dedup_text for p in positions], threshold=nd.threshold,
                ngram=nd.ngram, bands=nd.bands, rows=nd.rows, seed=nd.seed, cluster=nd.cluster)
            stats["candidate_pairs"] += found.candidates
            stats["verified_pairs"] += len(found.pairs)
            for local, rep_local in enumerate(found.representative.tolist()):
                if rep_local != local:
                    exact = float(found.similarity[local])
                    jaccard = round(exact, 4)
                    if (jaccard >= nd.threshold) != (exact >= nd.threshold):
                        jaccard = exact  # rounding would cross the threshold: 0.79996 -> 0.8
                    rep[positions[local]] = positions[rep_local]
                    if nd.cluster == "star":  # always >= threshold: star drops for kept rows
                        detail = (f"Jaccard {jaccard} >= curate.near_dedup.threshold="
                                  f"{nd.threshold} with the kept row (the first such kept row)")
                    else:  # a chain of verified pairs: the kept row itself may be below
                        relation = ">=" if exact >= nd.threshold else "<"
                        detail = (f"in a chain of pairs with Jaccard >= curate.near_dedup."
                                  f"threshold={nd.threshold} (cluster=connected); Jaccard "
                                  f"{jaccard} {relation} threshold with the kept row itself")
                    why[positions[local]] = ("near_duplicate", detail, {"jaccard": jaccard})
        # An exact duplicate of a near duplicate belongs to the near duplicate's kept row.
        for pos in why:
            if rep[rep[pos]] != rep[pos]:
                rep[pos] = rep[rep[pos]]
                detail = "same normalised text as a near duplicate of a kept row"
                why[pos] = ("exact_duplicate", detail, {})
        result.details["near_dedup"] = dict(stats)

    members: dict[int, list[str]] = {}
    for pos, (reason, detail, extra) in sorted(why.items()):
        c, kept = candidates[pos], candidates[rep[pos]]
        _drop(c, result, reason, detail, duplicate_of=kept.id, **extra)
        members.setdefault(rep[pos], []).append(c.id)
    for pos, ids in members.items():
        candidates[pos].cluster = sorted(set(ids) - {candidates[pos].id})
    for c in candidates:  # the texts are no longer needed: free them before the outputs
        c.dedup_text = c.row_text = c.prompt_text = ""
    result.details.setdefault("near_dedup", {})["clusters"] = len(members)
    return [c for pos, c in enumerate(candidates) if rep[pos] == pos]


def check_kept(result: CurationResult, min_fraction: float) -> None:
    """CurationError unless every source kept rows, and at least `min_fraction` of them: a run
    that keeps nothing must not pass as an empty success. The message names, per failing
    source, the main reject reason, three example lines and, when one is found, the format or
    column mapping that reads the rows."""
    report = result.report()
    failures = []
    for i, (name, src) in enumerate(report["sources"].items()):
        n_in, kept = src["input_rows"], src["kept_rows"]
        if n_in and kept and kept >= min_fraction * n_in:
            continue
        if not n_in:
            failures.append(f"source {name!r}: no rows in {', '.join(src['files'])}")
            continue
        reason, dropped = max(src["dropped"].items(), key=lambda kv: (kv[1], kv[0]))
        lines = [(f"source {name!r}: kept {kept} of {n_in} rows (curate.min_kept_fraction="
                  f"{min_fraction}); main reason {reason} ({dropped} rows), e.g.")]
        files = set(src["files"])
        examples = [r for r in result.rejects if r["reason"] == reason and r["file"] in files]
        for r in examples[:_EXAMPLES]:
            raw = r["raw"] if isinstance(r["raw"], str) else json.dumps(r["raw"])
            lines.append(f"  {r['file']}:{r['line']}: {r['detail']}")
            lines.append(f"    {raw[:160]}{'...' if len(raw) > 160 else ''}")
        src_obj = result.sources[i]
        hint = suggest(result.unread[i], src_obj.format, src_obj.columns) \
            if reason in UNREAD_REASONS else None
        if hint:
            lines.append(f"  hint: {hint}")
        failures.append("\n".join(lines))
    if failures:
        failures.append("(a source that rightly loses most rows, to duplicates or length bounds, "
                        "passes with a lower curate.min_kept_fraction)")
        raise CurationError("curation kept too little\n"
                            + "\n".join(failures))


def eval_files(eval_dir: Path, more: list[Path] | None = None) -> list[Path]:
    """Every readable file of the eval directory (always checked), then any files named."""
    files = readable_files(eval_dir) if eval_dir.is_dir() else []
    for path in more or []:
        files.extend(readable_files(path))
    return files


def write_curation(result: CurationResult, out_dir: Path) -> dict[str, Any]:
    """The kept rows of each kind (sft.jsonl, preferences.jsonl, unpaired.jsonl, tasks.jsonl,
    text.jsonl: `data_layouts.CURATED_FILES`, each written even when empty), rejects.jsonl and
    report.json in `out_dir`."""
    for kind, name in CURATED_FILES:
        with open(out_dir / name, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in result.rows(kind))
    write_jsonl(out_dir / "rejects.jsonl", result.rejects)
    report = result.report()
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary(report: dict[str, Any]) -> str:
    """A few readable lines: what came in, what was kept, what was dropped and why."""
    lines = [(f"kept {report['kept_rows']} of {report['input_rows']} rows "
              f"({report['kept_sft_rows']} SFT, {report['kept_preference_rows']} preference, "
              f"{report['kept_unpaired_rows']} unpaired, {report['kept_task_rows']} task, "
              f"{report['kept_text_rows']} text)")]
    for name, src in report["sources"].items():
        formats = ", ".join(f"{f} {n}" for f, n in src["detected_formats"].items()) or "none"
        cut = f", cut at limit {src['limit']}" if src["truncated_by_limit"] else ""
        lines.append(f"  {name}: {src['input_rows']} in, {src['kept_rows']} kept; "
                     f"format {src['format']} -> {formats}{cut}")
    width = max((len(r) for r in report["dropped"]), default=0)
    for reason, n in sorted(report["dropped"].items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  dropped {reason:<{width}}  {n}")
    return "\n".join(lines)
