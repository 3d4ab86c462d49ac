"""The compose cluster of docs/cluster.md §4, run for real on a CPU machine.

One test, in the order a user goes: a Docker engine of its own (tests/deploy/docker_engine.py),
a Debian base made with debootstrap, the bnsweep image built by docker/build-image.sh with this
machine's CA bundle in docker/site-ca/ (the site-CA hook), a PostgreSQL image from the same base
(tests/deploy/postgres/: registries are out of reach here, so POSTGRES_IMAGE names it), then
docker/compose.yaml with docker/compose.cpu.yaml. A tiny sweep goes in through `ray job submit`
with token auth; once a cell has written epochs, the worker's raylet is killed with SIGKILL.
Compose restarts the worker, the killed cells resume from their checkpoints, and the database
shows every cell once, complete, with every epoch once, the epochs recorded before the kill
unchanged (not rerun).

What the lane adds to the shipped files, in a compose file of its own: the head gets no CPUs for
trials (so the kill hits a running cell) and health-checks every 5 s (so the worker joins
sooner). Ports are published on free high ports of 127.0.0.1. Timings are printed as
`compose lane: …` lines (docs/benchmarks.md quotes them); run with `-s` to see them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from .docker_engine import Engine, debian_base, docker_engine

pytestmark = pytest.mark.engines

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
POSTGRES_CONTEXT = Path(__file__).with_name("postgres")
POSTGRES_TAG = "bnsweep-lane/postgres:15"
PROJECT = "bnsweeplane"
UID = 10001
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: The sweep: 3 points (two γ and BASE) × 2 seeds = 6 cells of 12 short epochs on digits.
SPEC: dict[str, Any] = {
    "name": "lane",
    "description": "compose lane: resnet8 on digits, a raylet killed mid-sweep",
    "defaults": {
        "dataset": "digits",
        "arch": "resnet8",
        "input_norm": "bn",
        "epochs": 12,
        "batch_size": 64,
        "device": "cpu",
    },
    "grids": [{"bn_scale_init": [1.0, 0.1], "bn_lr_divisor": [100], "lr": [0.05]}],
    "base": True,
    "seeds": 2,
    "resources": {"cpus": 1, "gpus": 0},
    "max_concurrent": 2,
    "retries": 3,
    "checkpoint_every": 1,
    "storage": "/shared/bnsweep/lane",
}
CELLS = 6
LANE_OVERRIDE: dict[str, Any] = {
    "services": {
        "ray-head": {
            "command": ["head", "--num-cpus=0"],
            "healthcheck": {
                "test": ["CMD", "bnsweep-entrypoint", "healthcheck"],
                "interval": "5s",
                "timeout": "30s",
                "retries": 3,
            },
        }
    }
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tool(name: str) -> str:
    local = Path(sysconfig.get_path("scripts")) / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed; `pip install -e '.[test]'` brings it")
    return found


def _say(what: str, seconds: float) -> None:
    print(f"compose lane: {what}: {seconds:.1f} s", flush=True)


def _run(args: list[str], env: dict[str, str], timeout: float, **kwargs) -> str:
    result = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    assert result.returncode == 0, (
        f"{' '.join(args)} exited {result.returncode}:\n"
        f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
    )
    # The ray CLI writes its results to stderr, through its logger.
    return result.stdout + result.stderr


def _build_images(engine: Engine) -> str:
    """The PostgreSQL fixture image and the bnsweep image; returns the bnsweep tag."""
    start = time.monotonic()
    base = debian_base(engine)
    _say("debootstrap + import of the base", time.monotonic() - start)
    engine.docker(
        "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}",
        "--tag", POSTGRES_TAG, str(POSTGRES_CONTEXT), timeout=300,
    )  # fmt: skip
    # The site-CA hook, as a user behind a TLS-intercepting proxy uses it: a file in
    # docker/site-ca/, removed again right after the build.
    ca_copy = DOCKER_DIR / "site-ca" / f"lane-{os.getpid()}.crt"
    if CA_BUNDLE.is_file():
        shutil.copyfile(CA_BUNDLE, ca_copy)
    start = time.monotonic()
    try:
        out = _run(
            [str(DOCKER_DIR / "build-image.sh"), "--network", "host", "--quiet"],
            env={**engine.env, "DOCKER": "/usr/bin/docker", "BNSWEEP_BASE_IMAGE": base},
            timeout=540,
        )
    finally:
        ca_copy.unlink(missing_ok=True)
    tag = out.strip().splitlines()[-1]
    size = int(engine.docker("image", "inspect", "--format", "{{.Size}}", tag).stdout)
    _say(f"bnsweep image build ({tag}, {size / 1e9:.2f} GB)", time.monotonic() - start)
    return tag


def _secrets(folder: Path) -> tuple[Path, Path, str, str]:
    """The two secret files, mode 600 and owned by the image's uid: the Ray nodes run as that
    uid and read them as mounted; PostgreSQL's entry point reads its one as root."""
    folder.mkdir(mode=0o700)
    password, token = os.urandom(16).hex(), os.urandom(32).hex()
    paths = []
    for name, value in (("postgres_password", password), ("ray_auth_token", token)):
        path = folder / name
        path.write_text(value + "\n")
        path.chmod(0o600)
        os.chown(path, UID, UID)
        paths.append(path)
    return paths[0], paths[1], password, token


