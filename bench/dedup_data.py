"""A labelled near-duplicate benchmark: alpaca-style rows with planted near-duplicate families
and templated hard negatives.

    .venv/bin/python bench/dedup_data.py --rows 100000 --out rows.jsonl

Every row is `{"instruction", "input", "output"}` plus three label fields (a consumer that treats
the rows as data drops every key starting with "_"):

  _group     index (in the returned list) of the original a near-duplicate family was derived
             from; the original itself and each of its copies carry it. None for other rows.
  _edit      word-edit rate the copy was made with (0.0 for the original and for exact copies),
             None outside families.
  _template  template id of a hard negative (rows sharing a long template with 2-4 slot words
             changed; every two of them differ in every slot, so their word-5-gram Jaccard is
             just below 0.78: hard, but not duplicates), None otherwise.

Words come from a synthetic vocabulary (40,000 pronounceable words after a few dozen English
function words) drawn with Zipf's law (exponent 1), so word statistics look like natural text.
Deterministic for a seed; 1M rows take about 15 s on a 2-core VM.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

VOCAB_SIZE = 40_000
FUNCTION_WORDS = ["the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be", "by", "this", "are", "or", "an", "from", "at", "which", "not", "but", "have", "has", "can", "its", "all", "if", "more", "one", "will", "their", "they", "these", "than", "other", "some", "also", "when", "may", "into", "each", "only", "use", "how", "what", "two", "most", "such", "used", "many"]
INSTRUCTION_HEADS = (
    "write a", "explain how", "describe the", "give three examples of", "summarize the",
    "classify the following", "rewrite this", "generate a list of", "compare the", "what is",
    "translate the", "suggest ways to", "create a", "find the", "identify the", "edit the",
)
EDIT_RATES = (0.0, 0.01, 0.03, 0.05, 0.10, 0.20)  # 0.0: exact copies
EDIT_WEIGHTS = (0.05, 0.25, 0.2, 0.2, 0.15, 0.15)
FAMILY_SHARE = 0.10  # fraction of rows that are originals with copies (1-3 copies each)
TEMPLATE_SHARE = 0.03  # fraction of rows that are templated hard negatives
FIELDS = ("instruction", "input", "output")


def vocabulary(seed: int = 0) -> list[str]:
    """Function words, then distinct pronounceable words of 1-4 syllables (deterministic)."""
    rng = np.random.default_rng([seed, 1])
    onsets = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "cl", "dr", "fl", "gr", "pl", "pr", "sk", "st", "str", "th", "tr", "sh", "ch"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"]
    codas = ["", "", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "ck"]
    words = list(FUNCTION_WORDS)
    seen = set(words)
    while len(words) < VOCAB_SIZE:
        n = 200_000
        syl = rng.choice([1, 2, 2, 3, 3, 4], size=n)
        parts = [rng.choice(onsets, size=(n, 4)), rng.choice(vowels, size=(n, 4))]
        coda = rng.choice(codas, size=n)
        for i in range(n):
            w = "".join(parts[0][i, k] + parts[1][i, k] for k in range(syl[i])) + coda[i]
            if w not in seen:
                seen.add(w)
                words.append(w)
                if len(words) == VOCAB_SIZE:
                    break
    return words


class _Draws:
    """Random numbers drawn from a numpy Generator in large blocks (a scalar call per number
    would dominate the generation time): Zipf-like word ids and small integers."""

    def __init__(self, rng: np.random.Generator, vocab_size: int) -> None:
        self.rng = rng
        self.log_v = np.log(vocab_size + 1)
        self.vocab_size = vocab_size
        self.ids = np.empty(0, dtype=np.int64)
        self.ids_at = 0
        self.uniform: list[float] = []
        self.uniform_at = 0

    def words(self, n: int) -> np.ndarray:
        """n word ids; id k (0-based) has probability ln((k+2)/(k+1)) / ln(V+1), about
        1/((k+1.5) ln V): Zipf's law with exponent 1."""
        if self.ids_at + n > len(self.ids):
            u = self.rng.random(max(1 << 22, n))
            ids = np.exp(u * self.log_v).astype(np.int64) - 1
            self.ids = np.minimum(ids, self.vocab_size - 1)
            self.ids_at = 0
        out = self.ids[self.ids_at:self.ids_at + n]
        self.ids_at += n
        return out

    def random(self) -> float:
        if self.uniform_at == len(self.uniform):
            self.uniform = self.rng.random(1 << 20).tolist()
            self.uniform_at = 0
        self.uniform_at += 1
        return self.uniform[self.uniform_at - 1]

    def integer(self, lo: int, hi: int) -> int:
        """Uniform in [lo, hi)."""
        return lo + int(self.random() * (hi - lo))


