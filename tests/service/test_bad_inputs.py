"""Every case of `tests/service/bad_inputs.py` through the real `bnsweep.cli.main`: one line on
stderr, the case's exit code, nothing on stdout, and the store's file byte for byte as before."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from bnsweep.cli import main
from bnsweep.store.api import Store
from bnsweep.sweep import expand, parse_sweep_spec
from tests.service.bad_inputs import CASES, GOOD_SPEC


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BNSWEEP_DB", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    text = yaml.safe_dump(GOOD_SPEC)
    (tmp_path / "good.yaml").write_text(text, encoding="utf-8")
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.register_sweep("good", text, expand(parse_sweep_spec(text)))
    return tmp_path


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.iterdir()
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_input_is_one_line_with_its_exit_code(
    name: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES[name]
    if case.setup is not None:
        case.setup(folder)
    places = {
        "tmp": str(folder),
        "db": f"sqlite:///{folder / 'store.db'}",
        "good": str(folder / "good.yaml"),
        "spec": str(folder / "spec.yaml"),
        "file": str(folder / "file"),
    }
    argv = [part.format(**places) for part in case.argv]
    before = _digests(folder)
    try:
        code = main(argv)
    except SystemExit as exited:  # argparse's own errors
        code = int(exited.code or 0)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == case.exit_code, (argv, err)
    assert out == ""
    if case.argparse:
        assert lines and ": error: " in lines[-1], err
    else:
        assert len(lines) == 1 and lines[0].startswith("bnsweep: error: "), err
    for part in case.message:
        assert part.format(**places) in lines[-1], f"{part!r} not in {lines[-1]!r}"
    assert _digests(folder) == before  # no store, spec or foreign file changed
    assert not (folder / "runs").exists() and not (folder / "bnsweep.db").exists()


def test_an_unreadable_spec_is_named_as_such(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Tests may run as root, whom chmod does not stop: the refusal is simulated at the read.
    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    assert main(["launch", str(folder / "good.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == f"bnsweep: error: sweep spec {folder / 'good.yaml'}: permission denied\n"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (IsADirectoryError(21, "Is a directory", "/x"), "/x: is a folder, expected a file"),
        (PermissionError(13, "Permission denied", "/x"), "/x: permission denied"),
        (
            NotADirectoryError(20, "Not a directory", "/f/x"),
            "/f/x: a part of this path is a file, expected a folder",
        ),
        (OSError(28, "No space left on device", "/x"), "/x: No space left on device"),
    ],
)
def test_a_filesystem_error_anywhere_is_one_line_naming_the_path(
    error: OSError,
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import bnsweep.commands.store as store_command

    def fail(_args: object) -> int:
        raise error

    monkeypatch.setattr(store_command, "run_status", fail)
    assert main(["status"]) == 1
    assert capsys.readouterr().err == f"bnsweep: error: {expected}\n"
