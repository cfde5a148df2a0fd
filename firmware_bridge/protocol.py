"""The serial protocol between a host and a heartsound device: frames and messages.

``docs/serial_protocol.md`` is the specification; this module and
``firmware_bridge/c/hs_proto.c`` are its two implementations and are tested bit for bit
against each other. Why the choices:

* **COBS with 0x00 delimiters**: a receiver that lost bytes (noise, a cut frame, a port
  opened mid-stream) resynchronises at the next 0x00 without any state, and the overhead
  is bounded (one byte per 254). Senders put a 0x00 *before* every frame too, so a frame
  cut in half never swallows the next one.
* **CRC-32** (IEEE 802.3, zlib's) over header and payload: a screening result must not
  change on a noisy cable. CRC-16 lets one corrupted frame in 65536 through; a 60 s
  recording is ~250 frames each way, so a flaky cable would pass a wrong frame every few
  hundred recordings. CRC-32 makes that 2^-32 per corrupted frame and still costs only a
  few cycles a byte on a Cortex-M4 (16-entry table).
* **Versioned header**: every frame carries the protocol version; a frame of another
  version is reported as a version mismatch, never parsed as this version.

Raw frame (before COBS), little-endian::

    version u8 | type u8 | seq u16 | length u16 | payload[length] | crc32 u32

On the wire: ``0x00 COBS(raw frame) 0x00``.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

PROTOCOL_VERSION = 1
"""Version this implementation speaks (the first byte of every frame)."""

HEADER = struct.Struct("<BBHH")  # version, type, seq, payload length
CRC = struct.Struct("<I")
HEADER_SIZE = HEADER.size  # 6
CRC_SIZE = CRC.size  # 4
MAX_PAYLOAD = 2048
"""Largest payload (bytes): one RESULT with a 74x13 int16 feature window (1924 B) fits."""
MAX_RAW = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
MAX_ENCODED = MAX_RAW + (MAX_RAW + 253) // 254
"""COBS adds one code byte per started run of 254 bytes."""
MAX_WIRE = MAX_ENCODED + 2
"""A frame on the wire, with its leading and trailing 0x00: what a receiver must buffer."""
DELIMITER = b"\x00"
SEQ_MODULO = 1 << 16


class MsgType(IntEnum):
    """Message types: requests from the host below 0x80, responses from the device above."""

    HELLO = 0x01
    START = 0x02
    AUDIO = 0x03
    END = 0x04
    ABORT = 0x05
    IDENTIFY = 0x81
    ACK = 0x82
    RESULT = 0x83
    DONE = 0x84
    ERROR = 0xFF


class ErrorCode(IntEnum):
    """Codes of an ERROR message (its layout is the same in every protocol version)."""

    BAD_CRC = 1  # a frame failed COBS, length or CRC checks (sent with seq 0xFFFF)
    BAD_SEQUENCE = 2  # AUDIO whose seq or sample offset is not the next one
    UNSUPPORTED_VERSION = 3  # frame version the device does not speak
    WRONG_RATE = 4  # START at a sample rate the model was not built for
    BUSY = 5  # START while a session runs (send ABORT first)
    INTERNAL = 6  # the device failed (model invoke, memory)
    BAD_PAYLOAD = 7  # payload too short, too long or with impossible values
    UNKNOWN_TYPE = 8  # a message type the device does not know
    NO_SESSION = 9  # AUDIO or END without a START


class Decision(IntEnum):
    """The device's recording decision in DONE."""

    NORMAL = 0
    ABNORMAL = 1
    NO_WINDOWS = 2  # too little audio for one analysis window


NAK_SEQ = 0xFFFF
"""Sequence number of a BAD_CRC error: the corrupted frame's own number is unknown."""

FLAG_FEATURES = 0x01
"""IDENTIFY: the device can send feature windows; START: send them in every RESULT."""


class PayloadError(ValueError):
    """A payload that does not parse as its message type (device answers BAD_PAYLOAD)."""


# ------------------------------------------------------------------------------ CRC, COBS


