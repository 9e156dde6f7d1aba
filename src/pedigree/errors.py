"""The one base class for errors meant for the user: bad input, config, models or exports.

Stage scripts print these as one clear message and exit 1, without a traceback: the message
already names the file, key or value to fix. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from types import TracebackType


class PedigreeError(Exception):
    """An error whose message tells the user what to fix."""


class MissingInputError(PedigreeError, FileNotFoundError):
    """A file or directory a stage needs is not there."""


def _hook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
    if isinstance(err, PedigreeError):
        print(f"error: {err}", file=sys.stderr)
        return
    sys.__excepthook__(kind, err, tb)


def install_excepthook() -> None:
    sys.excepthook = _hook
