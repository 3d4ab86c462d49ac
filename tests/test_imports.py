"""Imports point one way (DESIGN.md, house rule 6), read from the source text of every module, so a
lazy import inside a function counts as much as a top-level one.

The layers, bottom up (folder in the repository → name once installed):

1. `workers/` → `bnsweep.workers`: one trial in plain PyTorch; no other part of bnsweep, no Ray,
   no SQLAlchemy.
2. `service/store/` → `bnsweep.store`, and `analysis/` → `bnsweep.analysis`: each imports only
   `bnsweep.workers` below it, never the other. The store reads and writes the database;
   analysis takes DataFrames (the store's read API hands them over) and never opens it.
3. the rest of `service/` → `bnsweep.*`: the sweep spec, the driver, the CLI and the web pages.
4. `service/__init__.py` → `bnsweep`: the public face, which names all of them.

No import runs from a lower layer to a higher one, and the graph of every import has no circle.
`import bnsweep` loads nothing outside the standard library, and the modules of an optional
extra (pyproject.toml) are imported only where a missing one is named in one line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Folder → installed package name (pyproject.toml's package-dir).
FOLDERS = {"service": "bnsweep", "workers": "bnsweep.workers", "analysis": "bnsweep.analysis"}
#: Layer of each package prefix; the longest matching prefix decides.
LAYERS = {
    "bnsweep.workers": 1,
    "bnsweep.store": 2,
    "bnsweep.analysis": 2,
    "bnsweep": 3,
}
FACE = "bnsweep"


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = [FOLDERS[relative.parts[0]], *relative.parts[1:]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(folder: str) -> list[Path]:
    # Alembic's migration scripts are loaded by path, not imported as modules.
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "migrations" not in p.parts)


ALL = [p for folder in FOLDERS for p in _modules(folder)]
NAMES = {_module_name(p): p for p in ALL}


def _imports(path: Path, *, typing_too: bool = True) -> set[str]:
    """The modules `path` imports; `from pkg import module` counts as importing the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    if not typing_too:
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
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
            names.update(
                f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in NAMES
            )
    return names


def _layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return 4 if module == FACE else LAYERS[prefix]


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


def _graph(*, typing_too: bool = True) -> dict[str, set[str]]:
    return {
        name: {m for m in _imports(path, typing_too=typing_too) if m in NAMES}
        for name, path in NAMES.items()
    }


# -- the whole house ------------------------------------------------------------------------------
def test_no_import_runs_back_up() -> None:
    """Every import of a bnsweep module points to its own layer or one below."""
    up = [
        f"{NAMES[a].relative_to(ROOT)} ({_layer(a)}) imports {b} ({_layer(b)})"
        for a, targets in _graph().items()
        for b in sorted(targets)
        if _layer(b) > _layer(a)
    ]
    assert up == []


def test_the_store_and_analysis_never_meet() -> None:
    assert _violations(_modules("analysis"), ("bnsweep.store", "sqlalchemy", "alembic")) == []
    assert _violations(_modules("service/store"), ("bnsweep.analysis",)) == []


def test_the_import_graph_has_no_circle() -> None:
    """Annotation-only imports (`if TYPE_CHECKING:`) included: a circle of them is still two
    rooms that cannot be read apart."""
    graph = _graph()
    circles: list[str] = []
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        for name in sorted(graph[module]):
            if name in path:
                circles.append(" -> ".join((*path[path.index(name) :], name)))
            elif name not in done:
                visit(name, (*path, name))
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, (module,))
    assert circles == []


def test_every_folder_is_read() -> None:
    for folder in FOLDERS:
        assert _modules(folder), f"{folder} has no modules"
    assert len(NAMES) == len(ALL), "two files map to one module name"


# -- workers ------------------------------------------------------------------------------------
def test_workers_are_plain_pytorch() -> None:
    """A trial runs from a notebook: no other part of bnsweep, no Ray, no SQLAlchemy."""
    files = _modules("workers")
    bad = ("bnsweep", "ray", "sqlalchemy", "alembic")
    assert _violations(files, bad, allowed=("bnsweep.workers",)) == []


def test_the_trial_records_import_no_torch() -> None:
    """The store and the driver read `bnsweep.workers.results` without loading torch: it imports
    the standard library only (no other worker module, which could bring torch with it)."""
    results = ROOT / "workers" / "results.py"
    forbidden = ("torch", "numpy", "scipy", "sklearn", "pandas", "bnsweep")
    assert _violations([results], forbidden) == []


# -- the store ----------------------------------------------------------------------------------
#: The store's modules from the bottom up: each imports only modules listed before it.
STORE_LAYERS = (
    "models",
    "errors",
    "filelock",
    "values",
    "events",
    "schema",
    "engines",
    "columns",
    "reads",
    "writes",
    "api",
    "imports",
    "results",
)


def test_the_store_imports_only_the_workers_below_it() -> None:
    files = _modules("service/store")
    bad = ("bnsweep", "ray")
    assert _violations(files, bad, allowed=("bnsweep.store", "bnsweep.workers")) == []


