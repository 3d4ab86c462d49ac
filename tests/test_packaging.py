"""The installed distribution: one top-level package, `bnsweep`, in the wheel, imports that no
folder of the user's can shadow, and a declared distribution behind every third-party import.

The wheel is built from this checkout (`pip wheel --no-deps`, about 10 s); the shadowing test
runs in a fresh interpreter whose first path entry holds packages named `analysis`, `service`
and `workers`, as a user's research folder or notebook might.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
#: The repository's folders and the import names pyproject.toml's package-dir gives them.
FOLDERS = {"service": "bnsweep", "workers": "bnsweep.workers", "analysis": "bnsweep.analysis"}
#: What the wheel carries besides Python modules (package-data).
DATA_SUFFIXES = {".ini", ".mako", ".css", ".js"}


def _installed_name(path: Path) -> str:
    """`service/store/api.py` → `bnsweep/store/api.py`, as the wheel holds it."""
    relative = path.relative_to(ROOT)
    top = FOLDERS[relative.parts[0]].replace(".", "/")
    return "/".join((top, *relative.parts[1:]))


def _shipped_files() -> list[Path]:
    return sorted(
        p
        for folder in FOLDERS
        for p in (ROOT / folder).rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and (p.suffix == ".py" or p.suffix in DATA_SUFFIXES)
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What git holds of the distribution, copied, so setuptools' build folders and egg-info
    never land in the checkout."""
    copy_to = tmp_path_factory.mktemp("source") / "bnsweep"
    keep = ["pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "CHANGELOG.md", "docs"]
    copy_to.mkdir()
    for name in (*keep, *FOLDERS):
        item = ROOT / name
        copy = shutil.copytree if item.is_dir() else shutil.copy2
        copy(
            item,
            copy_to / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if item.is_dir() else {}),
        )
    return copy_to


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = out.glob("bnsweep-*.whl")
    return zipfile.ZipFile(built)


@pytest.fixture(scope="module")
def sdist(source: Path, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The names in the sdist, without its `bnsweep-VERSION/` prefix."""
    out = tmp_path_factory.mktemp("sdist")
    build = f"import setuptools.build_meta as b; b.build_sdist({str(out)!r})"
    subprocess.run(
        [sys.executable, "-c", build], cwd=source, check=True, capture_output=True, timeout=600
    )
    (built,) = out.glob("bnsweep-*.tar.gz")
    with tarfile.open(built) as tar:
        return {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}


def test_package_dir_matches_the_folders() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert setuptools["package-dir"] == {name: folder for folder, name in FOLDERS.items()}
    packages = {
        _installed_name(p.parent).replace("/", ".")
        for folder in FOLDERS
        for p in (ROOT / folder).rglob("__init__.py")
    }
    assert sorted(setuptools["packages"]) == sorted(packages), "a package folder is not listed"


def test_the_wheel_has_one_top_level_package(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert tops == {"bnsweep", f"bnsweep-{VERSION}.dist-info"}


def test_the_wheel_holds_every_module_and_data_file(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    missing = [
        str(p.relative_to(ROOT)) for p in _shipped_files() if _installed_name(p) not in names
    ]
    assert missing == []
    assert "bnsweep/py.typed" in names
    assert f"bnsweep-{VERSION}.dist-info/licenses/LICENSE" in names


def test_the_wheel_metadata(wheel: zipfile.ZipFile) -> None:
    metadata = wheel.read(f"bnsweep-{VERSION}.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert "Project-URL: " in metadata and "Author: " in metadata and "Keywords: " in metadata
    assert "<host>" not in metadata, "a placeholder URL is published"
    # The Python versions claimed are the ones the tests run on.
    claimed = {
        line.rsplit(":: ", 1)[1]
        for line in metadata.splitlines()
        if line.startswith("Classifier: Programming Language :: Python :: 3.")
    }
    assert claimed == {f"{sys.version_info.major}.{sys.version_info.minor}"}
    assert "Provides-Extra: postgres" in metadata
    entry_points = wheel.read(f"bnsweep-{VERSION}.dist-info/entry_points.txt").decode()
    assert "bnsweep = bnsweep.cli:main" in entry_points


#: Imports every module of the installed package and the public face, then names the modules
#: that came from outside it: none may be the user's `analysis`, `service` or `workers`.
SHADOW_PROBE = """
import pkgutil, sys
import bnsweep
from bnsweep import TrialSpec, build_model, param_groups, set_bn_scale, tables, trials
for info in pkgutil.walk_packages(bnsweep.__path__, "bnsweep."):
    if not info.name.endswith(".__main__"):  # `python -m bnsweep` runs the command line
        __import__(info.name)
for name in bnsweep.__all__:
    getattr(bnsweep, name)
print(bnsweep.__version__, TrialSpec().spec_hash)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("analysis", "service", "workers")))
"""


def test_a_users_own_analysis_package_does_not_shadow_bnsweep(tmp_path: Path) -> None:
    for name in FOLDERS:
        package = tmp_path / name
        package.mkdir()
        (package / "__init__.py").write_text("raise ImportError('the user package')\n")
    done = subprocess.run(
        [sys.executable, "-c", SHADOW_PROBE],
        cwd=tmp_path,  # `python -c` puts the working folder first on sys.path
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    version, _hash, *_ = done.stdout.split()
    assert version == VERSION
    assert done.stdout.splitlines()[-1] == "[]"


# -- dependencies ---------------------------------------------------------------------------------
def _declared(*, test_too: bool = False) -> set[str]:
    """Distributions the dependencies and the extras name (the `test` extra only if asked)."""
    project = PYPROJECT["project"]
    lines = list(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        if extra != "test" or test_too:
            lines += requirements
    return {canonicalize_name(Requirement(line).name) for line in lines}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level import name → the source files importing it, for every module that is neither
    the standard library's nor bnsweep's (lazy and annotation-only imports count too)."""
    found: dict[str, set[str]] = {}
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "bnsweep":
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared() -> None:
    """An import of a distribution that only arrives as another's dependency (pyarrow through
    Ray Tune, Pillow through torchvision) breaks when that one stops requiring it."""
    providers = importlib.metadata.packages_distributions()
    declared = _declared()
    undeclared = []
    for name, files in sorted(_third_party_imports().items()):
        dists = {canonicalize_name(d) for d in providers.get(name, [])}
        assert dists, f"{name} (imported by {sorted(files)[0]}) is not installed here"
        if not dists & declared:
            undeclared.append(f"{name} ({', '.join(sorted(dists))}) in {', '.join(sorted(files))}")
    assert undeclared == [], "imported but not in pyproject.toml's dependencies or extras"


