"""The cluster topology of docs/cluster.md, end to end, as real processes.

PostgreSQL (the test server, a database per test), a Ray head (`ray start --head`, token
authentication on, dashboard + job server, no CPUs for trials, BNSWEEP_SHARED_STORAGE=1 as in
docker/compose.yaml), a worker node (`ray start --address …` in a session of its own, with its
own temp dir and CPUs), and a checkpoint folder both nodes see. The sweep goes in through
`ray job submit -- bnsweep launch SPEC --db URL`; results come out through `bnsweep query` and
`bnsweep tables`, each a process of its own.

The second test SIGKILLs every process of the worker node while one cell is part-trained, then
starts a replacement node, as compose's restart policy or a cluster manager would. The head has
no CPUs, so without a replacement the job waits for one: Ray Tune keeps the retried trial
pending until a node with room joins, and that is the documented behaviour (docs/cluster.md).

Figures (submission to first trial, recovery, wall time) are printed as `cluster timing:` lines;
bench/cluster_e2e.py collects them for docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from bnsweep.sweep import expand, load_sweep_spec

from .conftest import TERMINAL_JOB_STATES, RayCluster, report_timing, script, wait_gone

REPO = Path(__file__).resolve().parents[2]


def end_to_end(test: Callable[..., None]) -> Callable[..., None]:
    """The two cluster tests need PostgreSQL and minutes; none may hang past 15 minutes."""
    for mark in (pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(900)):
        test = mark(test)
    return test


#: Tiny on purpose: the real 8×8 digits and ResNet-8 on CPU, one CPU per trial.
TRIAL_DEFAULTS = {
    "dataset": "digits",
    "arch": "resnet8",
    "input_norm": "bn",
    "batch_size": 64,
    "device": "cpu",
}
JOB_TIMEOUT = 480.0  # seconds; a busy 2-core machine takes minutes to start Ray workers


def write_spec(cluster: RayCluster, name: str, **fields: Any) -> Path:
    """A sweep spec whose checkpoints go to the cluster's shared folder (absolute path: the
    job runs in the head's working directory, not in the repository)."""
    spec = {
        "name": name,
        "description": "cluster topology test",
        "defaults": {**TRIAL_DEFAULTS, "epochs": fields.pop("epochs")},
        "grids": [{"bn_lr_divisor": [100], "lr": [0.1], **fields.pop("grid")}],
        "base": True,
        "resources": {"cpus": 1, "gpus": 0},
        "retries": 2,
        "storage": str(cluster.shared / "runs"),
        "report": {"layout": "gamma"},
        **fields,
    }
    path = cluster.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def expected_cells(spec_path: Path) -> set[tuple[str, int]]:
    return {(cell.spec_hash, cell.seed) for cell in expand(load_sweep_spec(spec_path))}


