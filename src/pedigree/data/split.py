"""Deterministic, hash-based train/validation split.

A row goes to validation when sha256(salt, row id) falls below the validation fraction. The choice
depends on the row alone, so adding rows never moves an existing row to the other side, and the
same data and salt always give the same split.
"""

from __future__ import annotations

import hashlib
from typing import Any

_SCALE = float(1 << 64)


def bucket(row_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the row id and the salt."""
    digest = hashlib.sha256(f"{salt}\x1f{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def split_rows(
    rows: list[dict[str, Any]], validation_fraction: float, salt: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation), each in input order."""
    train, validation = [], []
    for row in rows:
        (validation if bucket(row["id"], salt) < validation_fraction else train).append(row)
    if rows and (not train or not validation):
        raise ValueError(
            f"split.validation_fraction={validation_fraction} leaves one side empty for "
            f"{len(rows)} rows; add data or change the fraction"
        )
    return train, validation
