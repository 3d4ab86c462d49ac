"""The Slurm recipe, run for real: deploy/slurm/bnsweep.sbatch on a two-node Slurm cluster.

The lane (`make test-cluster`, root) starts munged, slurmctld and two slurmd on this host
(tests/deploy/slurm_cluster.py), a PostgreSQL of the `postgres` user's own with
deploy/slurm/postgres.sh, and submits the shipped sbatch script unmodified: only environment
variables and sbatch's own options differ from what docs/slurm.md tells a user to type. A first job
runs a small sweep across both nodes; a second job, a sweep of longer cells, is cut off by its time
limit, requeues itself, and finishes, the interrupted cells continuing from their checkpoints.
Afterwards every cell is in the store once, with every epoch once, and no completed cell was
trained again.

Without root, the binaries, or daemons that come up, the engine tests skip with one line. The
tests without the marker check the scripts' refusals and run in `make test` too.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.deploy.slurm_cluster import SlurmCluster, SlurmUnavailable, start_slurm

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "deploy" / "slurm" / "bnsweep.sbatch"
POSTGRES = REPO / "deploy" / "slurm" / "postgres.sh"

#: The first job's sweep (name, epochs, seeds, trials at a time): 2 arms x 2 seeds of 4 short
#: epochs, two at a time, one on each node.
FIRST = ("slurmlane", 4, 2, 2)
#: The second job's sweep: 20 cells of 20 epochs (5 to 8 s each here), one at a time so a cell is
#: always in flight when the signal comes. Its first run trains for 35 to 65 s before the
#: time-limit signal, too little for all of them, so it is always cut off mid-cell; the requeued
#: run finishes the rest.
SECOND = ("slurmlane-limit", 20, 10, 1)
#: The second job: a 2-minute limit, the script's SIGUSR1 30 s before it. slurmctld checks limits
#: every 30 s and signals up to 30 s early, so the signal comes 60 to 90 s after the job starts.
TIME_LIMIT = ("--time=2", "--signal=B:USR1@30")
#: The requeued run's limit, set when the requeue is seen: the lane tests one cut-off, not a chain.
#: Its start time is set to now as well: Slurm makes a requeued job wait about two minutes.
REQUEUED_LIMIT_MIN = 10
JOB_TIMEOUT_S = 420.0
FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
}

SPEC = """\
name: {name}
description: the Slurm lane's sweep (tests/deploy/test_slurm.py)
defaults:
  dataset: digits
  arch: resnet8
  input_norm: bn
  epochs: {epochs}
  batch_size: 64
  device: cpu
grids:
  - bn_scale_init: [1.0, 0.1]
    bn_lr_divisor: [100]
    lr: [0.1]
