"""The README's promises that a fresh machine depends on, checked against the files they describe."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_system_package_ci_installs_is_named_in_the_readme() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    packages = set(re.findall(r"need\+=\(([\w.-]+)\)", ci))
    assert packages, "the package list in .ci/run moved: update this test"
    assert not [p for p in packages if f"apt-get install -y {p}" not in readme]


def test_ci_runs_the_readmes_install_and_test_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command in ('pip install -e ".[test]"', "python -m pytest"):
        assert command in readme
        assert command in ci.replace("pip install -q ", "pip install ")
