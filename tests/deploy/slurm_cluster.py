"""A two-node Slurm cluster on this host, for the Slurm lane: munged, slurmctld and two slurmd.

Everything lives under one scratch folder: munge's key, socket and seed, a `slurm.conf` naming
nodes `n1` and `n2` (both this host, each slurmd on its own port with its own spool folder), the
controller's state and every log. Nothing under /etc or /run is touched, so the host's own munge
and Slurm (if any) are left alone. No cgroups (`proctrack/linuxproc`, `task/none`) and no
accounting: the lane needs only what `sbatch` and `scontrol` give a user.

`start_slurm` yields a `SlurmCluster` and stops every daemon it started on the way out, also when
starting failed half-way. `SlurmUnavailable` says, in one line, why the daemons could not come up:
the lane skips on it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

#: The daemons and client commands the lane needs (Debian: slurm-wlm, munge).
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel")
NODES = ("n1", "n2")
#: Both nodes need to answer slurmctld before a job can start on both; a cold start here is ~2 s.
UP_TIMEOUT_S = 60.0


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here (not root, a binary missing, a daemon that did not come up)."""


@dataclass(frozen=True)
class SlurmCluster:
    """A running scratch cluster: its `slurm.conf` and the environment its commands need."""

    root: Path
    conf: Path

    @property
    def env(self) -> dict[str, str]:
        """This process's environment with SLURM_CONF pointing at the scratch cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        """Run a Slurm client command against this cluster; its stdout (fails loudly)."""
        done = subprocess.run(
            args, env=dict(env or self.env), capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done.stdout

    def sbatch(self, *args: str, env: Mapping[str, str]) -> int:
        """Submit a batch job; its id."""
        return int(
            self.run(
                "sbatch", "--parsable", *args, env={**env, "SLURM_CONF": str(self.conf)}
            ).split(";")[0]
        )

    def job(self, job_id: int) -> dict[str, str] | None:
        """`scontrol show job` as a dict (JobState, Restarts, NodeList, …); None once it is gone."""
        done = subprocess.run(
            ["scontrol", "-o", "show", "job", str(job_id)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                return None
            raise RuntimeError(f"scontrol show job {job_id} failed: {done.stderr.strip()}")
        fields: dict[str, str] = {}
        for word in done.stdout.split():
            key, sep, value = word.partition("=")
            if sep:
                fields[key] = value
        return fields

    def scancel_all(self) -> None:
        """Cancel every job of this cluster (teardown)."""
        subprocess.run(
            ["scancel", "--full", "--user", "root"], env=self.env, capture_output=True, timeout=30
        )
        subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True, timeout=30)


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now, each from the kernel (bound together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def check_available() -> None:
    """Raise `SlurmUnavailable` (one line) where this machine cannot start the cluster."""
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            "the Slurm lane starts munged, slurmctld and slurmd as root; run it as root"
        )
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        raise SlurmUnavailable(
            f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)"
        )
    try:
        pwd.getpwnam("munge")
    except KeyError:
        raise SlurmUnavailable("no `munge` user (the munge package creates it)") from None


def _munge_key(path: Path) -> None:
    # mungekey writes a key of the size munged expects; dd from urandom where it is absent (munge
    # before 0.5.14).
    if shutil.which("mungekey"):
        subprocess.run(
            ["mungekey", "--create", f"--keyfile={path}"], check=True, capture_output=True
        )
    else:
        path.write_bytes(os.urandom(1024))
    munge = pwd.getpwnam("munge")
    os.chown(path, munge.pw_uid, munge.pw_gid)
    path.chmod(0o400)


def _slurm_conf(root: Path, munge_socket: Path, ports: list[int]) -> str:
    ctld_port, *node_ports = ports
    host, cpus = socket.gethostname(), os.cpu_count() or 1
    nodes = "\n".join(
        f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs={cpus}"
        " State=UNKNOWN"
        for name, port in zip(NODES, node_ports, strict=True)
    )
    # sched_interval: pending jobs are looked at every 5 s, not 60. MinJobAge: a finished job
    # leaves `scontrol show job` after 10 s instead of 5 min, so the lane's cleanup and polls see
    # an idle cluster soon. KillWait: a cancelled step's processes get 10 s between SIGTERM and
    # SIGKILL (Ray's graceful stop fits in it).
    return f"""\
ClusterName=bnsweeplane
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/ctld
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MinJobAge=10
KillWait=10
InactiveLimit=0
JobRequeue=1
{nodes}
PartitionName=lane Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


def _wait_for(what: str, ready: object, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():  # type: ignore[operator]
            return
        time.sleep(0.5)
    tail = ""
    if log is not None and log.exists():
        tail = ": " + " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    raise SlurmUnavailable(f"{what} did not come up within {timeout:.0f} s{tail}")


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _stop(pid_file: Path, timeout: float = 15.0) -> None:
    pid = _pid(pid_file)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _nodes_idle(cluster: SlurmCluster) -> bool:
    done = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %t"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    states = dict(line.split() for line in done.stdout.splitlines() if line.strip())
    return all(states.get(name) == "idle" for name in NODES)


@contextlib.contextmanager
def start_slurm(root: Path) -> Iterator[SlurmCluster]:
    """munged, slurmctld and slurmd n1, n2 under `root`; stopped (all of them) on the way out."""
    check_available()
    munge = pwd.getpwnam("munge")
    munge_dir = root / "munge"
    munge_dir.mkdir(mode=0o700)
    os.chown(munge_dir, munge.pw_uid, munge.pw_gid)
    key, sock = munge_dir / "munge.key", munge_dir / "munge.sock"
    _munge_key(key)
    for folder in ("ctld", *(f"spool-{name}" for name in NODES)):
        (root / folder).mkdir()
    (root / "plugstack.conf").write_text("")
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, sock, free_ports(1 + len(NODES))))
    cluster = SlurmCluster(root=root, conf=conf)
    pid_files = [
        munge_dir / "munged.pid",
        root / "slurmctld.pid",
        *(root / f"slurmd-{n}.pid" for n in NODES),
    ]
    try:
        # munged checks that its folders belong to it and are not writable by others; the
        # scratch root (mode 700, root's) would fail that check for the munge user, hence
        # --force only for the parents, which the munge user cannot traverse anyway.
        subprocess.run(
            [
                "runuser",
                "-u",
                "munge",
                "--",
                "munged",
                "--force",
                f"--socket={sock}",
                f"--key-file={key}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
            check=False,
            capture_output=True,
            timeout=30,
        )
        _wait_for("munged", sock.exists, 15, munge_dir / "munged.log")
        subprocess.run(
            ["slurmctld", "-f", str(conf)], env=cluster.env, capture_output=True, timeout=30
        )
        for name in NODES:
            subprocess.run(
                ["slurmd", "-f", str(conf), "-N", name],
                env=cluster.env,
                capture_output=True,
                timeout=30,
            )
        _wait_for(
            "slurmctld and two slurmd",
            lambda: _nodes_idle(cluster),
            UP_TIMEOUT_S,
            root / "slurmctld.log",
        )
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.scancel_all()
        for pid_file in reversed(pid_files):
            _stop(pid_file)