def test_the_store_modules_import_downwards_only() -> None:
    found = {p.stem for p in (ROOT / "service" / "store").glob("*.py")} - {"__init__"}
    assert found == set(STORE_LAYERS), "place each module of service/store in STORE_LAYERS"
    bad = []
    for index, name in enumerate(STORE_LAYERS):
        path = ROOT / "service" / "store" / f"{name}.py"
        for imported in sorted(_imports(path)):
            if imported.startswith("bnsweep.store."):
                target = imported.removeprefix("bnsweep.store.").split(".")[0]
                if target not in STORE_LAYERS[:index]:
                    bad.append(f"service/store/{name}.py imports {imported}")
    assert bad == []


# -- analysis -----------------------------------------------------------------------------------
def test_analysis_imports_only_the_workers_below_it() -> None:
    files = _modules("analysis")
    bad = ("bnsweep", "ray", "sqlalchemy")
    assert _violations(files, bad, allowed=("bnsweep.analysis", "bnsweep.workers")) == []


def test_the_renderers_only_read_the_table_model() -> None:
    """The renderers name the model's classes in annotations alone: the model is data they read,
    and the notebook's face (`bnsweep.analysis.notebook`) sits above both."""
    files = _modules("analysis/render")
    assert files
    model = ("bnsweep.analysis.table_model", "bnsweep.analysis.tables", "bnsweep.analysis.planning")
    found = [
        f"{p.relative_to(ROOT)} imports {name}"
        for p in files
        for name in sorted(_imports(p, typing_too=False))
        if name.startswith(model)
    ]
    assert found == []


def test_layout_and_display_stay_light() -> None:
    """A spec's `report:` check (launch --dry-run) imports these without pandas or scipy."""
    files = [ROOT / "analysis" / "layout.py", ROOT / "analysis" / "display.py"]
    bad = ("pandas", "numpy", "scipy", "matplotlib", "bnsweep.analysis.pairing")
    assert _violations(files, bad) == []


# -- the driver and the commands ----------------------------------------------------------------
def test_the_trainable_imports_nothing_of_the_driver_side() -> None:
    """Every Ray worker imports `bnsweep.trainable` (Ray pickles `train_cell` by module path):
    it stays free of the store, the callback, the progress display and the launch."""
    trainable = ROOT / "service" / "trainable.py"
    bad = (
        "bnsweep.store",
        "sqlalchemy",
        "bnsweep.callback",
        "bnsweep.progress",
        "bnsweep.driver",
        "bnsweep.cli",
        "bnsweep.commands",
        "rich",
    )
    assert _violations([trainable], bad) == []


def test_only_the_cli_imports_a_command() -> None:
    """Commands import `bnsweep.web` and `bnsweep.sweep_tables`; nothing else imports a command
    module (`bnsweep.commands` itself holds the options they share)."""
    files = [p for p in _modules("service") if p.parent.name != "commands" and p.name != "cli.py"]
    assert _violations(files, ("bnsweep.commands",)) == []
    tables = ROOT / "service" / "sweep_tables.py"
    bad = ("bnsweep.commands", "bnsweep.web", "bnsweep.cli", "bnsweep.driver")
    assert _violations([tables], bad) == []


# -- the face and the extras ----------------------------------------------------------------------
def test_import_bnsweep_loads_only_the_standard_library() -> None:
    """The face names everything and imports nothing until a name is used: no torch, Ray or
    pandas, and no extra, so a missing one never breaks `import bnsweep`."""

    def loaded(statement: str) -> set[str]:
        """The top-level modules outside the standard library after `statement`."""
        probe = (
            f"import sys; {statement}\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)))"
        )
        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
        )
        return set(ast.literal_eval(done.stdout.strip()))

    # What the interpreter loads before any import, from the venv's .pth files (setuptools'
    # `_distutils_hack`, an editable install's finder), is not bnsweep's doing.
    assert loaded("import bnsweep") - loaded("pass") == {"bnsweep"}


#: The modules of each optional extra (pyproject.toml) that bnsweep imports, and the only files
#: allowed to import them. `bnsweep.web.app` needs the dashboard extra as a whole: only
#: `load_server` imports it, and says which extra to install when it cannot.
EXTRA_MODULES = {
    "fastapi": {"service/web/app.py"},
    "starlette": {"service/web/app.py"},
    "uvicorn": {"service/commands/web.py"},
    "psycopg": set(),  # SQLAlchemy loads it; service/store/engines.py names the extra
    "bnsweep.web.app": {"service/commands/web.py"},
}


def test_an_extra_is_imported_only_where_its_absence_is_named() -> None:
    found = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in ALL
        for name in sorted(_imports(path, typing_too=False))
        for module, allowed in EXTRA_MODULES.items()
        if (name == module or name.startswith(module + "."))
        and str(path.relative_to(ROOT)) not in allowed
    ]
    assert found == []
