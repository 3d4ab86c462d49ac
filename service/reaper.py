"""The reaper of a launch's local Ray: when the driver dies, so does every process of its Ray.

Ray 2.60 ties the GCS server and the raylet to the driver that started them (the kernel kills
them with it, PR_SET_PDEATHSIG), but not what the raylet starts: its dashboard and runtime-env
agents notice the raylet's death, try to report it to the GCS, which is gone too, and stay
for a minute or more; after a SIGKILL of the driver nothing runs Ray's own shutdown at all.

So a driver that starts a local Ray also starts this small process (`start`), which watches a
pipe from the driver and, meanwhile, notes every descendant of the Ray processes the driver
started. When the pipe ends (the driver exited, however it did) it waits for Ray's own shutdown
to finish, then ends whatever of those noted processes is still there. Only processes
descended from this driver's Ray are touched, recognised by pid and start time, never another
Ray on the machine. Linux only (/proc); elsewhere nothing is started.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence

#: How often the reaper notes the Ray processes' descendants, in seconds.
POLL_SECONDS = 0.5
#: After the driver is gone: time left to Ray's own shutdown, then to SIGTERM, before SIGKILL.
GRACE_SECONDS = 1.0

#: The reaper of the local Ray this process started (its pipe is the driver's life).
_reaper: subprocess.Popen[bytes] | None = None


def start(ray_pids: Sequence[int]) -> None:
    """Start the reaper of the Ray processes `ray_pids` (those `ray.init` started here)."""
    global _reaper
    if not sys.platform.startswith("linux") or not ray_pids:
        return
    # Its own session: Ctrl-C at the terminal or a hang-up reaches the driver, not the reaper,
    # which has to outlive the driver to do its work.
    _reaper = subprocess.Popen(
        [sys.executable, "-m", "bnsweep.reaper", *map(str, ray_pids)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )


def processes() -> dict[int, tuple[int, int]]:
    """Every process on this machine: pid → (parent pid, start time in clock ticks)."""
    table: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # ended meanwhile
        # After the command name in parentheses (which may hold spaces): state, ppid, ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        table[int(name)] = (int(fields[1]), int(fields[19]))
    return table


def descendants(table: Mapping[int, tuple[int, int]], roots: Iterable[int]) -> set[int]:
    """`roots` that are alive and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def _note(
    table: Mapping[int, tuple[int, int]], roots: Sequence[int], noted: dict[int, int]
) -> None:
    """Add to `noted` the live descendants of `roots` and of the processes noted before (a
    noted pid now of another process, reused, is not followed)."""
    ours = [
        pid
        for pid in [*roots, *noted]
        if pid in table and noted.get(pid, table[pid][1]) == table[pid][1]
    ]
    noted.update({pid: table[pid][1] for pid in descendants(table, ours)})


def _alive(noted: Mapping[int, int]) -> dict[int, int]:
    table = processes()
    return {pid: start for pid, start in noted.items() if table.get(pid, (0, -1))[1] == start}


def main(argv: Sequence[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    roots = [int(pid) for pid in argv]
    noted: dict[int, int] = {}  # pid → start time: a pid reused later is not ours
    while True:
        _note(processes(), roots, noted)
        ready, _, _ = select.select([sys.stdin], [], [], POLL_SECONDS)
        if ready and not os.read(sys.stdin.fileno(), 1):
            break  # the pipe ended: the driver is gone
    _note(processes(), roots, noted)
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            for pid in _alive(noted):
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + GRACE_SECONDS
        while _alive(noted) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(noted):
            break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
