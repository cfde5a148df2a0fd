"""The firmware app serving protocol v1: host build on a pty, Cortex-M4 build on QEMU.

The real firmware (C front end streamed sample by sample, window ring, c0 normalisation,
integer int8 quantisation, TFLite Micro, hs_proto framing; built from
``heartsound firmware export`` of the shipped model) is screened through by the unchanged
host client over a pseudo-terminal: on the host build, and on QEMU's mps2-an386 with the
CMSDK UART on ``-serial pty``. Its features must equal the Python front end's bit for bit,
its int8 scores the TFLite Micro Python interpreter's, and its decision
``heartsound screen``'s. Every wait is bounded; QEMU and the host app are killed at the end.

A second model, whose spec normalises by the running statistics of the recording
(``rec_mvn``), goes through the same path (export, host build, Cortex-M4 build on QEMU)
and through the emulator: nothing on the device may assume a per-window normalisation.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import serial

from edge.audio import read_wav
from edge.cli import main
from edge.mfcc import mfcc, windows
from edge.screening import PACKAGED_MODEL, Screener
from edge.spec import DEFAULT_SPEC
from firmware_bridge import build
from firmware_bridge import protocol as p
from firmware_bridge.client import DeviceClient, screen_pcm
from firmware_bridge.emulator import Device, Emulator, TflmModel
from firmware_bridge.model_cost import model_macs
from firmware_bridge.serve import serve_host, serve_qemu, session_figures
from tests.mfcc_recordings import load, sample
from tests.protocol_errors import check_protocol_errors
from tests.test_serial_client import SOURCES

pytestmark = pytest.mark.slow  # builds the app twice (TFLite Micro itself is cached)

RATE = 2000
REPO = Path(__file__).resolve().parent.parent
#: A real recording shipped with the repository (PhysioNet training-a, 12.8 s, 10 windows).
EXAMPLE = REPO / "examples" / "physionet_a0336_abnormal.wav"
#: Seconds of each recording screened on the host build (keeps the sweep fast).
HOST_EXCERPT_S = 20
#: Answer timeout on QEMU: a window's front end and inference take ~10^7 emulated
#: instructions; under -icount shift=0 that is well under a second of host time.
QEMU_TIMEOUT_S = 5.0
FLASH_TARGET, RAM_TARGET = 128 * 1024, 64 * 1024


@pytest.fixture(scope="module")
def screener() -> Screener:
    return Screener(PACKAGED_MODEL)


@pytest.fixture(scope="module")
def tflm(model) -> TflmModel:
    return TflmModel(model)


@pytest.fixture(scope="module")
def m4_build(model, arena, tmp_path_factory) -> build.AppBuild:
    return build.build_app(build.CORTEX_M4, model, tmp_path_factory.mktemp("fw-m4"),
                           arena_size=arena)


@pytest.fixture(scope="module")
def qemu_fw(m4_build):
    with serve_qemu(m4_build.executable) as fw:
        yield fw


def python_reference(pcm: np.ndarray, screener: Screener, tflm: TflmModel):
    """Features of the Python front end and scores of the TFLite Micro Python interpreter."""
    feats = windows(mfcc(pcm, screener.spec), screener.spec)
    scores = np.stack([tflm.scores(w) for w in feats]) if len(feats) else np.zeros((0, 2))
    return feats, scores


def comparable(result) -> dict:
    row = result.to_dict()
    return {k: row[k] for k in ("decision", "probability_abnormal", "windows", "classes",
                                "quality", "threshold", "seconds")}


def screenable(data_root: Path, pattern: str, screener: Screener) -> tuple[Path, np.ndarray]:
    """The first recording (name order, from the fourth) the quality gate passes."""
    for path in sorted(data_root.glob(pattern))[3:]:
        pcm = read_wav(path, RATE)[: HOST_EXCERPT_S * RATE]
        if screener.screen_pcm(pcm, RATE).decision != "unsure":
            return path, pcm
    raise AssertionError(f"no screenable recording in {pattern}")


def check_bit_exact(fw, pcm, name, screener, tflm, timeout):
    reference = screener.screen_pcm(pcm, RATE, name)
    feats, scores = python_reference(pcm, screener, tflm)
    with DeviceClient(fw.port, timeout=timeout) as client:
        result, run = screen_pcm(client, pcm, name, features=True,
                                 familiarity=screener.meta.familiarity)
    assert run is not None and run.done.windows == len(feats) > 0
    np.testing.assert_array_equal(run.features, feats)  # C front end == Python, bit for bit
    np.testing.assert_array_equal(run.scores, scores)   # firmware TFLM == Python TFLM
    assert comparable(result) == comparable(reference)  # == heartsound screen
    device = p.Decision.ABNORMAL if reference.decision == "abnormal" else p.Decision.NORMAL
    assert run.done.decision == device  # the firmware's own decision too
    assert run.stats.retransmissions == run.stats.bad_frames == 0
    return run


# ---- host build -----------------------------------------------------------------------------
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_host_firmware_is_bit_exact_on_every_source(source, data_root, host_fw, screener, tflm):
    path, pcm = screenable(data_root, SOURCES[source], screener)
    check_bit_exact(host_fw, pcm, str(path), screener, tflm, timeout=2.0)


def test_firmware_identifies_like_the_emulator(host_fw, model):
    with DeviceClient(host_fw.port) as client:
        info = client.identify()
    expected = Device(model).identity
    assert info.device_id == "hs-host" and info.firmware_version.startswith("firmware-")
    fields = ("flags", "max_chunk_samples", "sample_rate_hz", "window_samples",
              "window_hop_samples", "frames_per_window", "n_ceps", "model_sha256_prefix",
              "spec_sha256_prefix", "threshold", "output_scale", "output_zero_point",
              "normal_index", "class_names", "protocol_version")
    assert {f: getattr(info, f) for f in fields} == {f: getattr(expected, f) for f in fields}


def test_firmware_reports_protocol_errors(host_fw):
    with DeviceClient(host_fw.port, timeout=1.0) as c:
        check_protocol_errors(c)


def _exchange(port: serial.Serial, wire: bytes) -> list:
    port.write(wire)
    decoder, items = p.StreamDecoder(), []
    while not items:
        data = port.read(1)  # waits up to the port's timeout for the first byte
        assert data, "the firmware did not answer"
        data += port.read(port.in_waiting)
        items = decoder.feed(data)
    return items


def test_firmware_naks_damage_answers_repeats_from_cache_and_refuses_v2(host_fw):
    with serial.Serial(host_fw.port, timeout=2) as port:
        port.reset_input_buffer()
        hello = p.encode_frame(p.Frame(p.MsgType.ABORT, 100))
        damaged = bytearray(hello)
        damaged[5] ^= 0x10  # one flipped bit on the wire
        (nak,) = _exchange(port, bytes(damaged))
        assert nak.type == p.MsgType.ERROR and nak.seq == p.NAK_SEQ
        assert p.Error.unpack(nak.payload).code == p.ErrorCode.BAD_CRC
        start = p.encode_frame(p.Frame(p.MsgType.START, 101, p.Start(RATE, 0).pack()))
        assert _exchange(port, start)[0].type == p.MsgType.ACK
        audio = p.encode_frame(p.Frame(p.MsgType.AUDIO, 102,
                                       p.Audio(0, np.arange(300, dtype=np.int16)).pack()))
        first = _exchange(port, audio)[0]
        again = _exchange(port, audio)[0]  # a retransmission: the cached answer, not re-run
        assert first == again and p.Ack.unpack(again.payload).samples_received == 300
        body = p.HEADER.pack(2, p.MsgType.HELLO, 7, 0)
        v2 = b"\x00" + p.cobs_encode(body + p.CRC.pack(p.crc32(body))) + b"\x00"
        (err,) = _exchange(port, v2)
        assert err.seq == 7 and p.Error.unpack(err.payload).code == (
            p.ErrorCode.UNSUPPORTED_VERSION)
        assert _exchange(port, p.encode_frame(p.Frame(p.MsgType.ABORT, 103)))[0].type == (
            p.MsgType.ACK)


# ---- Cortex-M4 on QEMU ----------------------------------------------------------------------
def test_qemu_firmware_screens_a_real_recording_bit_exact(qemu_fw, screener, tflm):
    pcm = read_wav(EXAMPLE, RATE)
    check_bit_exact(qemu_fw, pcm, str(EXAMPLE), screener, tflm, timeout=QEMU_TIMEOUT_S)


def test_qemu_firmware_through_the_cli_decides_like_heartsound_screen(qemu_fw, capsys):
    assert main(["screen", str(EXAMPLE), "--json", "--no-log"]) == 0
    reference = json.loads(capsys.readouterr().out)
    assert main(["firmware", "screen", "--port", qemu_fw.port, str(EXAMPLE), "--json",
                 "--model", str(PACKAGED_MODEL), "--timeout", str(QEMU_TIMEOUT_S)]) == 0
    row = json.loads(capsys.readouterr().out)
    for key in ("decision", "probability_abnormal", "windows", "classes", "quality"):
        assert row[key] == reference[key], key
    assert row["device"]["decision"] == reference["decision"]
    assert row["device"]["identity"]["device_id"] == "hs-cortex-m4"


def test_qemu_instruction_counts(qemu_fw, model):
    """-icount shift=0 + SysTick: deterministic counts. Every window costs the same (the
    kernels do not branch on data) and at least half the MACs (SMLAD: two per instruction)."""
    offset = len(qemu_fw.console)
    with DeviceClient(qemu_fw.port, timeout=QEMU_TIMEOUT_S) as client:
        run = client.run(read_wav(EXAMPLE, RATE))
    fig = session_figures(qemu_fw.session_console(offset))
    per_window = fig["window_instructions"]
    assert fig["windows"] == len(per_window) == run.done.windows
    macs = model_macs(model)
    assert min(per_window) >= macs // 2
    assert (max(per_window) - min(per_window)) / min(per_window) < 0.01
    per_frame = fig["frontend_instructions"] / fig["frames"]
    assert 1_000 < per_frame < 1_000_000
    assert fig["stack_used"] > 0
    print(f"\nCortex-M4 (QEMU): front end {per_frame:,.0f} instructions/frame; window "
          f"scoring (Invoke + output copy) {min(per_window):,} instructions for {macs:,} MACs "
          f"({min(per_window) / macs:.2f}/MAC); stack {fig['stack_used']:,} B")


def test_bench_firmware_names_both_model_counters(m4_build, model, capsys):
    """Issue 19: bench/bench_firmware.py called the per-window counter (HS_WINDOW: Invoke
    plus the output copy) "instructions per inference". Both counters now appear under
    their own names, and the per-MAC and time figures come from Invoke() alone."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_firmware",
                                                  REPO / "bench" / "bench_firmware.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.measure(m4_build.executable, [EXAMPLE], RATE)
    macs = model_macs(model)
    total = bench.summary(rows, macs, RATE, DEFAULT_SPEC.hop_length)
    invoke = total["invoke_instructions_per_window"]
    assert invoke == round(rows[0]["invoke_instructions"] / rows[0]["windows"])
    assert invoke <= total["window_scoring_instructions_min"]
    assert total["invoke_instructions_per_mac"] == round(invoke / macs, 2)
    bench.print_tables(rows, total, build.size_report(m4_build), PACKAGED_MODEL)
    out = capsys.readouterr().out
    assert "per inference" not in out
    assert "Invoke() instructions per window (HS_INVOKES)" in out
    assert "window scoring instructions: Invoke + output copy (HS_WINDOW)" in out


