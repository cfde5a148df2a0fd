"""WAV files in, int16 mono at the model's rate out.

Why our own RIFF parser: the stdlib ``wave`` module reads only integer PCM; phones and
digital stethoscopes also write 32-bit float and WAVE_FORMAT_EXTENSIBLE files, and a
screening tool must tell a person *which* file is wrong and what to do instead of
showing a traceback. So every bad file raises :class:`edge.errors.AudioError` with one
line: the file, the problem, the fix.

Supported: 8-bit unsigned, 16/24/32-bit signed PCM (tag 1), 32/64-bit IEEE float
(tag 3), and WAVE_FORMAT_EXTENSIBLE (tag 0xFFFE) carrying either; any number of
channels; any sample rate. Unknown chunks (LIST, fact, cue, ...) are skipped, including
the pad byte after an odd-sized chunk.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import AudioError
from edge.quality import quantisation_step
from edge.resample import resample

__all__ = ["WavInfo", "load_audio", "read_wav", "read_wav_for_screening", "read_wav_info"]

TAG_PCM = 0x0001
TAG_FLOAT = 0x0003
TAG_EXTENSIBLE = 0xFFFE
# Tags seen in the wild that we refuse, named so the message can say what the file is.
TAG_NAMES = {
    0x0001: "PCM",
    0x0002: "Microsoft ADPCM",
    0x0003: "IEEE float",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG",
    0x0055: "MPEG layer 3 (MP3)",
    0x0161: "Windows Media Audio",
    0x2000: "AC-3",
    0xFFFE: "extensible",
}
# KSDATAFORMAT_SUBTYPE_* GUIDs: the first two bytes are the plain format tag.
GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
PCM_BITS = (8, 16, 24, 32)
FLOAT_BITS = (32, 64)
FMT_MIN = 16  # bytes of a plain WAVEFORMAT
FMT_EXTENSIBLE_MIN = 40  # WAVEFORMATEXTENSIBLE with cbSize = 22
RIFF_HEADER = 12
CHUNK_HEADER = 8
INT16_MIN, INT16_MAX = -32768, 32767
INT16_SCALE = 32768.0  # float full scale: s / 32768 is the libsndfile/sox convention
U8_OFFSET = 128  # 8-bit WAV is unsigned, silence = 128
CONVERT_HINT = "convert it with e.g. `sox IN -e signed-integer -b 16 OUT.wav`"


@dataclass(frozen=True)
class WavInfo:
    """What a WAV header says, checked against the file's size.

    ``frames`` counts whole frames that will be decoded (one frame = one sample per
    channel); ``seconds = frames / sample_rate``; ``format`` is "PCM" or "IEEE float",
    with " (extensible)" when the file uses WAVE_FORMAT_EXTENSIBLE.
    """

    path: str
    sample_rate: int
    channels: int
    bits: int
    format: str
    frames: int
    seconds: float


@dataclass(frozen=True)
class _Layout:
    """Where the samples are and how they are coded (private to this module)."""

    info: WavInfo
    is_float: bool
    data_offset: int


def _fail(path: str, problem: str, fix: str) -> AudioError:
    return AudioError(f"{path}: {problem}; {fix}")


def _open_checked(path: str | os.PathLike) -> tuple[str, object, int]:
    """Open for reading, turning every OS-level failure into one AudioError line."""
    name = str(path)
    p = Path(path)
    if p.is_dir():
        raise _fail(name, "is a directory, not a WAV file", "pass the path of a .wav file")
    try:
        fh = open(p, "rb")  # noqa: SIM115 - closed by the caller's with-block
    except FileNotFoundError:
        raise _fail(name, "no such file", "check the path and the working directory") from None
    except PermissionError:
        raise _fail(name, "permission denied", "make the file readable") from None
    except OSError as exc:
        raise _fail(name, f"cannot open ({exc.strerror})", "check the file") from None
    size = os.fstat(fh.fileno()).st_size
    if size == 0:
        fh.close()
        raise _fail(name, "file is empty (0 bytes)", "re-record or copy the file again")
    return name, fh, size


def _parse_fmt(name: str, body: bytes) -> tuple[int, int, int, int, str]:
    """(tag, channels, rate, bits, format name) from a 'fmt ' chunk, extensible unwrapped."""
    if len(body) < FMT_MIN:
        raise _fail(name, f"'fmt ' chunk is {len(body)} bytes, needs at least {FMT_MIN}",
                    "the header is damaged; export the recording again")
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", body)
    suffix = ""
    if tag == TAG_EXTENSIBLE:
        if len(body) < FMT_EXTENSIBLE_MIN:
            raise _fail(name, f"extensible 'fmt ' chunk is {len(body)} bytes, needs "
                        f"{FMT_EXTENSIBLE_MIN}", "the header is damaged; export it again")
        guid = body[24:40]
        if guid[2:] != GUID_TAIL:
            raise _fail(name, f"extensible WAV with unknown sub-format GUID {guid.hex()}",
                        CONVERT_HINT)
        tag = struct.unpack_from("<H", guid)[0]
        suffix = " (extensible)"
    if tag not in (TAG_PCM, TAG_FLOAT):
        what = TAG_NAMES.get(tag, "unknown")
        raise _fail(name, f"WAV format {what} (tag 0x{tag:04X}) is not supported "
                    "(only PCM and IEEE float)", CONVERT_HINT)
    allowed = PCM_BITS if tag == TAG_PCM else FLOAT_BITS
    if bits not in allowed:
        kind = "PCM" if tag == TAG_PCM else "float"
        raise _fail(name, f"{bits}-bit {kind} is not supported "
                    f"({'/'.join(map(str, allowed))}-bit {kind} is)", CONVERT_HINT)
    if channels == 0:
        raise _fail(name, "header says 0 channels", "the header is damaged; export it again")
    if rate == 0:
        raise _fail(name, "header says a sample rate of 0 Hz",
                    "the header is damaged; export it again with its real rate")
    return tag, channels, rate, bits, TAG_NAMES[tag] + suffix


def _find_chunks(name: str, fh, size: int) -> tuple[bytes | None, int | None, int]:
    """Walk the RIFF chunks: (fmt body, data offset, declared data size).

    Stops at 'data' once 'fmt ' is known, so the samples themselves are never read here.
    A chunk header cut off by the end of the file ends the walk.
    """
    head = fh.read(RIFF_HEADER)
    if len(head) < RIFF_HEADER or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise _fail(name, f"not a RIFF/WAVE file (starts with {head[:12]!r})",
                    "pass a .wav file, or " + CONVERT_HINT)
    fmt_body, data_offset, data_size = None, None, 0
    pos = RIFF_HEADER
    while pos + CHUNK_HEADER <= size:
        fh.seek(pos)
        chunk_id, chunk_size = struct.unpack("<4sI", fh.read(CHUNK_HEADER))
        body = pos + CHUNK_HEADER
        if chunk_id == b"fmt ":
            fmt_body = fh.read(chunk_size)
        elif chunk_id == b"data" and data_offset is None:
            data_offset, data_size = body, chunk_size
            if fmt_body is not None:
                break
        pos = body + chunk_size + (chunk_size & 1)  # odd chunks carry a pad byte
    return fmt_body, data_offset, data_size


def _layout(fh, size: int, name: str, allow_truncated: bool) -> _Layout:
    fmt_body, data_offset, data_size = _find_chunks(name, fh, size)
    if fmt_body is None:
        raise _fail(name, "WAV has no 'fmt ' chunk", "the file is damaged; export it again")
    tag, channels, rate, bits, fmt_name = _parse_fmt(name, fmt_body)
    if data_offset is None:
        raise _fail(name, "WAV has no 'data' chunk",
                    "the file is damaged or was never finished; record it again")
    frame_bytes = channels * (bits // 8)
    present = size - data_offset
    if data_size > present and not allow_truncated:
        raise _fail(name, f"data chunk truncated: header declares {data_size} bytes, "
                    f"file holds {present}", "the copy was cut short: copy the file again "
                    "from the recorder")
    usable = min(data_size, present)
    if usable % frame_bytes and not allow_truncated:
        raise _fail(name, f"data size {usable} bytes is not a whole number of "
                    f"{frame_bytes}-byte frames", "the file is damaged; export it again")
    frames = usable // frame_bytes
    if frames == 0:
        raise _fail(name, "WAV holds no samples (empty data chunk)", "record it again")
    info = WavInfo(name, rate, channels, bits, fmt_name, frames, frames / rate)
    return _Layout(info, tag == TAG_FLOAT, data_offset)


def _read_layout(path: str | os.PathLike, allow_truncated: bool,
                 with_data: bool) -> tuple[_Layout, bytes]:
    name, fh, size = _open_checked(path)
    with fh:
        layout = _layout(fh, size, name, allow_truncated)
        if not with_data:
            return layout, b""
        info = layout.info
        fh.seek(layout.data_offset)
        raw = fh.read(info.frames * info.channels * (info.bits // 8))
    return layout, raw


def read_wav_info(path: str | os.PathLike, *, allow_truncated: bool = False) -> WavInfo:
    """Header facts of a WAV file, reading the chunks' headers only (not the samples).

    Raises the same AudioError as :func:`read_wav` for any header problem, so a
    directory scan can reject bad files before decoding anything.
    """
    return _read_layout(path, allow_truncated, with_data=False)[0].info


def _int_frames(raw: bytes, bits: int, channels: int) -> tuple[np.ndarray, int]:
    """Samples as int64 (frames x channels) and the right shift that maps them to q15."""
    if bits == 8:
        u = np.frombuffer(raw, np.uint8).astype(np.int64)
        return ((u - U8_OFFSET) << 8).reshape(-1, channels), 0  # q15, exact
    if bits == 16:
        return np.frombuffer(raw, "<i2").astype(np.int64).reshape(-1, channels), 0  # q15
    if bits == 24:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int64)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = v - ((v & 0x800000) << 1)  # sign-extend 24 -> 64 bits
        return v.reshape(-1, channels), 8  # q23
    return np.frombuffer(raw, "<i4").astype(np.int64).reshape(-1, channels), 16  # q31


def _mix_int(frames: np.ndarray, shift: int) -> np.ndarray:
    """Average channels and drop ``shift`` bits with ONE round-half-up, then saturate.

    int64 holds the sum of 65535 channels of 32-bit samples (< 2^48) without overflow.
    """
    channels = frames.shape[1]
    total = frames.sum(axis=1) if channels > 1 else frames[:, 0]  # q(15+shift) x channels
    divisor = channels << shift
    mono = (total + divisor // 2) // divisor  # q15, rounded
    return np.clip(mono, INT16_MIN, INT16_MAX).astype(np.int16)


def _float_to_int16(raw: bytes, bits: int, channels: int) -> np.ndarray:
    """IEEE float in [-1, 1] -> int16 per channel: clip, scale by 32768, round.

    NaN becomes 0 (silence); +1.0 saturates to 32767. A 16-bit sample written as
    ``s / 32768`` comes back exactly.
    """
    f = np.frombuffer(raw, "<f4" if bits == 32 else "<f8").astype(np.float64)
    f = np.clip(np.nan_to_num(f, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    q = np.clip(np.rint(f * INT16_SCALE), INT16_MIN, INT16_MAX).astype(np.int64)
    return q.reshape(-1, channels)


def _decode(layout: _Layout, raw: bytes) -> np.ndarray:
    """Raw data bytes -> int16 mono.

    Channels are AVERAGED, not the first one taken: stereo phone and stethoscope
    recordings sometimes carry the chest piece on one channel only (which one depends on
    the device), or the same signal on both; the average keeps the signal whichever
    channel holds it (at worst 6 dB quieter), and lowers noise that is independent
    between channels. The sum is done in int64 so no channel count can overflow.
    """
    info = layout.info
    if layout.is_float:
        return _mix_int(_float_to_int16(raw, info.bits, info.channels), 0)
    frames, shift = _int_frames(raw, info.bits, info.channels)
    return _mix_int(frames, shift)


def load_audio(path: str | os.PathLike, rate: int | None = None, *,
               allow_truncated: bool = False) -> tuple[np.ndarray, WavInfo]:
    """Samples as int16 mono at ``rate`` Hz (None: the file's rate) and the file's header.

    The WavInfo describes the FILE (its own rate, channels, frames); the samples are
    resampled with the integer :func:`edge.resample.resample` when the rates differ.
    ``allow_truncated=True`` accepts a file cut short (declared data larger than the
    file, or a partial last frame) and decodes the whole frames present.
    """
    if rate is not None and (int(rate) != rate or rate <= 0):
        raise _fail(str(path), f"cannot convert to a sample rate of {rate!r} Hz",
                    "ask for a positive whole number of Hz such as 2000 or 4000")
    layout, raw = _read_layout(path, allow_truncated, with_data=True)
    mono = _decode(layout, raw)
    if rate is not None and rate != layout.info.sample_rate:
        mono = resample(mono, layout.info.sample_rate, rate)
    return mono, layout.info


def read_wav(path: str | os.PathLike, rate: int | None = None, *,
             allow_truncated: bool = False) -> np.ndarray:
    """int16 mono samples of a WAV file at ``rate`` Hz (None keeps the file's rate).

    Multichannel files are averaged, not reduced to their first channel: see
    ``_decode`` for why. Wider samples are rounded to 16 bits, floats clipped to [-1, 1].
    """
    return load_audio(path, rate, allow_truncated=allow_truncated)[0]


def read_wav_for_screening(path: str | os.PathLike, rate: int) -> tuple[np.ndarray, int]:
    """(int16 mono at ``rate``, quantisation step of the file's decoded samples).

    The quality gate needs the step (an 8-bit file's samples are multiples of 256) and
    resampling hides it, so it is measured here, between decoding and resampling.
    """
    mono, info = load_audio(path)
    step = quantisation_step(mono)
    return (mono if rate == info.sample_rate else resample(mono, info.sample_rate, rate)), step
