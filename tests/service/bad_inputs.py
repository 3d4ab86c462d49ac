"""The table of bad inputs (issue 13): each is one line on stderr, with a known exit code, and
leaves the results store exactly as it was. Add a case here for every new one found.

Placeholders in `argv`: {tmp} the case's folder, {db} the URL of a bnsweep store there holding
the sweep `good`, {good} a valid spec, {spec} the file `setup` wrote as `spec.yaml`,
{file} the file `setup` wrote as `file`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

USAGE, RUNTIME = 2, 1

GOOD_SPEC = {
    "name": "good",
    "defaults": {"dataset": "digits", "arch": "resnet8", "epochs": 1, "device": "cpu"},
    "grids": [{"bn_scale_init": [0.5], "bn_lr_divisor": [100]}],
    "seeds": 2,
}


@dataclass(frozen=True)
class BadInput:
    argv: tuple[str, ...]
    message: tuple[str, ...]  # parts of the one error line
    exit_code: int
    setup: Callable[[Path], None] | None = None
    argparse: bool = False  # argparse's own error: usage lines, then the error line


def spec_text(text: str | bytes) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        path = tmp / "spec.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")

    return write


def spec_with(**changes: object) -> Callable[[Path], None]:
    return spec_text(yaml.safe_dump({**GOOD_SPEC, **changes}))


def file_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda tmp: (tmp / "file").write_bytes(data)


def foreign_sqlite(tmp: Path) -> None:
    conn = sqlite3.connect(tmp / "file")
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()


def truncated_store(tmp: Path) -> None:
    data = (tmp / "store.db").read_bytes()
    (tmp / "file").write_bytes(data[: len(data) // 3])


def newer_store(tmp: Path) -> None:
    (tmp / "file").write_bytes((tmp / "store.db").read_bytes())
    conn = sqlite3.connect(tmp / "file")
    conn.execute("UPDATE bnsweep_alembic_version SET version_num = 'f00dfeed9999'")
    conn.commit()
    conn.close()


CASES: dict[str, BadInput] = {
    # -- spec files ------------------------------------------------------------------------------
    "spec binary": BadInput(
        ("launch", "{spec}", "--db", "{db}"),
        ("spec.yaml", "not a text file"),
        USAGE,
        spec_text(b"\x89PNG\r\n\x1a\n\x00\xff\xfe"),
    ),
    "spec with NUL bytes": BadInput(
        ("launch", "{spec}", "--db", "{db}", "--dry-run"),
        ("spec.yaml", "NUL bytes"),
        USAGE,
        spec_text("name: good\x00\n"),
    ),
    "spec is a folder": BadInput(
        ("launch", "{tmp}", "--db", "{db}"), ("is a folder, expected a YAML file",), USAGE
    ),
    "duplicate key": BadInput(
        ("launch", "{spec}", "--db", "{db}", "--dry-run"),
        ("key 'seeds' given twice (first on line 2)",),
        USAGE,
        spec_text("name: good\nseeds: 2\ngrids: [{lr: [0.1]}]\nseeds: 3\n"),
    ),
    "seeds true": BadInput(
        ("launch", "{spec}", "--db", "{db}", "--dry-run"),
        ("seeds: a count (>= 1), or a list of distinct integers >= 0; got True",),
        USAGE,
        spec_with(seeds=True),
    ),
    "seeds a word": BadInput(
        ("launch", "{spec}", "--db", "{db}"),
        ("seeds: a count (>= 1), or a list", "got 'many'"),
        USAGE,
        spec_with(seeds="many"),
    ),
    "cpus a string": BadInput(
        ("launch", "{spec}", "--db", "{db}"),
        ("resources.cpus: Input should be a valid number",),
        USAGE,
        spec_with(resources={"cpus": "2"}),
    ),
    "ten million seeds": BadInput(
        ("launch", "{spec}", "--db", "{db}", "--dry-run"),
        ("at least 10,000,000 cells", "limit of 100,000", "max_cells"),
        USAGE,
        spec_with(seeds=10_000_000),
    ),
    "a grid of a million points": BadInput(
        ("launch", "{spec}", "--db", "{db}"),
        ("at least 1,000,000 cells",),
        USAGE,
        spec_with(
            seeds=1,
            grids=[
                {
                    "lr": [0.01 * (i + 1) for i in range(100)],
                    "momentum": [0.001 * i for i in range(100)],
                    "weight_decay": [1e-5 * i for i in range(100)],
                }
            ],
        ),
    ),
    "over its own max_cells": BadInput(
        ("launch", "{spec}", "--db", "{db}", "--dry-run"),
        ("the sweep has 4 cells", "limit of 3"),
        USAGE,
        spec_with(max_cells=3),
    ),
    # -- --db ------------------------------------------------------------------------------------
    "--db empty (status)": BadInput(("status", "--db", ""), ("--db: empty",), USAGE),
    "--db empty (launch)": BadInput(("launch", "{good}", "--db", " "), ("--db: empty",), USAGE),
    "--db a folder": BadInput(
        ("status", "--db", "sqlite:///{tmp}"), ("is a folder, expected a SQLite file",), RUNTIME
    ),
    "--db folder cannot be created": BadInput(
        ("db", "upgrade", "--db", "sqlite:///{good}/sub/r.db"),
        ("cannot create the folder",),
        RUNTIME,
    ),
    # -- files that are not a bnsweep store -----------------------------------------------------
    **{
        f"not SQLite ({' '.join(cmd)})": BadInput(
            (*cmd, "--db", "sqlite:///{file}"),
            ("file: not a SQLite database",),
            RUNTIME,
            file_bytes(b"hello, I am a text file\n" * 200),
        )
        for cmd in (
            ("status",),
            ("query",),
            ("db", "upgrade"),
            ("launch", "{good}"),
            ("launch", "{good}", "--dry-run"),
            ("tables", "--sweep", "good"),
        )
    },
    **{
        f"truncated store ({' '.join(cmd)})": BadInput(
            (*cmd, "--db", "sqlite:///{file}"),
            ("not a SQLite database, or a damaged one",),
            RUNTIME,
            truncated_store,
        )
        for cmd in (("status",), ("db", "upgrade"), ("launch", "{good}"))
    },
    **{
        f"another program's SQLite ({' '.join(cmd)})": BadInput(
            (*cmd, "--db", "sqlite:///{file}"),
            ("holds tables but no bnsweep schema version", "another program's database"),
            RUNTIME,
            foreign_sqlite,
        )
        for cmd in (
            ("status",),
            ("query",),
            ("db", "upgrade"),
            ("launch", "{good}"),
            ("launch", "{good}", "--dry-run"),
            ("tables", "--sweep", "good"),
            ("plots", "--sweep", "good", "--out", "{tmp}/plots"),
        )
    },
    **{
        f"newer schema ({' '.join(cmd)})": BadInput(
            (*cmd, "--db", "sqlite:///{file}"),
            ("f00dfeed9999", "written by a newer bnsweep"),
            RUNTIME,
            newer_store,
        )
        for cmd in (("db", "upgrade"), ("status",), ("launch", "{good}", "--dry-run"))
    },
    # -- query -----------------------------------------------------------------------------------
    "--where beyond 64 bits": BadInput(
        ("query", "--db", "{db}", "--where", "seed=123456789012345678901234567890"),
        ("where seed", "outside the 64-bit integer range"),
        USAGE,
    ),
    "--where a float beyond 64 bits": BadInput(
        ("query", "--db", "{db}", "--where", "epochs_run=1e30"),
        ("where epochs_run", "outside the 64-bit integer range"),
        USAGE,
    ),
    "unknown sweep": BadInput(
        ("status", "--db", "{db}", "--sweep", "nosuch"), ("no sweep named 'nosuch'",), RUNTIME
    ),
    # -- tables and plots ------------------------------------------------------------------------
    "tables --out is a file": BadInput(
        ("tables", "--db", "{db}", "--sweep", "good", "--out", "{good}"),
        ("--out", "is a file, expected a folder"),
        USAGE,
    ),
    "tables --out under a file": BadInput(
        ("tables", "--db", "{db}", "--out", "{good}/tables"),
        ("--out", "a part of this path is a file"),
        USAGE,
    ),
    "plots --out is a file": BadInput(
        ("plots", "--db", "{db}", "--sweep", "good", "--out", "{good}"),
        ("--out", "is a file, expected a folder"),
        USAGE,
    ),
    "tables --alpha": BadInput(
        ("tables", "--db", "{db}", "--alpha", "0.01"),
        ("--alpha is the learning rate", "--level"),
        USAGE,
        argparse=True,
    ),
    "tables unknown format": BadInput(
        ("tables", "--db", "{db}", "--format", "md,docx"),
        ("unknown format 'docx'",),
        USAGE,
        argparse=True,
    ),
    # -- launch ----------------------------------------------------------------------------------
    **{
        f"malformed --address {address!r}": BadInput(
            ("launch", "{good}", "--db", "{db}", "--address", address),
            ("expected HOST:PORT",),
            USAGE,
        )
        for address in ("head", "head:port", "head:99999", "http://head:6379/")
    },
    "storage under a file": BadInput(
        ("launch", "{spec}", "--db", "{db}"),
        ("storage", "a part of this path is a file"),
        USAGE,
        lambda tmp: spec_with(storage=str(tmp / "good.yaml" / "runs"))(tmp),
    ),
    # -- train -----------------------------------------------------------------------------------
    "train --checkpoint-dir is a file": BadInput(
        ("train", "--epochs", "1", "--dataset", "digits", "--checkpoint-dir", "{good}"),
        ("--checkpoint-dir", "is a file, expected a folder"),
        USAGE,
    ),
    "train --compile true": BadInput(
        ("train", "--compile", "true"), ("unrecognized arguments: true",), USAGE, argparse=True
    ),
    "spec with a control character": BadInput(
        ("launch", "{spec}", "--db", "{db}", "--dry-run"),
        ("is not valid YAML (character '\\x1f' at position 6 is not allowed)",),
        USAGE,
        spec_text("name: \x1f\n"),
    ),
    # -- counts and their upper bounds (issue 19) --------------------------------------------
    "epochs 1e12": BadInput(
        ("launch", "{spec}", "--db", "{db}", "--dry-run"),
        ("epochs: must be <= 100,000, got 1000000000000",),
        USAGE,
        spec_text(
            "name: good\ndefaults: {dataset: digits, arch: resnet8, epochs: 1.0e+12}\n"
            "grids: [{bn_scale_init: [0.5]}]\nseeds: 2\n"
        ),
    ),
    "train --epochs a million": BadInput(
        ("train", "--dataset", "digits", "--epochs", "1000000"),
        ("epochs: must be <= 100,000",),
        USAGE,
    ),
    "a seed past the store's integers": BadInput(
        ("launch", "{spec}", "--db", "{db}", "--dry-run"),
        ("seeds: a seed must be <= 2,147,483,647",),
        USAGE,
        spec_with(seeds=[1, 2**32]),
    ),
    "infinite cpus": BadInput(
        ("launch", "{spec}", "--db", "{db}", "--dry-run"),
        ("resources.cpus", "finite number"),
        USAGE,
        spec_text(
            "name: good\ndefaults: {dataset: digits, arch: resnet8, epochs: 1}\n"
            "grids: [{bn_scale_init: [0.5]}]\nseeds: 2\nresources: {cpus: .inf}\n"
        ),
    ),
    "retries a million": BadInput(
        ("launch", "{spec}", "--db", "{db}", "--dry-run"),
        ("retries", "less than or equal to 100000"),
        USAGE,
        spec_with(retries=1_000_000),
    ),
    **{
        f"--report-every {minutes}": BadInput(
            (
                "launch",
                "{good}",
                "--db",
                "{db}",
                "--report",
                "{tmp}/report",
                "--report-every",
                minutes,
            ),
            ("--report-every: minutes from 0 to 1440, with --report DIR",),
            USAGE,
        )
        for minutes in ("nan", "inf", "-1", "1441")
    },
    # output folders (issue 19) ----------------------------------------------------------------
    "report --out is a file": BadInput(
        ("report", "--db", "{db}", "--out", "{good}"),
        ("--out {good}: is a file, expected a folder",),
        USAGE,
    ),
    "report --out under a file": BadInput(
        ("report", "--db", "{db}", "--out", "{good}/report"),
        ("--out {good}/report: a part of this path is a file ({good})",),
        USAGE,
    ),
    "report --out the current folder": BadInput(
        ("report", "--db", "{db}", "--out", "."), ("--out .: is the current folder",), USAGE
    ),
    "report --out empty": BadInput(
        ("report", "--db", "{db}", "--out", ""), ("--out: empty, expected a folder",), USAGE
    ),
    "report --out a folder of other files": BadInput(
        ("report", "--db", "{db}", "--out", "{tmp}/thesis"),
        ("--out {tmp}/thesis: is a folder bnsweep did not write", "no .bnsweep-report"),
        USAGE,
        lambda tmp: (tmp / "thesis").mkdir() or (tmp / "thesis" / "a.tex").write_text("x"),
    ),
    "report --out a link": BadInput(
        ("report", "--db", "{db}", "--out", "{tmp}/link"),
        ("--out {tmp}/link: is a symbolic link",),
        USAGE,
        lambda tmp: (tmp / "link").symlink_to(tmp),
    ),
    "report unknown sweep": BadInput(
        ("report", "--db", "{db}", "--sweep", "nosuch", "--out", "{tmp}/report"),
        ("no sweep named 'nosuch'",),
        RUNTIME,
    ),
    "launch --report is a file": BadInput(
        ("launch", "{good}", "--db", "{db}", "--report", "{good}"),
        ("--report {good}: is a file, expected a folder",),
        USAGE,
    ),
    "launch --report the current folder": BadInput(
        ("launch", "{good}", "--db", "{db}", "--report", "."),
        ("--report .: is the current folder",),
        USAGE,
    ),
    "launch --report empty": BadInput(
        ("launch", "{good}", "--db", "{db}", "--report", ""),
        ("--report: empty, expected a folder",),
        USAGE,
    ),
    "tables --out empty": BadInput(
        ("tables", "--db", "{db}", "--out", ""), ("--out: empty, expected a folder",), USAGE
    ),
    "plots --out empty": BadInput(
        ("plots", "--db", "{db}", "--out", ""), ("--out: empty, expected a folder",), USAGE
    ),
    # dashboard (issue 19)
    "dashboard on an address this machine lacks": BadInput(
        ("dashboard", "--db", "{db}", "--host", "192.0.2.1", "--token-file", "{file}"),
        ("cannot serve on 192.0.2.1:8080", "this machine has no address 192.0.2.1"),
        RUNTIME,
        # a token readable by its owner only, as docs/dashboard.md writes it: no warning
        lambda tmp: (file_bytes(b"a-token-of-twenty-chars\n")(tmp), (tmp / "file").chmod(0o600)),
    ),
    "dashboard on a host that does not resolve": BadInput(
        ("dashboard", "--db", "{db}", "--host", "nosuch.invalid", "--token-file", "{file}"),
        ("--host nosuch.invalid: cannot resolve this name",),
        RUNTIME,
        # a token readable by its owner only, as docs/dashboard.md writes it: no warning
        lambda tmp: (file_bytes(b"a-token-of-twenty-chars\n")(tmp), (tmp / "file").chmod(0o600)),
    ),
    "dashboard --token-file missing": BadInput(
        ("dashboard", "--db", "{db}", "--token-file", "{tmp}/nosuch"),
        ("--token-file {tmp}/nosuch: no such file or folder",),
        USAGE,
    ),
    "dashboard --token-file empty": BadInput(
        ("dashboard", "--db", "{db}", "--token-file", "{file}"),
        ("--token-file {file}: empty; write the token on its first line",),
        USAGE,
        file_bytes(b"\n"),
    ),
    "dashboard --token-file a folder": BadInput(
        ("dashboard", "--db", "{db}", "--token-file", "{tmp}"),
        ("--token-file {tmp}: is a folder, expected a file",),
        USAGE,
    ),
    "dashboard --token and --token-file": BadInput(
        ("dashboard", "--token", "x" * 16, "--token-file", "{file}"),
        ("not allowed with argument",),
        USAGE,
        argparse=True,
    ),
    # -- where filters (issue 19: one filter for query, the JSON API and the trials page) -------
    "--where a comparison on a text field": BadInput(
        ("query", "--db", "{db}", "--where", "host>a"),
        ("where host>", "host is text; only = and != apply to it"),
        USAGE,
    ),
    "--where a comparison with a word": BadInput(
        ("query", "--db", "{db}", "--where", "test_acc>abc"),
        ("where test_acc", "expected a number, got 'abc'"),
        USAGE,
    ),
    "--where a comparison with nan": BadInput(
        ("query", "--db", "{db}", "--where", "test_acc>nan"),
        ("where test_acc", "expected a finite number"),
        USAGE,
    ),
    "--where without an operator": BadInput(
        ("query", "--db", "{db}", "--where", "lr"),
        ("--where 'lr'", "expected FIELD=VALUE or FIELD>VALUE"),
        USAGE,
    ),
    # secrets and checkpoints (issue 19)
    **{
        f"database URL {url!r}": BadInput(
            ("status", "--db", url), ("bad database URL", "***", "must be written %40"), USAGE
        )
        for url in (
            "postgresql://u:p@ss@127.0.0.1/db",
            "postgresql://u@127.0.0.1/db?password=p@ss",
            "postgresql://u:p@ss:w/rd@127.0.0.1:notaport/db",
        )
    },
    **{
        f"train --resume {what}": BadInput(
            ("train", "--epochs", "1", "--dataset", "digits", "--resume", "{file}"),
            ("--resume: checkpoint", "not one bnsweep wrote", "--checkpoint-dir"),
            USAGE,
            file_bytes(data),
        )
        for what, data in (
            # A pickle that runs os.system: torch's refusal advises weights_only=False.
            ("a pickle that runs code", b"cposix\nsystem\n(S'true'\ntR."),
            ("a damaged file", b"PK\x03\x04 not a checkpoint"),
        )
    },
    # launch lock and outages (issue 19)
    "launch while another launch holds the sweep": BadInput(
        ("launch", "{good}", "--db", "{db}"),
        ("sweep good is being launched already into this store", "by host ", " pid ", " since "),
        USAGE,
        lambda tmp: hold_launch_lock(tmp),
    ),
    "db unlock of a SQLite lock a live launch holds": BadInput(
        ("db", "unlock", "--sweep", "good", "--db", "{db}"),
        ("sweep good's launch lock", "a live process", "stop that launch"),
        RUNTIME,
        lambda tmp: hold_launch_lock(tmp),
    ),
    "db unlock of a store that does not exist": BadInput(
        ("db", "unlock", "--sweep", "good", "--db", "sqlite:///{tmp}/none.db"),
        ("no results database at",),
        RUNTIME,
    ),
    "db unlock without --sweep": BadInput(
        ("db", "unlock", "--db", "{db}"),
        ("the following arguments are required: --sweep",),
        USAGE,
        argparse=True,
    ),
}

#: Launch locks the cases above hold while the command runs (released when the tests end).
_HELD: list[object] = []


def hold_launch_lock(tmp: Path) -> None:
    """Hold sweep `good`'s launch lock in the case's store, as a launch in another process
    would (a second open file description: flock refuses it to this process too)."""
    from bnsweep.store.api import Store

    store = Store.open(f"sqlite:///{tmp / 'store.db'}")
    lock = store.launch_lock("good")
    lock.__enter__()
    _HELD.append((store, lock))
