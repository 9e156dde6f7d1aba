"""Text keys that duplicates and eval leaks are found on."""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"\w+")


def normalise_text(text: str) -> str:
    """The exact-duplicate key: Unicode NFKC, case-folded, white space collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def match_text(text: str) -> str:
    """Words only, for n-gram matching (near duplicates, decontamination): punctuation and
    formatting are not content, so "3+4=7" and "3 + 4 = 7" are the same three words."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def repetition(text: str, n: int = 3) -> float:
    """Fraction of word n-grams that repeat an earlier one: 0 for varied text, near 1 for a loop."""
    words = text.split()
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    return 1 - len(set(zip(*(words[i:] for i in range(n))))) / total
