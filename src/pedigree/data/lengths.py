"""Row lengths in tokens of the base model's tokenizer (the unit training truncates in).

Uses the `tokenizers` library on tokenizer.json directly: no torch, no transformers import.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from pedigree.errors import MissingInputError

BATCH = 4096  # rows per encode_batch call: large enough to amortise the call, small in memory


class TokenCounter:
    def __init__(self, tokenizer_dir: str | Path):
        path = Path(tokenizer_dir) / "tokenizer.json"
        if not path.is_file():
            raise MissingInputError(
                f"{path}: no tokenizer.json for the length bounds (curate.tokenizer); build the "
                "base first (`dvc repro base`) or set curate.tokenizer: null")
        self.path = path
        self._tok = Tokenizer.from_file(str(path))
        # Without a normaliser rewriting the text first, every token covers at least one byte
        # of it (at most one more for a word-start marker a pre-tokenizer adds), and at most
        # `max_token_bytes` bytes (4 per character of the longest vocabulary entry).
        self.byte_bounds = self._tok.normalizer is None
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.max_token_bytes = 4 * max(map(len, vocab), default=1)

    def count(self, texts: list[str]) -> list[int]:
        counts: list[int] = []
        for start in range(0, len(texts), BATCH):
            encoded = self._tok.encode_batch(texts[start:start + BATCH], add_special_tokens=False)
            counts.extend(len(e.ids) for e in encoded)
        return counts

    def lengths(self, texts: list[str], min_tokens: int, max_tokens: int) -> list[int]:
        """Tokens of each text, or -1 where its length in bytes alone proves
        min_tokens <= tokens <= max_tokens: most rows, which then need no tokenizing."""
        out = [-1] * len(texts)
        todo = list(range(len(texts)))
        if self.byte_bounds:
            low = min_tokens * self.max_token_bytes
            todo = [i for i in todo
                    if not low <= len(texts[i].encode("utf-8", "surrogatepass")) < max_tokens]
        for i, n in zip(todo, self.count([texts[i] for i in todo]), strict=True):
            out[i] = n
        return out
