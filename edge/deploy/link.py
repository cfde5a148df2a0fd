"""Deadlines for one SSH connection: a link that goes silent ends the connection.

Why: paramiko waits without limit in several places (opening a channel waits an hour, a
write into a full socket buffer retries for ever), and TCP says nothing when a Wi-Fi
link stops forwarding without a reset. A deploy over such a link must end, with one line
and exit 7, in a time the user was told.

How: a watch thread per connection sends an SSH keepalive that asks for a reply (as
OpenSSH's ServerAliveInterval does) every ``timeout / 2`` seconds. No reply within
``timeout`` means the link is dead: the watch closes the transport, which wakes every
paramiko call blocked on it (they fail with EOFError, SSHException or OSError). The same
watch enforces the deadline of the step running (a command, a transfer), so each step
is bounded even over a link that still answers keepalives.

Host side only (paramiko, via Fabric).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

KEEPALIVE_REQUEST = "keepalive@openssh.com"  # sshd answers it (failure), as for ssh -o ServerAlive*
# A link that answers no keepalive for this long is dead (Wi-Fi on a ward: seconds of
# silence happen, half a minute does not). Also the limit of each phase of connecting.
LINK_TIMEOUT_S = 30.0
# A dead link ends a deploy within this many link timeouts: up to 1.5 to notice it, up to
# 4 to connect again for the clean-up (TCP, banner, key exchange, login) and 1.5 to notice
# that this link is dead too; the rest is slack. Stated in `heartsound deploy --help`.
DEAD_LINK_BOUND_FACTOR = 8


class LinkWatch:
    """Closes `transport` when the link is silent for `timeout` s or a step overruns."""

    def __init__(self, transport, timeout: float) -> None:
        self.transport, self.timeout = transport, timeout
        self.reason: str | None = None  # why the watch closed the link; None while open
        self._deadline: float | None = None
        self._deadline_text = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="heartsound-link-watch",
                                        daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def step(self, seconds: float) -> Iterator[None]:
        """Give the step inside `seconds` s; past that, the link is closed under it."""
        self._deadline = time.monotonic() + seconds
        self._deadline_text = f"no answer in {seconds:.0f} s"
        try:
            yield
        finally:
            self._deadline = None

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        interval = max(self.timeout / 2, 0.05)
        while not self._stop.wait(interval):
            if not self.transport.is_active():
                return
            if not self._answers_keepalive():
                self._close(f"the link went silent (no answer for {self.timeout:.0f} s)")
                return
            if self._deadline is not None and time.monotonic() > self._deadline:
                self._close(self._deadline_text)
                return

    def _answers_keepalive(self) -> bool:
        """True when the device answered a keepalive request within `timeout`."""
        answered = threading.Event()

        def ask() -> None:
            with contextlib.suppress(Exception):  # a dead link fails here: the answer is no
                self.transport.global_request(KEEPALIVE_REQUEST, wait=True)
                if self.transport.is_active():
                    answered.set()

        asker = threading.Thread(target=ask, name="heartsound-keepalive", daemon=True)
        asker.start()
        return answered.wait(self.timeout)

    def _close(self, reason: str) -> None:
        self.reason = reason
        with contextlib.suppress(Exception):
            self.transport.close()
