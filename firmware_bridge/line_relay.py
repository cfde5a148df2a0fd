"""A faulty cable between the host and a real serial device: a pseudo-terminal the host
opens, relayed to the device's port while :class:`~firmware_bridge.emulator.LineFaults`
mangle the frames on the way.

Why: the emulator injects faults inside its own device; the real firmware (the host build
on its pty, QEMU's ``-serial pty``, a board on /dev/ttyACM0) cannot be changed to do
that, so the faults go on the wire between the two ends, where a bad cable puts them.
Each direction is cut into frames at the 0x00 delimiters before it is mangled (one call
per frame, as the emulator's ``to_host``), so a scripted fault hits the same frame
whatever sizes the pty's reads have. Like a UART, the relay drops bytes it cannot hand
on within :data:`WRITE_GIVE_UP_S` (a frozen device never blocks it).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import tty

from firmware_bridge import protocol as p
from firmware_bridge.emulator import LineFaults, Mangle

POLL_S = 0.05
WRITE_GIVE_UP_S = 0.5
READ_BYTES = 65536


class FrameSplitter:
    """Bytes in, complete wire frames (``0x00 body 0x00``) out; the rest is kept."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        *done, self._rest = (self._rest + data).split(p.DELIMITER)
        return [p.DELIMITER + body + p.DELIMITER for body in done if body]


class LineRelay:
    """Relay between a new pty (``port``, for the host) and ``device_port``; a context
    manager. Assign :attr:`faults` at any time to change what the line does."""

    def __init__(self, device_port: str, faults: LineFaults | None = None) -> None:
        self.device_port = device_port
        self.faults = faults or LineFaults()
        self.port = ""
        self._fds: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LineRelay:
        device = os.open(self.device_port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(device)
        master, slave = os.openpty()  # the slave stays open: a master alone reads EIO
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._fds = [device, master, slave]
        self.port = os.ttyname(slave)
        self._thread = threading.Thread(target=self._relay, args=(master, device),
                                        name="hs-line-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    def __enter__(self) -> LineRelay:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _relay(self, host: int, device: int) -> None:
        splitters = {host: FrameSplitter(), device: FrameSplitter()}
        while not self._stop.is_set():
            ready, _, _ = select.select([host, device], [], [], POLL_S)
            for src in ready:
                try:
                    data = os.read(src, READ_BYTES)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return  # a port vanished: the cable is unplugged
                faults = self.faults  # one snapshot per read: a swap never splits a frame
                mangle = faults.to_device if src == host else faults.to_host
                dest = device if src == host else host
                for frame in splitters[src].feed(data):
                    self._write(dest, _apply(mangle, frame))

    def _write(self, fd: int, data: bytes) -> None:
        deadline = time.monotonic() + WRITE_GIVE_UP_S
        view = memoryview(data)
        while view and time.monotonic() < deadline and not self._stop.is_set():
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                select.select([], [fd], [], POLL_S)
            except OSError:
                return


def _apply(mangle: Mangle | None, frame: bytes) -> bytes:
    return mangle(frame) if mangle else frame
