"""docs/ARCHITECTURE.md's import rules, checked on the source: imports point one way.

Every import is read from the syntax tree, the ones inside functions too, relative ones resolved
against the file's package, and `importlib.import_module` / `__import__` of a literal name, so a
lazy import cannot slip a dependency back up the chain; a dynamic import of a computed name fails.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
MAX_MODULE_LINES = 300  # the service's modules (search/, lightning_modules/); tests and benchmarks are not held to it
PROJECT = ("search", "lightning_modules", "benchmarks")
ENTRY_POINTS = ("search.run", "search.dashboard", "search.predict", "search.export.__main__")
DYNAMIC = ("import_module", "__import__")


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def name_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def absolute(module: str | None, level: int, package: str) -> str:
    """`from ..x import y` in package `a.b.c` -> `a.b.x`; level 0 is already absolute."""
    if not level:
        return module or ""
    base = package.split(".")[: len(package.split(".")) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_in(source: str, module: str, is_package: bool = False) -> tuple[set[str], list[int]]:
    """Every name `module` imports (a `from m import n` gives m and m.n: n may be a submodule),
    and the lines of dynamic imports whose name is not a literal."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    computed: list[int] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node.module, node.level, package)
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) in DYNAMIC:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(absolute(first.value.lstrip("."), len(first.value) - len(first.value.lstrip(".")), package))
            else:
                computed.append(node.lineno)
    return names, computed


def imported(path: Path) -> set[str]:
    return imports_in(path.read_text(encoding="utf-8"), name_of(path), path.name == "__init__.py")[0]


