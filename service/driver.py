"""The launch: connect to Ray, run the cells a sweep is missing, write every result to the store.

The flow of one launch (docs/architecture.md):

1. `plan()` expands the sweep and asks the store which cells are completed;
2. what cannot run is refused before anything is written: a trial no node can fit, a local
   checkpoint folder on several nodes;
3. the missing cells run as one new Tune experiment over an explicit list of cells. Each cell
   continues from the latest checkpoint in its own folder (`service/checkpoints.py`), whichever
   launch, retry or node wrote it; no Tune experiment is ever restored, so a relaunch runs only
   the cells of the spec in front of it and reads nothing Tune pickled;
4. `StoreCallback` turns Tune's results, and the records trials put on the launch's
   `EventSink`, into store events, batched, in the driver process: the driver is the only
   writer, which keeps SQLite safe and puts retries in one place. A trial that resumes sends
   again the epochs its checkpoint covers, so events a dead driver still held are not lost.

Per epoch, the driver handles one small result (7 numbers) and the BN diagnostics, whatever the
number of trials or epochs so far: bench/driver_scale.py measures it.

The pieces it wires together have their own modules: the trainable that runs on the workers
(`service/trainable.py`), the driver-side callback and its `EventSink` (`service/callback.py`),
the progress display (`service/progress.py`) and the checks before a launch
(`service/preflight.py`).

docs/sweeps.md says the same for users.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import bnsweep.reaper as reaper
from bnsweep.callback import EventSink, LaunchSummary, StoreCallback
from bnsweep.checkpoints import CellStorage
from bnsweep.plan import cell_of, plan
from bnsweep.preflight import (
    StorageMarker,
    autoscaler_present,
    check_compile_works,
    check_plugins_on_nodes,
    check_resources_fit,
    check_storage_is_shared,
    local_sweep_folder,
    place_storage_marker,
    storage_root,
)
from bnsweep.progress import Progress
from bnsweep.ray_address import host_port
from bnsweep.store.api import LaunchBusy, Store
from bnsweep.store.errors import StoreError, StoreFailure
from bnsweep.store.filelock import held_file_lock
from bnsweep.sweep import SweepSpec
from bnsweep.trainable import train_cell
from bnsweep.workers.errors import BnsweepError, RuntimeFailure
from bnsweep.workers.spec import TrialSpec

log = logging.getLogger(__name__)

LOCK_FILE = ".bnsweep-launch.lock"
#: Whether `connect` started the local Ray this process is attached to (`disconnect` ends it).
_local_ray_started = False
#: Defaults the driver gives Ray Tune; a value already in the environment wins.
TUNE_ENV_DEFAULTS = {
    # The store is the record of every epoch; Tune's per-trial JSON, CSV and TensorBoard files
    # would repeat it, written from the driver loop at every result, and each experiment
    # snapshot would upload them all again.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # The new output engine prints an experiment banner and paths whatever `verbose` says; the
    # legacy one at verbose=0 prints nothing, and `Progress` is the display.
    "RAY_AIR_NEW_OUTPUT": "0",
    # A failed trial's whole traceback, at every retry, for every cell; `StoreCallback` logs one
    # line per failure instead, naming the error.txt that keeps the traceback.
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
}


def connect(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None) -> int:
    """Attach to a cluster (`--address`, RAY_ADDRESS, or the job we were submitted as) or start a
    local Ray. Token authentication stays whatever the cluster has: on by default.

    A local Ray listens on 127.0.0.1 only and its token file is private to this user; a
    cluster address must be HOST:PORT and answer a TCP connect within seconds, or Ray would
    retry for minutes."""
    global _local_ray_started
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
        target = address or os.environ.get("RAY_ADDRESS")
        if target and target.startswith("ray://"):
            # Under Ray Client, Tune runs on the cluster and takes our callbacks there, without
            # the store: results would never be written.
            raise BnsweepError(
                f"--address {target}: a Ray Client address cannot run a sweep (Tune would run "
                "on the cluster, away from the results store); submit the launch as a Ray job "
                "(`ray job submit -- bnsweep launch SPEC`, docs/cluster.md) or run it on a "
                "cluster node with the GCS address (HOST:6379)"
            )
        if target and target != "auto":
            _check_reachable(target, *host_port(target))
        if target:
            kwargs["address"] = target
            local: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        else:
            # A Ray of our own ("local"), never one a `ray start` on this machine left recorded
            # in /tmp/ray; no dashboard: it starts slowly and nobody looks at it.
            kwargs.update(
                address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False
            )
            _quiet_token_notice()
            _private_token_file()
            local = _loopback_only()
        try:
            with local:
                ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as err:
            raise BnsweepError(_connect_error(target, err)) from err
        if not target:
            _local_ray_started = True
            _private_token_file()  # whatever Ray wrote meanwhile
            _start_reaper()
    return sum(1 for node in ray.nodes() if node.get("Alive"))


#: Ray's logger of its token set-up, and the start of the line it logs at every local start.
_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


def _drop_token_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_TOKEN_NOTICE)


def _quiet_token_notice() -> None:
    """Drop the one warning Ray 2.60 logs at every start of a local Ray, that token
    authentication is on by default: bnsweep keeps it on (docs/cluster.md), so the line asks
    nothing of the user, and it came before everything the launch printed, an error included.
    Setting RAY_AUTH_MODE=token would silence it too, but Ray reads its configuration in this
    process at import: set later, the driver would not send the token its own Ray requires."""
    logger = logging.getLogger(_TOKEN_LOGGER)
    if _drop_token_notice not in logger.filters:
        logger.addFilter(_drop_token_notice)


def disconnect() -> None:
    """End the local Ray that `connect` started, now rather than in Ray's exit hook; a Ray
    this process attached to (a cluster, or one a test started) is left alone.

    When a launch's command ends, its Ray's workers get SIGTERM; Ray's handler raises
    SystemExit in whatever the worker runs, a finalizer included, and the "Exception ignored
    in ... SystemExit: 1" it prints reached the driver's terminal while Ray's exit hook still
    relayed worker output (it waits half a second for more). `ray.shutdown()` called here stops
    relaying before it stops any process."""
    global _local_ray_started
    if _local_ray_started and ray.is_initialized():
        ray.shutdown()
    _local_ray_started = False


def _start_reaper() -> None:
    """The processes of the local Ray just started end with this driver, however it ends
    (`bnsweep.reaper`): a SIGKILLed driver left Ray's agents running for minutes."""
    node = ray._private.worker._global_node
    if node is None:
        return
    reaper.start(
        [
            info.process.pid
            for infos in node.all_processes.values()
            for info in infos
            if info.process
        ]
    )