def bnsweep(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Run bnsweep commands side by side, each in a process of its own (as a laptop would)."""
    processes = [
        subprocess.Popen(
            [script("bnsweep"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in commands
    ]
    results = []
    for args, process in zip(commands, processes, strict=True):
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(args, process.returncode, out, err))
    for result in results:
        assert result.returncode == 0, f"bnsweep {' '.join(result.args)}:\n{result.stderr}"
    return results


def stored_results(database: str, sweep: str) -> tuple[list[dict], list[dict]]:
    """Trials and epochs as `bnsweep query --format json` gives them to a reader."""
    trials, epochs = bnsweep(
        ["query", "--db", database, "--sweep", sweep, "--format", "json"],
        ["query", "--db", database, "--sweep", sweep, "--epochs", "--format", "json"],
    )
    return json.loads(trials.stdout), json.loads(epochs.stdout)


def assert_every_cell_once(
    trials: list[dict], epochs: list[dict], cells: set[tuple[str, int]], n_epochs: int
) -> None:
    keys = Counter((t["spec_hash"], t["seed"]) for t in trials)
    assert set(keys) == cells, f"cells in the store differ from the spec's: {set(keys) ^ cells}"
    assert max(keys.values()) == 1, f"cells stored more than once: {keys.most_common(3)}"
    not_done = [
        (t["spec_hash"], t["seed"], t["status"]) for t in trials if t["status"] != "completed"
    ]
    assert not not_done, f"cells not completed: {not_done}"
    assert {t["epochs_run"] for t in trials} == {n_epochs}
    per_trial = Counter((e["trial_id"], e["epoch"]) for e in epochs)
    assert max(per_trial.values()) == 1, f"epoch rows stored twice: {per_trial.most_common(3)}"
    by_trial: dict[int, set[int]] = {}
    for trial_id, epoch in per_trial:
        by_trial.setdefault(trial_id, set()).add(epoch)
    assert by_trial == {t["trial_id"]: set(range(1, n_epochs + 1)) for t in trials}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def first_start_after(trials: list[dict], submitted: datetime) -> float:
    return min((utc(t["started_at"]) - submitted).total_seconds() for t in trials)


def table_cells(markdown: str) -> dict[str, tuple[float, float]]:
    """{row label: (mean, std)} of a one-column gamma table in Markdown, markup removed."""
    rows = {}
    for line in markdown.splitlines():
        cells = [re.sub(r"\*\*|</?u>|<sup>.*?</sup>", "", c).strip() for c in line.split("|")]
        cells = [c for c in cells if c]
        if len(cells) >= 2 and (match := re.fullmatch(r"([\d.]+) ± ([\d.]+)", cells[-1])):
            rows[cells[-2]] = (float(match[1]), float(match[2]))
    return rows


def _compose_environment(service: str) -> dict[str, str]:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    environment = compose["services"][service]["environment"]
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {key: str(value) for key, value in environment.items()}


def test_compose_sets_what_this_topology_relies_on() -> None:
    # The tests below run the head with BNSWEEP_SHARED_STORAGE=1 and the workers with a
    # writable BNSWEEP_CACHE_DIR; the compose cluster must do the same, or a paper spec fails
    # its storage check there (and CUB/Cars decode their images again in every trial).
    assert _compose_environment("ray-head").get("BNSWEEP_SHARED_STORAGE") == "1"
    cache = _compose_environment("ray-worker").get("BNSWEEP_CACHE_DIR", "")
    mounts = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"][
        "ray-worker"
    ]["volumes"]
    writable = [
        m.split(":")[1] if isinstance(m, str) else m["target"]
        for m in mounts
        if (isinstance(m, str) and not m.endswith(":ro"))
        or (isinstance(m, dict) and not m.get("read_only"))
    ]
    assert any(cache.startswith(target.rstrip("/") + "/") for target in writable), (
        f"BNSWEEP_CACHE_DIR={cache!r} is not on a writable volume of ray-worker ({writable})"
    )


@end_to_end
def test_a_sweep_submitted_as_a_ray_job_is_stored_once_per_cell_and_tabulated(
    ray_cluster: RayCluster, database: str
) -> None:
    started = time.monotonic()
    # Without the token the job server answers nobody: the cluster runs as compose runs it.
    assert ray_cluster.api("GET", "/api/jobs/", token=None)[0] == 401
    assert ray_cluster.api("GET", "/api/jobs/", token="not-the-token")[0] == 403

    n_epochs = 2
    spec = write_spec(
        ray_cluster, "cluster-e2e", epochs=n_epochs, grid={"bn_scale_init": [0.1]}, seeds=2
    )
    submitted = datetime.now(timezone.utc)
    job = ray_cluster.submit(
        [script("bnsweep"), "launch", str(spec), "--db", database],
        "bnsweep-e2e",
        wait=True,
        timeout=JOB_TIMEOUT,
    )
    job_seconds = (datetime.now(timezone.utc) - submitted).total_seconds()
    state = ray_cluster.job_status("bnsweep-e2e")
    assert job.returncode == 0 and state == "SUCCEEDED", (
        f"job {state}, `ray job submit` exit {job.returncode}:\n"
        f"{job.stdout[-4000:]}\n{job.stderr[-2000:]}"
    )

    trials, epochs = stored_results(database, "cluster-e2e")
    assert_every_cell_once(trials, epochs, expected_cells(spec), n_epochs)

    (tables,) = bnsweep(["tables", "--db", database, "--sweep", "cluster-e2e", "--format", "md"])
    rows = table_cells(tables.stdout)
    assert set(rows) == {"0.10", "BASE"}, tables.stdout
    for label, gamma in (("0.10", 0.1), ("BASE", 1.0)):
        scores = [t["test_acc"] for t in trials if t["bn_scale_init"] == gamma]
        assert len(scores) == 2
        assert rows[label][0] == pytest.approx(100 * sum(scores) / 2, abs=0.006), tables.stdout
    assert "n = 2 seeds" in tables.stdout

    report_timing(
        "submit-and-tabulate",
        submit_to_first_trial_s=round(first_start_after(trials, submitted), 1),
        job_s=round(job_seconds, 1),
        test_s=round(time.monotonic() - started, 1),
        cells=len(trials),
        epochs=n_epochs,
    )


def _completed_cells(engine: sa.Engine) -> int:
    try:
        with engine.connect() as conn:
            return int(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM trials WHERE status = 'completed'"
                ).scalar_one()
            )
    except sa.exc.ProgrammingError:  # the driver has not created the schema yet
        return 0


def _checkpointed_epochs(experiments: Path) -> dict[str, int]:
    """Cell folder → the epoch of its latest checkpoint on the shared folder.

    Read from the files rather than the store: the driver writes epochs in batches, up to a
    couple of seconds late, while a trial writes `cells/<cell>/checkpoint-<epoch>` before it
    goes on, so this is what a retry would resume from."""
    latest: dict[str, int] = {}
    for checkpoint in experiments.glob("cells/*/checkpoint-*"):
        with contextlib.suppress(ValueError):
            epoch = int(checkpoint.name.removeprefix("checkpoint-"))
            cell = str(checkpoint.parent)
            latest[cell] = max(latest.get(cell, 0), epoch)
    return latest


@end_to_end
def test_losing_the_worker_node_mid_sweep_still_completes_every_cell_once(
    ray_cluster: RayCluster, database: str
) -> None:
    started = time.monotonic()
    (worker,) = ray_cluster.live_workers()
    n_epochs = 5
    # One trial at a time: when the node goes, one cell is done, one is part-trained with a
    # checkpoint on the shared folder, and one has not started.
    spec = write_spec(
        ray_cluster,
        "cluster-node-loss",
        epochs=n_epochs,
        grid={"bn_scale_init": [0.1, 0.5]},
        seeds=[1],
        max_concurrent=1,
        checkpoint_every=1,  # a checkpoint after every epoch: the kill lands after one
    )
    experiments = Path(load_sweep_spec(spec).storage) / "cluster-node-loss"
    submitted = datetime.now(timezone.utc)
    job = ray_cluster.submit(
        [script("bnsweep"), "launch", str(spec), "--db", database, "--no-tables"],
        "bnsweep-node-loss",
        wait=False,
        timeout=120,
    )
    assert job.returncode == 0, job.stdout + job.stderr

    # Kill the node once a cell is completed in the store and the next one has a checkpoint
    # with at least two epochs still to train, so the kill lands mid-trial on any machine.
    deadline = time.monotonic() + JOB_TIMEOUT
    engine = sa.create_engine(database, poolclass=sa.pool.NullPool)
    while True:
        partial = [e for e in _checkpointed_epochs(experiments).values() if e <= n_epochs - 2]
        if partial and _completed_cells(engine) >= 1:
            break
        state = ray_cluster.job_status("bnsweep-node-loss")
        assert state not in TERMINAL_JOB_STATES and time.monotonic() < deadline, (
            f"job {state} before the worker could be stopped mid-trial; checkpoints: "
            f"{_checkpointed_epochs(experiments)}\n"
            + ray_cluster.job_logs("bnsweep-node-loss")[-4000:]
        )
        time.sleep(0.2)
    killed_at = datetime.now(timezone.utc)
    pids = worker.kill()
    assert not wait_gone(pids, 15.0), "processes of the stopped node survived SIGKILL"

    ray_cluster.add_worker(num_cpus=2)  # the replacement: the head alone has no CPUs
    state = ray_cluster.wait_for_job("bnsweep-node-loss", JOB_TIMEOUT)
    job_seconds = (datetime.now(timezone.utc) - submitted).total_seconds()
    logs = ray_cluster.job_logs("bnsweep-node-loss")
    assert state == "SUCCEEDED", f"job {state}:\n{logs[-6000:]}"

    trials, epochs = stored_results(database, "cluster-node-loss")
    assert_every_cell_once(trials, epochs, expected_cells(spec), n_epochs)
    # The cell that was training when the node died ran again, and only that one.
    retried = [t for t in trials if t["attempts"] >= 2]
    assert len(retried) == 1, [(t["bn_scale_init"], t["attempts"]) for t in trials]
    resumed = re.search(r"(\d+) resumed from checkpoint", logs)
    assert resumed and int(resumed[1]) == 1, f"the retry did not resume:\n{logs[-4000:]}"

    report_timing(
        "node-loss",
        submit_to_first_trial_s=round(first_start_after(trials, submitted), 1),
        node_loss_to_trial_restart_s=round(
            (utc(retried[0]["started_at"]) - killed_at).total_seconds(), 1
        ),
        job_s=round(job_seconds, 1),
        test_s=round(time.monotonic() - started, 1),
        cells=len(trials),
        epochs=n_epochs,
        checkpointed_epochs_at_loss=partial[0],
    )
