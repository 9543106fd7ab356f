"""docs/ARCHITECTURE.md's import rules, checked on the source: imports point one way.

Every import is read from the syntax tree, the ones inside functions too, so a lazy import
cannot slip a dependency back up the chain.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 300


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def name_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("path", modules("lightning_modules"), ids=name_of)
def test_lightning_modules_import_nothing_from_the_search(path: Path) -> None:
    assert not {n for n in imported(path) if under(n, "search") or under(n, "optuna")}


def third_party(path: Path) -> set[str]:
    return {n.split(".")[0] for n in imported(path)} - set(sys.stdlib_module_names) - {"__future__", "search", "lightning_modules"}


def test_lightning_modules_import_only_the_packages_the_doc_names() -> None:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    allowed = doc.split("### `lightning_modules/`", 1)[1].split("May import:", 1)[1].split("\n", 1)[0].lower()
    used = {package: name_of(path) for path in modules("lightning_modules") for package in third_party(path)}
    assert not {package: module for package, module in used.items() if package not in allowed}


SETTINGS_AND_DATA = ("search.settings", "search.settings_space", "search.settings_file", "search.options", "search.paths", "search.redaction", "search.data")


@pytest.mark.parametrize("name", SETTINGS_AND_DATA)
def test_the_settings_and_data_modules_import_nothing_of_the_study(name: str) -> None:
    """The first links of the chain: no Optuna, and of `search` only each other."""
    path = ROOT / Path(*name.split(".")).with_suffix(".py")
    ours = {".".join(n.split(".")[:2]) for n in imported(path) if under(n, "search")}
    assert "optuna" not in third_party(path) and ours <= set(SETTINGS_AND_DATA), ours


def test_the_network_is_plain_torch() -> None:
    assert {n.split(".")[0] for n in imported(ROOT / "lightning_modules" / "network.py")} <= {"__future__", "collections", "itertools", "torch", "typing"}


@pytest.mark.parametrize("path", [p for p in modules("search") if not under(name_of(p), "search.export")], ids=name_of)
def test_only_the_runner_reaches_the_export(path: Path) -> None:
    """The export comes after the study: nothing before it in the chain may import it."""
    uses = {n for n in imported(path) if under(n, "search.export")}
    assert not uses or name_of(path) == "search.run", uses


@pytest.mark.parametrize("path", [p for p in modules("search") if name_of(p) != "search.run"], ids=name_of)
def test_nothing_imports_the_entry_points(path: Path) -> None:
    entry_points = ("search.run", "search.dashboard", "search.predict", "search.export.__main__")
    assert not {n for n in imported(path) if any(under(n, e) for e in entry_points)}


@pytest.mark.parametrize("path", [p for p in modules("search") + modules("lightning_modules") if name_of(p) != "search.optuna_compat"], ids=name_of)
def test_private_optuna_is_used_only_in_optuna_compat(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    private = [n for n in imported(path) if under(n, "optuna") and any(part.startswith("_") for part in n.split("."))]
    assert not private
    for marker in ("._storage", "._backend", "._trial_id", "check_trial_is_updatable"):
        assert marker not in text, marker


@pytest.mark.parametrize("path", modules("search") + modules("lightning_modules"), ids=name_of)
def test_no_module_is_over_300_lines(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_MODULE_LINES


def test_the_architecture_doc_names_every_module() -> None:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [
        name_of(p) for p in modules("search") + modules("lightning_modules")
        if p.name != "__init__.py" and f"{p.stem}.py" not in doc
    ]
    assert not missing
