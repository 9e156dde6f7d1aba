"""Text keys that duplicates and eval leaks are found on."""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"\w+")
# ASCII text (most rows) takes fast paths with the same results: NFKC leaves it unchanged,
# casefold() is lower(), and \w+ runs are what remains after the other characters become spaces.
_ASCII_NON_WORD = str.maketrans({c: " " for c in map(chr, range(128))
                                 if not (c.isalnum() or c == "_")})


def normalise_text(text: str) -> str:
    """The exact-duplicate key: Unicode NFKC, case-folded, white space collapsed."""
    if text.isascii():
        return " ".join(text.lower().split())
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def match_text(text: str) -> str:
    """Words only, for n-gram matching (near duplicates, decontamination): punctuation and
    formatting are not content, so "3+4=7" and "3 + 4 = 7" are the same three words."""
    if text.isascii():
        return " ".join(text.lower().translate(_ASCII_NON_WORD).split())
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def repetition(text: str, n: int = 3, above: float = 0.0) -> float:
    """Fraction of word n-grams that repeat an earlier one: 0 for varied text, near 1 for a loop.

    With `above`, a text that cannot exceed it is answered from its distinct words alone (each
    distinct word but the last n-1 starts a distinct n-gram), which is cheaper: the result is
    then an upper bound, not the exact fraction."""
    words = text.split()
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    if above:
        bound = 1 - (len(set(words)) - (n - 1)) / total
        if bound <= above:
            return bound
    return 1 - len(set(zip(*(words[i:] for i in range(n))))) / total