def crc32(data: bytes) -> int:
    """CRC-32/ISO-HDLC (zlib): reflected 0x04C11DB7, init and xorout 0xFFFFFFFF."""
    return zlib.crc32(data) & 0xFFFFFFFF


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result holds no 0x00."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
            continue
        block.append(byte)
        if len(block) == 254:
            out.append(255)
            out += block
            block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of :func:`cobs_encode`; ValueError for a 0x00 inside or a block overrun."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise ValueError("0x00 inside a COBS block")
        end = i + code
        if end > n:
            raise ValueError("COBS block runs past the frame end")
        block = data[i + 1:end]
        if 0 in block:
            raise ValueError("0x00 inside a COBS block")
        out += block
        i = end
        if code < 255 and i < n:
            out.append(0)
    return bytes(out)


# ------------------------------------------------------------------------------ frames


@dataclass(frozen=True)
class Frame:
    """One checked frame: its type, sequence number and payload."""

    type: int
    seq: int
    payload: bytes = b""
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD}")
        if not 0 <= self.seq < SEQ_MODULO or not 0 <= self.type <= 0xFF:
            raise ValueError(f"seq {self.seq} or type {self.type} out of range")

    @property
    def raw(self) -> bytes:
        """Header + payload + CRC, before COBS."""
        body = HEADER.pack(self.version, self.type, self.seq, len(self.payload)) + self.payload
        return body + CRC.pack(crc32(body))

    @property
    def crc(self) -> int:
        return CRC.unpack_from(self.raw, len(self.raw) - CRC_SIZE)[0]


def encode_frame(frame: Frame) -> bytes:
    """Wire bytes of a frame: 0x00, COBS(raw), 0x00."""
    return DELIMITER + cobs_encode(frame.raw) + DELIMITER


REJECT_REASONS = ("cobs", "short", "length", "crc", "version", "too_long")


@dataclass(frozen=True)
class Rejected:
    """Bytes between two delimiters that are not a frame of this version, and why.

    ``version`` is set for reason "version": a CRC-valid frame of another protocol
    version (the peer speaks that version), with its type and seq.
    """

    reason: str
    size: int
    version: int | None = None
    type: int | None = None
    seq: int | None = None


def decode_raw(encoded: bytes) -> Frame | Rejected:
    """Check and parse the COBS bytes between two delimiters (no 0x00 inside).

    Order of checks: COBS structure, minimum size, length field against the size, CRC,
    then version, so a corrupted frame is always "crc"/"length"/"cobs", never "version".
    """
    size = len(encoded)
    if size > MAX_ENCODED:
        return Rejected("too_long", size)
    try:
        raw = cobs_decode(encoded)
    except ValueError:
        return Rejected("cobs", size)
    if len(raw) < HEADER_SIZE + CRC_SIZE:
        return Rejected("short", size)
    version, mtype, seq, length = HEADER.unpack_from(raw)
    if length != len(raw) - HEADER_SIZE - CRC_SIZE or length > MAX_PAYLOAD:
        return Rejected("length", size)
    (crc,) = CRC.unpack_from(raw, len(raw) - CRC_SIZE)
    if crc != crc32(raw[:-CRC_SIZE]):
        return Rejected("crc", size)
    if version != PROTOCOL_VERSION:
        return Rejected("version", size, version, mtype, seq)
    return Frame(mtype, seq, raw[HEADER_SIZE:-CRC_SIZE], version)


@dataclass
class StreamDecoder:
    """Bytes in, checked frames out; resynchronises at the next 0x00 after any damage.

    Never yields a frame that failed a check: damaged bytes become :class:`Rejected`
    items (counted in ``rejected``). Empty runs between delimiters (the leading 0x00 of
    every frame) are skipped silently. Memory is bounded by :data:`MAX_ENCODED`: a run
    longer than that is dropped up to the next 0x00.
    """

    buffer: bytearray = field(default_factory=bytearray)
    overflow: bool = False
    frames: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def feed(self, data: bytes) -> list[Frame | Rejected]:
        """Everything completed by ``data``, in order."""
        return list(self._iter(data))

    def _iter(self, data: bytes) -> Iterator[Frame | Rejected]:
        start = 0
        while start < len(data):
            end = data.find(0, start)
            if end < 0:
                self._append(data[start:])
                return
            self._append(data[start:end])
            start = end + 1
            item = self._finish()
            if item is not None:
                yield item

    def _append(self, chunk: bytes) -> None:
        if self.overflow:
            return
        self.buffer += chunk
        if len(self.buffer) > MAX_ENCODED:
            self.overflow = True
            self.buffer.clear()

    def _finish(self) -> Frame | Rejected | None:
        if self.overflow:
            self.overflow = False
            item: Frame | Rejected = Rejected("too_long", MAX_ENCODED + 1)
        elif not self.buffer:
            return None
        else:
            item = decode_raw(bytes(self.buffer))
            self.buffer.clear()
        if isinstance(item, Rejected):
            self.rejected[item.reason] = self.rejected.get(item.reason, 0) + 1
        else:
            self.frames += 1
        return item

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


