"""A TCP proxy on 127.0.0.1 that a test can cut and restore: the database 'goes away' and comes
back, as a server restart or a network outage looks from the client, without touching the real
server."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

import sqlalchemy as sa

#: linux/tcp.h: a socket in repair mode closes without telling its peer.
_TCP_REPAIR = 19


class TcpProxy:
    """127.0.0.1:<port> → `target`. `stop()` cuts every connection and refuses new ones until
    `start()`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._vanished = False

    @classmethod
    def to_database(cls, url: str) -> TcpProxy:
        """A proxy to the server of a database URL (not started)."""
        parsed = sa.make_url(url)
        return cls((parsed.host or "127.0.0.1", parsed.port or 5432))

    def url(self, database_url: str, **replace: str) -> str:
        """`database_url` through this proxy, password shown (tests need the real string)."""
        through = sa.make_url(database_url).set(host="127.0.0.1", port=self.port, **replace)
        return through.render_as_string(hide_password=False)

    def start(self) -> None:
        self._vanished = False
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(32)
        # A blocked accept() would keep a closed listener alive; poll so stop() really stops.
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            cut, self._open = self._open, set()
        for sock in cut:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def vanish(self) -> None:
        """As `stop()`, but the server hears nothing: its connections are dropped without a FIN
        or RST (TCP_REPAIR, which needs CAP_NET_ADMIN), as when the client's machine lost
        them during a network outage. The server learns only when it next sends something
        (a keepalive probe) and gets a reset. Skips the test where the kernel refuses."""
        import pytest

        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            cut, self._open = self._open, set()
        self._vanished = True
        time.sleep(0.3)  # the pumps see it within their 0.1 s poll and let go of the sockets
        upstream = [sock for sock in cut if _peer_port(sock) == self.target[1]]
        for sock in upstream:  # repair mode first: nothing may reach the server any more
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR, 1)
            except OSError as err:
                pytest.skip(f"TCP_REPAIR is not allowed here ({err.strerror})")
        for sock in cut:
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # stopped
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        # Polls rather than blocks: a thread blocked in recv() keeps its socket alive in the
        # kernel after close(), and `vanish()` needs the server's end really gone.
        try:
            poller = select.poll()  # not select(): a test process may hold fds past 1024
            poller.register(src, select.POLLIN)
            while not self._vanished:
                if not poller.poll(100):
                    continue
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except (OSError, ValueError):  # ValueError: a socket closed meanwhile
            pass
        if self._vanished:
            return
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _peer_port(sock: socket.socket) -> int | None:
    try:
        return int(sock.getpeername()[1])
    except OSError:
        return None
