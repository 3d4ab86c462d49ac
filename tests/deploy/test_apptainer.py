"""deploy/apptainer/bnsweep.def, checked without Apptainer.

Apptainer is not packaged for Debian 12, so the build itself does not run here. What can be
checked is: the file parses the way Apptainer's parser reads it (its rules, from apptainer's
pkg/build/types/parser/deffile.go: a header of `key: value` lines up to the first `%section`,
known header keywords, known section names, and a multi-stage split at every line that starts
with `Bootstrap:`), it starts from the image of docker/Dockerfile at the package's version, keeps
token authentication, and runs the entry point the image installs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = ROOT / "deploy" / "apptainer" / "bnsweep.def"
DOCKERFILE = ROOT / "docker" / "Dockerfile"

#: Apptainer's section names (deffile.go's validSections); any other is an error at build time.
SECTIONS = {
    "help",
    "setup",
    "files",
    "labels",
    "environment",
    "pre",
    "post",
    "runscript",
    "test",
    "startscript",
    "arguments",
}
#: The header keywords this file may use (a subset of deffile.go's validHeaders).
HEADERS = {"bootstrap", "from", "stage"}


def _parse(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(header, sections) as Apptainer reads a one-stage definition."""
    # Apptainer starts a new build stage at every line that begins with `Bootstrap:`.
    stages = re.findall(r"(?mi)^bootstrap:", text)
    assert len(stages) == 1, f"{len(stages)} build stages; a comment must not start a line with it"
    sections: dict[str, str] = {}
    # A line whose first word starts with % opens a section; what precedes the first is the header.
    parts = re.split(r"(?m)^[ \t]*%(\w+)[^\n]*\n", text)
    header_text, rest = parts[0], parts[1:]
    for name, body in zip(rest[0::2], rest[1::2], strict=True):
        assert name.lower() in SECTIONS, f"%{name} is no Apptainer section"
        assert name.lower() not in sections, f"%{name} twice"
        sections[name.lower()] = body
    header = {}
    for line in header_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, colon, value = line.split("#")[0].partition(":")
        assert colon, f"header line without a value: {line}"
        assert key.strip().lower() in HEADERS, f"unknown header keyword {key}"
        header[key.strip().lower()] = value.strip()
    return header, sections


def _commands(body: str) -> list[str]:
    return [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _package_version() -> str:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]


def _dockerfile_entrypoint() -> list[str]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    found = re.findall(r"(?m)^\s*ENTRYPOINT\s+(\[.*\])\s*$", joined)
    assert found, "docker/Dockerfile has no ENTRYPOINT in exec form"
    return json.loads(found[-1])


DEF = DEFINITION.read_text(encoding="utf-8")


def test_the_definition_parses_as_apptainer_reads_it() -> None:
    header, sections = _parse(DEF)
    assert set(header) == {"bootstrap", "from"}
    assert {"help", "environment", "runscript", "labels", "test"} <= sections.keys()


def test_the_parser_here_rejects_what_apptainer_rejects() -> None:
    with pytest.raises(AssertionError, match="no Apptainer section"):
        _parse(DEF.replace("%environment", "%enviroment"))
    with pytest.raises(AssertionError, match="build stages"):
        _parse(DEF + "\nBootstrap: docker\n")
    with pytest.raises(AssertionError, match="unknown header keyword"):
        _parse(DEF.replace("From:", "Image:"))


def test_it_starts_from_the_image_docker_builds_at_the_package_version() -> None:
    header, sections = _parse(DEF)
    version = _package_version()
    assert header["bootstrap"] == "docker-daemon"
    assert header["from"] == f"bnsweep:{version}"
    # The commented alternatives and the build commands name the same tag.
    tags = set(re.findall(r"bnsweep:([\w.]+)", DEF))
    assert tags == {version}, tags
    assert f"org.opencontainers.image.version {version}" in sections["labels"]


def test_token_auth_stays_on() -> None:
    _, sections = _parse(DEF)
    assert "export RAY_AUTH_MODE=token" in _commands(sections["environment"])


def test_the_runscript_execs_the_images_entrypoint() -> None:
    _, sections = _parse(DEF)
    entrypoint = _dockerfile_entrypoint()
    assert _commands(sections["runscript"]) == [f'exec {" ".join(entrypoint)} "$@"']


def test_the_help_names_files_that_exist() -> None:
    _, sections = _parse(DEF)
    for path in re.findall(r"\b((?:deploy|docs|docker)/[\w./-]+\w)", DEF):
        # The Slurm recipe comes with deploy/slurm/; until that folder is there, only its name.
        if path.startswith("deploy/slurm/") and not (ROOT / "deploy" / "slurm").is_dir():
            continue
        assert (ROOT / path).exists(), path
    assert "--nv" in sections["help"]