def test_the_audit_reads_the_imports() -> None:
    """The audit above fails on something: it sees the imports it must see."""
    found = _third_party_imports()
    assert {"torch", "ray", "pyarrow", "PIL", "fastapi", "sqlalchemy"} <= set(found)
    assert not {"os", "bnsweep", "__future__"} & set(found)


def test_the_extras() -> None:
    """The core leaves out what only some users need; `all` is every extra but the test tools,
    and the tests have every extra."""
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    core = {canonicalize_name(Requirement(line).name): line for line in project["dependencies"]}
    assert "psycopg" not in core and "fastapi" not in core and "uvicorn" not in core
    # Ray Tune runs a sweep; Ray's dashboard and job server (its `default` extra) only serve a
    # cluster that takes `ray job submit`.
    assert Requirement(core["ray"]).extras == {"tune"}
    assert {Requirement(line).name for line in extras["postgres"]} == {"psycopg"}
    assert any(Requirement(line).extras >= {"default"} for line in extras["cluster"])
    (everything,) = extras["all"]
    features = set(extras) - {"all", "test"}
    assert Requirement(everything).name == "bnsweep"
    assert Requirement(everything).extras == features
    assert "bnsweep[all]" in extras["test"]


#: An extra's feature with its module absent: the command and the line it must say. `cluster`
#: has none: bnsweep runs its own Ray without the dashboard, and `ray job submit` is Ray's.
MISSING = {
    "postgres (psycopg)": ("psycopg", "postgres", ["db", "upgrade", "--db", "postgresql://u@h/db"]),
    "dashboard (fastapi)": ("fastapi", "dashboard", ["dashboard", "--db", "sqlite:///absent.db"]),
    "dashboard (uvicorn)": ("uvicorn", "dashboard", ["dashboard", "--db", "sqlite:///absent.db"]),
}


def test_every_extra_with_a_feature_is_probed() -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"]) - {"all", "test", "cluster"}
    assert {extra for _, extra, _ in MISSING.values()} == extras


@pytest.mark.parametrize("case", MISSING.values(), ids=MISSING.keys())
def test_a_missing_extra_is_one_line_naming_it(
    case: tuple[str, str, list[str]], tmp_path: Path
) -> None:
    module, extra, argv = case
    probe = (
        f"import sys; sys.modules[{module!r}] = None  # as if not installed\n"
        "from bnsweep.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.endswith(
        f"needs {module}, which is not installed: pip install 'bnsweep[{extra}]'\n"
    )
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == [], "a refused command wrote something"


def test_a_broken_driver_is_named_by_its_message() -> None:
    """psycopg installed without a libpq it can load raises an ImportError naming no module."""
    from bnsweep.workers.errors import EXIT_USAGE, missing_extra

    err = missing_extra("a PostgreSQL store", "postgres", ImportError("no pq wrapper available"))
    assert str(err) == (
        "a PostgreSQL store cannot import what it needs (ImportError: no pq wrapper available): "
        "pip install 'bnsweep[postgres]'"
    )
    assert err.exit_code == EXIT_USAGE


