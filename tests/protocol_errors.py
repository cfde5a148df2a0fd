"""The protocol's error answers, checked the same way on every device that speaks it
(the Python emulator and the C firmware): one list of cases, so both are held to the
same document (docs/serial_protocol.md, section on errors)."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_bridge import protocol as p
from firmware_bridge.client import DeviceClient, DeviceReportedError

RATE = 2000


def _reported(call) -> DeviceReportedError:
    with pytest.raises(DeviceReportedError) as exc:
        call()
    return exc.value


def check_protocol_errors(c: DeviceClient) -> None:
    """Every error code a well-framed but wrong request earns, then a clean run."""
    max_chunk = c.identify().max_chunk_samples
    c.abort()
    cases = [
        (lambda: c.request(p.MsgType.START, p.Start(4000, 0).pack()), p.ErrorCode.WRONG_RATE),
        (lambda: c.request(p.MsgType.AUDIO, p.Audio(0, np.zeros(8, np.int16)).pack()),
         p.ErrorCode.NO_SESSION),
        (lambda: c.request(0x42), p.ErrorCode.UNKNOWN_TYPE),
        (lambda: c.request(p.MsgType.START, b"\x01"), p.ErrorCode.BAD_PAYLOAD),
    ]
    for call, code in cases:
        assert _reported(call).code == code
    c.request(p.MsgType.START, p.Start(RATE, 0).pack())
    busy = _reported(lambda: c.request(p.MsgType.START, p.Start(RATE, 0).pack()))
    assert busy.code == p.ErrorCode.BUSY and "--force" in str(busy)
    gap = _reported(lambda: c.request(  # a gap: 8 samples never arrived
        p.MsgType.AUDIO, p.Audio(8, np.zeros(8, np.int16)).pack()))
    assert gap.code == p.ErrorCode.BAD_SEQUENCE
    big = _reported(lambda: c.request(  # more samples than the device said it takes
        p.MsgType.AUDIO, p.Audio(0, np.zeros(max_chunk + 1, np.int16)).pack()))
    assert big.code == p.ErrorCode.BAD_PAYLOAD
    c.abort()
    run = c.run(np.zeros(100, np.int16))  # usable again; too short for a window
    assert run.done.decision == p.Decision.NO_WINDOWS and run.done.windows == 0
