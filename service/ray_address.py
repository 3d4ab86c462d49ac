"""Ray cluster addresses as `--address` and RAY_ADDRESS give them; imports nothing heavy, so
`bnsweep launch` can refuse a malformed one before it opens the store or imports Ray."""

from __future__ import annotations

from bnsweep.workers.errors import SpecError


def host_port(target: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [ADDR]:PORT) of a GCS address; anything else is a SpecError."""
    host, sep, port = target.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        raise SpecError(
            f"--address {target!r}: expected HOST:PORT of the Ray head (e.g. 10.0.0.5:6379), "
            "'auto', or nothing for a local Ray"
        )
    return host, int(port)
