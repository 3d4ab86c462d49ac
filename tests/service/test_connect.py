"""`connect()` (issue 13, items 7 and 8): a local Ray listens on 127.0.0.1 only and keeps its
token private; a cluster address that is malformed or where nothing listens is one line, at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnsweep import driver
from bnsweep.ray_address import host_port
from bnsweep.workers.errors import EXIT_RUNTIME, EXIT_USAGE, BnsweepError, SpecError


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_a_new_token_is_written_private(home: Path) -> None:
    driver._private_token_file()
    token = home / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600
    assert (home / ".ray").stat().st_mode & 0o777 == 0o700
    assert len(token.read_text().strip()) >= 32
    before = token.read_text()
    driver._private_token_file()  # an existing token is kept
    assert token.read_text() == before


def test_a_token_readable_by_others_is_made_private(home: Path) -> None:
    (home / ".ray").mkdir(mode=0o755)
    token = home / ".ray" / "auth_token"
    token.write_text("x" * 32)
    token.chmod(0o644)
    driver._private_token_file()
    assert token.stat().st_mode & 0o777 == 0o600 and token.read_text() == "x" * 32


def test_no_token_is_made_when_authentication_is_off_or_given_inline(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    driver._private_token_file()
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "y" * 32)
    driver._private_token_file()
    assert not (home / ".ray").exists()


@pytest.mark.parametrize(
    "address", ["head", "head:", ":6379", "head:port", "head:0", "head:70000", "http://head:6379/x"]
)
def test_a_malformed_address_is_a_usage_error(address: str) -> None:
    with pytest.raises(SpecError) as err:
        host_port(address)
    assert "expected HOST:PORT" in str(err.value) and err.value.exit_code == EXIT_USAGE


def test_addresses_are_split_into_host_and_port() -> None:
    assert host_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert host_port("[::1]:6379") == ("::1", 6379)


def test_an_address_where_nothing_listens_fails_in_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(BnsweepError) as err:
        driver.connect(f"127.0.0.1:{port}")
    assert time.monotonic() - started < 60  # Ray alone retries for minutes; not a timing claim
    assert err.value.exit_code == EXIT_RUNTIME
    assert f"127.0.0.1:{port}: no Ray head answers there" in str(err.value)
    assert "\n" not in str(err.value)


_PROBE = """
import json, os, sys
from bnsweep import driver
from bnsweep.ray_address import host_port
import ray, psutil
driver.connect(None, num_cpus=1)
pids = {os.getpid()} | {c.pid for c in psutil.Process().children(recursive=True)}
ips = set()
for pid in pids:
    try:
        sockets = psutil.Process(pid).net_connections("inet")
        ips |= {c.laddr.ip for c in sockets if c.status == "LISTEN"}
    except psutil.Error:
        pass
ray.shutdown()
print(json.dumps(sorted(ips)))
"""


def test_a_local_ray_listens_on_loopback_only_and_keeps_its_token_private(home: Path) -> None:
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": os.getcwd()}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ips = json.loads(done.stdout.strip().splitlines()[-1])
    assert ips, "the local Ray listened nowhere?"
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip in ips), ips
    token = home / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600