def project_module(name: str) -> str | None:
    """The project module a dotted name lies in (`search.record.DEATHS` -> `search.record`)."""
    parts = name.split(".")
    while parts:
        if (ROOT.joinpath(*parts).with_suffix(".py")).is_file() or (ROOT.joinpath(*parts) / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return None


def project_imports(path: Path) -> set[str]:
    return {m for n in imported(path) if (m := project_module(n)) and m != name_of(path)}


def third_party(path: Path) -> set[str]:
    return {n.split(".")[0] for n in imported(path)} - set(sys.stdlib_module_names) - {"__future__", *PROJECT}


SERVICE = modules("search") + modules("lightning_modules")
EVERYWHERE = SERVICE + modules("benchmarks")


def test_relative_and_literal_dynamic_imports_are_read() -> None:
    source = ("from . import record, stopping\nfrom .resume import RetryDeadTrials\nfrom ..lightning_modules import errors\n"
              "def f():\n    from .export.files import FILES\n    importlib.import_module('search.run')\n    __import__(name)\n")
    names, computed = imports_in(source, "search.storage")
    assert {"search.record", "search.stopping", "search.resume", "lightning_modules.errors", "search.export.files", "search.run"} <= names
    assert computed == [7]


@pytest.mark.parametrize("path", EVERYWHERE, ids=name_of)
def test_no_import_hides_its_name(path: Path) -> None:
    assert not imports_in(path.read_text(encoding="utf-8"), name_of(path))[1], "import a literal name, so the rules here can read it"


@pytest.mark.parametrize("path", modules("lightning_modules"), ids=name_of)
def test_lightning_modules_import_nothing_from_the_search(path: Path) -> None:
    assert not {n for n in imported(path) if under(n, "search") or under(n, "optuna")}


def test_lightning_modules_import_only_the_packages_the_doc_names() -> None:
    doc = DOC.read_text(encoding="utf-8")
    allowed = doc.split("### `lightning_modules/`", 1)[1].split("May import:", 1)[1].split("\n", 1)[0].lower()
    used = {package: name_of(path) for path in modules("lightning_modules") for package in third_party(path)}
    assert not {package: module for package, module in used.items() if package not in allowed}


def test_the_shared_errors_module_is_a_leaf() -> None:
    """Every layer imports `lightning_modules.errors`, so it imports nothing of the project."""
    assert not project_imports(ROOT / "lightning_modules" / "errors.py")


def test_the_network_is_plain_torch() -> None:
    assert {n.split(".")[0] for n in imported(ROOT / "lightning_modules" / "network.py")} <= {"__future__", "collections", "itertools", "torch", "typing"}


# ------------------------------------------------- the layers of search/, as the doc's table lists them

def layer_table() -> list[tuple[str, str, set[str], set[str]]]:
    """(layer, module, its imports of search/, the ones marked back-edge) per row of the doc's table."""
    section = DOC.read_text(encoding="utf-8").split("## Inside `search/`: who imports whom", 1)[1].split("\n## ", 1)[0]
    rows = []
    for layer, module, cell in re.findall(r"^\| (\w[\w -]*) \| `(\w+)\.py` \| (.*) \|$", section, re.MULTILINE):
        rows.append((layer, f"search.{module}", {f"search.{m}" for m in re.findall(r"`(\w+)`", cell)},
                     {f"search.{m}" for m in re.findall(r"`(\w+)` \(back-edge", cell)}))
    return rows


# An edge to a later layer is a back-edge: each one here, with why it stays for now.
KNOWN_BACK_EDGES: dict[tuple[str, str], str] = {}


def search_imports(path: Path) -> set[str]:
    """Its imports of search/'s top-level modules (the export and the package itself left out)."""
    return {m for m in project_imports(path) if m.count(".") == 1 and under(m, "search") and not under(m, "search.export")}


def test_the_layer_table_lists_every_module_but_the_entry_points_and_the_export() -> None:
    listed = [module for _, module, _, _ in layer_table()]
    expected = {name_of(p) for p in modules("search") if name_of(p).count(".") == 1 and not under(name_of(p), "search.export")}
    assert len(listed) == len(set(listed)) and set(listed) == expected - set(ENTRY_POINTS)


def test_each_module_imports_exactly_what_the_layer_table_lists() -> None:
    wrong = {}
    for _, module, listed, _ in layer_table():
        real = search_imports(ROOT / Path(*module.split(".")).with_suffix(".py"))
        if real != listed:
            wrong[module] = {"undocumented": sorted(real - listed), "not imported": sorted(listed - real)}
    assert not wrong


def test_imports_go_only_to_the_same_or_an_earlier_layer() -> None:
    """Layers in the table's order; a layer's rows together. A back-edge must be marked in the doc
    and listed in KNOWN_BACK_EDGES."""
    rows = layer_table()
    layers = list(dict.fromkeys(layer for layer, _, _, _ in rows))
    assert [layer for layer, _, _, _ in rows] == sorted((r[0] for r in rows), key=layers.index), "a layer's rows are not together"
    rank = {module: layers.index(layer) for layer, module, _, _ in rows}
    back = {(module, to) for _, module, listed, _ in rows for to in listed if rank.get(to, -1) > rank[module]}
    assert back <= set(KNOWN_BACK_EDGES), back - set(KNOWN_BACK_EDGES)
    assert back == {(module, to) for _, module, _, marked in rows for to in marked}, "the doc marks other back-edges"


def test_the_settings_and_data_layers_import_nothing_of_the_study() -> None:
    """The first links of the chain: no Optuna; of `search` only each other (the table's order
    holds that); of lightning_modules only the shared errors and the data package."""
    first = [module for layer, module, _, _ in layer_table() if layer in ("settings", "data")]
    assert {"search.settings", "search.settings_file", "search.options", "search.paths", "search.storage_url", "search.data"} <= set(first)
    for module in first:
        path = ROOT / Path(*module.split(".")).with_suffix(".py")
        model = {m for m in project_imports(path) if under(m, "lightning_modules")} - {"lightning_modules.errors"}
        assert "optuna" not in third_party(path) and all(under(m, "lightning_modules.data") for m in model), (module, model)


# ------------------------------------------------- the export and the entry points

@pytest.mark.parametrize("path", [p for p in EVERYWHERE if not under(name_of(p), "search.export")], ids=name_of)
def test_only_the_runner_and_the_benchmarks_reach_the_export(path: Path) -> None:
    """The export comes after the study: nothing before it in the chain may import it; the
    benchmarks read only its metrics and a trial's trained model."""
    uses = {m for m in project_imports(path) if under(m, "search.export")}
    allowed = {"search.export.metrics", "search.export.trained"} if under(name_of(path), "benchmarks") else set()
    assert not uses - allowed or name_of(path) == "search.run", uses


@pytest.mark.parametrize("path", EVERYWHERE, ids=name_of)
def test_nothing_imports_the_entry_points(path: Path) -> None:
    """search.run too: it may import search.export and its modules, never its __main__."""
    assert not {n for n in imported(path) if any(under(n, e) for e in ENTRY_POINTS)}


# ------------------------------------------------- private API

ALLOWED_PRIVATE = {
    "os._exit": "the standard library's documented exit without cleanup, for a forked worker (search/workers.py)",
}
OPTUNA_INTERNAL = ("check_trial_is_updatable",)  # Optuna internals spelled without an underscore


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str, module: str) -> list[str]:
    """Private names this module reaches outside the project. Allowed: on `self`, `cls` or
    `super()`; a name the module itself defines (a def, a class, an assignment, `self._x = ...`);
    an attribute of a name imported from the project's own packages, and a private name imported
    from them (`from search.digit_inputs import _regular_file`: project-internal). Anything else,
    an import from a private module or of a private name of a library included, is a use of that
    library's private API: Optuna's only in search/optuna_compat.py, others in ALLOWED_PRIVATE."""
    tree = ast.parse(source)
    own, ours, uses = set(), {"self", "cls"}, []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and getattr(node.value, "id", None) in ("self", "cls"):
            own.add(node.attr)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            base = absolute(getattr(node, "module", None), getattr(node, "level", 0), module.rpartition(".")[0])
            for alias in node.names:
                full = f"{base}.{alias.name}" if isinstance(node, ast.ImportFrom) else alias.name
                if full.split(".")[0] in PROJECT:
                    ours.add(alias.asname or alias.name.split(".")[0])
                elif any(private(part) for part in full.split(".")):
                    uses.append(f"{node.lineno}: import {full}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            value, attr = node.value, node.attr
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) > 1 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            value, attr = node.args[0], node.args[1].value
        else:
            continue
        if not (private(attr) or attr in OPTUNA_INTERNAL) or attr in own or getattr(value, "id", None) in ours:
            continue
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super":
            continue
        if f"{ast.unparse(value)}.{attr}" not in ALLOWED_PRIVATE:
            uses.append(f"{node.lineno}: {ast.unparse(value)}.{attr}")
    return uses


