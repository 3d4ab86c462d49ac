"""The cluster of docker/compose.yaml as real processes: PostgreSQL, a Ray head, Ray workers.

No Docker: every node is a `ray start --block` process on this machine, with its own temp dir,
its own ports and token authentication on, exactly as the image's entry point starts it. The
sweep reaches the cluster the way a user's does, through `ray job submit` to the head's job
server.

Every node is started in a session of its own and ended by walking /proc from its `ray start`
process: teardown stops exactly the processes these tests started. Never `ray stop`, which ends
every Ray process of the user on the machine, other test runs' included.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: The venv's scripts (`ray`, `bnsweep`): jobs run them by absolute path, so nothing depends on
#: the PATH of whoever runs the tests, and the repository is never uploaded as a working dir.
VENV_BIN = Path(sys.executable).parent
#: `ray start --block` prints this once the node has registered with the head's GCS.
NODE_UP = "This command will now block forever"
TERMINAL_JOB_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


def script(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: install the project with `pip install -e .`")
    return str(path)


def free_ports(count: int) -> list[int]:
    """Ports free right now. Every Ray port is chosen here, none left at Ray's fixed defaults
    (10001, 52365, 8265, …), so these tests never collide with another Ray on the machine."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# -- processes, from /proc ---------------------------------------------------------------------
def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid → (ppid, pgid, state) of every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        state, ppid, pgid = fields[0], int(fields[1]), int(fields[2])
        if state not in ("Z", "X"):
            table[int(entry.name)] = (ppid, pgid, state)
    return table


def process_tree(pid: int) -> set[int]:
    """`pid` and all its live descendants. Ray starts its workers in process groups of their
    own, so a process group alone would miss the trials."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for child, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(child)
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current in table and current not in found:
            found.add(current)
            todo.extend(children.get(current, ()))
    return found


def signal_tree(pid: int, sig: signal.Signals) -> set[int]:
    """Send `sig` to `pid`, its descendants and their process groups; return who was there.

    Every group reached here was created below `pid`, which was started in a new session, so no
    group outside what these tests started can be hit."""
    pids = process_tree(pid)
    table = _process_table()
    groups = {table[p][1] for p in pids if p in table}
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)
    return pids


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """The pids still alive (zombies count as gone) after waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = pids & set(_process_table())
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def processes_mentioning(text: str) -> set[int]:
    """Our own processes whose command line contains `text` (a folder only these tests use)."""
    found = set()
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found & set(_process_table())


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


