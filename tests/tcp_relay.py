"""A faulty network link between an SSH client and a real sshd: a threaded TCP relay.

Why: the deploy must survive links that die the ways Wi-Fi links die, and sshd cannot be
told to misbehave. The relay sits on its own loopback port and forwards every connection
to the server, byte for byte, until its `Fault` fires on that connection:

- ``stall``: stop forwarding in both directions and keep both sockets open (no FIN, no
  RST): the peer sees silence, as behind a dead access point;
- ``cut``: reset both sides (SO_LINGER 0), as a link that drops;
- ``flip``: invert one bit of the byte at the offset, then go on forwarding.

`after` counts the bytes of one connection in the fault's direction (``up``: client to
server, ``down``: server to client). With ``dead_after=True`` every connection accepted
after the fault fired is accepted and never forwarded (the link stays dead); otherwise
new connections pass cleanly (the link came back). `delay_down` holds every chunk from
the server that long (latency, settable at any time); `cut_all` resets every connection
at once. `counts` holds each connection's bytes forwarded, ``{"up": n, "down": n}``. The
serial-line counterpart is
`firmware_bridge.line_relay.LineRelay`.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass

CHUNK = 16384


@dataclass(frozen=True)
class Fault:
    kind: str  # "stall", "cut" or "flip"
    after: int  # bytes of one connection in `direction` before it fires
    direction: str = "up"
    dead_after: bool = False  # connections after the fault get nothing through


class TcpRelay:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`upstream`, applying `fault` (settable)."""

    def __init__(self, upstream: int, fault: Fault | None = None) -> None:
        self.upstream, self.fault = upstream, fault
        self.fired = threading.Event()
        self.delay_down = 0.0
        self.counts: list[dict[str, int]] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> TcpRelay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def cut_all(self, *, dead_after: bool = False) -> None:
        """Reset every open connection now (e.g. right after the device switched)."""
        self.fault = Fault("cut", 0, dead_after=dead_after) if dead_after else None
        self.fired.set()
        with self._lock:
            for s in self._sockets:
                _reset(s)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(client)
            fault = self.fault
            if fault and fault.dead_after and self.fired.is_set():
                continue  # accepted, never answered
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self._lock:
                self._sockets.append(server)
            stalled = threading.Event()
            counts = {"up": 0, "down": 0}
            self.counts.append(counts)
            for src, dst, direction in ((client, server, "up"), (server, client, "down")):
                threading.Thread(target=self._pump, daemon=True,
                                 args=(src, dst, direction, fault, stalled, counts)).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str,
              fault: Fault | None, stalled: threading.Event, counts: dict[str, int]) -> None:
        seen = 0
        mine = fault if fault and fault.direction == direction else None
        try:
            while not stalled.is_set():
                data = src.recv(CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                if mine and seen <= mine.after < seen + len(data):
                    cut = mine.after - seen
                    if mine.kind == "flip":
                        data = data[:cut] + bytes([data[cut] ^ 0x10]) + data[cut + 1:]
                        self.fired.set()
                    else:
                        dst.sendall(data[:cut])
                        self.fired.set()
                        if mine.kind == "stall":
                            stalled.set()  # both directions stop; sockets stay open
                        else:
                            _reset(src)
                            _reset(dst)
                        return
                seen += len(data)
                if direction == "down" and self.delay_down:
                    time.sleep(self.delay_down)
                if stalled.is_set():
                    return
                dst.sendall(data)
                counts[direction] = seen
        except OSError:
            _reset(src)
            _reset(dst)


def _reset(s: socket.socket) -> None:
    """Close with an RST (linger 0), as a link that drops, not a polite FIN."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in recv on it
    with contextlib.suppress(OSError):
        s.close()
