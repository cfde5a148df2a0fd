"""The real C firmware (host build, on its pty) under faults on the wire.

The emulator's fault tests (tests/test_serial_client.py) prove the client against the
Python device; these prove the pair "host client + C firmware" (hs_device.c, hs_proto.c):
a :class:`~firmware_bridge.line_relay.LineRelay` sits between the client and the
firmware's pty and mangles frames in either direction with the same scripted faults
(flipped bits, dropped or duplicated bytes, a frame cut in half, a lost frame, noise),
or the firmware process is frozen (SIGSTOP) as a device that stops answering. Each run
screens 4.5 s of a real recording with feature windows and must either give results
bit-identical to a fault-free run (scores, features, DONE, decision) or raise a one-line
DeviceError naming the port; it must end within a bound set by the timeout (a watchdog
thread catches a hang); and afterwards the same firmware process must still be alive and
answer IDENTIFY at the first attempt.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge.audio import read_wav
from edge.errors import DeviceError
from edge.model_meta import read_model_meta
from edge.screening import PACKAGED_MODEL, Screener
from firmware_bridge import protocol as p
from firmware_bridge.client import DeviceClient, NoAnswerError, screen_pcm
from firmware_bridge.emulator import LineFaults
from firmware_bridge.line_relay import LineRelay
from tests.line_faults import FAULT, scripted
from tests.test_firmware_qemu import EXAMPLE, RATE, comparable

pytestmark = pytest.mark.slow  # builds the host app (TFLite Micro itself is cached)

EXCERPT_S = 4.5  # two analysis windows: crosses a RESULT, short enough for many runs
FAULT_TIMEOUT_S = 0.3
CLEAN_RUN_S = 2.0
"""Generous wall time of a fault-free run through the relay (~0.05 s measured) on a
loaded machine."""
HANG_S = 20.0
"""A run still going after this long is hung: no bound the client promises comes near."""
RECOVERY_TIMEOUT_S = 1.0
GATE = read_model_meta(PACKAGED_MODEL).familiarity
"""The shipped model's familiarity reference: the host checks it as `heartsound screen`
does (firmware screen --model), so results compare equal."""
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass
class Reference:
    pcm: np.ndarray
    run: object
    result: object


@pytest.fixture(scope="module")
def firmware(host_fw):
    return host_fw


@pytest.fixture(scope="module")
def relay(firmware):
    with LineRelay(firmware.port) as line:
        yield line


@pytest.fixture(scope="module")
def clean(relay) -> Reference:
    """The fault-free run through the relay that every faulty run must reproduce."""
    pcm = read_wav(EXAMPLE, RATE)[: int(EXCERPT_S * RATE)]
    relay.faults = LineFaults()
    with DeviceClient(relay.port, timeout=2.0) as client:
        result, run = screen_pcm(client, pcm, "excerpt", features=True,
                                 familiarity=GATE)
    assert run is not None and run.done.windows == 2
    return Reference(pcm, run, result)


def screen_bounded(port: str, pcm: np.ndarray, retries: int):
    """(outcome, seconds): (result, run) or the DeviceError raised, from a watchdogged thread.
    Anything else the client raises fails the test."""
    box: dict = {}

    def work() -> None:
        try:
            with DeviceClient(port, timeout=FAULT_TIMEOUT_S, retries=retries) as c:
                box["outcome"] = screen_pcm(c, pcm, "excerpt", features=True,
                                            familiarity=GATE)
        except DeviceError as exc:
            box["outcome"] = exc
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread below
            box["crash"] = exc

    start = time.monotonic()
    worker = threading.Thread(target=work, name="hs-fault-run", daemon=True)
    worker.start()
    worker.join(HANG_S)
    elapsed = time.monotonic() - start
    assert not worker.is_alive(), f"the client hung for {HANG_S} s"
    if "crash" in box:
        raise box["crash"]
    return box["outcome"], elapsed


def time_bound(n_faults: int) -> float:
    # each fault costs at most one timeout (plus a NAK grace)
    return CLEAN_RUN_S + n_faults * 1.25 * FAULT_TIMEOUT_S


def assert_identical(outcome, clean: Reference) -> None:
    result, run = outcome
    np.testing.assert_array_equal(run.scores, clean.run.scores)
    np.testing.assert_array_equal(run.features, clean.run.features)
    assert run.done == clean.run.done
    assert comparable(result) == comparable(clean.result)


def assert_one_line(error: DeviceError, port: str) -> None:
    text = str(error)
    assert "\n" not in text and text.startswith(port), text


def fresh(relay, faults: LineFaults) -> None:
    """Start an example on a clean line with no session open (an earlier failing example
    may have left one), then put ``faults`` on the line."""
    relay.faults = LineFaults()
    with DeviceClient(relay.port, timeout=RECOVERY_TIMEOUT_S) as c:
        c.abort()
    relay.faults = faults


def assert_recovers(firmware, relay) -> None:
    """The same firmware process answers IDENTIFY at once on a clean line; the session a
    failed run left open is then aborted (``--force``) so the next run starts afresh."""
    relay.faults = LineFaults()
    assert firmware.proc.poll() is None, f"the firmware died:\n{firmware.console[-1500:]}"
    with DeviceClient(relay.port, timeout=RECOVERY_TIMEOUT_S, retries=0) as c:
        assert c.identify().device_id == "hs-host"
        c.abort()


# ---- a clean line ---------------------------------------------------------------------------
def test_the_relay_is_transparent(clean, relay):
    """A fault-free line changes nothing: the same answers as heartsound screen, no retries."""
    reference = Screener(PACKAGED_MODEL).screen_pcm(clean.pcm, RATE, "excerpt")
    assert comparable(clean.result) == comparable(reference)
    assert clean.run.stats.retransmissions == clean.run.stats.bad_frames == 0
    outcome, _ = screen_bounded(relay.port, clean.pcm, retries=0)
    assert_identical(outcome, clean)


# ---- faults on the wire ---------------------------------------------------------------------
@settings(SETTINGS, max_examples=20)
@given(st.lists(FAULT, max_size=3))
def test_up_to_retries_faults_still_give_the_identical_result(firmware, relay, clean, faults):
    fresh(relay, scripted(faults))
    outcome, elapsed = screen_bounded(relay.port, clean.pcm, retries=3)
    assert not isinstance(outcome, Exception), f"{faults}: {outcome}"
    assert_identical(outcome, clean)
    assert outcome[1].stats.retransmissions <= len(faults)
    assert elapsed < time_bound(len(faults))
    event(f"retransmissions: {outcome[1].stats.retransmissions}")
    assert_recovers(firmware, relay)


@settings(SETTINGS, max_examples=12)
@given(st.lists(FAULT, min_size=4, max_size=10))
def test_many_faults_give_the_identical_result_or_a_one_line_error(firmware, relay, clean,
                                                                  faults):
    fresh(relay, scripted(faults))
    outcome, elapsed = screen_bounded(relay.port, clean.pcm, retries=1)
    if isinstance(outcome, DeviceError):
        assert_one_line(outcome, relay.port)
        event(f"error: {type(outcome).__name__}")
    else:
        assert_identical(outcome, clean)
        event("identical result")
    assert elapsed < time_bound(len(faults))
    assert_recovers(firmware, relay)


def test_a_noise_burst_longer_than_any_frame_costs_one_retransmission(firmware, relay, clean):
    """More non-zero bytes than a frame may have (MAX_ENCODED) inside the 4th request:
    hs_proto.c must count them without storing past its buffer, reject the run with one
    NAK and take the next frame; the one retransmission gives the identical result."""
    burst = bytes(random.Random(7).randrange(1, 256) for _ in range(3 * p.MAX_ENCODED))
    requests = []

    def burst_in_fourth(frame: bytes) -> bytes:
        requests.append(frame)
        return frame[:1] + burst + frame[1:] if len(requests) == 4 else frame

    fresh(relay, LineFaults(to_device=burst_in_fourth))
    outcome, _ = screen_bounded(relay.port, clean.pcm, retries=1)
    assert not isinstance(outcome, Exception), outcome
    assert_identical(outcome, clean)
    assert outcome[1].stats.naks == 1 and outcome[1].stats.retransmissions == 1
    assert_recovers(firmware, relay)


def test_a_session_a_cut_link_left_open_is_aborted_with_one_note(firmware, relay, clean):
    """Issue 19 against the C firmware: the line goes dead in the middle of the AUDIO
    stream, the firmware keeps its session; the next plain run on a good line meets BUSY,
    aborts that session with one note and gives the identical result."""
    answers = []

    def dead_after_four(frame: bytes) -> bytes:
        answers.append(frame)
        return frame if len(answers) <= 4 else b""

    fresh(relay, LineFaults(to_host=dead_after_four))
    outcome, _ = screen_bounded(relay.port, clean.pcm, retries=0)
    assert isinstance(outcome, NoAnswerError) and "AUDIO" in str(outcome), outcome
    relay.faults = LineFaults()
    notes: list[str] = []
    with DeviceClient(relay.port, timeout=RECOVERY_TIMEOUT_S, notify=notes.append) as c:
        outcome = screen_pcm(c, clean.pcm, "excerpt", features=True, familiarity=GATE)
    assert_identical(outcome, clean)
    assert len(notes) == 1 and relay.port in notes[0] and "left open" in notes[0], notes
    assert_recovers(firmware, relay)


# ---- a device that stops answering ----------------------------------------------------------
class Freeze:
    """A to_device mangle that freezes the firmware process (SIGSTOP) when the n-th request
    reaches it, for ``seconds``: the request waits in the pty, as in a hung MCU's FIFO."""

    def __init__(self, pid: int, at: int, seconds: float) -> None:
        self.pid, self.at, self.seconds = pid, at, seconds
        self.count = 0
        self.thaw = threading.Timer(seconds, self.cont)

    def __call__(self, frame: bytes) -> bytes:
        if self.count == self.at:
            os.kill(self.pid, signal.SIGSTOP)
            self.thaw.start()
        self.count += 1
        return frame

    def cont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


