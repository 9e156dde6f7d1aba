"""The README's promises stay true: every test its Guarantees table names exists, its
configuration reference is the one the schemas generate, and nothing the project ships tells a
server to listen on every interface."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_every_test_the_guarantees_name_exists():
    section = README[README.index("## Guarantees"):README.index("## Layout")]
    files = re.findall(r"`(test_\w+\.py)(?:::(test_\w+))?`", section)
    assert len(files) >= 15, files
    for name, test in files:
        path = REPO / "tests" / name
        assert path.is_file(), name
        if test:
            assert f"def {test}(" in path.read_text(), f"{name}::{test}"


def test_the_configuration_reference_is_generated_from_the_schemas():
    from pedigree.paramdoc import BEGIN, END, readme_section

    section = README[README.index(BEGIN):README.index(END) + len(END)]
    assert section == readme_section(), "README's reference is stale: run `pedigree params --write`"


def test_nothing_shipped_listens_on_every_interface():
    shipped = [REPO / "README.md", REPO / "Makefile", *(REPO / "src").rglob("*.py"),
               *(REPO / "stages").glob("*.py"), *(REPO / "conf").rglob("*.yaml"),
               *(REPO / ".github").rglob("*.yml")]
    for path in shipped:
        text = path.read_text()
        assert "0.0.0.0" not in text and "--host ::" not in text, path
        for host in re.findall(r"--host[ =](\S+)", text):
            assert host.strip("`'\",") in ("127.0.0.1", "localhost"), (path, host)
