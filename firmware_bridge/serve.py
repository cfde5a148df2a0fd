"""Run the firmware app as a serial device: the host build on its own pseudo-terminal, or
the Cortex-M4 build on QEMU's mps2-an386 with UART0 on a pseudo-terminal.

The host client (:class:`firmware_bridge.client.DeviceClient`, ``heartsound firmware
screen --port``) then talks to the real firmware exactly as to a board on /dev/ttyACM0.
The app's console (``HS_*`` lines: stdout on the host, semihosting on QEMU) is collected
in the background for tests and benchmarks. Every wait has a deadline and :meth:`stop`
kills the process it started (by its pid), so a hung firmware cannot hang a test.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from firmware_bridge.build import INSTRUCTIONS_PER_SYSTICK, FirmwareBuildError, qemu_command

#: How QEMU (``-serial pty``) and the host build announce their serial port.
QEMU_PTY = re.compile(r"char device redirected to (/dev/pts/\d+)")
HOST_PTY = re.compile(r"^HS_SERIAL_PORT (\S+)$", re.MULTILINE)
READY = re.compile(r"^HS_READY$", re.MULTILINE)
BOOT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


class RunningFirmware:
    """A firmware process serving the protocol on ``port``; a context manager."""

    def __init__(self, cmd: Sequence[str], port_pattern: re.Pattern[str], what: str) -> None:
        self.cmd, self.what = list(cmd), what
        self._pattern = port_pattern
        self._text: list[str] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.proc: subprocess.Popen | None = None
        self._pump_thread: threading.Thread | None = None
        self.port = ""

    # ---- life cycle ------------------------------------------------------------------------
    def start(self, timeout: float = BOOT_TIMEOUT_S) -> RunningFirmware:
        try:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except FileNotFoundError as exc:
            raise FirmwareBuildError(f"{self.what}: {self.cmd[0]} not found: install it") from exc
        self._pump_thread = threading.Thread(target=self._pump, name="hs-firmware-console",
                                             daemon=True)
        self._pump_thread.start()
        try:
            self.port = self.wait_for(self._pattern, timeout).group(1)
            self.wait_for(READY, timeout)
        except FirmwareBuildError:
            self.stop()
            raise
        return self

    def stop(self) -> int | None:
        """Kill the process (it serves forever) and return its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        if self._pump_thread is not None:  # it ends at EOF; then the pipe can be closed
            self._pump_thread.join(timeout=STOP_TIMEOUT_S)
        if self.proc.stdout is not None and not (self._pump_thread
                                                 and self._pump_thread.is_alive()):
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> RunningFirmware:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- console ---------------------------------------------------------------------------
    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            with self._changed:
                self._text.append(raw.decode("utf-8", errors="replace"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def console(self) -> str:
        with self._lock:
            return "".join(self._text)

    def wait_for(self, pattern: re.Pattern[str], timeout: float,
                 start: int = 0) -> re.Match[str]:
        """First match of ``pattern`` in the console from offset ``start``, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = pattern.search("".join(self._text), start)
                if match:
                    return match
                exited = self.proc is not None and self.proc.poll() is not None
                remaining = deadline - time.monotonic()
                if remaining <= 0 or exited:
                    tail = "".join(self._text)[-1500:]
                    state = "exited" if exited else f"gave no {pattern.pattern!r} in {timeout} s"
                    raise FirmwareBuildError(f"{self.what} {state}:\n{tail}")
                self._changed.wait(min(remaining, 0.2))


    def session_console(self, start: int, timeout: float = 10.0) -> str:
        """Console text from offset ``start`` up to the end of the next session's DONE
        figures (the app prints them before it answers END)."""
        self.wait_for(_STACK, timeout, start)
        return self.console[start:]


def serve_host(executable: Path) -> RunningFirmware:
    """The host build, serving on a pseudo-terminal of its own (not started yet)."""
    return RunningFirmware([str(executable)], HOST_PTY, f"host firmware {executable}")


def serve_qemu(elf: Path) -> RunningFirmware:
    """The Cortex-M4 build on QEMU, UART0 on a pseudo-terminal (not started yet)."""
    return RunningFirmware(qemu_command(elf, serial="pty"), QEMU_PTY, f"QEMU with {elf}")


# ---- figures the app prints while serving ---------------------------------------------------
_FRONTEND = re.compile(r"^HS_FRONTEND (\d+) (\d+)$", re.MULTILINE)
_INVOKES = re.compile(r"^HS_INVOKES (\d+) (\d+)$", re.MULTILINE)
_WINDOW = re.compile(r"^HS_WINDOW (\d+) (\d+)$", re.MULTILINE)
_STACK = re.compile(r"^HS_STACK_USED (\d+)$", re.MULTILINE)


def session_figures(console: str) -> dict[str, int | list[int]]:
    """Totals since boot from the last DONE's lines: frames and instructions of the front
    end, windows and instructions of the model (SysTick ticks x 40 under -icount shift=0),
    per-window scoring instructions (HS_WINDOW: Invoke + output copy), peak stack."""
    frames, fe_ticks = (int(v) for v in _FRONTEND.findall(console)[-1])
    windows, inv_ticks = (int(v) for v in _INVOKES.findall(console)[-1])
    return {"frames": frames, "frontend_instructions": fe_ticks * INSTRUCTIONS_PER_SYSTICK,
            "windows": windows, "invoke_instructions": inv_ticks * INSTRUCTIONS_PER_SYSTICK,
            "window_instructions": [int(t) * INSTRUCTIONS_PER_SYSTICK
                                    for _, t in _WINDOW.findall(console)],
            "stack_used": int(_STACK.findall(console)[-1])}
