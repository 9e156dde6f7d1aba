"""Run a long child command (a DVC experiment) with its output shown as it comes and kept.

`pedigree rebase` and `pedigree sweep` jobs run whole pipelines for minutes: the user sees each
line live, prefixed with whose it is (parallel sweep jobs interleave), and the caller still gets
the whole output to parse or to quote when the command fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TextIO


def run_streamed(cmd: list[str], cwd: Path, prefix: str,
                 echo: TextIO | None = None) -> tuple[int, str]:
    """(exit code, stdout and stderr merged) of `cmd`; each line is echoed with `prefix` to
    `echo` (standard output by default)."""
    echo = echo or sys.stdout
    lines: list[str] = []
    with subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace",
                          bufsize=1) as proc:  # stdin: a pipe the caller reads must stay its own
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            echo.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
            echo.flush()
    return proc.returncode, "".join(lines)