base: false
seeds: {seeds}
resources: {{cpus: 1, gpus: 0}}
max_concurrent: {concurrent}
retries: 2
checkpoint_every: 1
storage: {storage}
"""


# --- Without the daemons: the scripts' refusals (also in `make test`) ---------------------------


@pytest.mark.parametrize("script", [SBATCH, POSTGRES], ids=lambda p: p.name)
def test_script_is_valid_bash(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_sbatch_outside_a_job_says_so_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "run this script with sbatch" in done.stderr


def test_postgres_script_refuses_root_or_a_wrong_command_in_one_line() -> None:
    done = subprocess.run(["bash", str(POSTGRES), "start"], capture_output=True, text=True)
    if os.geteuid() == 0:
        assert done.returncode == 1
        assert done.stderr.strip() == (
            "postgres.sh: error: refusing to run as root (PostgreSQL refuses it too): "
            "run it as the user who launches the sweep"
        )
    else:
        done = subprocess.run(["bash", str(POSTGRES), "bogus"], capture_output=True, text=True)
        assert done.returncode == 2
        assert done.stderr.startswith("usage: ")


@pytest.fixture
def pg_user_home() -> Iterator[tuple[list[str], Path]]:
    """(command prefix, a home folder) to run postgres.sh in: it refuses root, so as root it runs
    as the `postgres` user, in a folder that user can reach (pytest's own is root's alone)."""
    home = Path(tempfile.mkdtemp(prefix="bnsweep-pgtest-"))
    try:
        if os.geteuid() != 0:
            yield [], home
            return
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no `postgres` user to run postgres.sh as")
        home.chmod(0o755)
        os.chown(home, owner.pw_uid, owner.pw_gid)
        yield ["runuser", "-u", "postgres", "--"], home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ({"BNSWEEP_PG_PORT": "99999"}, "BNSWEEP_PG_PORT=99999: expected a port from 1024 to 65535"),
        ({"BNSWEEP_PG_PORT": "abc"}, "BNSWEEP_PG_PORT=abc: expected a port from 1024 to 65535"),
        ({}, "holds notes.txt, which this script did not write: give a new or empty folder"),
    ],
)
def test_postgres_script_refuses_a_wrong_setting_before_writing_anything(
    pg_user_home: tuple[list[str], Path], setting: dict[str, str], says: str
) -> None:
    prefix, home = pg_user_home
    folder = home / "pg"
    folder.mkdir()
    (folder / "notes.txt").write_text("a user's own file\n")
    shutil.chown(folder, user=home.owner())
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "BNSWEEP_PG_DIR": str(folder)}
    env["PGPASSFILE"] = str(home / "pgpass")
    # A copy the `postgres` user can read: a checkout may sit in a folder only root can enter.
    script = Path(shutil.copy(POSTGRES, home / POSTGRES.name))
    cmd = [*prefix, "env", *(f"{k}={v}" for k, v in {**env, **setting}.items()), "bash"]
    done = subprocess.run([*cmd, str(script), "start"], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("postgres.sh: error: ")
    assert says in done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert not (home / "pgpass").exists()


# --- The cluster ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    url: str
    passfile: Path

    def rows(self, query: str, **params: object) -> list[tuple]:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url, connect_args={"passfile": str(self.passfile)})
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(sa.text(query), params)]
        finally:
            engine.dispose()

    def trials(self, sweep: str) -> dict[tuple[str, int], tuple]:
        """(spec_hash, seed) → (status, attempts, started_at, finished_at, epochs stored)."""
        rows = self.rows(
            "select t.spec_hash, t.seed, t.status, t.attempts, t.started_at, t.finished_at, "
            "array_agg(e.epoch order by e.epoch) filter (where e.epoch is not null) "
            "from trials t join sweep_trials st on st.trial_id = t.id "
            "join sweeps s on s.id = st.sweep_id left join epochs e on e.trial_id = t.id "
            "where s.name = :name group by t.id",
            name=sweep,
        )
        return {(r[0], r[1]): (r[2], r[3], r[4], r[5], r[6] or []) for r in rows}


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    # Short and under /tmp: Ray's socket paths under BNSWEEP_RAY_TMPDIR must stay under 107
    # bytes. Mode 755: the munge and postgres users reach their folders inside.
    root = Path(tempfile.mkdtemp(prefix="bnslurm-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        _kill_processes_under(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm(scratch: Path) -> Iterator[SlurmCluster]:
    (scratch / "slurm").mkdir(mode=0o755)
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(start_slurm(scratch / "slurm"))
        except SlurmUnavailable as err:
            pytest.skip(f"Slurm cannot start here: {err}")
        try:
            yield cluster
        finally:
            cluster.scancel_all()
            _wait_idle(cluster)
            _kill_processes_under(scratch)


@pytest.fixture(scope="module")
def store(scratch: Path, slurm: SlurmCluster) -> Iterator[Store]:
    """deploy/slurm/postgres.sh started as the `postgres` user into the scratch folder."""
    try:
        pg_user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip(
            "no `postgres` user to run deploy/slurm/postgres.sh as (apt-get install postgresql)"
        )
    home = scratch / "pg"
    home.mkdir(mode=0o700)
    os.chown(home, pg_user.pw_uid, pg_user.pw_gid)
    passfile = home / "pgpass"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "BNSWEEP_PG_DIR": str(home / "server"),
        "PGPASSFILE": str(passfile),
    }

    def postgres_sh(command: str) -> subprocess.CompletedProcess[str]:
        # The script is run where it lies; a checkout the postgres user cannot read (one under
        # /root, say) gets the same file on stdin instead.
        readable = (
            subprocess.run(
                ["runuser", "-u", "postgres", "--", "test", "-r", str(POSTGRES)]
            ).returncode
            == 0
        )
        argv = ["bash", str(POSTGRES), command] if readable else ["bash", "-s", command]
        return subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "env",
                "-i",
                *(f"{k}={v}" for k, v in env.items()),
                *argv,
            ],
            input=None if readable else POSTGRES.read_text(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    started = postgres_sh("start")
    if "no PostgreSQL server binaries" in started.stderr:
        pytest.skip(f"PostgreSQL cannot start here: {started.stderr.strip()}")
    try:
        assert started.returncode == 0, started.stderr
        url = started.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"postgresql\+psycopg://postgres@[0-9.]+:\d+/bnsweep", url), url
        # The password is in the pgpass file only, mode 600, never in the URL.
        assert passfile.stat().st_mode & 0o777 == 0o600
        password = (home / "server" / "password").read_text().strip()
        assert password not in started.stdout + started.stderr
        yield Store(url=url, passfile=passfile)
    finally:
        stopped = postgres_sh("stop")
        assert stopped.returncode == 0, stopped.stderr


def _environment(scratch: Path) -> Path:
    """The activate script a job sources: this interpreter's venv, with a `ray` command."""
    venv_activate = Path(sys.prefix) / "bin" / "activate"
    if (Path(sys.prefix) / "bin" / "ray").exists():
        return venv_activate
    # A venv layered over another one (a worktree's, whose packages live in a shared venv) has no
    # `ray` script of its own: add one that runs Ray's CLI with this interpreter.
    shim = scratch / "env"
    shim.mkdir(exist_ok=True)
    (shim / "ray").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ray.scripts.scripts "$@"\n')
    (shim / "ray").chmod(0o755)
    (shim / "activate").write_text(f'. "{venv_activate}"\nPATH="{shim}:$PATH"\n')
    return shim / "activate"


