"""The examples of README.md and docs/ still work.

- Every `python` block parses, and every name it imports exists where it says, so a moved or
  renamed name fails here rather than in a reader's notebook. The blocks of the pages whose
  examples need no data (RUNNABLE) run whole, in order, as a reader pastes them.
- Every `bnsweep ...` command line of a shell block is accepted by the CLI's parser: the
  subcommand, its flags, and their values' types and choices.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

from bnsweep.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
#: Pages whose Python blocks run as they stand (on the CPU, beside the demo's store).
RUNNABLE = ("README.md", "method.md")
#: A placeholder the reader replaces (`<sweep>`, `URL`, `...`) makes a line an outline.
PLACEHOLDER = re.compile(r"<[^>]+>|\.\.\.|…|\[[A-Z]|\bURL\b|\bNAME\b|\bSPEC\b|\bDIR\b|\$\{?\w+")
#: What runs a bnsweep command on a cluster, before the command itself.
LAUNCHERS = re.compile(r"^(?:ray job submit .*?--\s+|srun .*?\s+|docker compose exec \S+ )")


def _blocks(languages: set[str]) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for n, match in enumerate(BLOCK.finditer(text)):
            if match.group(1) in languages:
                found.append((f"{page.relative_to(ROOT)}#{n}", match.group(2)))
    return found


PYTHON = _blocks({"python", "py"})
#: Shell blocks, and unlabelled blocks (diagrams, output) for their `$ bnsweep` prompt lines.
SHELL = [(w, b, True) for w, b in _blocks({"bash", "sh", "shell", "console"})]
SHELL += [(w, b, False) for w, b in _blocks({""})]


def _command_lines(block: str, shell: bool) -> list[str]:
    """`bnsweep ...` lines of a block, continuations joined, prompts and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = []
    for raw in joined.splitlines():
        if not shell and not raw.startswith("$ "):
            continue
        line = LAUNCHERS.sub("", raw.strip().removeprefix("$ "))
        if line.startswith("bnsweep ") and not PLACEHOLDER.search(line.split(" #")[0]):
            lines.append(line)
    return lines


COMMANDS = [(w, line) for w, block, shell in SHELL for line in _command_lines(block, shell)]


def test_the_docs_have_examples() -> None:
    assert len(PYTHON) >= 5 and len(COMMANDS) >= 30


@pytest.mark.parametrize(("where", "code"), PYTHON, ids=[w for w, _ in PYTHON])
def test_a_python_example_imports_what_exists(where: str, code: str) -> None:
    tree = ast.parse(code, filename=where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(module, a.name)]
            assert missing == [], f"{where}: {node.module} has no {', '.join(missing)}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


@pytest.mark.parametrize("page", RUNNABLE)
def test_the_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a folder where `make demo` has left its store (`out/demo.db`, a finished sweep)."""
    from tests.web.stores import make_store

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    make_store(tmp_path / "out" / "demo.db", "finished")
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    blocks = [(w, c) for w, c in PYTHON if Path(w.split("#")[0]).name == page]
    assert blocks, f"{page} has no Python example"
    for where, code in blocks:
        exec(compile(code, where, "exec"), namespace)


@pytest.mark.parametrize(("where", "line"), COMMANDS, ids=[f"{w}:{c}" for w, c in COMMANDS])
def test_a_command_line_parses(where: str, line: str) -> None:
    argv = shlex.split(line, comments=True)[1:]
    for stop in ("|", ">", "&&", ";"):
        argv = argv[: argv.index(stop)] if stop in argv else argv
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit:
        pytest.fail(f"{where}: `{line}` is refused by the parser (exit {exit.code})")
