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


def test_workers_modules_import_one_another_without_a_circle() -> None:
    """Each worker module imports only modules below it (the registry its loaders, never the
    reverse; `trial` imports `compile` and both import `devices`), lazy imports included."""
    graph = {
        f"workers.{path.stem}": {n for n in _imports(path) if n.startswith("workers.")}
        for path in _modules("workers")
    }
    circles: list[str] = []

    def visit(module: str, path: tuple[str, ...]) -> None:
        for name in sorted(graph.get(module, ())):
            if name in path:
                circles.append(" -> ".join((*path[path.index(name) :], name)))
            elif name not in done:
                visit(name, (*path, name))
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        visit(module, (module,))
    assert circles == []


def test_the_trial_records_import_no_torch() -> None:
    """The store and the driver read `workers.results` without loading torch: it imports the
    standard library only (no other worker module, which could bring torch with it)."""
    results = ROOT / "workers" / "results.py"
    forbidden = ("torch", "numpy", "scipy", "sklearn", "pandas", "workers")
    assert _violations([results], forbidden) == []


def test_the_store_does_not_reach_up() -> None:
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


def test_the_trainable_imports_nothing_of_the_driver_side() -> None:
    """Every Ray worker imports `service.trainable` (Ray pickles `train_cell` by module path): it
    stays free of the store, the callback, the progress display and the launch."""
    trainable = ROOT / "service" / "trainable.py"
    bad = (
        "service.store",
        "sqlalchemy",
        "service.callback",
        "service.progress",
        "service.driver",
        "service.cli",
        "service.commands",
        "rich",
    )
    assert _violations([trainable], bad) == []


def test_only_the_cli_imports_the_launch_and_tables_commands() -> None:
    """Commands import `service.web` and `service.tables`, `service.web` imports
    `service.tables`: no other module imports `bnsweep launch` or `bnsweep tables`, so no
    circle runs through them."""
    files = [p for p in _modules("service") if p != ROOT / "service" / "cli.py"]
    assert _violations(files, ("service.commands.launch", "service.commands.report")) == []
    tables = ROOT / "service" / "tables.py"
    bad = ("service.commands", "service.web", "service.cli", "service.driver")
    assert _violations([tables], bad) == []


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
