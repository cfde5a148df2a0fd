"""edge.audio on real recordings: every WAV coding decodes to the 16-bit original's samples,
and every kind of broken file gives one AudioError line naming the file and the problem.

Variants and broken files are built byte by byte here from real PASCAL / PhysioNet samples,
so the parser is checked against an independent writer (this file), and the plain 16-bit
originals are also checked against the stdlib ``wave`` module.
"""

from __future__ import annotations

import csv
import struct
import time
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest

from edge.audio import WavInfo, load_audio, read_wav, read_wav_info
from edge.errors import AudioError, HeartsoundError
from edge.resample import resample
from tests.data_sources import pascal_a_at

SUBFORMAT_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


FOLDERS = {  # source -> (folder under the data root, files sampled from it)
    "pascal_a": ("pascal/set_a", 3),
    "pascal_b": ("pascal/set_b", 3),
    "physionet_a": ("physionet2016/training-a", 2),
    "physionet_b": ("physionet2016/training-b", 2),
    "physionet_d": ("physionet2016/training-d", 2),
    "physionet_c": ("physionet2016/training-c", 1),
    "physionet_f": ("physionet2016/training-f", 2),
    "circor": ("circor2022/training_data", 2),
}
REAL_CASES = [(source, i) for source, (_, n) in FOLDERS.items() for i in range(n)]


def _files(data_root: Path, folder: str) -> list[Path]:
    files = sorted((data_root / folder).glob("*.wav"))
    assert files, f"no WAV files in {data_root / folder}"
    return files


def _spread(files: list[Path], n: int) -> list[Path]:
    """n files spread over a sorted list: different patients/sessions, deterministic."""
    return [files[i] for i in np.linspace(0, len(files) - 1, n).astype(int)]


def _real(data_root: Path, source: str, index: int) -> Path:
    folder, n = FOLDERS[source]
    return _spread(_files(data_root, folder), n)[index]


# ---------------------------------------------------------------- a WAV writer for tests

def _fmt_chunk(tag: int, channels: int, rate: int, bits: int, extensible: bool) -> bytes:
    align = channels * bits // 8
    if not extensible:
        body = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    else:
        body = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * align, align, bits,
                           22, bits, (1 << channels) - 1) + struct.pack("<H", tag) + SUBFORMAT_TAIL
    return _chunk(b"fmt ", body)


def _chunk(chunk_id: bytes, body: bytes, declared: int | None = None) -> bytes:
    size = len(body) if declared is None else declared
    pad = b"\x00" if len(body) % 2 else b""
    return chunk_id + struct.pack("<I", size) + body + pad


def _riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _wav(tag: int, channels: int, rate: int, bits: int, data: bytes, *,
         extensible: bool = False) -> bytes:
    return _riff(_fmt_chunk(tag, channels, rate, bits, extensible), _chunk(b"data", data))


def _interleave(*channels: np.ndarray) -> np.ndarray:
    return np.stack(channels, axis=1).reshape(-1)


def _pcm24(v: np.ndarray) -> bytes:
    u = v.astype(np.int64) & 0xFFFFFF
    return np.stack([u & 0xFF, (u >> 8) & 0xFF, u >> 16], axis=1).astype(np.uint8).tobytes()


