"""Scripted faults on a serial line, shared by the fault tests of the emulator
(tests/test_serial_client.py) and of the real firmware (tests/test_firmware_faults.py).

Hypothesis picks which frame in which direction gets which fault; :class:`Script` applies
them as a :data:`firmware_bridge.emulator.Mangle` (one call per frame or read), so the same
fault lists drive :class:`~firmware_bridge.emulator.LineFaults` inside the emulator and on
the :class:`~firmware_bridge.line_relay.LineRelay` in front of the firmware.
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

from firmware_bridge.emulator import LineFaults


def mangle(data: bytes, kind: str, a: int, b: int) -> bytes:
    """One fault on one frame/read; a and b pick where and which bit."""
    d = bytearray(data)
    if not d:
        return data
    pos = a % len(d)
    if kind == "flip":
        d[pos] ^= 1 << (b % 8)
    elif kind == "drop":
        del d[pos]
    elif kind == "dup":
        d.insert(pos, d[pos])
    elif kind == "cut":
        del d[max(1, len(d) // 2):]
    elif kind == "lose":
        return b""
    elif kind == "noise":
        d[0:0] = random.Random(a).randbytes(1 + b % 40)
    return bytes(d)


class Script:
    """Apply the scripted faults to the n-th frame (host side) or read (device side)."""

    def __init__(self, faults: list[tuple[int, str, int, int]]) -> None:
        self.faults = {}
        for index, kind, a, b in faults:
            self.faults.setdefault(index, []).append((kind, a, b))
        self.count = 0

    def __call__(self, data: bytes) -> bytes:
        for kind, a, b in self.faults.get(self.count, []):
            data = mangle(data, kind, a, b)
        self.count += 1
        return data


def scripted(faults: list[tuple[str, int, str, int, int]]) -> LineFaults:
    """LineFaults from (direction, frame index, kind, a, b) tuples (:data:`FAULT`)."""
    return LineFaults(to_host=Script([f[1:] for f in faults if f[0] == "to_host"]),
                      to_device=Script([f[1:] for f in faults if f[0] == "to_device"]))


KINDS = st.sampled_from(["flip", "drop", "dup", "cut", "lose", "noise"])
FAULT = st.tuples(st.sampled_from(["to_host", "to_device"]), st.integers(0, 24), KINDS,
                  st.integers(0, 5000), st.integers(0, 255))