RETRIES_WHEN_FROZEN = 1
SHORT_FREEZE_S = FAULT_TIMEOUT_S / 3  # answered late but inside the timeout
LONG_FREEZE_S = (RETRIES_WHEN_FROZEN + 1) * FAULT_TIMEOUT_S + 0.5  # outlasts every retry


@settings(SETTINGS, max_examples=8)
@given(at=st.integers(0, 20), long=st.booleans())
def test_a_frozen_firmware_is_reported_and_then_recovers(firmware, relay, clean, at, long):
    seconds = LONG_FREEZE_S if long else SHORT_FREEZE_S
    freeze = Freeze(firmware.proc.pid, at, seconds)
    fresh(relay, LineFaults(to_device=freeze))
    try:
        outcome, elapsed = screen_bounded(relay.port, clean.pcm, retries=RETRIES_WHEN_FROZEN)
        if long:
            assert isinstance(outcome, NoAnswerError), outcome
            assert_one_line(outcome, relay.port)
            assert elapsed < time_bound(RETRIES_WHEN_FROZEN + 1)
            time.sleep(max(0.0, seconds - elapsed))  # let the freeze end before recovery
        else:
            assert not isinstance(outcome, Exception), f"frozen at {at}: {outcome}"
            assert_identical(outcome, clean)
            assert outcome[1].stats.retransmissions <= 1
        event("NoAnswerError" if long else "identical result")
    finally:
        freeze.thaw.cancel()
        freeze.cont()
    assert_recovers(firmware, relay)