def test_a_private_attribute_of_a_library_is_found() -> None:
    source = "import os\nfrom search import record\nfrom optuna.storages._heartbeat import x\nclass A:\n    def _f(self): return self._g\n" \
             "def g(study, a):\n    a._f(); os._exit(1); record._x; super()._y\n    return study._study_id, getattr(study, '_frozen_trials'), study.__dict__\n"
    assert sorted(private_uses(source, "search.mod")) == ["3: import optuna.storages._heartbeat.x", "8: study._frozen_trials", "8: study._study_id"]


@pytest.mark.parametrize("path", [p for p in EVERYWHERE if name_of(p) != "search.optuna_compat"], ids=name_of)
def test_private_library_api_is_used_only_in_optuna_compat(path: Path) -> None:
    assert not private_uses(path.read_text(encoding="utf-8"), name_of(path))


# ------------------------------------------------- size and the doc's module tables

@pytest.mark.parametrize("path", SERVICE, ids=name_of)
def test_no_module_is_over_300_lines(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_MODULE_LINES


def package_tables() -> dict[str, list[str]]:
    """Under each `### \\`pkg/\\`` heading of the doc, the file named in each table row's first column."""
    tables: dict[str, list[str]] = {}
    current = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            current = m[1] if (m := re.match(r"### `([\w/]+/)`", line)) else None
            tables.setdefault(current, []) if current else None
        elif current and (m := re.match(r"\| `([\w/]+\.py)` \|", line)):
            tables[current].append(m[1])
    return tables


def test_the_architecture_doc_lists_exactly_each_packages_modules() -> None:
    tables = package_tables()
    assert set(tables) == {"lightning_modules/", "search/", "search/export/"}
    for package, listed in tables.items():
        deeper = [p for p in tables if p != package and p.startswith(package)]
        files = {p.relative_to(ROOT / package).as_posix() for p in modules(package.rstrip("/")) if p.name != "__init__.py"}
        files = {f for f in files if not any((package + f).startswith(d) for d in deeper)}
        assert len(listed) == len(set(listed)), package
        assert {"undocumented": files - set(listed), "stale": set(listed) - files} == {"undocumented": set(), "stale": set()}, package