def test_size_report_of_the_serving_app(m4_build, qemu_fw):
    report = build.size_report(m4_build)
    print(f"\nCortex-M4 serving app, shipped model:\n{report.table()}")
    parts = report.parts
    for part in ("front end", "protocol", "device loop", "TFLite Micro", "model array"):
        assert parts[part]["flash"] > 0, part
    assert parts["model array"]["flash"] >= len(PACKAGED_MODEL.read_bytes())
    assert parts["tensor arena"]["ram"] == m4_build.arena_size
    assert parts["device loop"]["ram"] > 2 * p.MAX_PAYLOAD  # decoder and answer cache
    rest = parts["alignment, merged strings"]
    assert abs(rest["flash"]) < 1024 and abs(rest["ram"]) < 1024
    assert report.flash <= FLASH_TARGET and report.ram <= RAM_TARGET


# ---- a model normalised by the recording (rec_mvn) ---------------------------------------
REC_SPEC = replace(DEFAULT_SPEC, normalise="rec_mvn").validate()


@pytest.fixture(scope="module")
def rec_model(data_root) -> bytes:
    """An untrained CNN (bit parity needs no training) in full int8 whose metadata spec
    is rec_mvn, calibrated on real rec_mvn windows (int16 values as the model reads them):
    what a model trained with ``--spec normalise=rec_mvn`` exports."""
    from convert.metadata import add_metadata, build_document
    from convert.quantize import to_int8
    from train.models import build_model

    calibration = np.concatenate([windows(mfcc(load(path), REC_SPEC), REC_SPEC)
                                  for _source, path in sample(data_root)[::2]])
    model = to_int8(build_model("cnn"), calibration.astype(np.float32), spec=REC_SPEC,
                    architecture="cnn")
    return add_metadata(model, build_document(model, spec=REC_SPEC,
                                              class_names=("normal", "abnormal"),
                                              threshold=0.5, architecture="cnn"))