def _job_env(scratch: Path, store: Store, spec: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_", "BNSWEEP_"))}
    return env | {
        "BNSWEEP_SPEC": str(spec),
        "BNSWEEP_ACTIVATE": str(_environment(scratch)),
        "BNSWEEP_DB": store.url,
        "PGPASSFILE": str(store.passfile),
        # Both Slurm nodes are this host, so the storage folder is shared between them.
        "BNSWEEP_SHARED_STORAGE": "1",
        "BNSWEEP_RAY_TMPDIR": str(scratch / "r"),
        "RAY_AUTH_TOKEN_PATH": str(scratch / "token" / "auth_token"),
        "BNSWEEP_LAUNCH_ARGS": "--no-tables",
    }


def _write_spec(scratch: Path, name: str, epochs: int, seeds: int, concurrent: int) -> Path:
    spec = scratch / f"{name}.yaml"
    spec.write_text(
        SPEC.format(
            name=name, epochs=epochs, seeds=seeds, concurrent=concurrent, storage=scratch / "runs"
        )
    )
    return spec


def _submit(slurm: SlurmCluster, scratch: Path, env: dict[str, str], *options: str) -> int:
    # Submitted from the scratch folder: the job runs there and writes bnsweep-<id>.out there.
    done = subprocess.run(
        ["sbatch", "--parsable", "--nodes=2", *options, str(SBATCH)],
        cwd=scratch,
        env=env | {"SLURM_CONF": str(slurm.conf)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split(";")[0])


def _output(scratch: Path, job_id: int) -> str:
    path = scratch / f"bnsweep-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def _wait_for_job(
    slurm: SlurmCluster, scratch: Path, job_id: int, on_requeue: object = None
) -> dict[str, str]:
    """Poll until the job has ended for good; `on_requeue(restarts)` runs when it is requeued."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    restarts, last, seen = 0, None, None
    while time.monotonic() < deadline:
        job = slurm.job(job_id)
        assert job is not None, (
            f"job {job_id} vanished from slurmctld: {_output(scratch, job_id)[-3000:]}"
        )
        last = job
        state = (job["JobState"], job.get("Restarts"), job.get("Reason"))
        if state != seen:  # the job's path, for the lane's log (pytest -s)
            print(f"{datetime.now(UTC):%H:%M:%S} job {job_id}: {' '.join(map(str, state))}")
            seen = state
        if int(job.get("Restarts", "0")) > restarts:
            restarts = int(job["Restarts"])
            if on_requeue is not None:
                on_requeue(restarts)  # type: ignore[operator]
        if job["JobState"] in FINISHED:
            return job
        time.sleep(1)
    raise AssertionError(
        f"job {job_id} still {last and last['JobState']} after {JOB_TIMEOUT_S:.0f} s:\n"
        + _output(scratch, job_id)[-3000:]
    )


def _wait_idle(slurm: SlurmCluster, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(["squeue", "-h"], env=slurm.env, capture_output=True, text=True)
        if done.returncode != 0 or not done.stdout.strip():
            return
        time.sleep(1)


def _kill_processes_under(root: Path) -> None:
    """SIGKILL what a failed run may have left: processes of the jobs' Ray folders under `root`."""
    marker = str(root / "r" / "ray-").encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGKILL)


def _leftover_ray_folders(scratch: Path) -> list[Path]:
    return sorted((scratch / "r").glob("ray-*")) if (scratch / "r").exists() else []


def _log_time(output: str, needle: str) -> datetime:
    """The UTC time of the script's first line containing `needle` (lines start HH:MM:SS)."""
    for line in output.splitlines():
        if needle in line and re.match(r"\d\d:\d\d:\d\d ", line):
            clock = datetime.strptime(line[:8], "%H:%M:%S").time()
            return datetime.combine(datetime.now(UTC).date(), clock, tzinfo=UTC)
    raise AssertionError(f"no line with {needle!r} in the job's output:\n{output[-3000:]}")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class FirstJob:
    job_id: int
    output: str
    trials: dict[tuple[str, int], tuple]
    submitted: datetime