def test_the_footprint_follows_extras_and_markers(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/install_footprint.py's walk: an extra brings its own, a marker that is false here
    brings nothing."""
    from tests.bench_scripts import load_bench

    footprint = load_bench("install_footprint", monkeypatch)
    dists = footprint.installed()
    tune = footprint.closure(["ray[tune]"], dists)
    default = footprint.closure(["ray[default,tune]"], dists)
    assert {"ray", "pyarrow", "pandas"} <= tune
    assert {"aiohttp", "grpcio", "opentelemetry-sdk"} <= default - tune
    assert footprint.closure(["ray; python_version < '3'"], dists) == set()
    assert footprint.own_extras(["bnsweep[postgres]"], {"postgres": ["psycopg"]}) == ["psycopg"]


def test_the_editable_install_links_every_file_of_this_checkout() -> None:
    """`make venv` installs bnsweep as a strict editable install: a tree of links, one per file,
    in build/__editable__.*. A file added since is not importable until the next `make venv`,
    and a venv another clone re-pointed runs that clone's code: either is named here."""
    import bnsweep

    tree = Path(bnsweep.__path__[0])
    if not tree.parent.name.startswith("__editable__."):
        pytest.skip(f"bnsweep is not a strict editable install here ({tree})")
    links = {p.relative_to(tree.parent).as_posix(): p for p in tree.rglob("*") if p.is_symlink()}
    unlinked = [
        str(p.relative_to(ROOT)) for p in _shipped_files() if _installed_name(p) not in links
    ]
    assert unlinked == [], "not in the editable install: run `make venv` to link new files"
    elsewhere = sorted(
        name for name, link in links.items() if not link.resolve().is_relative_to(ROOT)
    )
    assert elsewhere == [], f"the venv runs another checkout's files: run `make venv` in {ROOT}"
    gone = sorted(name for name, link in links.items() if not link.exists())
    assert gone == [], "linked files that were removed: run `make venv`"


def test_the_sdist_holds_the_pages_the_readme_links_to(sdist: set[str]) -> None:
    """A package index shows README.md alone; bnsweep has no public URL to make its links
    absolute, so the sdist carries what they point to."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme))  # relative links only
    assert "docs/cluster.md" in linked and "CHANGELOG.md" in linked
    assert sorted(linked - sdist) == []
    assert "service/cli.py" in sdist and "docs/img/gradient_factor_init.png" in sdist


def _import_names(dists: set[str]) -> set[str]:
    """The import names that only `dists` provide: top-level ones, and in a namespace another
    distribution shares (`google`: protobuf and google-api-core), the subpackages they own."""
    names: set[str] = set()
    for top, owners in importlib.metadata.packages_distributions().items():
        owned = {canonicalize_name(o) for o in owners}
        if owned <= dists:
            names.add(top)
            continue
        for dist in owned & dists:
            for file in importlib.metadata.distribution(dist).files or []:
                if len(file.parts) > 2 and file.parts[0] == top:
                    names.add(f"{top}.{file.parts[1]}")
    return names


TINY_SPEC = """\
name: tiny
defaults: {dataset: digits, arch: resnet8, input_norm: bn, epochs: 1, batch_size: 64, device: cpu}
grids:
  - {bn_scale_init: [0.1], bn_lr_divisor: [100], lr: [0.1]}
base: true
seeds: 1
resources: {cpus: 1, gpus: 0}
max_concurrent: 1
retries: 0
storage: runs
"""


@pytest.mark.slow
def test_a_local_sweep_runs_without_the_cluster_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core's `ray[tune]` runs a launch on this machine: every module only Ray's `default`
    extra brings (aiohttp, gRPC, OpenTelemetry, ...) fails to import, in the launch and in the
    Ray processes it starts (PYTHONPATH reaches them), and two cells still train and land."""
    from tests.bench_scripts import load_bench

    footprint = load_bench("install_footprint", monkeypatch)
    dists = footprint.installed()
    core = footprint.closure(PYPROJECT["project"]["dependencies"], dists)
    cluster = footprint.closure(PYPROJECT["project"]["optional-dependencies"]["cluster"], dists)
    blocked = _import_names(cluster - core)
    assert {"aiohttp", "grpc", "opentelemetry"} <= {n.split(".")[0] for n in blocked}
    block = tmp_path / "blocked"
    for name in blocked:
        package = block.joinpath(*name.split("."))
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(
            f"raise ModuleNotFoundError('{name}: blocked, as without the cluster extra', "
            f"name='{name}')\n"
        )
    env = {**os.environ, "PYTHONPATH": str(block)}
    absent = subprocess.run(
        [sys.executable, "-c", "import aiohttp"], env=env, capture_output=True, check=False
    )
    assert absent.returncode == 1, "the block does not hide Ray's default extra"
    (tmp_path / "tiny.yaml").write_text(TINY_SPEC)
    done = subprocess.run(
        [sys.executable, "-m", "bnsweep.cli", "launch", "tiny.yaml", "--db", "sqlite:///t.db"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cells 2: 2 done" in done.stderr
