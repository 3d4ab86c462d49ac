"""Imports point one way (DESIGN.md, house rule 6): workers ← service.store ← analysis ← CLI/driver.

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


def test_the_store_does_not_reach_up() -> None:
    files = _modules("service/store")
    bad = ("analysis", "ray", "service.driver", "service.cli", "service.commands", "service.sweep")
    assert _violations(files, bad) == []


def test_analysis_reads_the_store_in_one_module_only() -> None:
    files = [p for p in _modules("analysis") if p.name != "source.py"]
    assert _violations(files, ("service", "ray", "sqlalchemy")) == []
    source = ROOT / "analysis" / "source.py"
    assert (
        _violations([source], ("service", "ray"), allowed=("service.store.api", "service.store"))
        == []
    )


@pytest.mark.parametrize("package", ["workers", "service", "analysis"])
def test_every_module_parses(package: str) -> None:
    assert _modules(package), f"{package} has no modules"


def _runtime_imports(path: Path) -> set[str]:
    """Imports that run (top-level or lazy), leaving out those under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_renderers_only_read_the_table_model() -> None:
    """The renderers name the model's classes in annotations alone, so the model can show
    itself with them (a notebook's `_repr_html_`) without an import circle."""
    files = _modules("analysis/render")
    assert files
    found = [
        f"{p.relative_to(ROOT)} imports {name}"
        for p in files
        for name in sorted(_runtime_imports(p))
        if name.startswith(("analysis.table_model", "analysis.tables", "analysis.planning"))
    ]
    assert found == []


def test_the_table_modules_form_no_circle() -> None:
    """Among analysis modules, no import that runs leads back to the module it started from."""
    files = _modules("analysis")
    graph = {
        _module_name(p): {n for n in _runtime_imports(p) if n.startswith("analysis.")}
        for p in files
    }

    def reaches(start: str, goal: str) -> bool:
        stack, seen = list(graph.get(start, ())), set()
        while stack:
            name = stack.pop()
            if name == goal:
                return True
            if name not in seen:
                seen.add(name)
                stack.extend(graph.get(name, ()))
        return False

    assert [m for m in graph if reaches(m, m)] == []


def test_layout_and_display_stay_light() -> None:
    """A spec's `report:` check (launch --dry-run) imports these without pandas or scipy."""
    files = [ROOT / "analysis" / "layout.py", ROOT / "analysis" / "display.py"]
    assert _violations(files, ("pandas", "numpy", "scipy", "matplotlib", "analysis.pairing")) == []