def _wait(what: str, condition, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


def _epochs(db: sa.Engine) -> dict[tuple[int, int], tuple]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT trial_id, epoch, train_loss, val_loss, seconds FROM epochs")
        ).all()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def _trials(db: sa.Engine) -> list[Any]:
    with db.connect() as conn:
        return conn.execute(
            sa.text("SELECT id, seed, status, attempts, epochs, epochs_run FROM trials")
        ).all()


def test_compose_cluster_runs_a_sweep_through_a_killed_worker(tmp_path: Path) -> None:
    compose_bin = _tool("docker-compose")
    ray_bin = _tool("ray")
    lane_start = time.monotonic()
    with docker_engine() as engine:
        tag = _build_images(engine)

        pw_file, token_file, password, token = _secrets(tmp_path / "secrets")
        datasets = tmp_path / "datasets"
        datasets.mkdir()
        ports = {name: _free_port() for name in ("dashboard", "client", "postgres")}
        env_file = tmp_path / "lane.env"
        env_file.write_text(
            "\n".join(
                f"{key}={value}"
                for key, value in {
                    "BNSWEEP_IMAGE": tag,
                    "BNSWEEP_TORCH": "cu130",
                    "BNSWEEP_BASE_IMAGE": "local/debian:bookworm",
                    "BNSWEEP_UID": UID,
                    "BNSWEEP_BIND_ADDRESS": "127.0.0.1",
                    "RAY_DASHBOARD_PORT": ports["dashboard"],
                    "RAY_CLIENT_PORT": ports["client"],
                    "POSTGRES_PORT": ports["postgres"],
                    "POSTGRES_IMAGE": POSTGRES_TAG,
                    "POSTGRES_USER": "bnsweep",
                    "POSTGRES_DB": "bnsweep",
                    "BNSWEEP_POSTGRES_PASSWORD_FILE": pw_file,
                    "BNSWEEP_RAY_TOKEN_FILE": token_file,
                    "BNSWEEP_DATASETS_DIR": datasets,
                    "RAY_WORKERS": 1,
                    "RAY_WORKER_GPUS": "all",
                    "RAY_SHM_SIZE": "1gb",
                }.items()
            )
            + "\n"
        )
        override = tmp_path / "compose.lane.yaml"
        override.write_text(yaml.safe_dump(LANE_OVERRIDE))
        compose = [
            compose_bin, "--project-name", PROJECT, "--env-file", str(env_file),
            "-f", str(DOCKER_DIR / "compose.yaml"), "-f", str(DOCKER_DIR / "compose.cpu.yaml"),
            "-f", str(override),
        ]  # fmt: skip
        compose_env = {**engine.env, "COMPOSE_PROGRESS": "quiet"}
        try:
            _run_sweep(compose, compose_env, ray_bin, ports, password, token, tmp_path)
        except BaseException:
            _show_cluster_state(compose, compose_env)
            raise
        finally:
            subprocess.run(
                [*compose, "down", "--volumes", "--remove-orphans", "--timeout", "10"],
                env=compose_env, capture_output=True, timeout=120, check=False,
            )  # fmt: skip
            engine.docker("image", "rm", "--force", tag, POSTGRES_TAG, check=False)
    _say("whole lane (engine up to engine gone)", time.monotonic() - lane_start)


def _show_cluster_state(compose: list[str], env: dict[str, str]) -> None:
    """On a failure, before the cluster is removed: its containers, the nodes Ray sees and the
    last lines of each service's log, in the test's output."""
    probes = {
        "containers": [*compose, "ps", "--all"],
        "ray status": [*compose, "exec", "-T", "ray-head", "ray", "status"],
        "logs": [*compose, "logs", "--no-color", "--tail", "60"],
    }
    for what, args in probes.items():
        shown = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        print(f"--- compose lane, at the failure: {what}\n{shown.stdout}{shown.stderr}", flush=True)


