"""Long child commands (rebase, sweep jobs): output shown line by line as it comes, and kept."""

from __future__ import annotations

import sys
import threading
import time

from pedigree.stream import run_streamed

# Prints a line, then waits for the test to answer it: the line must be on screen before the
# child ends, or the test times out.
CHILD = """
import os, sys, time
print("Running stage 'sft'", flush=True)
print("to stderr", file=sys.stderr, flush=True)
deadline = time.monotonic() + 60
while not os.path.exists("seen") and time.monotonic() < deadline:
    time.sleep(0.01)
sys.stdout.write("seen: " + str(os.path.exists("seen")))  # no newline at the end
sys.exit(3)
"""


def test_each_line_is_shown_while_the_child_runs_and_all_is_returned(tmp_path, capsys):
    result = {}
    job = threading.Thread(target=lambda: result.update(
        out=run_streamed([sys.executable, "-c", CHILD], tmp_path, "[job-0] | ")))
    job.start()
    shown = ""
    deadline = time.monotonic() + 60
    while "to stderr" not in shown and time.monotonic() < deadline:
        shown += capsys.readouterr().out
        time.sleep(0.01)
    (tmp_path / "seen").touch()
    job.join(timeout=60)
    shown += capsys.readouterr().out
    assert result["out"] == (3, "Running stage 'sft'\nto stderr\nseen: True")
    assert shown == "[job-0] | Running stage 'sft'\n[job-0] | to stderr\n[job-0] | seen: True\n"