def _write(tmp_path: Path, name: str, payload: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(payload)
    return path


@pytest.fixture(scope="module")
def original(data_root) -> tuple[np.ndarray, int]:
    """A real PASCAL B recording (16-bit, 4 kHz): the samples every variant must give."""
    path = _spread(_files(data_root, "pascal/set_b"), 5)[2]
    x = read_wav(path)
    return x, read_wav_info(path).sample_rate


# ---------------------------------------------------------------- real files

@pytest.mark.parametrize(("source", "index"), REAL_CASES)
def test_real_file_matches_stdlib_wave(data_root, source, index) -> None:
    path = _real(data_root, source, index)
    x = read_wav(path)
    with wave.open(str(path)) as w:
        ref = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        rate, channels = w.getframerate(), w.getnchannels()
    assert x.dtype == np.int16 and x.ndim == 1
    np.testing.assert_array_equal(x, ref)
    info = read_wav_info(path)
    assert (info.sample_rate, info.channels, info.bits, info.format) == (rate, channels, 16, "PCM")
    assert info.frames == ref.size and info.seconds == pytest.approx(ref.size / rate)


def test_info_agrees_with_pascal_labels(data_root) -> None:
    with open(data_root / "pascal" / "labels.csv", newline="") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    for path in (_spread(_files(data_root, "pascal/set_a"), 4)
                 + _spread(_files(data_root, "pascal/set_b"), 4)):
        row = rows[f"{path.parent.name}/{path.name}"]
        info = read_wav_info(path)
        assert info.sample_rate == int(row["sample_rate"])
        assert info.seconds == pytest.approx(float(row["seconds"]), abs=1e-3)


def test_info_agrees_with_physionet_headers(data_root) -> None:
    for db in ("training-a", "training-b", "training-c", "training-d", "training-f"):
        for path in _spread(_files(data_root, f"physionet2016/{db}"), 3):
            lines = [ln.split() for ln in path.with_suffix(".hea").read_text().splitlines()]
            record, signal = lines[0], next(ln for ln in lines if ln[0] == path.name)
            info = read_wav_info(path)
            assert info.sample_rate == int(record[2].split("/")[0])
            assert info.frames == int(record[3])
            assert info.bits == int(signal[1].split("+")[0])  # "16+44": 16-bit, 44-byte header


def test_load_audio_resamples_and_reports_file_info(data_root) -> None:
    path = pascal_a_at(data_root, 44100)[0]  # a phone recording at the phone's rate
    y, info = load_audio(path, 2000)
    x = read_wav(path)
    assert info.sample_rate == 44100 and info.frames == x.size
    np.testing.assert_array_equal(y, resample(x, 44100, 2000))
    np.testing.assert_array_equal(read_wav(path, 2000), y)
    np.testing.assert_array_equal(read_wav(path, 44100), x)
    assert isinstance(info, WavInfo)
    with pytest.raises(AttributeError):
        info.sample_rate = 1  # type: ignore[misc]  # frozen


# ---------------------------------------------------------------- codings of one recording

def _codings(x: np.ndarray) -> dict[str, tuple[int, int, int, bytes]]:
    """name -> (tag, channels, bits, data bytes), each lossless for 16-bit samples."""
    x32 = x.astype(np.int32)
    return {
        "pcm16": (1, 1, 16, x.astype("<i2").tobytes()),
        "pcm24": (1, 1, 24, _pcm24(x32 << 8)),
        "pcm32": (1, 1, 32, (x32 << 16).astype("<i4").tobytes()),
        "float32": (3, 1, 32, (x / 32768.0).astype("<f4").tobytes()),
        "float64": (3, 1, 64, (x / 32768.0).astype("<f8").tobytes()),
        "stereo16": (1, 2, 16, _interleave(x, x).astype("<i2").tobytes()),
        "stereo24": (1, 2, 24, _pcm24(_interleave(x32 << 8, x32 << 8))),
        "stereo_float32": (3, 2, 32, (_interleave(x, x) / 32768.0).astype("<f4").tobytes()),
        "quad32": (1, 4, 32, (_interleave(x32, x32, x32, x32) << 16).astype("<i4").tobytes()),
    }


@pytest.mark.parametrize("extensible", [False, True], ids=["plain", "extensible"])
@pytest.mark.parametrize("name", ["pcm16", "pcm24", "pcm32", "float32", "float64", "stereo16",
                                  "stereo24", "stereo_float32", "quad32"])
def test_lossless_codings_decode_exactly(tmp_path, original, name, extensible) -> None:
    x, rate = original
    tag, channels, bits, data = _codings(x)[name]
    path = _write(tmp_path, f"{name}.wav", _wav(tag, channels, rate, bits, data,
                                                 extensible=extensible))
    np.testing.assert_array_equal(read_wav(path), x)
    info = read_wav_info(path)
    kind = "PCM" if tag == 1 else "IEEE float"
    assert info.format == kind + (" (extensible)" if extensible else "")
    assert (info.channels, info.bits, info.frames, info.sample_rate) == (channels, bits, x.size,
                                                                         rate)


def test_8bit_is_the_16bit_recording_rounded_to_8_bits(tmp_path, original) -> None:
    x, rate = original
    u8 = np.clip((x.astype(np.int32) + 128) >> 8, -128, 127) + 128
    path = _write(tmp_path, "u8.wav", _wav(1, 1, rate, 8, u8.astype(np.uint8).tobytes()))
    y = read_wav(path)
    np.testing.assert_array_equal(y, ((u8 - 128) << 8).astype(np.int16))
    top = x.astype(np.int32) + 128 >= 128 << 8  # rounds past 8-bit code 127: saturates there
    assert np.max(np.abs(y[~top].astype(np.int32) - x[~top])) <= 128  # half an 8-bit step
    assert (y[top] == 127 << 8).all()
    assert read_wav_info(path).bits == 8


def test_lossy_codings_within_one_lsb(tmp_path, original) -> None:
    """True 24-bit / 32-bit / float content (extra low bits) rounds to within 1 LSB."""
    x, rate = original
    rng = np.random.default_rng(7)
    x64 = x.astype(np.int64)
    deep24 = np.clip((x64 << 8) + rng.integers(-127, 128, x.size), -(1 << 23), (1 << 23) - 1)
    deep32 = np.clip((x64 << 16) + rng.integers(-32767, 32768, x.size), -(1 << 31), (1 << 31) - 1)
    fine = (x + rng.uniform(-0.49, 0.49, x.size)) / 32768.0
    cases = {
        "deep24": _wav(1, 1, rate, 24, _pcm24(deep24)),
        "deep32": _wav(1, 1, rate, 32, deep32.astype("<i4").tobytes()),
        "fine64": _wav(3, 1, rate, 64, fine.astype("<f8").tobytes()),
        "fine32": _wav(3, 1, rate, 32, fine.astype("<f4").tobytes(), extensible=True),
    }
    for name, payload in cases.items():
        y = read_wav(_write(tmp_path, f"{name}.wav", payload)).astype(np.int32)
        assert np.max(np.abs(y - x)) <= 1, name


def test_stereo_mix_is_the_rounded_average(tmp_path, original) -> None:
    """Different channels (chest piece on one, the other quieter): mono = average, rounded."""
    x, rate = original
    other = (x.astype(np.int32) // 3).astype(np.int16)
    rev = x[::-1].copy()
    data = _interleave(x, other, rev).astype("<i2").tobytes()
    y = read_wav(_write(tmp_path, "three.wav", _wav(1, 3, rate, 16, data))).astype(np.float64)
    mean = (x.astype(np.float64) + other + rev) / 3.0
    assert np.max(np.abs(y - mean)) <= 0.5


def test_full_scale_multichannel_does_not_overflow(tmp_path) -> None:
    n = 64
    hi, lo = np.full(n, 32767, np.int16), np.full(n, -32768, np.int16)
    for bits, scale in ((16, 1), (32, 1 << 16)):
        dtype = "<i2" if bits == 16 else "<i4"
        data = (_interleave(*[hi] * 8).astype(np.int64) * scale).astype(dtype).tobytes()
        np.testing.assert_array_equal(read_wav(_write(tmp_path, "hi.wav",
                                                      _wav(1, 8, 8000, bits, data))), hi)
        data = (_interleave(*[lo] * 8).astype(np.int64) * scale).astype(dtype).tobytes()
        np.testing.assert_array_equal(read_wav(_write(tmp_path, "lo.wav",
                                                      _wav(1, 8, 8000, bits, data))), lo)
    top24 = _pcm24(np.full(n, (1 << 23) - 1))  # rounds up past 32767: must saturate
    assert np.all(read_wav(_write(tmp_path, "t24.wav", _wav(1, 1, 8000, 24, top24))) == 32767)


def test_float_clipping_and_nan(tmp_path) -> None:
    f = np.array([0.0, 1.0, -1.0, 1.5, -7.0, np.nan, np.inf, -np.inf, 0.5, -0.5, 1e-6])
    y = read_wav(_write(tmp_path, "f.wav", _wav(3, 1, 2000, 64, f.astype("<f8").tobytes())))
    np.testing.assert_array_equal(
        y, [0, 32767, -32768, 32767, -32768, 0, 32767, -32768, 16384, -16384, 0])


def test_unknown_chunks_and_pad_bytes_are_skipped(tmp_path, original) -> None:
    x, rate = original
    data = x.astype("<i2").tobytes()
    payload = _riff(
        _chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00test\x00"),  # odd-size sub-chunk
        _chunk(b"junk", b"abc"),  # odd size: a pad byte follows
        _fmt_chunk(1, 1, rate, 16, extensible=False),
        _chunk(b"fact", struct.pack("<I", x.size)),
        _chunk(b"data", data),
        _chunk(b"LIST", b"INFOICMT\x01\x00\x00\x00z\x00"),  # trailing chunk after data
    )
    np.testing.assert_array_equal(read_wav(_write(tmp_path, "chunks.wav", payload)), x)


def test_odd_sized_data_chunk_with_pad_byte(tmp_path, original) -> None:
    x, rate = original
    u8 = (x[:101].astype(np.int32) >> 8) + 128  # 101 bytes: data chunk is odd-sized
    payload = _riff(_fmt_chunk(1, 1, rate, 8, False), _chunk(b"data", u8.astype(np.uint8)
                                                             .tobytes()), _chunk(b"LIST", b"x"))
    assert read_wav(_write(tmp_path, "odd.wav", payload)).size == 101


# ---------------------------------------------------------------- broken files

def _expect_error(path: Path, *fragments: str, **kwargs) -> str:
    with pytest.raises(AudioError) as caught:
        read_wav(path, **kwargs)
    message = str(caught.value)
    assert isinstance(caught.value, HeartsoundError)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    return message


def test_missing_file_directory_and_empty(tmp_path) -> None:
    _expect_error(tmp_path / "nope.wav", "no such file")
    _expect_error(tmp_path, "directory")
    _expect_error(_write(tmp_path, "empty.wav", b""), "empty")
    with pytest.raises(AudioError):
        read_wav_info(tmp_path / "nope.wav")


def test_not_riff_wave(tmp_path, original) -> None:
    x, rate = original
    good = _wav(1, 1, rate, 16, x.astype("<i2").tobytes())
    _expect_error(_write(tmp_path, "mp3.wav", b"ID3\x04\x00" + good[5:]), "not a RIFF/WAVE")
    _expect_error(_write(tmp_path, "avi.wav", good[:8] + b"AVI " + good[12:]), "not a RIFF/WAVE")
    _expect_error(_write(tmp_path, "short.wav", b"RIFF\x04\x00"), "not a RIFF/WAVE")


def test_missing_fmt_or_data_chunk(tmp_path, original) -> None:
    x, rate = original
    data = _chunk(b"data", x.astype("<i2").tobytes())
    fmt = _fmt_chunk(1, 1, rate, 16, False)
    _expect_error(_write(tmp_path, "nofmt.wav", _riff(data)), "no 'fmt ' chunk")
    _expect_error(_write(tmp_path, "nodata.wav", _riff(fmt, _chunk(b"LIST", b"abcd"))),
                  "no 'data' chunk")
    _expect_error(_write(tmp_path, "shortfmt.wav", _riff(_chunk(b"fmt ", fmt[8:18]), data)),
                  "'fmt ' chunk is 10 bytes")


@pytest.mark.parametrize(("tag", "name"), [(6, "A-law"), (7, "mu-law"), (2, "ADPCM"),
                                           (0x11, "IMA ADPCM"), (0x55, "MP3"),
                                           (0x1234, "0x1234")])
def test_unsupported_format_tags_are_named(tmp_path, original, tag, name) -> None:
    x, rate = original
    bits = 8 if tag in (6, 7) else 16
    payload = _wav(tag, 1, rate, bits, x.astype("<i2").tobytes())
    _expect_error(_write(tmp_path, "tag.wav", payload), name, "not supported", "sox")
    ext = _wav(tag, 1, rate, bits, x.astype("<i2").tobytes(), extensible=True)
    _expect_error(_write(tmp_path, "tagx.wav", ext), name, "not supported")


def test_unknown_extensible_guid(tmp_path, original) -> None:
    x, rate = original
    payload = bytearray(_wav(1, 1, rate, 16, x.astype("<i2").tobytes(), extensible=True))
    guid_at = 12 + 8 + 24 + 2  # RIFF header, fmt chunk header, fmt fields, sub-format tag
    payload[guid_at:guid_at + 4] = b"\xde\xad\xbe\xef"
    _expect_error(_write(tmp_path, "guid.wav", bytes(payload)), "sub-format GUID")


@pytest.mark.parametrize(("tag", "bits"), [(1, 12), (1, 20), (1, 4), (1, 64), (3, 16), (3, 24)])
def test_unsupported_bit_depths(tmp_path, original, tag, bits) -> None:
    x, rate = original
    payload = _wav(tag, 1, rate, bits, x.astype("<i2").tobytes())
    _expect_error(_write(tmp_path, "bits.wav", payload), f"{bits}-bit", "not supported")


def test_zero_channels_and_zero_rate(tmp_path, original) -> None:
    x, rate = original
    data = x.astype("<i2").tobytes()
    _expect_error(_write(tmp_path, "c0.wav", _wav(1, 0, rate, 16, data)), "0 channels")
    _expect_error(_write(tmp_path, "r0.wav", _wav(1, 1, 0, 16, data)), "0 Hz")


def test_truncated_data_chunk(tmp_path, original) -> None:
    x, rate = original
    full = _wav(1, 2, rate, 16, _interleave(x, x).astype("<i2").tobytes())
    cut = full[:-1001]  # the declared data size stays; 1001 bytes are gone
    path = _write(tmp_path, "cut.wav", cut)
    declared, present = 4 * x.size, 4 * x.size - 1001
    message = _expect_error(path, "truncated", str(declared), str(present), "copy the file again")
    assert "allow_truncated" not in message  # a Python argument means nothing on the CLI
    with pytest.raises(AudioError):
        read_wav_info(path)
    y, info = load_audio(path, allow_truncated=True)
    whole = present // 4
    assert info.frames == whole == y.size
    np.testing.assert_array_equal(y, x[:whole])
    assert read_wav_info(path, allow_truncated=True).frames == whole


def test_data_not_whole_frames(tmp_path, original) -> None:
    x, rate = original
    data = x.astype("<i2").tobytes()[:-1]  # stereo: 4-byte frames, last one cut
    path = _write(tmp_path, "frames.wav", _wav(1, 2, rate, 16, data[:4 * 100 + 2]))
    _expect_error(path, "not a whole number of 4-byte frames")
    assert read_wav(path, allow_truncated=True).size == 100


def test_zero_samples(tmp_path) -> None:
    path = _write(tmp_path, "none.wav", _wav(1, 1, 4000, 16, b""))
    _expect_error(path, "no samples")
    message = _expect_error(_write(tmp_path, "part.wav", _wav(1, 1, 4000, 16, b"\x01")),
                            "not a whole number", "export it again")
    assert "allow_truncated" not in message
    _expect_error(path, "no samples", allow_truncated=True)


def test_bad_target_rate_names_the_file(tmp_path, original) -> None:
    x, rate = original
    path = _write(tmp_path, "ok.wav", _wav(1, 1, rate, 16, x.astype("<i2").tobytes()))
    _expect_error(path, "sample rate of 0", rate=0)
    _expect_error(path, "sample rate of -2000", rate=-2000)


def test_info_reads_the_header_only(tmp_path) -> None:
    """A 2 GB (sparse) recording: the header answers at once, without reading samples."""
    frames = 10**9
    fmt = _fmt_chunk(1, 1, 2000, 16, False)
    header = (b"RIFF" + struct.pack("<I", 4 + len(fmt) + 8 + 2 * frames) + b"WAVE" + fmt
              + b"data" + struct.pack("<I", 2 * frames))
    path = tmp_path / "huge.wav"
    with open(path, "wb") as fh:
        fh.write(header)
        fh.truncate(len(header) + 2 * frames)
    tracemalloc.start()
    t0 = time.perf_counter()
    info = read_wav_info(path)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert info.frames == frames and info.seconds == frames / 2000
    assert elapsed < 0.5 and peak < 2**20


def test_fmt_after_data_is_still_found(tmp_path, original) -> None:
    x, rate = original
    payload = _riff(_chunk(b"data", x.astype("<i2").tobytes()), _fmt_chunk(1, 1, rate, 16, False))
    np.testing.assert_array_equal(read_wav(_write(tmp_path, "late.wav", payload)), x)