#: How long a cluster address may take to accept a TCP connection before the launch gives up.
CONNECT_CHECK_SECONDS = 5.0


class ClusterUnreachable(RuntimeFailure):
    """Nothing answers at the Ray address given: a runtime failure (exit 1), not a typo."""


def _check_reachable(target: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_CHECK_SECONDS):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ClusterUnreachable(
            f"--address {target}: no Ray head answers there ({reason} within "
            f"{CONNECT_CHECK_SECONDS:.0f} s); is the cluster up (`ray status` on the head)?"
        ) from None


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Start a local Ray whose every server listens on 127.0.0.1, not on all interfaces.

    Ray 2.60 turns `_node_ip_address="127.0.0.1"` into the machine's external address
    (`services.resolve_ip_for_localhost`), and binds its servers to the node address. Only
    with "clusters" off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, its setting for laptops) is
    the node address the loopback one; the variable reaches the processes ray.init starts,
    and the constant is what this process has already read from it.
    """
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_flag = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved_env


def _token_path() -> Path | None:
    """The token file a local Ray reads or writes: RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token;
    None when the token comes from RAY_AUTH_TOKEN itself."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def _private_token_file() -> None:
    """The auth token readable by this user only (0600 in a 0700 folder).

    Ray 2.60 writes a new ~/.ray/auth_token with plain `open(path, "w")`: 0644 under the
    usual umask, so every user of the machine could read the key to this Ray. Writing the
    token first, privately, leaves Ray nothing to create; an existing one is made private."""
    path = _token_path()
    if path is None:
        return
    if path.exists():
        if path.stat().st_mode & 0o077:
            log.warning("%s was readable by other users; made it private (0600)", path)
            path.chmod(0o600)
        return
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return  # authentication turned off on purpose: Ray reads no token
    from ray._private.authentication.authentication_token_generator import (
        generate_new_authentication_token,
    )

    created = not path.parent.exists()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created:
        path.parent.chmod(0o700)  # mkdir's mode is filtered by the umask
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generate_new_authentication_token())