# -- nodes and the cluster ---------------------------------------------------------------------
@dataclass
class RayNode:
    name: str
    process: subprocess.Popen
    temp_dir: Path
    log: Path

    def wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if NODE_UP in self.log.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.25)
        raise RuntimeError(
            f"Ray node {self.name} did not come up within {timeout:.0f} s "
            f"(exit code {self.process.poll()}); its log ends:\n{tail(self.log)}"
        )

    def processes(self) -> set[int]:
        return process_tree(self.process.pid)

    def kill(self) -> set[int]:
        """SIGKILL every process of this node at once, as a machine losing power would; return
        the pids that were there."""
        pids = signal_tree(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        return pids

    def stop(self, grace: float = 2.0) -> None:
        if self.process.poll() is not None and not self.processes():
            return
        pids = signal_tree(self.process.pid, signal.SIGTERM)
        # `ray start --block` stops its children one by one on SIGTERM, slowly on a busy
        # machine; past the grace period what is left is killed.
        if wait_gone(pids, grace):
            signal_tree(self.process.pid, signal.SIGKILL)
            for pid in wait_gone(pids, 10.0):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


@dataclass
class RayCluster:
    """A head with the dashboard's job server, worker nodes added on demand, token auth on."""

    root: Path
    nodes: list[RayNode] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    def __post_init__(self) -> None:
        self.shared = self.root / "shared"  # the checkpoint volume of compose.yaml
        self.cache = self.root / "cache"  # BNSWEEP_CACHE_DIR: the datasets mount is read-only
        self.logs = self.root / "logs"
        for folder in (self.shared, self.cache, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.token_file = self.root / "ray_auth_token"
        self.token_file.write_text(uuid.uuid4().hex + uuid.uuid4().hex + "\n")
        self.token_file.chmod(0o600)

    # environment ------------------------------------------------------------------------------
    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Every process here (nodes and clients) runs with token auth and this cluster's token.

        Inherited RAY_* and BNSWEEP_DB settings are dropped: they could point a node at another
        cluster or the driver at another database."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "BNSWEEP_"))}
        env.update(
            PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", "/usr/bin:/bin")]),
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_file),
            RAY_USAGE_STATS_ENABLED="0",
        )
        env.update(extra or {})
        return env

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    # nodes ------------------------------------------------------------------------------------
    def _start_node(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> RayNode:
        temp_dir = self.root / name
        log = self.logs / f"{name}.log"
        agent_http, agent_grpc, runtime_env, metrics = free_ports(4)
        command = [
            script("ray"),
            "start",
            "--block",
            *args,
            f"--temp-dir={temp_dir}",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--metrics-export-port={metrics}",
            # 0/0: workers bind any free port, not Ray's shared default range 10002-19999.
            "--min-worker-port=0",
            "--max-worker-port=0",
            # Checkpoints travel through the shared folder, not the object store.
            "--object-store-memory=200000000",
            "--disable-usage-stats",
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                env=self.env(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                start_new_session=True,  # its own session: teardown can find all of it
            )
        node = RayNode(name, process, temp_dir, log)
        self.nodes.append(node)
        return node

    def start_head(self, env: Mapping[str, str] | None = None, timeout: float = 180) -> RayNode:
        """The head as compose runs it: no CPUs for trials (they belong on the workers), the
        dashboard and job server on the loopback interface."""
        self.gcs_port, self.dashboard_port, client = free_ports(3)
        head = self._start_node(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                "--num-cpus=0",
                "--num-gpus=0",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={client}",
            ],
            env or {},
        )
        head.wait_started(timeout)
        return head

    def add_worker(
        self,
        num_cpus: int = 2,
        resources: Mapping[str, float] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> RayNode:
        name = f"worker-{sum(n.name.startswith('worker') for n in self.nodes) + 1}"
        args = [f"--address={self.address}", f"--num-cpus={num_cpus}", "--num-gpus=0"]
        if resources:
            args.append(f"--resources={json.dumps(dict(resources))}")
        worker = self._start_node(name, args, {"BNSWEEP_CACHE_DIR": str(self.cache), **(env or {})})
        worker.wait_started(timeout)
        return worker

    def live_workers(self) -> list[RayNode]:
        return [n for n in self.nodes if n.name != "head" and n.process.poll() is None]

    # the job server ---------------------------------------------------------------------------
    def api(self, method: str, path: str, token: str | None = "cluster") -> tuple[int, Any]:
        """(HTTP status, JSON body or text) of a dashboard request; `token=None` sends none."""
        request = urllib.request.Request(f"{self.dashboard_url}{path}", method=method)
        if token == "cluster":
            token = self.token_file.read_text().strip()
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, body = err.code, err.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def submit(
        self, entrypoint: Sequence[str], submission_id: str, *, wait: bool, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        """`ray job submit` from a client process, as a user submits from a laptop."""
        self.jobs.append(submission_id)
        command = [
            script("ray"),
            "job",
            "submit",
            f"--address={self.dashboard_url}",
            f"--submission-id={submission_id}",
            *([] if wait else ["--no-wait"]),
            "--",
            *entrypoint,
        ]
        return subprocess.run(
            command,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            check=False,
        )

    def job_status(self, submission_id: str) -> str:
        status, body = self.api("GET", f"/api/jobs/{submission_id}")
        if status != 200:
            raise RuntimeError(f"job {submission_id}: HTTP {status}: {body}")
        return str(body["status"])

    def job_logs(self, submission_id: str) -> str:
        status, body = self.api("GET", f"/api/jobs/{submission_id}/logs")
        return str(body.get("logs", "")) if status == 200 else f"(no logs: HTTP {status})"

    def wait_for_job(self, submission_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = self.job_status(submission_id)
            if state in TERMINAL_JOB_STATES or time.monotonic() > deadline:
                return state
            time.sleep(1.0)

    # teardown ---------------------------------------------------------------------------------
    def close(self) -> None:
        for submission_id in self.jobs:
            with contextlib.suppress(OSError, RuntimeError, KeyError):
                if self.job_status(submission_id) not in TERMINAL_JOB_STATES:
                    self.api("POST", f"/api/jobs/{submission_id}/stop")
        # Workers first, so the head does not wait on nodes that are already going away.
        for node in sorted(self.nodes, key=lambda n: n.name == "head"):
            node.stop()
        # A job's driver runs in a session of its own; if the head died first it was re-parented
        # and escaped the walk above. Its command line names a file under our root.
        leftovers = processes_mentioning(str(self.root))
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        wait_gone(leftovers, 10.0)


# -- fixtures ----------------------------------------------------------------------------------
@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the test server; dropped (forcibly) on exit."""
    import sqlalchemy as sa

    from bnsweep.store.errors import normalize_url

    name = f"bnsweep_cluster_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalize_url(server_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = sa.make_url(normalize_url(server_url)).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def database(postgres_url: str) -> Iterator[str]:
    with fresh_database(postgres_url) as url:
        yield url


@pytest.fixture(scope="module")
def ray_cluster(postgres_url: str) -> Iterator[RayCluster]:
    """A Ray head with token auth and one worker node (2 CPUs), shared by the module's tests.

    A test may kill a worker; it then starts a replacement, so the next test finds one live
    worker again. BNSWEEP_SHARED_STORAGE=1 is set on the head, as compose sets it: jobs inherit
    the head's environment, so the driver accepts the shared folder on a multi-node cluster."""
    # Short root: Ray's Unix sockets live under it and a socket path is limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="bnc-", dir="/tmp" if Path("/tmp").is_dir() else None))
    cluster = RayCluster(root)
    try:
        cluster.start_head(env={"BNSWEEP_SHARED_STORAGE": "1"})
        cluster.add_worker(num_cpus=2)
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


def report_timing(name: str, **figures: float | str) -> None:
    """Print the measured figures; with BNSWEEP_CLUSTER_TIMINGS set, also append them there as
    a JSON line (bench/cluster_e2e.py collects them for docs/benchmarks.md)."""
    line = json.dumps({"test": name, **figures})
    print(f"\ncluster timing: {line}")
    target = os.environ.get("BNSWEEP_CLUSTER_TIMINGS")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(line + "\n")
