"""The checks before a launch: shared storage, a working compile, resources that fit, autoscaling.

What cannot run is refused before anything is written. The storage marker a launch places in a
local checkpoint folder is checked again by every trial on its node (`check_storage_visible`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from bnsweep.sweep import SweepSpec, named_plugins
from bnsweep.workers import plugins
from bnsweep.workers.errors import BnsweepError, SpecError
from bnsweep.workers.spec import TrialSpec

log = logging.getLogger(__name__)

#: Written by each launch into <storage>/<sweep>/ with a fresh token; every trial reads it back
#: before training, so a node that does not share the checkpoint folder is found at once.
STORAGE_MARKER = ".bnsweep-storage"
#: Set on a cluster whose checkpoint folder is shared by every node (a compose volume, a mount
#: that /proc/mounts does not report as a network filesystem); the spec's field wins.
SHARED_STORAGE_ENV = "BNSWEEP_SHARED_STORAGE"
#: Filesystems on which a folder is visible from every node, so checkpoints can live there.
SHARED_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "lustre",
        "gpfs",
        "beegfs",
        "cephfs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "wekafs",
        "panfs",
        "fuse.sshfs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.juicefs",
        "9p",
        "virtiofs",
    }
)


# -- storage --------------------------------------------------------------------------------
def storage_root(sweep: SweepSpec, base_dir: Path | None = None) -> str:
    """An absolute path or a URI (s3://, gs://, …); a relative path is taken from `base_dir`."""
    if "://" in sweep.storage:
        return sweep.storage
    path = Path(sweep.storage).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return str(path.resolve())


@dataclass(frozen=True)
class StorageMarker:
    """A launch's token in its local checkpoint folder (`STORAGE_MARKER`)."""

    path: str
    token: str


def local_sweep_folder(root: str, sweep_name: str) -> Path | None:
    """<root>/<sweep>/, created; None for object storage (no local folder, no locks, no marker:
    every node reaches it by URI)."""
    if "://" in root:
        return None
    folder = Path(root) / sweep_name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def place_storage_marker(root: str, sweep_name: str) -> StorageMarker | None:
    """Write a fresh token to <root>/<sweep>/STORAGE_MARKER; None for object storage."""
    folder = local_sweep_folder(root, sweep_name)
    if folder is None:
        return None
    marker = StorageMarker(str(folder / STORAGE_MARKER), uuid.uuid4().hex)
    tmp = folder / f"{STORAGE_MARKER}.{marker.token}"
    tmp.write_text(marker.token + "\n", encoding="utf-8")
    tmp.replace(marker.path)  # atomic: a trial never reads half a token
    return marker


def check_storage_visible(marker: StorageMarker | None) -> None:
    """On the trial's node: the launch's marker must be there, with this launch's token. The
    check at launch counts the nodes alive then; this one also covers nodes that join later
    (an autoscaler's) and a folder declared shared that is not."""
    if marker is None:
        return
    try:
        found = Path(marker.path).read_text(encoding="utf-8").strip()
    except OSError:
        found = None
    if found != marker.token:
        what = "does not see" if found is None else "sees another launch's"
        raise SpecError(
            f"storage: node {socket.gethostname()} {what} {marker.path}, which this launch just "
            f"wrote: {Path(marker.path).parent.parent} is not shared with it. Checkpoints need "
            "storage visible from every node: a shared filesystem (NFS, Lustre, …) mounted at "
            "the same path, or object storage (s3://…, gs://…)."
        )


def check_storage_is_shared(sweep: SweepSpec, root: str, nodes: int) -> None:
    """Refuse a node-local checkpoint folder on a multi-node cluster: the first checkpoint written
    on another node would be unreachable for a retry elsewhere."""
    declared = sweep.shared_storage
    if declared is None and os.environ.get(SHARED_STORAGE_ENV):
        declared = os.environ[SHARED_STORAGE_ENV].strip().lower() in ("1", "true", "yes")
    if nodes <= 1 or "://" in root or declared:
        return
    if declared is None and _filesystem_type(root) in SHARED_FILESYSTEMS:
        return
    raise SpecError(
        f"storage: {root} is a local path but the Ray cluster has {nodes} nodes; checkpoints need "
        "shared storage visible from every node: a shared filesystem (NFS, Lustre, …) or object "
        "storage (s3://…, gs://…). If this folder is shared, set `shared_storage: true` "
        f"in the spec or {SHARED_STORAGE_ENV}=1."
    )


def _filesystem_type(path: str) -> str | None:
    """The type of the mount that holds `path`, from /proc/mounts (Linux)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    # Resolving walks the path, which makes an automounter (autofs) mount it before the mount
    # table is read, and a listing covers a direct map's mount point itself.
    probe = probe.resolve()
    kind = _mount_type(probe, _read_mounts())
    if kind == "autofs":
        with contextlib.suppress(OSError):
            next(os.scandir(probe), None)
        kind = _mount_type(probe, _read_mounts())
    return kind


def _read_mounts() -> str:
    try:
        return Path("/proc/mounts").read_text()
    except OSError:
        return ""


def _mount_type(path: Path, mounts: str) -> str | None:
    """The type of the innermost mount holding `path` in a /proc/mounts text. Mounts stacked on
    one mount point are listed in mount order and the last one is what the path shows: an autofs
    direct map lists `autofs` first and the `nfs4` it mounted after it, at the same point."""
    best, kind = "", None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        # The kernel writes a space, tab, newline or backslash in a mount point as an octal escape.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])
        if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


# -- compile --------------------------------------------------------------------------------
#: How long the compile self-test may take on a worker (a first compile on a CPU: ~1 minute).
COMPILE_CHECK_SECONDS = 600.0


def _compile_probe(device: str, mode: str) -> tuple[str, str | None]:
    """On a worker: (its host, what stops torch.compile there or None)."""
    from bnsweep.workers.compile import compile_problem

    return socket.gethostname(), compile_problem(device, mode)


def check_compile_works(sweep: SweepSpec, cells: Sequence[TrialSpec]) -> None:
    """Before a launch with `compile: true`: compile and run a tiny function on a worker with a
    trial's resources, once per compile mode, and refuse in one line if it cannot. Otherwise
    every compiled trial would fail the same way (no C compiler in a CUDA runtime image, no
    Triton) and burn its retries."""
    modes = sorted({c.compile_mode for c in cells if c.compile})
    if not modes:
        return
    device = "cuda" if sweep.resources.gpus > 0 else "cpu"
    probe = ray.remote(_compile_probe).options(
        num_cpus=sweep.resources.cpus, num_gpus=sweep.resources.gpus, max_retries=0
    )
    for mode in modes:
        try:
            host, problem = ray.get(probe.remote(device, mode), timeout=COMPILE_CHECK_SECONDS)
        except ray.exceptions.GetTimeoutError:
            raise BnsweepError(
                f"compile: the check that torch.compile works on a worker took over "
                f"{COMPILE_CHECK_SECONDS:g} s; launch again, or set compile: false"
            ) from None
        if problem is not None:
            raise SpecError(f"compile: true, but compiling fails on worker {host}: {problem}")


# -- plugins ----------------------------------------------------------------------------------
#: The longest the per-node plugin check may take: it imports each plugin (and torch) once.
PLUGIN_CHECK_SECONDS = 300.0


def _plugin_probe(named: Sequence[tuple[str, str]]) -> tuple[str, dict[str, str], str | None]:
    """On one node: (its host, {distribution: version} of the plugins found there, the first
    problem or None). Each plugin is imported, as a trial there would import it."""
    host = socket.gethostname()
    plugins.refresh()  # this worker process may have listed entry points before an install
    versions: dict[str, str] = {}
    for kind, name in named:
        try:
            ref = plugins.reference(kind, name)
            versions[ref.distribution] = ref.version
            plugins.load(kind, name)
        except BnsweepError as err:
            return host, versions, str(err)
    return host, versions, None


def check_plugins_on_nodes(cells: Sequence[TrialSpec], nodes: Sequence[Mapping[str, Any]]) -> None:
    """Before a launch: one Ray task on every live node imports each plugin the cells name and
    reports its distribution's version; a node lacking one, failing to import it, or holding
    another version than the driver is refused in one line (exit 2), before anything is
    written. Otherwise each of its trials would fail, or train other code under the same key."""
    named = named_plugins(cells)
    if not named:
        return
    expected = {}
    for cell in cells:
        expected.update(plugins.distribution_versions(cell.result_fields()))
    alive = [n for n in nodes if n.get("Alive")]
    probes = {
        node["NodeID"]: ray.remote(_plugin_probe)
        .options(
            num_cpus=0,
            max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        )
        .remote(named)
        for node in alive
    }
    try:
        answers = ray.get(list(probes.values()), timeout=PLUGIN_CHECK_SECONDS)
    except ray.exceptions.GetTimeoutError:
        raise BnsweepError(
            f"plugins: the check that every node can import the spec's plugins took over "
            f"{PLUGIN_CHECK_SECONDS:g} s; launch again"
        ) from None
    fix = '(docs/cluster.md, "Plugins on the nodes")'
    for node, (host, versions, problem) in zip(alive, answers, strict=True):
        address, ident = node.get("NodeManagerAddress", "?"), str(node["NodeID"])[:12]
        where = f"node {host} ({address}, id {ident})"
        if problem is not None:
            pins = " ".join(f"{d}=={v}" for d, v in sorted(expected.items()))
            raise SpecError(f"plugins: on {where}: {problem}; install {pins} there {fix}")
        for dist, version in sorted(expected.items()):
            if versions.get(dist) != version:
                raise SpecError(
                    f"plugins: {where} has {dist} {versions.get(dist)}, the driver {version}; "
                    f"install {dist}=={version} on every node {fix}"
                )


# -- resources ------------------------------------------------------------------------------
def check_resources_fit(
    resources: Any, nodes: Sequence[Mapping[str, Any]], *, autoscaler: bool
) -> None:
    """Refuse a launch no node can run a single trial of: Ray would keep it pending forever.

    With an autoscaler a bigger node may still come, so that is a warning, once."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    need = {"CPU": float(resources.cpus), "GPU": float(resources.gpus)}
    if any(all(node.get(k, 0.0) >= v for k, v in need.items() if v > 0) for node in alive):
        return
    largest: Mapping[str, float] = max(
        alive, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={}
    )
    message = (
        f"resources: each trial asks for {need['CPU']:g} CPUs and {need['GPU']:g} GPUs, but no "
        f"node of this Ray cluster has that much ({len(alive)} node(s); the largest has "
        f"{largest.get('CPU', 0.0):g} CPUs and {largest.get('GPU', 0.0):g} GPUs). Lower "
        "`resources` in the spec (a GPU fraction packs several trials on one GPU), or launch "
        "on a cluster with such a node"
    )
    if autoscaler:
        log.warning("%s; waiting for the autoscaler to add one", message)
        return
    raise SpecError(message)


#: "1" declares that an autoscaler can add nodes the cluster does not have yet, "0" that none
#: can; unset, the autoscaler's own cluster config decides (`autoscaler_present`).
AUTOSCALER_ENV = "BNSWEEP_AUTOSCALER"


def autoscaler_present() -> bool:
    """Whether the cluster can grow: `AUTOSCALER_ENV`, else whether an autoscaler (KubeRay, the
    cluster launcher, autoscaler v2) has published a cluster config with a node group that may
    start nodes. A local Ray or a plain `ray start` cluster has none.

    Ray exposes that config only through `ray._private.state`; tests/service/test_driver.py
    checks the call still exists, so a Ray upgrade that moves it fails there, loudly."""
    declared = os.environ.get(AUTOSCALER_ENV, "").strip().lower()
    if declared:
        return declared in ("1", "true", "yes")
    from ray._private.state import state

    config = state.get_cluster_config()
    return config is not None and any(g.max_count != 0 for g in config.node_group_configs)