def _run_sweep(
    compose: list[str],
    env: dict[str, str],
    ray_bin: str,
    ports: dict[str, int],
    password: str,
    token: str,
    tmp_path: Path,
) -> None:
    start = time.monotonic()
    _run([*compose, "up", "--detach", "--no-build", "--wait"], env=env, timeout=300)
    _say("compose up to all services healthy", time.monotonic() - start)

    spec_dir = tmp_path / "job"
    spec_dir.mkdir()
    (spec_dir / "lane.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    client_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    }
    address = f"http://127.0.0.1:{ports['dashboard']}"
    out = _run(
        [ray_bin, "job", "submit", "--address", address, "--working-dir", str(spec_dir),
         "--no-wait", "--", "bnsweep", "launch", "lane.yaml"],
        env=client_env, timeout=120,
    )  # fmt: skip
    job_id = next(
        word.strip("'") for line in out.splitlines() for word in line.split()
        if word.strip("'").startswith("raysubmit_")
    )  # fmt: skip

    db = sa.create_engine(
        f"postgresql+psycopg://bnsweep:{password}@127.0.0.1:{ports['postgres']}/bnsweep",
        poolclass=sa.pool.NullPool,
    )
    try:

        def running_with_epochs():
            try:
                epochs = _epochs(db)
            except sa.exc.ProgrammingError:  # the driver has not made the tables yet
                return None
            trials = {t.id: t for t in _trials(db)}
            busy = {
                tid
                for (tid, _) in epochs
                if trials[tid].status == "running" and sum(1 for (t, _) in epochs if t == tid) >= 2
            }
            return (epochs, busy) if busy else None

        def any_epoch():
            try:
                return bool(_epochs(db))
            except sa.exc.ProgrammingError:
                return False

        _wait("the first epoch", any_epoch, 300, every=0.5)
        _say("compose up to the first epoch recorded", time.monotonic() - start)
        before, busy = _wait("a cell with two epochs", running_with_epochs, 300)
        # The epochs recorded now, kept again: a resumed cell must not rerun them.
        before = _epochs(db)
        attempts = {t.id: t.attempts for t in _trials(db) if t.id in busy}
        killed_at = time.monotonic()
        _run([*compose, "exec", "-T", "ray-worker", "pkill", "-9", "raylet"], env=env, timeout=60)

        # Resumed: a killed cell's next attempt has written an epoch. The old attempt may still
        # report an epoch or two before its worker process notices that its raylet is gone.
        retried_with: dict[int, int] = {}

        def resumed():
            now = _epochs(db)
            for trial in _trials(db):
                if trial.id in busy and trial.attempts > attempts[trial.id]:
                    count = sum(1 for (t, _) in now if t == trial.id)
                    # A retry that finished between two looks has resumed as well; the epochs
                    # it wrote are checked once the job has ended.
                    grew = count > retried_with.setdefault(trial.id, count)
                    if grew or trial.status == "completed":
                        return True
            return False

        _wait("a killed cell to resume", resumed, 420, every=0.5)
        _say("raylet killed to a killed cell's first epoch on retry", time.monotonic() - killed_at)

        def finished():
            status = _run(
                [ray_bin, "job", "status", "--address", address, job_id],
                env=client_env, timeout=60,
            )  # fmt: skip
            # `ray job status` ends with "Job '<id>' succeeded" (failed, was stopped) once the
            # job has ended, and "Status for job '<id>': RUNNING" before.
            ended = re.search(rf"Job '{job_id}' (succeeded|failed|was stopped)", status)
            return ended.group(1) if ended else None

        state = _wait("the job to end", finished, 420, every=5)
        logs = _run(
            [ray_bin, "job", "logs", "--address", address, job_id], env=client_env, timeout=60
        )
        assert state == "succeeded", f"job {job_id} ended {state}:\n{logs[-4000:]}"
        _say("compose up to the job's success", time.monotonic() - start)

        worker = _run([*compose, "ps", "--quiet", "ray-worker"], env=env, timeout=60).split()
        inspect = ["/usr/bin/docker", "inspect", "--format", "{{json .}}", *worker]
        state_of_worker = json.loads(_run(inspect, env=env, timeout=60))
        _check_results(db, before, busy, logs)
        # Compose restarted the worker's container when `ray start --block` ended with its raylet.
        assert state_of_worker["RestartCount"] >= 1, "the worker's container was never restarted"
        assert state_of_worker["State"]["Status"] == "running", state_of_worker["State"]
    finally:
        db.dispose()


def _check_results(db: sa.Engine, before: dict, busy: set[int], logs: str) -> None:
    trials = _trials(db)
    after = _epochs(db)
    assert len(trials) == CELLS, f"{len(trials)} trials for {CELLS} cells:\n{logs[-3000:]}"
    for trial in trials:
        assert trial.status == "completed", (trial, logs[-3000:])
        epochs = sorted(e for (t, e) in after if t == trial.id)
        assert epochs == list(range(1, trial.epochs + 1)), (trial, epochs)
        assert trial.epochs_run == trial.epochs, trial
    # The cells running at the kill were retried (a second attempt) and resumed: the epochs they
    # had recorded are the same rows, not a rerun's.
    for tid in busy:
        attempts = next(t.attempts for t in trials if t.id == tid)
        assert attempts >= 2, f"trial {tid} was running at the kill but ran once ({attempts})"
        for key, row in before.items():
            if key[0] == tid:
                rerun = f"trial {tid} epoch {key[1]} was rerun: {row} -> {after[key]}"
                assert after[key] == row, rerun
    with db.connect() as conn:
        linked = conn.execute(sa.text("SELECT count(*) FROM sweep_trials")).scalar_one()
    assert linked == CELLS, f"{linked} sweep_trials rows for {CELLS} cells"
