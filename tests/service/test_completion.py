"""`bnsweep completion bash`: the script is generated from the parser and completes in bash."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bnsweep.cli import build_parser
from bnsweep.commands.completion import script

BASH = shutil.which("bash")


def _complete(tmp_path: Path, *words: str) -> list[str]:
    """What bash offers after `bnsweep WORDS...` (the last word is the one being typed)."""
    path = tmp_path / "completion.sh"
    path.write_text(script(build_parser(), "bash"))
    line = " ".join(["bnsweep", *words])
    program = (
        f"source {path}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; "
        "_bnsweep; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    done = subprocess.run([BASH, "-c", program], capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_subcommands_options_and_values_complete(tmp_path: Path) -> None:
    assert {"launch", "tables", "db", "completion"} <= set(_complete(tmp_path, ""))
    assert _complete(tmp_path, "lau") == ["launch"]
    assert "--dry-run" in _complete(tmp_path, "launch", "spec.yaml", "--")
    assert {"upgrade", "forget"} <= set(_complete(tmp_path, "db", ""))
    assert _complete(tmp_path, "db", "f") == ["forget"]
    assert "--yes" in _complete(tmp_path, "db", "forget", "--")
    assert _complete(tmp_path, "tables", "--layout", "") == ["gamma", "formulation", "methods"]


def test_every_shell_gets_a_script_and_zsh_loads_bash_completion() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("bnsweep")), "completion", "zsh"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "bashcompinit" in done.stdout
    assert "complete -o default -F _bnsweep bnsweep" in done.stdout
