"""The C99 protocol (firmware_bridge/c/hs_proto.c) against the Python one, bit for bit.

hs_proto.c is compiled with gcc twice: strict (-std=c99 -pedantic -Wall -Wextra -Werror)
and with AddressSanitizer + UndefinedBehaviorSanitizer (any report aborts the run).
Random frames, damaged streams and message payloads (hypothesis) go through both
implementations in both directions: the C encoder's bytes must equal Python's, the C
decoder must report exactly the frames and rejection reasons Python's StreamDecoder
reports, and the C payload builders and parsers must agree with protocol.py.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol as p

C_DIR = Path(__file__).resolve().parent.parent / "firmware_bridge" / "c"
SOURCES = [C_DIR / "hs_proto.c", C_DIR / "hs_proto_cli.c"]
STRICT = ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-Wconversion",
          "-Wno-sign-conversion", "-O2"]
SANITIZE = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-g",
            "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]
REASON_CODES = {"cobs": 1, "short": 2, "length": 3, "crc": 4, "version": 5, "too_long": 6}
M4_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-mcpu=cortex-m4", "-mthumb",
            "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-Os", "-ffunction-sections"]


def compile_cli(out: Path, flags: list[str]) -> Path:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to build the C protocol (apt install gcc)"
    proc = subprocess.run([gcc, *flags, "-o", str(out), *map(str, SOURCES)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def strict_cli(tmp_path_factory) -> Path:
    return compile_cli(tmp_path_factory.mktemp("proto") / "hs_proto_cli", STRICT)


@pytest.fixture(scope="module")
def asan_cli(tmp_path_factory) -> Path:
    return compile_cli(tmp_path_factory.mktemp("proto_asan") / "hs_proto_cli", SANITIZE)


def run(cli: Path, mode: str, data: bytes) -> bytes:
    proc = subprocess.run([str(cli), mode], input=data, capture_output=True, check=False,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert not proc.stderr, proc.stderr.decode(errors="replace")[-2000:]
    return proc.stdout


def c_encode(cli: Path, frames: list[p.Frame]) -> bytes:
    records = b"".join(struct.pack("<BHH", f.type, f.seq, len(f.payload)) + f.payload
                       for f in frames)
    return run(cli, "encode", records)


def c_decode(cli: Path, wire: bytes) -> list[tuple]:
    """C decoder events as (reason code or 0, version, type, seq, payload)."""
    out, pos, events = run(cli, "decode", wire), 0, []
    while pos < len(out):
        kind, version, mtype, seq, length = struct.unpack_from("<BBBHH", out, pos)
        pos += 7
        events.append((kind, version, mtype, seq, out[pos:pos + length]))
        pos += length
    return events


def py_decode(wire: bytes) -> list[tuple]:
    events = []
    for item in p.StreamDecoder().feed(wire):
        if isinstance(item, p.Frame):
            events.append((0, item.version, item.type, item.seq, item.payload))
        elif item.reason == "version":
            events.append((5, item.version, item.type, item.seq, b""))
        else:
            events.append((REASON_CODES[item.reason], 0, 0, 0, b""))
    return events


frames = st.builds(p.Frame, type=st.integers(0, 255), seq=st.integers(0, 0xFFFF),
                   payload=st.one_of(st.binary(max_size=700),
                                     st.binary(min_size=250, max_size=520)
                                     .map(lambda b: b.replace(b"\x00", b"\x07"))))
frame_lists = st.lists(frames, min_size=1, max_size=8)


# ---------------------------------------------------------------------------- frames


def test_strict_build_compiles_clean(strict_cli):
    wire = c_encode(strict_cli, [p.Frame(p.MsgType.HELLO, 1)])
    assert wire == p.encode_frame(p.Frame(p.MsgType.HELLO, 1))


@settings(max_examples=60, deadline=None)
@given(frame_lists)
def test_c_encoder_writes_the_python_bytes(asan_cli, frames_sent):
    assert c_encode(asan_cli, frames_sent) == b"".join(p.encode_frame(f) for f in frames_sent)


@settings(max_examples=60, deadline=None)
@given(frame_lists)
def test_python_decodes_what_c_encodes(strict_cli, frames_sent):
    items = p.StreamDecoder().feed(c_encode(strict_cli, frames_sent))
    assert items == frames_sent


def damage(wire: bytes, data) -> bytes:
    w = bytearray(wire)
    for _ in range(data.draw(st.integers(0, 6), label="faults")):
        if not w:
            break
        kind = data.draw(st.sampled_from(["flip", "drop", "dup", "cut", "noise", "zero"]))
        pos = data.draw(st.integers(0, len(w) - 1))
        if kind == "flip":
            w[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "drop":
            del w[pos]
        elif kind == "dup":
            w.insert(pos, w[pos])
        elif kind == "cut":
            del w[pos:pos + data.draw(st.integers(1, 300))]
        elif kind == "noise":
            w[pos:pos] = data.draw(st.binary(min_size=1, max_size=40))
        else:
            w[pos] = 0
    return bytes(w)


@settings(max_examples=120, deadline=None)
@given(frame_lists, st.data())
def test_c_decoder_reports_what_python_reports_on_damaged_streams(asan_cli, frames_sent, data):
    wire = damage(b"".join(p.encode_frame(f) for f in frames_sent), data)
    assert c_decode(asan_cli, wire) == py_decode(wire)


def test_c_decoder_on_overlong_runs_version_and_edge_sizes(asan_cli):
    body = p.HEADER.pack(2, p.MsgType.HELLO, 9, 0)
    v2 = b"\x00" + p.cobs_encode(body + p.CRC.pack(p.crc32(body))) + b"\x00"
    biggest = p.encode_frame(p.Frame(p.MsgType.RESULT, 3, b"\x01" * p.MAX_PAYLOAD))
    zeros = p.encode_frame(p.Frame(p.MsgType.RESULT, 3, b"\x00" * p.MAX_PAYLOAD))
    runs = [b"\x5a" * (p.MAX_ENCODED + 1) + b"\x00",  # one byte too long
            b"\x01" * p.MAX_ENCODED + b"\x00",        # decodes to more zeros than fit
            b"\x01" * 5 + b"\x00"]                     # 4 bytes: shorter than a header
    bad_crc = bytearray(biggest)
    bad_crc[100] ^= 0x03
    wire = v2 + biggest + zeros + b"".join(runs) + bytes(bad_crc) + biggest
    events = c_decode(asan_cli, wire)
    assert events == py_decode(wire)
    assert [e[0] for e in events] == [5, 0, 0, 6, 3, 2, 4, 0]


# ---------------------------------------------------------------------------- payloads

names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=24)
identities = st.builds(
    p.Identify, flags=st.integers(0, 255), max_chunk_samples=st.integers(1, 0xFFFF),
    sample_rate_hz=st.integers(1, 2**31), window_samples=st.integers(0, 2**31),
    window_hop_samples=st.integers(0, 2**31), frames_per_window=st.integers(1, 0xFFFF),
    n_ceps=st.integers(1, 0xFFFF), model_sha256_prefix=st.binary(min_size=8, max_size=8),
    spec_sha256_prefix=st.binary(min_size=8, max_size=8), threshold=st.floats(0, 1),
    output_scale=st.floats(2**-20, 1, width=32), output_zero_point=st.integers(-128, 127),
    normal_index=st.integers(0, 0), device_id=names, firmware_version=names,
    class_names=st.lists(names, min_size=1, max_size=6).map(tuple))


def identify_line(i: p.Identify) -> str:
    thr = struct.unpack("<Q", struct.pack("<d", i.threshold))[0]
    scale = struct.unpack("<I", struct.pack("<f", i.output_scale))[0]
    return " ".join(map(str, [
        "identify", i.flags, i.max_chunk_samples, i.sample_rate_hz, i.window_samples,
        i.window_hop_samples, i.frames_per_window, i.n_ceps, i.model_sha256_prefix.hex(),
        i.spec_sha256_prefix.hex(), f"{thr:x}", f"{scale:x}", i.output_zero_point,
        i.normal_index, i.device_id, i.firmware_version, len(i.class_names),
        *i.class_names]))


def result_line(r: p.Result) -> str:
    feats = r.features
    rows, cols = feats.shape if feats is not None else (0, 0)
    vals = feats.ravel().tolist() if feats is not None else []
    return " ".join(map(str, ["result", r.window_index, r.samples_received, r.scores.size,
                              *r.scores.tolist(), rows, cols, *vals]))


def done_line(d: p.Done) -> str:
    bits = struct.unpack("<I", struct.pack("<f", d.probability_abnormal))[0]
    return " ".join(map(str, ["done", d.decision, f"{bits:x}", d.windows, d.samples_received,
                              len(d.score_sums), *d.score_sums]))


results = st.builds(
    p.Result, window_index=st.integers(0, 0xFFFF), samples_received=st.integers(0, 2**31),
    scores=st.lists(st.integers(-128, 127), min_size=1, max_size=8).map(
        lambda s: np.array(s, np.int8)),
    features=st.one_of(st.none(), st.tuples(st.integers(1, 30), st.integers(1, 13)).map(
        lambda rc: (np.arange(rc[0] * rc[1], dtype=np.int64) * 7919 % 65536 - 32768)
        .astype(np.int16).reshape(rc))))
dones = st.builds(p.Done, decision=st.integers(0, 2), probability_abnormal=st.floats(
    0, 1, width=32), windows=st.integers(0, 0xFFFF), samples_received=st.integers(0, 2**31),
    score_sums=st.lists(st.integers(-2**31, 2**31 - 1), max_size=8).map(tuple))


@settings(max_examples=40, deadline=None)
@given(st.lists(identities, min_size=1, max_size=4), st.lists(results, min_size=1, max_size=4),
       st.lists(dones, min_size=1, max_size=4),
       st.lists(st.builds(p.Ack, st.integers(0, 255), st.integers(0, 2**31),
                          st.integers(0, 0xFFFF)), max_size=3),
       st.lists(st.builds(p.Error, st.integers(0, 255), st.integers(0, 255), names),
                max_size=3))
def test_c_payload_builders_match_python(asan_cli, ids, res, dns, acks, errs):
    lines = [identify_line(i) for i in ids] + [result_line(r) for r in res]
    lines += [done_line(d) for d in dns]
    lines += [f"ack {a.acked_type} {a.samples_received} {a.windows_done}" for a in acks]
    lines += [f"error {e.code} {e.offending_type} {e.message}" for e in errs]
    want = [m.pack().hex() for m in [*ids, *res, *dns, *acks, *errs]]
    got = run(asan_cli, "build", "\n".join(lines).encode() + b"\n").decode().split()
    assert got == want


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(
    st.builds(p.Start, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
              st.integers(0, 255)).map(lambda s: ("start", s.pack())),
    st.builds(p.Audio, st.integers(0, 2**32 - 1), st.lists(
        st.integers(-32768, 32767), min_size=1, max_size=300).map(
        lambda s: np.array(s, np.int16))).map(lambda a: ("audio", a.pack())),
    st.tuples(st.sampled_from(["start", "audio", "empty"]), st.binary(max_size=12))),
    min_size=1, max_size=10))
def test_c_payload_parsers_match_python(asan_cli, cases):
    lines = "\n".join(f"{kind} {payload.hex()}" for kind, payload in cases) + "\n"
    got = run(asan_cli, "parse", lines.encode()).decode().splitlines()
    assert got == [python_parse(kind, payload) for kind, payload in cases]


def python_parse(kind: str, payload: bytes) -> str:
    try:
        if kind == "start":
            s = p.Start.unpack(payload)
            return f"{s.sample_rate_hz} {s.expected_samples} {s.flags}"
        if kind == "audio":
            a = p.Audio.unpack(payload)
            return " ".join(map(str, [a.offset, *a.samples.tolist()]))
        p.parse_empty(payload, "HELLO")
        return "ok"
    except p.PayloadError:
        return "bad"


# ---------------------------------------------------------------------------- Cortex-M4


def test_protocol_compiles_for_cortex_m4_and_is_small(tmp_path):
    gcc = shutil.which("arm-none-eabi-gcc")
    size = shutil.which("arm-none-eabi-size")
    if not gcc or not size:
        pytest.skip("arm-none-eabi-gcc is not installed (apt install gcc-arm-none-eabi)")
    obj = tmp_path / "hs_proto.o"
    proc = subprocess.run([gcc, *M4_FLAGS, "-c", str(SOURCES[0]), "-o", str(obj)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    text, data, bss = map(int, subprocess.run([size, str(obj)], capture_output=True, text=True,
                                              check=True).stdout.splitlines()[1].split()[:3])
    assert data == bss == 0  # no globals: the caller owns every buffer
    assert text < 4096  # measured 1600 B with -Os
