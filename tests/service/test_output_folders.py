"""Every folder a command writes goes through one check (bnsweep.outputs) (issue 19).

`report --out` and `launch --report` replace their folder whole, so only a new or empty folder,
or a report bnsweep wrote (its marker), is used; anything else is refused in one line, exit 2,
with every file, folder and link left byte for byte as it was. `tables --out` and `plots --out`
write their own files into any folder and remove nothing. All through `bnsweep.cli.main`, on a
store with no sweep, so that a report takes a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bnsweep.cli import main
from bnsweep.outputs import REPORT_MARKER, REPORT_VERSION
from tests.service.bad_inputs import GOOD_SPEC
from tests.web.stores import make_store


@pytest.fixture(scope="module")
def store_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with no sweep, shared: every command here only reads it (or a copy)."""
    path = tmp_path_factory.mktemp("store") / "r.db"
    make_store(path, "empty")
    return path


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_file: Path) -> Path:
    """A working folder with the user's things in it, as the current and home folder's
    neighbour; HOME is a folder of its own with a file in it."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("\\section{Results}\n", encoding="utf-8")
    (work / ".git").mkdir()
    (work / ".git" / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine\n", encoding="utf-8")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    monkeypatch.delenv("BNSWEEP_DB", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    shutil.copy(store_file, work / "r.db")
    (work / "good.yaml").write_text(yaml.safe_dump(GOOD_SPEC), encoding="utf-8")
    return work


def _tree(root: Path) -> dict[str, str]:
    """Every entry under `root` (links as their target's name, never followed) and its bytes;
    SQLite's -wal and -shm files, which any reader may leave, apart."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if name.endswith(("-wal", "-shm")):
                continue
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = "-> " + os.readlink(path)
            elif path.is_file():
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[key] = "folder"
    return found


def _report_folder(path: Path) -> None:
    path.mkdir(parents=True)
    (path / REPORT_MARKER).write_text(
        json.dumps({"format": "bnsweep report", "version": REPORT_VERSION}), encoding="utf-8"
    )
    (path / "index.html").write_text("<p>an old report</p>", encoding="utf-8")


def _thesis_folder(here: Path) -> str:
    (here / "thesis").mkdir()
    (here / "thesis" / "thesis.tex").write_text("years of work\n", encoding="utf-8")
    return "thesis"


def _link_to_report(here: Path) -> str:
    # The link's target is a report that could be replaced: the link is still refused.
    _report_folder(here.parent / "elsewhere")
    (here / "link").symlink_to(here.parent / "elsewhere")
    return "link"


def _dangling_link(here: Path) -> str:
    (here / "dangling").symlink_to(here.parent / "nothing")
    return "dangling"


def _store_folder(here: Path) -> str:
    # `make demo` writes its store to out/demo.db; `report --out out` then must not delete it.
    (here / "out").mkdir()
    shutil.copy(here / "r.db", here / "out" / "demo.db")
    return "out"


def _store_in_a_report(here: Path) -> str:
    _report_folder(here / "rep")
    shutil.copy(here / "r.db", here / "rep" / "r.db")
    return "rep"


def _bad_marker(here: Path) -> str:
    (here / "fake").mkdir()
    (here / "fake" / REPORT_MARKER).write_text("bnsweep report, trust me\n", encoding="utf-8")
    (here / "fake" / "data.csv").write_text("1,2\n", encoding="utf-8")
    return "fake"


def _linked_marker(here: Path) -> str:
    _report_folder(here.parent / "real")
    (here / "linked").mkdir()
    (here / "linked" / REPORT_MARKER).symlink_to(here.parent / "real" / REPORT_MARKER)
    (here / "linked" / "data.csv").write_text("1,2\n", encoding="utf-8")
    return "linked"


#: (the folder given, or what makes it in the working folder; its store; the refusal's words)
REFUSED: dict[str, tuple[str | Callable[[Path], str], str, str]] = {
    "a file": ("thesis.tex", "r.db", "is a file, expected a folder"),
    "under a file": ("thesis.tex/report", "r.db", "a part of this path is a file (thesis.tex)"),
    "a folder of files without the marker": (_thesis_folder, "r.db", "no .bnsweep-report"),
    "a marker bnsweep did not write": (_bad_marker, "r.db", "no .bnsweep-report"),
    "a marker that is a link": (_linked_marker, "r.db", "no .bnsweep-report"),
    "the current folder": (".", "r.db", "is the current folder"),
    "the current folder, spelt a/..": (".git/..", "r.db", "is the current folder"),
    "empty": ("", "r.db", "empty, expected a folder"),
    "the root folder": ("/", "r.db", "is the root folder"),
    "above the current folder": ("..", "r.db", "is a folder above the current one"),
    "the home folder": ("~", "r.db", "is the home folder"),
    "the folder of the store": (_store_folder, "out/demo.db", "holds the results store"),
    "a report holding the store": (_store_in_a_report, "rep/r.db", "holds the results store"),
    "a link to a report": (_link_to_report, "r.db", "is a symbolic link"),
    "a dangling link": (_dangling_link, "r.db", "is a symbolic link"),
}


def _argv(command: str, out: str, db: str) -> list[str]:
    if command == "report":
        return ["report", "--db", db, "--out", out]
    return ["launch", "good.yaml", "--db", db, "--report", out]


@pytest.mark.parametrize("command", ["report", "launch"])
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_folder_a_report_may_not_replace_is_refused_and_left_as_it_is(
    case: str,
    command: str,
    here: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    given, store, words = REFUSED[case]
    out = given if isinstance(given, str) else given(here)
    if command == "launch":
        import bnsweep.driver

        def no_training(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("the launch started before --report was checked")

        monkeypatch.setattr(bnsweep.driver, "launch", no_training)
    before = _tree(here.parent)
    code = main(_argv(command, out, f"sqlite:///{store}"))
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    option = "--out" if command == "report" else "--report"
    assert len(lines) == 1 and lines[0].startswith(f"bnsweep: error: {option}"), captured.err
    assert words in lines[0], lines[0]
    assert code == 2 and captured.out == ""
    assert _tree(here.parent) == before  # nothing written, renamed or removed, links included


def test_a_new_report_goes_into_an_empty_folder_and_leaves_its_marker(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "empty").mkdir()
    assert main(["report", "--db", "sqlite:///r.db", "--out", "empty"]) == 0
    assert capsys.readouterr().out.strip() == str(here / "empty")
    marker = json.loads((here / "empty" / REPORT_MARKER).read_text(encoding="utf-8"))
    assert marker == {"format": "bnsweep report", "version": REPORT_VERSION}
    assert (here / "empty" / "index.html").is_file()
    assert sorted(p.name for p in here.iterdir() if p.name.startswith(".empty")) == []


def test_a_second_report_replaces_the_first_whole_and_only_it(
    here: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bnsweep.web import report

    assert main(["report", "--db", "sqlite:///r.db", "--out", "site"]) == 0
    (here / "site" / "stale.html").write_text("old", encoding="utf-8")
    others = {k: v for k, v in _tree(here).items() if not k.startswith("site")}
    removed: list[Path] = []
    real_rmtree = shutil.rmtree

    def watched(path: str | Path, *args: object, **kwargs: object) -> None:
        # The old report goes only once the new one is in place, and only the old one.
        path = Path(path)
        if path.name == "site":
            assert path.parent.name.startswith(".site.old-"), path
            assert (path / "stale.html").is_file() and (path / REPORT_MARKER).is_file()
            assert (here / "site" / REPORT_MARKER).is_file()
            assert not (here / "site" / "stale.html").exists()
            removed.append(path)
        real_rmtree(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(report.shutil, "rmtree", watched)
    assert main(["report", "--db", "sqlite:///r.db", "--out", "site"]) == 0
    capsys.readouterr()
    assert len(removed) == 1
    assert (here / "site" / "index.html").is_file() and not (here / "site" / "stale.html").exists()
    assert {k: v for k, v in _tree(here).items() if not k.startswith("site")} == others


def test_a_report_swapped_for_other_files_while_it_is_written_is_left_alone(
    here: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bnsweep.web import report

    assert main(["report", "--db", "sqlite:///r.db", "--out", "site"]) == 0
    real_write_site = report._write_site

    def and_meanwhile(*args: object) -> None:
        real_write_site(*args)  # type: ignore[arg-type]
        shutil.rmtree(here / "site")
        (here / "site").mkdir()
        (here / "site" / "thesis.tex").write_text("moved here meanwhile\n", encoding="utf-8")

    monkeypatch.setattr(report, "_write_site", and_meanwhile)
    assert main(["report", "--db", "sqlite:///r.db", "--out", "site"]) == 2
    assert "no .bnsweep-report" in capsys.readouterr().err
    assert os.listdir(here / "site") == ["thesis.tex"]
    assert not [p.name for p in here.iterdir() if p.name.startswith(".site")]


def test_tables_write_their_own_files_and_remove_nothing(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `plots --out` takes the same path (check_writable_folder, then named files); its
    # figures cost ten seconds, so it is not run here.
    make_store(here / "one.db", "one_seed")
    before = _tree(here)
    assert main(["tables", "--db", "sqlite:///one.db", "--format", "md,csv", "--out", "."]) == 0
    capsys.readouterr()
    after = _tree(here)
    assert {k: v for k, v in after.items() if k in before} == before
    assert len(after) > len(before)  # and it wrote something: the check above can fail


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--out", "thesis.tex/x"],
        ["launch", "good.yaml", "--report", "thesis.tex/x"],
        ["tables", "--out", "thesis.tex/x"],
        ["plots", "--out", "thesis.tex/x"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_path_through_a_file_is_one_message_for_every_command(
    argv: list[str], here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--db", "sqlite:///r.db"]) == 2
    option = argv[-2]
    assert capsys.readouterr().err == (
        f"bnsweep: error: {option} thesis.tex/x: a part of this path is a file (thesis.tex)\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--sweep", "nosuch", "--out", "site"],
        ["tables", "--sweep", "nosuch"],
        ["plots", "--sweep", "nosuch", "--out", "plots"],
        ["query", "--sweep", "nosuch"],
        ["status", "--sweep", "nosuch"],
    ],
    ids=lambda argv: argv[0],
)
def test_an_unknown_sweep_is_the_same_line_and_exit_code_everywhere(
    argv: list[str], here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # README's exit codes: an unknown sweep is the world's answer (1), not a typing error.
    before = _tree(here)
    assert main([*argv, "--db", "sqlite:///r.db"]) == 1
    assert capsys.readouterr().err == (
        "bnsweep: error: no sweep named 'nosuch' in sqlite:///r.db; known sweeps: none\n"
    )
    assert _tree(here) == before