# ------------------------------------------------------------------------------ payloads


def model_digest(model: bytes) -> bytes:
    """First 8 bytes of the model file's SHA-256 (what IDENTIFY reports)."""
    return hashlib.sha256(model).digest()[:8]


def spec_digest(spec) -> bytes:
    """First 8 bytes of the SHA-256 of a FeatureSpec's canonical JSON (``to_json()``)."""
    return hashlib.sha256(spec.to_json().encode("utf-8")).digest()[:8]


def _str8(text: str) -> bytes:
    raw = text.encode("utf-8")[:255]
    return bytes([len(raw)]) + raw


class _Reader:
    """Cursor over a payload; PayloadError when a field runs past its end."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, fmt: str) -> tuple:
        s = struct.Struct("<" + fmt)
        if self.pos + s.size > len(self.data):
            raise PayloadError(f"{self.what} payload ends early ({len(self.data)} bytes)")
        out = s.unpack_from(self.data, self.pos)
        self.pos += s.size
        return out

    def bytes(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise PayloadError(f"{self.what} payload ends early ({len(self.data)} bytes)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def str8(self) -> str:
        (n,) = self.take("B")
        try:
            return self.bytes(n).decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError(f"{self.what} holds a string that is not UTF-8") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise PayloadError(f"{self.what} payload has {len(self.data) - self.pos} extra "
                               "bytes")


def parse_empty(payload: bytes, what: str) -> None:
    """HELLO, END and ABORT carry nothing."""
    _Reader(payload, what).end()


_IDENTIFY = "BBHIIIHH8s8sdfbBB"


@dataclass(frozen=True)
class Identify:
    """Who the device is and what it runs (the answer to HELLO)."""

    flags: int
    max_chunk_samples: int
    sample_rate_hz: int
    window_samples: int
    window_hop_samples: int
    frames_per_window: int
    n_ceps: int
    model_sha256_prefix: bytes
    spec_sha256_prefix: bytes
    threshold: float
    output_scale: float
    output_zero_point: int
    normal_index: int
    device_id: str
    firmware_version: str
    class_names: tuple[str, ...]
    protocol_version: int = PROTOCOL_VERSION

    def pack(self) -> bytes:
        head = struct.pack("<" + _IDENTIFY, self.protocol_version, self.flags,
                           self.max_chunk_samples, self.sample_rate_hz, self.window_samples,
                           self.window_hop_samples, self.frames_per_window, self.n_ceps,
                           self.model_sha256_prefix, self.spec_sha256_prefix, self.threshold,
                           self.output_scale, self.output_zero_point, self.normal_index,
                           len(self.class_names))
        tail = _str8(self.device_id) + _str8(self.firmware_version)
        return head + tail + b"".join(_str8(c) for c in self.class_names)

    @classmethod
    def unpack(cls, payload: bytes) -> Identify:
        r = _Reader(payload, "IDENTIFY")
        (pv, flags, chunk, rate, win, hop, fpw, ceps, model, spec, thr, scale, zp, normal,
         n_cls) = r.take(_IDENTIFY)
        device_id, fw = r.str8(), r.str8()
        names = tuple(r.str8() for _ in range(n_cls))
        r.end()
        if not (n_cls and normal < n_cls and chunk and rate and fpw and ceps):
            raise PayloadError("IDENTIFY holds zero classes, rate, chunk or window size")
        return cls(flags, chunk, rate, win, hop, fpw, ceps, model, spec, thr, scale, zp, normal,
                   device_id, fw, names, pv)

    @property
    def features(self) -> bool:
        return bool(self.flags & FLAG_FEATURES)


@dataclass(frozen=True)
class Start:
    """Open a session: the rate the host sends at and how many samples will follow."""

    sample_rate_hz: int
    expected_samples: int = 0
    flags: int = 0

    FORMAT = "<IIB"

    def pack(self) -> bytes:
        return struct.pack(self.FORMAT, self.sample_rate_hz, self.expected_samples, self.flags)

    @classmethod
    def unpack(cls, payload: bytes) -> Start:
        r = _Reader(payload, "START")
        out = cls(*r.take(cls.FORMAT[1:]))
        r.end()
        return out


@dataclass(frozen=True)
class Audio:
    """A chunk of int16 samples; ``offset`` is the index of its first sample."""

    offset: int
    samples: np.ndarray

    def pack(self) -> bytes:
        return struct.pack("<I", self.offset) + np.asarray(self.samples, "<i2").tobytes()

    @classmethod
    def unpack(cls, payload: bytes) -> Audio:
        if len(payload) < 6 or (len(payload) - 4) % 2:
            raise PayloadError(f"AUDIO payload of {len(payload)} bytes is not an offset and "
                               "whole int16 samples")
        (offset,) = struct.unpack_from("<I", payload)
        samples = np.frombuffer(payload, "<i2", offset=4).astype(np.int16)
        return cls(offset, samples)


@dataclass(frozen=True)
class Ack:
    """A request done; for AUDIO, how far the session got."""

    acked_type: int
    samples_received: int = 0
    windows_done: int = 0

    FORMAT = "<BIH"

    def pack(self) -> bytes:
        return struct.pack(self.FORMAT, self.acked_type, self.samples_received,
                           self.windows_done)

    @classmethod
    def unpack(cls, payload: bytes) -> Ack:
        r = _Reader(payload, "ACK")
        out = cls(*r.take(cls.FORMAT[1:]))
        r.end()
        return out


@dataclass(frozen=True)
class Result:
    """One analysis window: its int8 model outputs and, if asked for, its int16 features.

    Sent instead of an ACK for the AUDIO chunk that completed the window, so
    ``samples_received`` acknowledges that chunk.
    """

    window_index: int
    samples_received: int
    scores: np.ndarray
    features: np.ndarray | None = None

    def pack(self) -> bytes:
        scores = np.asarray(self.scores, np.int8)
        out = struct.pack("<HIB", self.window_index, self.samples_received, scores.size)
        out += scores.tobytes()
        if self.features is None:
            return out + struct.pack("<HH", 0, 0)
        rows, cols = self.features.shape
        return out + struct.pack("<HH", rows, cols) + np.asarray(self.features,
                                                                 "<i2").tobytes()

    @classmethod
    def unpack(cls, payload: bytes) -> Result:
        r = _Reader(payload, "RESULT")
        index, received, n = r.take("HIB")
        scores = np.frombuffer(r.bytes(n), np.int8).copy()
        rows, cols = r.take("HH")
        feats = None
        if rows * cols:
            feats = np.frombuffer(r.bytes(2 * rows * cols), "<i2").astype(np.int16)
            feats = feats.reshape(rows, cols)
        r.end()
        if n == 0:
            raise PayloadError("RESULT holds no scores")
        return cls(index, received, scores, feats)


@dataclass(frozen=True)
class Done:
    """The session's end: the device's own decision and its integrity figures.

    ``score_sums`` are the sums of every window's int8 score per class: the host checks
    them against the RESULTs it received, so a lost or doubled window cannot go unseen.
    """

    decision: int
    probability_abnormal: float
    windows: int
    samples_received: int
    score_sums: tuple[int, ...]

    def pack(self) -> bytes:
        return struct.pack("<BfHIB", self.decision, self.probability_abnormal, self.windows,
                           self.samples_received, len(self.score_sums)) + struct.pack(
            f"<{len(self.score_sums)}i", *self.score_sums)

    @classmethod
    def unpack(cls, payload: bytes) -> Done:
        r = _Reader(payload, "DONE")
        decision, prob, windows, received, n = r.take("BfHIB")
        sums = r.take(f"{n}i")
        r.end()
        return cls(decision, prob, windows, received, tuple(sums))


@dataclass(frozen=True)
class Error:
    """What went wrong, with a short text; this layout is frozen across versions."""

    code: int
    offending_type: int = 0
    message: str = ""

    def pack(self) -> bytes:
        return struct.pack("<BB", self.code, self.offending_type) + _str8(self.message)

    @classmethod
    def unpack(cls, payload: bytes) -> Error:
        r = _Reader(payload, "ERROR")
        code, mtype = r.take("BB")
        message = r.str8()
        r.end()
        return cls(code, mtype, message)

    @property
    def code_name(self) -> str:
        try:
            return ErrorCode(self.code).name
        except ValueError:
            return f"code {self.code}"
