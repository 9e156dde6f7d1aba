"""The one base class for errors meant for the user, and the exit codes every command uses.

A condition the user can cause (a missing or broken file, a bad config value or option, a gate
not passed) raises a PedigreeError whose message names the file, key or value and what to do.
`pedigree` (cli.main, its one handler) and the stage scripts (install_excepthook) print it as one
message without a traceback and exit EXIT_USER (`exit_code`). Anything else is a bug and keeps its
traceback.

Exit codes, the same for every command and stage (README: Exit codes):

    0   EXIT_OK     done; `audit` found nothing, `base check` found every pin current
    1   EXIT_USER   a user error: the message says what to fix (also: `audit` found a mismatch,
                    `curate` kept too little, `promote` was refused)
    2   EXIT_USAGE  a refused command line: an unknown command or option, a missing argument
                    (argparse), an option value its schema refuses (UsageError)
    10  EXIT_NEWER  `pedigree base check`: a pinned base model has a newer revision
"""

from __future__ import annotations

import sys
from types import TracebackType

EXIT_OK = 0
EXIT_USER = 1  # also the status Python exits with after an uncaught exception (stage scripts)
EXIT_USAGE = 2  # argparse's own status for a command line it refuses
EXIT_NEWER = 10


class PedigreeError(Exception):
    """An error whose message tells the user what to fix."""


class MissingInputError(PedigreeError, FileNotFoundError):
    """A file or directory a stage or command needs is not there."""


class UsageError(PedigreeError):
    """A command line argparse accepts but the command cannot use (exit EXIT_USAGE)."""


def exit_code(err: PedigreeError) -> int:
    """The one mapping from a user error to the process's exit status."""
    return EXIT_USAGE if isinstance(err, UsageError) else EXIT_USER


def _hook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
    if isinstance(err, PedigreeError):  # Python then exits 1, which is EXIT_USER
        print(f"error: {err}", file=sys.stderr)
        return
    sys.__excepthook__(kind, err, tb)


def install_excepthook() -> None:
    sys.excepthook = _hook
