"""How long `pedigree lineage` and `pedigree audit` take on the default pipeline (after `dvc
repro`), as a user runs them: a fresh process each time, fastest of 5. Goal: lineage <= 2 s.

    dvc repro && python bench/lineage.py
"""

from __future__ import annotations

import subprocess
import sys
import time

COMMANDS = {
    "lineage models/quantized": ["lineage", "models/quantized"],
    "lineage models/quantized --format mermaid": ["lineage", "models/quantized", "--format",
                                                  "mermaid"],
    "audit": ["audit"],
    "audit --no-mlflow": ["audit", "--no-mlflow"],
    "report": ["report", "--out", "/tmp/pedigree-bench-report.html"],
}


def main() -> None:
    for name, args in COMMANDS.items():
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pedigree.cli", *args], check=True,
                           capture_output=True)
            best = min(best, time.perf_counter() - start)
        print(f"pedigree {name:45s} {best:6.2f} s")


if __name__ == "__main__":
    main()