def _perturb(words: list[str], rate: float, draws: _Draws, vocab: np.ndarray) -> list[str]:
    """Each word independently edited with probability `rate`: substituted, deleted, or
    followed by an inserted word (one third each)."""
    if rate == 0.0 or not words:
        return list(words)
    out: list[str] = []
    for w in words:
        u = draws.random()
        if u >= rate:
            out.append(w)
        elif u < rate / 3:
            out.append(vocab[draws.words(1)[0]])  # substitution
        elif u >= 2 * rate / 3:
            out += [w, vocab[draws.words(1)[0]]]  # insertion
        # else: deletion
    return out


def generate(n_rows: int, seed: int = 0) -> list[dict]:
    """`n_rows` labelled alpaca-style rows (see the module docstring); deterministic for a seed."""
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    vocab = np.array(vocabulary(), dtype=object)
    rng = np.random.default_rng([seed, 2])
    draws = _Draws(np.random.default_rng([seed, 3]), len(vocab))
    heads = [h.split() for h in INSTRUCTION_HEADS]

    n_originals = int(n_rows * FAMILY_SHARE / 2.5)  # 1-3 copies each: about 2.5 rows a family
    n_template_rows = int(n_rows * TEMPLATE_SHARE)

    def fresh_fields() -> list[list[str]]:
        head = heads[draws.integer(0, len(heads))]
        n_ins = draws.integer(10, 21) - len(head)
        n_inp = 0 if draws.random() < 0.6 else draws.integer(5, 31)
        n_out = draws.integer(40, 81)
        words = vocab[draws.words(n_ins + n_inp + n_out)].tolist()
        return [head + words[:n_ins], words[n_ins:n_ins + n_inp], words[n_ins + n_inp:]]

    # rows as (instruction, input, output, group, edit, template); group refers to a position
    # in `rows` until the final shuffle maps it.
    rows: list[tuple[str, str, str, int | None, float | None, int | None]] = []

    def add(fields: list[list[str]], group: int | None, edit: float | None,
            template: int | None) -> None:
        rows.append((" ".join(fields[0]), " ".join(fields[1]), " ".join(fields[2]),
                     group, edit, template))

    # templated hard negatives: a long template with a few slots; each instance of a template
    # takes a distinct word in every slot, so any two instances differ in all slots.
    template = 0
    while len(rows) < n_template_rows:
        size = int(min(n_template_rows - len(rows), rng.choice([5, 10, 20, 50])))
        base = fresh_fields()
        flat = base[0] + base[1] + base[2]
        lengths = [len(f) for f in base]
        # the fewest slots that keep any two instances below Jaccard 0.78 (each slot, at least
        # 5 words from the next, changes 5 of the S word-5-grams on each side)
        shingles = len(flat) - 4
        k = next(k for k in range(1, 100) if (shingles - 5 * k) / (shingles + 5 * k) < 0.78)
        slots = np.linspace(4, len(flat) - 5, k).astype(int).tolist()
        fillers = [rng.choice(len(vocab) - 100, size=size, replace=False) + 100
                   for _ in slots]
        a, b = lengths[0], lengths[0] + lengths[1]
        for i in range(size):
            words = list(flat)
            for slot, fill in zip(slots, fillers, strict=True):
                words[slot] = vocab[int(fill[i])]
            add([words[:a], words[a:b], words[b:]], None, None, template)
        template += 1

    # near-duplicate families: an original and 1-3 perturbed copies of it
    families = 0
    while families < n_originals and len(rows) < n_rows:
        original = fresh_fields()
        at = len(rows)
        add(original, at, 0.0, None)
        for _ in range(draws.integer(1, 4)):
            if len(rows) >= n_rows:
                break
            rate = float(EDIT_RATES[rng.choice(len(EDIT_RATES), p=EDIT_WEIGHTS)])
            copy = [_perturb(f, rate, draws, vocab) for f in original]
            if not copy[0]:  # an instruction must keep at least one word
                copy[0] = original[0][:1]
            add(copy, at, rate, None)
        families += 1

    # unrelated rows
    while len(rows) < n_rows:
        add(fresh_fields(), None, None, None)

    order = rng.permutation(len(rows))  # copies must not sit next to their originals
    new_pos = np.empty(len(rows), dtype=np.int64)
    new_pos[order] = np.arange(len(rows))
    new_pos_list = new_pos.tolist()
    return [{"instruction": ins, "input": inp, "output": out,
             "_group": None if group is None else new_pos_list[group],
             "_edit": edit, "_template": tmpl}
            for ins, inp, out, group, edit, tmpl in map(rows.__getitem__, order.tolist())]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    parser.add_argument("--no-labels", action="store_true", help="leave out the _ fields")
    args = parser.parse_args(argv)
    with open(args.out, "w", encoding="utf-8") as f:
        for row in generate(args.rows, seed=args.seed):
            if args.no_labels:
                row = {k: v for k, v in row.items() if not k.startswith("_")}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {args.rows} rows to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