def _built_and_served(target: str, model: bytes, folder: Path, serve):
    """The app built for ``target`` around ``model``, served until the module ends."""
    executable = build.build_app(target, model, folder, arena_size=None).executable
    with serve(executable) as fw:
        yield fw


@pytest.fixture(scope="module")
def rec_host_fw(rec_model, tmp_path_factory):
    yield from _built_and_served(build.HOST, rec_model, tmp_path_factory.mktemp("fw-host-rec"),
                                 serve_host)


@pytest.fixture(scope="module")
def rec_qemu_fw(rec_model, tmp_path_factory):
    yield from _built_and_served(build.CORTEX_M4, rec_model,
                                 tmp_path_factory.mktemp("fw-m4-rec"), serve_qemu)


def check_rec_bit_exact(port: str, pcm: np.ndarray, model: bytes, timeout: float):
    """Features of a rec_mvn device == edge.mfcc.windows (statistics of the recording up
    to each window's end), scores == the TFLite Micro Python interpreter's."""
    feats = windows(mfcc(pcm, REC_SPEC), REC_SPEC)
    tflm = TflmModel(model)
    scores = np.stack([tflm.scores(w) for w in feats])
    with DeviceClient(port, timeout=timeout) as client:
        assert client.identify().spec_sha256_prefix == p.spec_digest(REC_SPEC)
        run = client.run(pcm, features=True)
    assert run.done.windows == len(feats) > 0
    np.testing.assert_array_equal(run.features, feats)
    np.testing.assert_array_equal(run.scores, scores)
    assert run.stats.retransmissions == run.stats.bad_frames == 0
    return run


def test_rec_mvn_model_on_the_host_firmware_and_the_emulator(data_root, rec_model,
                                                              rec_host_fw):
    """Whole recordings (the statistics grow over dozens of windows), a session after
    another (START resets them): the host firmware, the emulator and Python agree."""
    picks = [sorted(data_root.glob(SOURCES[s]))[3] for s in ("pascal_b", "physionet_a")]
    with Emulator(rec_model) as emu:
        for path in picks + picks[:1]:
            pcm = read_wav(path, RATE)
            device = check_rec_bit_exact(rec_host_fw.port, pcm, rec_model, timeout=2.0)
            emulated = check_rec_bit_exact(emu.port, pcm, rec_model, timeout=2.0)
            assert device.done == emulated.done, path.name


def test_rec_mvn_model_on_qemu_is_bit_exact(rec_model, rec_qemu_fw):
    """The Cortex-M4 build: int64 statistics, libgcc's 64-bit division, the integer
    square root."""
    check_rec_bit_exact(rec_qemu_fw.port, read_wav(EXAMPLE, RATE), rec_model,
                        timeout=QEMU_TIMEOUT_S)
