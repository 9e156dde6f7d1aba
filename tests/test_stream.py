"""Long child commands (rebase, sweep jobs): output shown line by line as it comes, and kept."""

from __future__ import annotations

import io
import sys
import threading
import time

from pedigree.stream import run_streamed

# Prints two lines, then waits (up to 120 s) for the test to say it saw them: they must be on
# screen while the child still runs. The test waits only 30 s, so output held back until the
# child ends fails it.
CHILD = """
import os, sys, time
print("Running stage 'sft'", flush=True)
print("to stderr", file=sys.stderr, flush=True)
deadline = time.monotonic() + 120
while not os.path.exists("seen") and time.monotonic() < deadline:
    time.sleep(0.01)
sys.stdout.write("seen: " + str(os.path.exists("seen")))  # no newline at the end
sys.exit(3)
"""


def test_each_line_is_shown_while_the_child_runs_and_all_is_returned(tmp_path):
    screen = io.StringIO()  # read while the other thread writes: nothing is taken out of it
    result = {}
    job = threading.Thread(target=lambda: result.update(
        out=run_streamed([sys.executable, "-c", CHILD], tmp_path, "[job-0] | ", screen)))
    job.start()
    deadline = time.monotonic() + 30
    while "to stderr" not in screen.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    streamed = "to stderr" in screen.getvalue()
    (tmp_path / "seen").touch()  # let the child end either way
    job.join(timeout=150)
    assert streamed, f"nothing shown while the child ran: {screen.getvalue()!r}"
    assert result["out"] == (3, "Running stage 'sft'\nto stderr\nseen: True")
    assert screen.getvalue() == ("[job-0] | Running stage 'sft'\n[job-0] | to stderr\n"
                                 "[job-0] | seen: True\n")


def test_standard_output_is_the_default(tmp_path, capsys):
    assert run_streamed([sys.executable, "-c", "print('done')"], tmp_path, "> ") == (0, "done\n")
    assert capsys.readouterr().out == "> done\n"
