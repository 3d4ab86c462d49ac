"""Imports point one way (DESIGN.md, house rule 6): workers ← service.store ← CLI/driver, and
analysis (DataFrames in, tables and figures out) ← CLI; the store and analysis never meet.

Checked on the source text, so a lazy import inside a function counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _violations(
    files: list[Path], forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()
) -> list[str]:
    found = []
    for path in files:
        for name in sorted(_imports(path)):
            if name.startswith(allowed):
                continue
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def test_workers_are_plain_pytorch() -> None:
    """A trial runs from a notebook: no service, analysis, Ray or SQLAlchemy."""
    assert (
        _violations(_modules("workers"), ("service", "analysis", "ray", "sqlalchemy", "alembic"))
        == []
    )


def test_the_store_imports_neither_analysis_ray_nor_the_rest_of_service() -> None:
    files = _modules("service/store")
    bad = ("analysis", "ray", "service")
    assert _violations(files, bad, allowed=("service.store.",)) == []


def test_analysis_imports_nothing_from_service() -> None:
    """`analysis` takes DataFrames: the store hands them over (service/store/results.py)."""
    bad = ("service", "ray", "sqlalchemy", "alembic")
    assert _violations(_modules("analysis"), bad) == []


#: The store's modules in import order: each imports only modules listed before it, so `Store`
#: (api) combines the writes and the reads, and no helper imports the class built on it.
STORE_LAYERS = (
    "models",
    "errors",
    "values",
    "events",
    "schema",
    "engines",
    "columns",
    "reads",
    "writes",
    "api",
    "results",
)


def test_the_store_modules_import_downwards_only() -> None:
    found = {p.stem for p in (ROOT / "service" / "store").glob("*.py")} - {"__init__"}
    assert found == set(STORE_LAYERS), "place each module of service/store in STORE_LAYERS"
    bad = []
    for index, name in enumerate(STORE_LAYERS):
        path = ROOT / "service" / "store" / f"{name}.py"
        for imported in sorted(_imports(path)):
            if imported.startswith("service.store."):
                target = imported.removeprefix("service.store.").split(".")[0]
                if target not in STORE_LAYERS[:index]:
                    bad.append(f"service/store/{name}.py imports {imported}")
    assert bad == []


@pytest.mark.parametrize("package", ["workers", "service", "analysis"])
def test_every_module_parses(package: str) -> None:
    assert _modules(package), f"{package} has no modules"