def _connect_error(target: str | None, err: BaseException) -> str:
    where = f"the Ray cluster at {target}" if target else "a local Ray"
    chain = [err]
    while chain[-1].__cause__ is not None and len(chain) < 5:
        chain.append(chain[-1].__cause__)
    if any(
        isinstance(e, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in str(e)
        for e in chain
    ):
        return (
            f"cannot connect to {where}: its authentication token is missing or different here; "
            "set RAY_AUTH_MODE=token and give this machine the cluster's token "
            "(~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN; docs/cluster.md)"
        )
    first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return f"cannot connect to {where}: {first}"


def launch(
    sweep: SweepSpec,
    store: Store,
    spec_text: str,
    *,
    address: str | None = None,
    base_dir: Path | None = None,
    num_cpus: int | None = None,
    progress_stream: Any = None,
) -> LaunchSummary:
    """Run every missing cell of `sweep`; return what happened. Safe to call again at any time.

    Phases: plan against the store; refuse what cannot run (a plugin that breaks its contract
    or is missing or another version on a node, resources no node has, storage other nodes
    cannot see, a compile that fails on a worker) before anything is written;
    register the sweep; run the missing cells as one Tune experiment, each continuing from its
    latest checkpoint. Only the cells of `sweep` as it is now run: nothing of an earlier
    launch's experiment is restored.
    """
    store.check_launchable(sweep.name)
    launch_plan = plan(sweep, store)  # imports the plugins the spec names: their recipes key it
    summary = LaunchSummary()
    if not launch_plan.missing:
        # Nothing to train; rows a killed launch left `running` (cells since dropped from the
        # spec among them) are still reset, unless a launch of the sweep is live.
        with contextlib.suppress(LaunchBusy), store.launch_lock(sweep.name):
            summary.requeued = store.requeue_running(sweep.name)
        store.register_sweep(sweep.name, spec_text, launch_plan.cells)
        return summary
    # The store's lock first: a second launch is refused before it starts a Ray.
    with store.launch_lock(sweep.name):
        _tune_environment()
        nodes = connect(address, num_cpus=num_cpus)
        check_resources_fit(sweep.resources, ray.nodes(), autoscaler=autoscaler_present())
        check_plugins_on_nodes(launch_plan.missing, ray.nodes())
        root = storage_root(sweep, base_dir)
        check_storage_is_shared(sweep, root, nodes)
        check_compile_works(sweep, launch_plan.missing)
        # After every refusal above, so a refused launch writes nothing; we hold the lock, so
        # nobody trains the rows a killed launch left running.
        summary.requeued = store.requeue_running(sweep.name)
        with _one_launch_at_a_time(root, sweep.name):
            _run_missing(sweep, store, spec_text, launch_plan.cells, root, summary, progress_stream)
    _check_stored(store, summary)
    return summary


def _run_missing(
    sweep: SweepSpec,
    store: Store,
    spec_text: str,
    cells: Sequence[TrialSpec],
    root: str,
    summary: LaunchSummary,
    progress_stream: Any,
) -> None:
    """Register the sweep and train its missing cells, with both launch locks held."""
    store.register_sweep(sweep.name, spec_text, cells)
    marker = place_storage_marker(root, sweep.name)
    missing = plan(sweep, store).missing  # another launch may have finished some meanwhile
    progress = Progress(
        len(cells),
        len(cells) - len(missing),
        epochs={cell_of(c): c.epochs for c in missing},
        stream=progress_stream,
    )
    # On the driver's own node: a sink on a worker node would go, with the records in it,
    # when that node does (the cluster test removes one mid-sweep).
    here = ray.get_runtime_context().get_node_id()
    # mypy does not apply class decorators (python/mypy#3135): it sees the plain class, not
    # the ActorClass that @ray.remote made of it.
    events = EventSink.options(  # type: ignore[attr-defined]
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
    ).remote()
    callback = StoreCallback(
        store, summary, progress, events=lambda: ray.get(events.drain.remote())
    )
    try:
        if missing:
            # The cells' signing keys travel in Ray's object store, never in Tune's config,
            # which Tune writes into the checkpoint storage the keys protect.
            storage = CellStorage(_join(root, sweep.name), keys=store.cell_keys(missing))
            _fit(_new_tuner(sweep, missing, storage, callback, marker, events), callback)
    finally:
        if callback.failure is None:
            callback.drain()
            callback.flush()
            _requeue_in_flight(store, sweep.name)
        progress.close()
        ray.kill(events)
    summary.interrupted = any(cell_of(c) not in summary.ended for c in missing)


def _requeue_in_flight(store: Store, name: str) -> None:
    """The cells this launch leaves without an outcome (Ctrl-C, an error) go back to `pending`:
    nothing trains them once it ends. A store that fails here must not hide why the launch
    ended; the next launch resets them instead."""
    try:
        store.requeue_running(name)
    except StoreError as err:
        log.warning("could not set this launch's running cells back to pending: %s", err)


def _check_stored(store: Store, summary: LaunchSummary) -> None:
    """What the launch is about to report must be in the store: read it back."""
    stored = store.completed_cells(summary.results)
    if stored != summary.results:
        lost = len(summary.results - stored)
        raise StoreFailure(
            f"{lost} of the {len(summary.results)} cells this launch finished are not in the "
            f"store {store.url} when read back; their results were lost (was the "
            "database replaced or restored while the launch ran?): launch again to train them"
        )


@contextlib.contextmanager
def _one_launch_at_a_time(root: str, sweep_name: str) -> Iterator[None]:
    """Hold a lock on <storage>/<sweep>/ for the launch: two launches of one sweep would train
    the same missing cells twice, into the same cell folders. The kernel drops the lock of a
    killed driver; the file names its holder and goes on release. (Object storage has no
    locks: not checked.)"""
    folder = local_sweep_folder(root, sweep_name)
    if folder is None:
        yield
        return
    path = folder / LOCK_FILE

    def busy(holder: str) -> BnsweepError:
        return BnsweepError(
            f"sweep {sweep_name} is being launched already ({holder}, lock {path}); "
            "wait for that launch to end or stop it"
        )

    with held_file_lock(path, busy):
        yield


def _tune_environment() -> None:
    for key, value in TUNE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _new_tuner(
    sweep: SweepSpec,
    cells: Sequence[TrialSpec],
    storage: CellStorage,
    callback: StoreCallback,
    marker: StorageMarker | None,
    events: Any,
) -> tune.Tuner:
    """One experiment over exactly these cells. Tune neither checkpoints (each cell's folder
    holds its checkpoints) nor logs results (the store does): with no trial checkpoints, Tune
    never forces an experiment snapshot, and its periodic one stays a few kB per trial."""
    trainable = tune.with_parameters(
        train_cell,
        cells=storage,
        checkpoint_every=sweep.checkpoint_every,
        diagnostics=sweep.diagnostics.model_dump(),
        storage=marker,
        events=events,
    )
    resources = {"cpu": sweep.resources.cpus, "gpu": sweep.resources.gpus}
    return tune.Tuner(
        tune.with_resources(trainable, resources),
        # One grid axis whose values are the cells: Tune runs exactly these, nothing crossed.
        param_space={"cell": tune.grid_search([_cell_config(c) for c in cells])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=sweep.max_concurrent,
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=datetime.now(timezone.utc).strftime("launch-%Y%m%dT%H%M%S%f"),
            storage_path=storage.root,
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=sweep.retries),
            verbose=0,
        ),
    )


def _cell_config(spec: TrialSpec) -> dict[str, Any]:
    """The cell as Ray's config: every field but data_root/device travels as data."""
    return spec.to_dict()


def _trial_dirname(trial: Any) -> str:
    """<spec_hash>-seed<seed>-<trial id>: short, and says which cell a folder holds."""
    spec = TrialSpec.from_dict(trial.config["cell"])
    return f"{spec.spec_hash}-seed{spec.seed}-{trial.trial_id}"


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if "://" in root else str(Path(root) / name)


#: Tune's end-of-experiment analysis reads every trial's result.json back and warns, trial by
#: trial, that none is there: Tune's loggers are off on purpose (the store holds every result).
_EXPERIMENT_ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"


def _fit(tuner: tune.Tuner, callback: StoreCallback) -> None:
    logging.getLogger(_EXPERIMENT_ANALYSIS_LOGGER).setLevel(logging.ERROR)
    try:
        tuner.fit()
    except (ray.exceptions.RayError, tune.TuneError) as err:
        if callback.failure is not None:
            raise callback.failure from err
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise BnsweepError(
            f"the Ray Tune run stopped: {lines[-1].strip() if lines else type(err).__name__}"
        ) from err
    if callback.failure is not None:
        raise callback.failure
