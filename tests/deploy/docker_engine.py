"""A Docker engine of the lane's own, for tests/deploy/test_compose.py.

`docker_engine()` starts dockerd as root with its data, state and socket in a temporary folder,
yields an `Engine`, and on the way out stops it and removes everything it made. It changes
nothing on the host's network set-up: `--iptables=false --ip-forward=false --bridge=none` means
no iptables chains, no forwarding sysctl and no docker0 bridge. Builds then run with
`--network host`, compose's own bridge network is deleted by `compose down`, and published ports
go through docker-proxy on 127.0.0.1. Where the engine cannot start (not root, a binary missing,
another engine running, dockerd not up in 30 s) the test skips with one line saying why.

`debian_base()` makes the base image the lane builds from: debootstrap's minbase bookworm,
imported as local/debian:bookworm (image registries are out of reach here; the Debian mirror is
not).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Debian's docker.io client, which has BuildKit built in; another `docker` on PATH may be a
#: client without the buildx plugin.
DOCKER = "/usr/bin/docker"
DEBIAN_MIRROR = os.environ.get("BNSWEEP_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_TAG = "local/debian:bookworm"
START_TIMEOUT_S = 30


@dataclass
class Engine:
    """A running dockerd and what a client needs to reach it."""

    root: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    def docker(
        self, *args: str, timeout: float = 120, check: bool = True, **kwargs
    ) -> subprocess.CompletedProcess[str]:
        """`docker ARGS` against this engine; a failure raises with the command's output."""
        result = subprocess.run(
            [DOCKER, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
            )
        return result


def _other_dockerd() -> int | None:
    """The pid of a dockerd already running on this host, if any: with its docker0 bridge and
    iptables chains it would collide with this lane's engine (which deletes a docker0 it finds)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() == "dockerd":
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    return int(proc.name)
        except OSError:
            continue
    return None


def _iptables_chains() -> set[str]:
    """Chains named DOCKER* in the filter and nat tables (none, unless an engine made them)."""
    chains = set()
    if shutil.which("iptables") is None:
        return chains
    for table in ("filter", "nat"):
        out = subprocess.run(
            ["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False
        ).stdout
        chains |= {f"{table}:{line.split()[1]}" for line in out.splitlines() if "DOCKER" in line}
    return chains


@contextmanager
def docker_engine() -> Iterator[Engine]:
    if os.geteuid() != 0:
        pytest.skip("the compose lane starts its own Docker engine and needs root")
    for binary in ("dockerd", "containerd", "docker-proxy", "debootstrap"):
        if shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            pytest.skip(f"{binary} is not installed (apt-get install docker.io debootstrap)")
    if not os.access(DOCKER, os.X_OK):
        pytest.skip(f"{DOCKER} is not installed (apt-get install docker.io)")
    other = _other_dockerd()
    if other is not None:
        pytest.skip(f"another Docker engine runs on this machine (dockerd pid {other})")

    chains_before = _iptables_chains()
    # Short: the socket path must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="bnsd-", dir="/tmp"))
    socket = root / "docker.sock"
    log = (root / "dockerd.log").open("wb")
    process = subprocess.Popen(
        [
            "dockerd",
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
            f"--host=unix://{socket}",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "DOCKER_HOST": f"unix://{socket}",
        "DOCKER_BUILDKIT": "1",
        "DOCKER_CONFIG": str(root / "client"),
    }
    engine = Engine(root=root, process=process, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            up = engine.docker("version", "--format", "{{.Server.Version}}", check=False)
            if up.returncode == 0:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (root / "dockerd.log").read_text(errors="replace").strip().splitlines()
                pytest.skip(f"dockerd did not come up: {tail[-1] if tail else 'no output'}")
            time.sleep(0.5)
        yield engine
    finally:
        _stop(engine)
        log.close()
        leftover = _iptables_chains() - chains_before
        _remove_chains(leftover)
        shutil.rmtree(root, ignore_errors=True)
        assert not leftover, f"the engine made iptables chains it should not have: {leftover}"


def _stop(engine: Engine) -> None:
    """SIGTERM to dockerd (it stops the containers it still runs and its containerd), SIGKILL to
    its whole process group after 30 s."""
    if engine.process.poll() is None:
        engine.process.terminate()
        try:
            engine.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(engine.process.pid, signal.SIGKILL)
            engine.process.wait(timeout=10)
    # Mounts dockerd left behind (overlay layers, netns files) would keep rmtree from the folder.
    mounts = Path("/proc/mounts").read_text().splitlines()
    for target in sorted((m.split()[1] for m in mounts if str(engine.root) in m), reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def _remove_chains(chains: set[str]) -> None:
    for table, chain in (c.split(":", 1) for c in sorted(chains)):
        rules = subprocess.run(
            ["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False
        ).stdout
        for rule in rules.splitlines():
            if rule.startswith("-A ") and f"-j {chain}" in rule:
                subprocess.run(["iptables", "-t", table, "-D", *rule.split()[1:]], check=False)
        subprocess.run(["iptables", "-t", table, "-F", chain], check=False)
        subprocess.run(["iptables", "-t", table, "-X", chain], check=False)


def debian_base(engine: Engine) -> str:
    """Import debootstrap's minbase bookworm as BASE_TAG; the rootfs lives in the engine's folder
    and is deleted right after."""
    rootfs = engine.root / "rootfs"
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr}"
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    try:
        engine.docker("import", "-", BASE_TAG, stdin=tar.stdout, timeout=120)
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        shutil.rmtree(rootfs, ignore_errors=True)
    return BASE_TAG