@pytest.fixture(scope="module")
def first_job(scratch: Path, slurm: SlurmCluster, store: Store) -> FirstJob:
    spec = _write_spec(scratch, *FIRST)
    submitted = datetime.now(UTC)
    job_id = _submit(slurm, scratch, _job_env(scratch, store, spec))
    job = _wait_for_job(slurm, scratch, job_id)
    output = _output(scratch, job_id)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), output[-3000:]
    return FirstJob(job_id, output, store.trials(FIRST[0]), submitted)


@pytest.mark.engines
def test_sbatch_runs_a_sweep_on_two_nodes(first_job: FirstJob, scratch: Path) -> None:
    output = first_job.output
    assert "Ray up: 2 nodes" in output
    assert re.search(r"dashboard: ssh -N -L 8265:127\.0\.0\.1:\d+ -J \S+@\S+ \S+@n1 ", output), (
        output
    )
    assert "sweep slurmlane: ran 4 cells this launch (4 completed, 0 diverged, 0 failed)" in output
    # The token the script made for the cluster: private to its owner.
    token = scratch / "token" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64
    _, epochs, seeds, _ = FIRST
    assert len(first_job.trials) == 2 * seeds
    for status, attempts, _, _, stored in first_job.trials.values():
        assert (status, attempts, stored) == ("completed", 1, list(range(1, epochs + 1)))
    # Ray was stopped on both nodes and each node's folder removed.
    assert _leftover_ray_folders(scratch) == []
    first_start = min(_aware(t[2]) for t in first_job.trials.values())
    to_first = (first_start - first_job.submitted).total_seconds()
    print(f"\nSlurm submission -> first trial running: {to_first:.1f} s")


@pytest.mark.engines
def test_a_job_cut_off_by_its_time_limit_requeues_and_resumes(
    first_job: FirstJob, scratch: Path, slurm: SlurmCluster, store: Store
) -> None:
    name, epochs, seeds, concurrent = SECOND
    spec = _write_spec(scratch, name, epochs, seeds, concurrent)
    job_id = _submit(slurm, scratch, _job_env(scratch, store, spec), *TIME_LIMIT)
    at_requeue: dict[int, dict[tuple[str, int], tuple]] = {}

    def requeued(restarts: int) -> None:
        # The requeued job needs ~20 s for Ray before a trial can start: what is completed now
        # is what the cut-off run completed.
        at_requeue[restarts] = {
            cell: row for cell, row in store.trials(name).items() if row[0] == "completed"
        }
        slurm.run(
            "scontrol",
            "update",
            f"JobId={job_id}",
            f"TimeLimit={REQUEUED_LIMIT_MIN}",
            "StartTime=now",
        )

    job = _wait_for_job(slurm, scratch, job_id, on_requeue=requeued)
    output = _output(scratch, job_id)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), output[-3000:]
    assert int(job["Restarts"]) == 1, output[-3000:]
    assert "the time limit is near: stopping the driver" in output
    assert f"sweep {name}: interrupted after" in output
    assert f"requeuing job {job_id} (requeue 1 of at most 20)" in output
    assert "(run 2)" in output
    # The cells the cut-off interrupted continued from their last checkpoints.
    assert re.search(
        rf"sweep {name}: ran \d+ cells this launch \(\d+ completed, 0 diverged, 0 failed, "
        r"[1-9]\d* resumed from checkpoints\)",
        output,
    ), output[-3000:]

    trials = store.trials(name)
    # Every cell once (the store keys trials by cell), every epoch once per cell.
    assert len(trials) == 2 * seeds
    for cell, (status, _, _, _, stored) in trials.items():
        assert (status, stored) == ("completed", list(range(1, epochs + 1))), cell
    # No completed cell was trained again: not those of the cut-off run, not the first job's.
    completed = at_requeue.get(1)
    assert completed, f"the cut-off run completed no cell: {output[-3000:]}"
    assert len(completed) < len(trials), "the cut-off run had completed every cell"
    for cell, row in completed.items():
        assert trials[cell][1:4] == row[1:4], cell
    assert store.trials(FIRST[0]) == first_job.trials
    assert _leftover_ray_folders(scratch) == []

    cut = _log_time(output, "the time limit is near")
    requeued_at = _log_time(output, "requeuing job")
    resumed = min(_aware(row[2]) for row in trials.values() if _aware(row[2]) > cut)
    print(
        f"\ntime-limit signal -> driver and Ray stopped, job requeued: "
        f"{(requeued_at - cut).total_seconds():.0f} s; signal -> first trial running in the "
        f"requeued run: {(resumed - cut).total_seconds():.0f} s"
    )
