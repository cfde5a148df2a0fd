"""The host client against the device emulator over a real pseudo-terminal.

End to end: real recordings from every source are screened through the emulator (the
fixed-point front end in streaming form + the TFLite Micro interpreter) and must give
bit-identical window scores, features and the same decision as ``heartsound screen``
(:class:`edge.screening.Screener`). Under faults on the line (hypothesis picks which
frames get flipped bits, dropped or duplicated bytes, are cut in half, lost, or preceded
by noise) the client returns that same result or a one-line DeviceError, always within
a bound set by its timeout, never a different result. A device that stops answering, is
killed, or speaks another protocol version is reported as such.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import serial
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge.audio import read_wav
from edge.cli import main
from edge.errors import DeviceError
from edge.mfcc import mfcc, windows
from edge.model_meta import read_model_meta
from edge.screening import PACKAGED_MODEL, Screener
from firmware_bridge import protocol as p
from firmware_bridge.client import (
    DeviceClient,
    LinkError,
    NoAnswerError,
    ProtocolMismatchError,
    screen_pcm,
)
from firmware_bridge.emulator import Emulator, LineFaults
from tests.line_faults import FAULT, mangle, scripted
from tests.protocol_errors import check_protocol_errors

SOURCES = {
    "pascal_a": "pascal/set_a/*.wav",
    "pascal_b": "pascal/set_b/*.wav",
    "physionet_a": "physionet2016/training-a/*.wav",
    "physionet_b": "physionet2016/training-b/*.wav",
    "physionet_d": "physionet2016/training-d/*.wav",
    "physionet_e": "physionet2016/training-e/*.wav",
    "physionet_f": "physionet2016/training-f/*.wav",
    "circor": "circor2022/training_data/*.wav",
}
RATE = 2000
FAULT_TIMEOUT_S = 0.3
EXCERPT_S = 4.5  # two analysis windows: enough to cross a RESULT, short enough for many runs
REPO = Path(__file__).resolve().parent.parent
GATE = read_model_meta(PACKAGED_MODEL).familiarity
"""The shipped model's familiarity reference: given to the host, as `firmware screen
--model` gives it, so its results compare equal to `heartsound screen`'s."""


@pytest.fixture(scope="module")
def screener() -> Screener:
    return Screener(PACKAGED_MODEL)


@pytest.fixture(scope="module")
def emulator():
    with Emulator(PACKAGED_MODEL) as emu:
        yield emu


def first_screenable(data_root: Path, pattern: str, screener: Screener, skip: int = 0):
    """(path, pcm) of the first recording (in name order, after ``skip``) the gate passes:
    deterministic, and a recording the model is asked about."""
    for path in sorted(data_root.glob(pattern))[skip:]:
        pcm = read_wav(path, RATE)
        if screener.screen_pcm(pcm, RATE).decision != "unsure":
            return path, pcm
    raise AssertionError(f"no screenable recording in {pattern}")


def comparable(result) -> dict:
    row = result.to_dict()
    return {k: row[k] for k in ("decision", "probability_abnormal", "windows", "classes",
                                "quality", "threshold", "seconds")}


# ---------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_device_screening_is_bit_identical_to_heartsound_screen(source, data_root, screener,
                                                                emulator):
    path, pcm = first_screenable(data_root, SOURCES[source], screener, skip=3)
    if source.startswith("physionet"):
        pcm = pcm[: 20 * RATE]  # 20 s of the long PhysioNet recordings keeps this fast
    reference = screener.screen_pcm(pcm, RATE, str(path))
    feats = windows(mfcc(pcm, screener.spec), screener.spec)
    with DeviceClient(emulator.port, timeout=2.0) as client:
        result, run = screen_pcm(client, pcm, str(path), features=True,
                                 familiarity=GATE)
    assert comparable(result) == comparable(reference)
    assert np.array_equal(run.scores, screener.classifier.predict(feats).raw)
    assert np.array_equal(run.features, feats)  # the streaming front end, bit for bit
    assert run.done.windows == len(reference.windows) > 0
    assert run.stats.retransmissions == run.stats.bad_frames == 0
    assert run.info.model_sha256_prefix.hex() == reference.model_sha256[:16]


def test_identify_reports_the_model_and_front_end(emulator, screener):
    with DeviceClient(emulator.port) as client:
        info = client.identify()
    meta = screener.meta
    assert info.class_names == meta.class_names and info.threshold == meta.threshold
    assert info.sample_rate_hz == meta.spec.sample_rate_hz
    assert info.spec_sha256_prefix == p.spec_digest(meta.spec)
    assert info.model_sha256_prefix == p.model_digest(PACKAGED_MODEL.read_bytes())
    assert info.max_chunk_samples <= info.window_hop_samples


def test_a_recording_that_fails_the_gate_is_unsure_like_heartsound_screen(data_root, screener,
                                                                          emulator):
    path = sorted((data_root / "pascal" / "set_b").glob("*.wav"))[0]
    pcm = read_wav(path, RATE)[: 3 * RATE // 2]  # 1.5 s: under the 2 s minimum
    reference = screener.screen_pcm(pcm, RATE, str(path))
    with DeviceClient(emulator.port) as client:
        result, run = screen_pcm(client, pcm, str(path),
                                 familiarity=GATE)
    assert reference.decision == "unsure" and run is None
    assert comparable(result) == comparable(reference)


def test_a_recording_shorter_than_a_window_is_looped_like_heartsound_screen(
        data_root, screener, emulator):
    path, _ = first_screenable(data_root, SOURCES["pascal_b"], screener)
    pcm = read_wav(path, RATE)[: 5 * RATE // 2]  # 2.5 s: looped to one 3 s window
    reference = screener.screen_pcm(pcm, RATE, str(path))
    with DeviceClient(emulator.port) as client:
        result, run = screen_pcm(client, pcm, str(path),
                                 familiarity=GATE)
    assert reference.decision != "unsure" and len(reference.windows) == 1
    assert run is not None and comparable(result) == comparable(reference)


def test_cli_screen_and_identify_json(data_root, screener, emulator, capsys, tmp_path):
    path, _ = first_screenable(data_root, SOURCES["pascal_b"], screener)
    assert main(["screen", str(path), "--json", "--no-log"]) == 0
    reference = json.loads(capsys.readouterr().out)
    assert main(["firmware", "screen", "--port", emulator.port, str(path), "--json",
                 "--model", str(PACKAGED_MODEL)]) == 0
    row = json.loads(capsys.readouterr().out)
    for key in ("decision", "probability_abnormal", "windows", "classes", "quality"):
        assert row[key] == reference[key], key
    assert row["device"]["decision"] == reference["decision"]
    assert main(["firmware", "identify", "--port", emulator.port, "--json"]) == 0
    ident = json.loads(capsys.readouterr().out)
    assert ident["class_names"] == list(screener.meta.class_names)
    other = tmp_path / "other.tflite"
    other.write_bytes(PACKAGED_MODEL.read_bytes() + b"\x00")
    code = main(["firmware", "screen", "--port", emulator.port, str(path), "--model",
                 str(other)])
    err = capsys.readouterr().err
    assert code == DeviceError.exit_code and "runs model" in err and len(err.splitlines()) == 1


def test_cli_reports_a_missing_port_in_one_line(capsys, tmp_path):
    code = main(["firmware", "identify", "--port", str(tmp_path / "ttyACM9"), "--timeout",
                 "0.2"])
    err = capsys.readouterr().err
    assert code == DeviceError.exit_code
    assert "cannot open the serial port" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- device errors


def test_device_reports_protocol_errors(emulator):
    emulator.reset()
    with DeviceClient(emulator.port, timeout=1.0) as c:
        check_protocol_errors(c)


def test_a_session_a_failed_run_left_open_is_aborted_with_one_note(emulator, data_root,
                                                                   screener, capsys):
    """Issue 19: a link that dies mid-recording leaves the device in its session; the next
    plain `heartsound firmware screen` aborts it, says so in one line and screens (it used
    to fail with BUSY until rerun with --force). --force still aborts up front, silently."""
    path, pcm = first_screenable(data_root, SOURCES["pascal_b"], screener)
    answers = []

    def dead_after_five(frame: bytes) -> bytes:  # the cable fails during the AUDIO stream
        answers.append(frame)
        return frame if len(answers) <= 5 else b""

    emulator.reset(LineFaults(to_host=dead_after_five))
    with DeviceClient(emulator.port, timeout=0.2, retries=1) as c, pytest.raises(
            NoAnswerError, match="AUDIO"):
        c.run(pcm)
    emulator.faults = LineFaults()  # the cable is fixed; the device was not reset
    assert emulator.device.session is not None and emulator.device.session.received > 0
    assert main(["screen", str(path), "--json", "--no-log"]) == 0
    reference = json.loads(capsys.readouterr().out)
    assert main(["firmware", "screen", "--port", emulator.port, str(path), "--json"]) == 0
    out = capsys.readouterr()
    row = json.loads(out.out)
    for key in ("decision", "probability_abnormal", "windows"):
        assert row[key] == reference[key], key
    assert len(out.err.splitlines()) == 1, out.err
    assert emulator.port in out.err and "left open" in out.err and "aborted it" in out.err
    with DeviceClient(emulator.port) as c:
        c.request(p.MsgType.START, p.Start(RATE, 0).pack())
    notes = []
    with DeviceClient(emulator.port, notify=notes.append) as c:
        assert c.run(pcm, force=True).done.windows >= 1
    assert notes == []


def test_device_refuses_another_protocol_version(emulator):
    emulator.reset()
    body = p.HEADER.pack(2, p.MsgType.HELLO, 7, 0)
    wire = b"\x00" + p.cobs_encode(body + p.CRC.pack(p.crc32(body))) + b"\x00"
    with serial.Serial(emulator.port, timeout=2) as port:
        port.write(wire)
        items = []
        deadline = time.monotonic() + 2
        dec = p.StreamDecoder()
        while not items and time.monotonic() < deadline:
            items = dec.feed(port.read(max(1, port.in_waiting)))
    err = p.Error.unpack(items[0].payload)
    assert items[0].seq == 7 and err.code == p.ErrorCode.UNSUPPORTED_VERSION


def test_client_refuses_a_device_of_another_version(emulator):
    def as_version_2(frame: bytes) -> bytes:
        raw = bytearray(p.cobs_decode(frame.strip(b"\x00")))
        raw[0] = 2
        raw[-4:] = p.CRC.pack(p.crc32(bytes(raw[:-4])))
        return b"\x00" + p.cobs_encode(bytes(raw)) + b"\x00"

    emulator.reset(LineFaults(to_host=as_version_2))
    start = time.monotonic()
    with DeviceClient(emulator.port, timeout=1.0) as c, pytest.raises(ProtocolMismatchError,
                                                                     match="v2"):
        c.identify()
    assert time.monotonic() - start < 1.0  # no retries: retrying cannot help
    emulator.reset()


# ---------------------------------------------------------------------------- dead devices


def test_a_paused_device_is_reported_within_the_timeout_bound(emulator):
    emulator.reset()
    emulator.pause()
    start = time.monotonic()
    with DeviceClient(emulator.port, timeout=0.2, retries=2) as c, pytest.raises(
            NoAnswerError, match="3 attempts of 0.2 s"):
        c.identify()
    elapsed = time.monotonic() - start
    assert 0.6 <= elapsed < 1.5
    emulator.resume()


def test_a_device_that_stops_mid_recording_is_reported(emulator, data_root, screener):
    _, pcm = first_screenable(data_root, SOURCES["physionet_a"], screener)
    answers = []

    def hang_after_ten(frame: bytes) -> bytes:
        answers.append(frame)
        if len(answers) >= 10:
            emulator.pause()
            return b""
        return frame

    emulator.reset(LineFaults(to_host=hang_after_ten))
    start = time.monotonic()
    with DeviceClient(emulator.port, timeout=0.2, retries=1) as c, pytest.raises(
            NoAnswerError, match="AUDIO"):
        c.run(pcm)
    assert time.monotonic() - start < 2.0
    emulator.reset()


def test_a_killed_device_process_is_reported(data_root, screener):
    _, pcm = first_screenable(data_root, SOURCES["physionet_a"], screener)
    proc = subprocess.Popen([sys.executable, "-m", "firmware_bridge.emulator", "--model",
                             str(PACKAGED_MODEL)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        port = proc.stdout.readline().strip()
        with DeviceClient(port, timeout=0.3, retries=1) as c:
            assert c.identify().device_id
            proc.kill()
            proc.wait(timeout=10)
            start = time.monotonic()
            with pytest.raises(DeviceError) as exc:
                c.run(pcm)
        assert time.monotonic() - start < 1.5
        assert "disconnected" in str(exc.value) or isinstance(exc.value, NoAnswerError)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_line_of_pure_noise_is_a_link_error(emulator):
    rng = random.Random(1)
    emulator.reset(LineFaults(to_host=lambda f: bytes(rng.randrange(256) for _ in f)))
    with DeviceClient(emulator.port, timeout=0.2, retries=2) as c, pytest.raises(
            LinkError, match="noise|resync"):
        c.identify()
    emulator.reset()


@pytest.mark.parametrize("direction, kind, a, seen", [
    ("to_host", "drop", 5, "2 resyncs after broken framing (bytes dropped or duplicated)"),
    ("to_host", "dup", 70, "2 resyncs after broken framing (bytes dropped or duplicated)"),
    ("to_host", "flip", 9, "2 CRC errors"),
    ("to_device", "drop", 7, "1 request rejected by the device as damaged, 1 answer lost"),
])
def test_a_damaged_line_is_named_by_what_was_seen(emulator, direction, kind, a, seen):
    """Issue 19: dropped or duplicated bytes were reported as "CRC errors exceeded the
    retries"; the one-line error now names resyncs, CRC errors, NAKs and lost answers."""
    emulator.reset(LineFaults(**{direction: lambda f: mangle(f, kind, a, 3)}))
    with DeviceClient(emulator.port, timeout=0.2, retries=1) as c, pytest.raises(
            LinkError) as exc:
        c.identify()
    emulator.reset()
    text = str(exc.value)
    assert text.startswith(f"{emulator.port}: no intact answer to HELLO in 2 attempts: {seen}")
    assert "\n" not in text and "check the cable" in text
    assert ("resync" in text) == (kind != "flip" and direction == "to_host")


# ---------------------------------------------------------------------------- faults


@pytest.fixture(scope="module")
def excerpt(data_root, screener):
    path, pcm = first_screenable(data_root, SOURCES["physionet_a"], screener)
    pcm = pcm[: int(EXCERPT_S * RATE)]
    reference = screener.screen_pcm(pcm, RATE, "excerpt")
    assert len(reference.windows) == 2
    return pcm, reference


def run_with_faults(emulator, pcm, faults, retries):
    emulator.reset(scripted(faults))
    start = time.monotonic()
    try:
        with DeviceClient(emulator.port, timeout=FAULT_TIMEOUT_S, retries=retries) as c:
            result, run = screen_pcm(c, pcm, "excerpt", familiarity=GATE)
        outcome = (result, run)
    except DeviceError as exc:
        outcome = exc
    return outcome, time.monotonic() - start


def time_bound(n_faults: int) -> float:
    # each fault costs at most one timeout (plus a NAK grace); the clean run is ~0.3 s
    return 2.5 + n_faults * 1.25 * FAULT_TIMEOUT_S


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(FAULT, max_size=3))
def test_up_to_retries_faults_still_give_the_identical_result(emulator, excerpt, faults):
    pcm, reference = excerpt
    outcome, elapsed = run_with_faults(emulator, pcm, faults, retries=3)
    assert not isinstance(outcome, Exception), f"{faults}: {outcome}"
    result, run = outcome
    assert comparable(result) == comparable(reference)
    assert elapsed < time_bound(len(faults))
    assert run.stats.retransmissions <= len(faults)
    event(f"retransmissions: {run.stats.retransmissions}")


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(FAULT, min_size=4, max_size=14))
def test_many_faults_give_the_identical_result_or_a_one_line_error(emulator, excerpt, faults):
    pcm, reference = excerpt
    outcome, elapsed = run_with_faults(emulator, pcm, faults, retries=1)
    if isinstance(outcome, Exception):
        assert isinstance(outcome, DeviceError)
        text = str(outcome)
        assert "\n" not in text and text.startswith(emulator.port)
        event(f"error: {type(outcome).__name__}")
    else:
        assert comparable(outcome[0]) == comparable(reference)
        event(f"identical result after {outcome[1].stats.retransmissions} retransmissions")
    assert elapsed < time_bound(len(faults))
