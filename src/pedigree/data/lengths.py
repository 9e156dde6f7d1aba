"""Row lengths in tokens of the base model's tokenizer (the unit training truncates in).

Uses the `tokenizers` library on tokenizer.json directly: no torch, no transformers import.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, pre_tokenizers

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
        # `max_token_bytes` bytes: the longest vocabulary entry's. A byte-level BPE entry
        # (GPT-2, Llama 3, SmolLM2) spells each byte as one character of its alphabet; any
        # other entry (and an added token) covers at most its own UTF-8 bytes ("▁the", "##ing").
        self.byte_bounds = self._tok.normalizer is None
        byte_level = '"ByteLevel"' in json.dumps(json.loads(self._tok.to_str())["pre_tokenizer"])
        alphabet = set(pre_tokenizers.ByteLevel.alphabet()) if byte_level else set()
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.max_token_bytes = max((len(t) if alphabet.issuperset(t)
                                    else len(t.encode("utf-8", "surrogatepass")) for t in vocab),
                                   default=4)

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
            # tokens >= ceil(bytes / max_token_bytes), so more than (min_tokens - 1) times
            # max_token_bytes bytes are at least min_tokens tokens
            low = (min_tokens - 1) * self.max_token_bytes
            todo = [i for i in todo
                    if not low < len(texts[i].encode("utf-8", "surrogatepass")) < max_tokens]
        for i, n in zip(todo, self.count([texts[i] for i in todo]), strict=True):
            out[i] = n
        return out
