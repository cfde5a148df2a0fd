"""A heartsound device on a pseudo-terminal: the firmware's logic, in Python, on a serial node.

Why it exists: the host client must be tested end to end over a real serial device node
(termios, partial reads, a peer that vanishes), and the answers must be the ones the
microcontroller gives. So this emulator runs the same pieces the firmware runs, in the
same streaming form: the fixed-point front end pushed chunk by chunk
(:class:`edge.mfcc.MfccStream`), windows cut and normalised as frames arrive (with the
running statistics of the recording for the per-recording normalisations), the integer
int8 input quantisation (:func:`edge.interpreter.quantise_features`) and the TFLite Micro
interpreter (the ``tflite-micro`` wheel, reset before every window). Its window scores and
decision are bit-identical to ``heartsound screen`` (tests/test_serial_client.py).

:class:`Device` is the protocol state machine (bytes in, bytes out, no I/O);
:class:`Emulator` serves it on a pty from a thread; ``python -m firmware_bridge.emulator``
serves it from a process and prints the pty path. ``LineFaults`` corrupts the bytes on
the "cable" in either direction, for fault tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import select
import signal
import sys
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge import decision
from edge.interpreter import Quantisation, quantise_features
from edge.mfcc import (
    STATS_MAX_FRAMES,
    MfccStream,
    normalise_by_recording,
    normalise_windows,
)
from edge.model_meta import read_model_meta
from edge.spec import RECORDING_NORMALISATIONS, FeatureSpec
from firmware_bridge import protocol as p

FIRMWARE_VERSION = "emulator-1"
DEFAULT_DEVICE_ID = "hs-emulator"
DEFAULT_MAX_CHUNK = 512
"""Samples per AUDIO chunk the emulator accepts (256 ms at 2 kHz, 1 KB on the wire)."""
ARENA_BYTES = 256 * 1024
"""Host-side TFLite Micro arena: far above any heartsound model (the MCU uses its own)."""
POLL_S = 0.05
WRITE_GIVE_UP_S = 1.0
"""A UART with nobody listening drops bytes; so does the emulator after this long."""


# ------------------------------------------------------------------------ the model side


class WindowCutter:
    """Frames in, normalised analysis windows out, as soon as each window is complete.

    The streaming twin of :func:`edge.mfcc.windows` (offset 0): window j ends at frame
    ``frames_per_window + j * window_hop_frames``; only the last ``frames_per_window``
    frames are kept, plus the running statistics of every frame so far (count, and per
    cepstrum the int64 sum and sum of squares, counted up to
    :data:`edge.mfcc.STATS_MAX_FRAMES` frames) for the per-recording normalisations: what
    the firmware keeps (``hs_mfcc_stats``).
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.rows: list[np.ndarray] = []
        self.frames_seen = 0
        self.windows_out = 0
        self.n = 0
        self.sums = np.zeros(spec.n_ceps, dtype=np.int64)
        self.sumsq = np.zeros(spec.n_ceps, dtype=np.int64)

    def push(self, frames: np.ndarray) -> list[np.ndarray]:
        out = []
        size, hop = self.spec.frames_per_window, self.spec.window_hop_frames
        for row in frames:
            self._count(row)
            self.rows.append(row)
            if len(self.rows) > size:
                del self.rows[0]
            self.frames_seen += 1
            if self.frames_seen >= size and (self.frames_seen - size) % hop == 0:
                out.append(self._normalise(np.stack(self.rows).astype(np.int32)))  # int16
                self.windows_out += 1
        return out

    def _count(self, row: np.ndarray) -> None:
        if self.n >= STATS_MAX_FRAMES:
            return  # the cap keeps n * Q and S * S in int64, as on the device
        x = np.asarray(row, dtype=np.int64)
        self.sums += x
        self.sumsq += x * x
        self.n += 1

    def _normalise(self, window: np.ndarray) -> np.ndarray:
        if self.spec.normalise in RECORDING_NORMALISATIONS:
            stats = (np.array([self.n], dtype=np.int64), self.sums[None], self.sumsq[None])
            return normalise_by_recording(window[None], stats, self.spec)[0]
        return normalise_windows(window[None], self.spec)[0]


class TflmModel:
    """The int8 model under the TFLite Micro interpreter, one window at a time."""

    def __init__(self, model: bytes) -> None:
        from tflite_micro.python.tflite_micro import runtime

        self.meta = read_model_meta(model, name="emulator model")
        self.digest = p.model_digest(model)
        self.interpreter = runtime.Interpreter.from_bytes(model, arena_size=ARENA_BYTES)
        self.input_quant = Quantisation(self.meta.input.scale[0], self.meta.input.zero_point[0])
        self.output_quant = Quantisation(self.meta.output.scale[0],
                                         self.meta.output.zero_point[0])
        self.normal_index = decision.normal_index(self.meta.class_names, self.meta.normal_class)

    def scores(self, window: np.ndarray) -> np.ndarray:
        """int8 outputs of one int16 feature window (state reset first, as on the device)."""
        q = quantise_features(window, self.input_quant, 0)  # int8, train/ feeds v as is
        self.interpreter.reset()
        self.interpreter.set_input(q.reshape(self.meta.input.shape), 0)
        self.interpreter.invoke()
        return self.interpreter.get_output(0).reshape(-1).astype(np.int8)

    def decide(self, raw: np.ndarray) -> tuple[int, float]:
        """(Decision code, P(abnormal)) of a recording's window scores, as Screener does."""
        if raw.shape[0] == 0:
            return p.Decision.NO_WINDOWS, float("nan")
        probs = self.output_quant.dequantise(raw)
        mean = decision.recording_probabilities(probs)
        prob = float(decision.abnormal_probability(mean, self.normal_index))
        code = decision.decide(prob, self.meta.threshold) == decision.ABNORMAL
        return (p.Decision.ABNORMAL if code else p.Decision.NORMAL), prob


# ------------------------------------------------------------------ the protocol side


class Session:
    """One recording being streamed: front end state, window cutter, scores so far."""

    def __init__(self, spec: FeatureSpec, start: p.Start, seq: int) -> None:
        self.stream = MfccStream(spec)
        self.cutter = WindowCutter(spec)
        self.expected = start.expected_samples
        self.features = bool(start.flags & p.FLAG_FEATURES)
        self.received = 0
        self.last_seq = seq
        self.scores: list[np.ndarray] = []


class DeviceFault(Exception):
    """A request the device answers with an ERROR (code, text)."""

    def __init__(self, code: p.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Device:
    """The firmware's protocol logic: wire bytes in, wire bytes out, no I/O of its own.

    Stop-and-wait with an answer cache: a request that repeats the last one (same seq,
    type and CRC: the host retransmitted because the answer was lost) gets the cached
    answer again and is not processed twice. At most one BAD_CRC error is sent between
    two good frames, so a request split by noise into two damaged pieces costs the host
    one retransmission, not two.
    """

    def __init__(self, model: bytes, *, device_id: str = DEFAULT_DEVICE_ID,
                 firmware_version: str = FIRMWARE_VERSION,
                 max_chunk_samples: int = DEFAULT_MAX_CHUNK) -> None:
        self.model = TflmModel(model)
        self.spec = self.model.meta.spec
        self.max_chunk = min(max_chunk_samples, self._hop(), (p.MAX_PAYLOAD - 4) // 2)
        self.identity = self._identity(device_id, firmware_version)
        self.decoder = p.StreamDecoder()
        self.session: Session | None = None
        self._last_key: tuple[int, int, int] | None = None
        self._last_answer = b""
        self._nak_pending = False
        self.requests = 0

    def _hop(self) -> int:
        # At most one window may complete per chunk (one RESULT answers one AUDIO).
        return self.spec.window_hop_frames * self.spec.hop_length

    def _identity(self, device_id: str, firmware_version: str) -> p.Identify:
        spec, meta = self.spec, self.model.meta
        feature_bytes = 2 * spec.frames_per_window * spec.n_ceps
        fits = 16 + meta.n_classes + feature_bytes <= p.MAX_PAYLOAD
        return p.Identify(
            flags=p.FLAG_FEATURES if fits else 0, max_chunk_samples=int(self.max_chunk),
            sample_rate_hz=spec.sample_rate_hz, window_samples=spec.window_samples,
            window_hop_samples=self._hop(), frames_per_window=spec.frames_per_window,
            n_ceps=spec.n_ceps, model_sha256_prefix=self.model.digest,
            spec_sha256_prefix=p.spec_digest(spec), threshold=meta.threshold,
            output_scale=self.model.output_quant.scale,
            output_zero_point=self.model.output_quant.zero_point,
            normal_index=self.model.normal_index, device_id=device_id,
            firmware_version=firmware_version, class_names=meta.class_names)

    def reset(self) -> None:
        """Power cycle: no session, no answer cache, an empty receive buffer."""
        self.decoder = p.StreamDecoder()
        self.session = None
        self._last_key, self._last_answer = None, b""
        self._nak_pending = False

    # ---- bytes --------------------------------------------------------------------------
    def receive(self, data: bytes) -> bytes:
        """Wire bytes of every answer the received bytes call for."""
        out = bytearray()
        for item in self.decoder.feed(data):
            if isinstance(item, p.Rejected):
                out += self._rejected(item)
                continue
            self._nak_pending = False
            out += self._answer(item)
        return bytes(out)

    def _rejected(self, item: p.Rejected) -> bytes:
        if item.reason == "version":
            err = p.Error(p.ErrorCode.UNSUPPORTED_VERSION, item.type or 0,
                          f"device speaks protocol v{p.PROTOCOL_VERSION}, got v{item.version}")
            return p.encode_frame(p.Frame(p.MsgType.ERROR, item.seq or 0, err.pack()))
        if self._nak_pending:
            return b""
        self._nak_pending = True
        err = p.Error(p.ErrorCode.BAD_CRC, 0, f"frame rejected ({item.reason})")
        return p.encode_frame(p.Frame(p.MsgType.ERROR, p.NAK_SEQ, err.pack()))

    def _answer(self, frame: p.Frame) -> bytes:
        key = (frame.seq, frame.type, frame.crc)
        if key == self._last_key:
            return self._last_answer
        self.requests += 1
        try:
            mtype, payload = self._dispatch(frame)
        except DeviceFault as fault:
            mtype, payload = p.MsgType.ERROR, p.Error(fault.code, frame.type,
                                                      str(fault)[:200]).pack()
        except p.PayloadError as exc:
            mtype, payload = p.MsgType.ERROR, p.Error(p.ErrorCode.BAD_PAYLOAD, frame.type,
                                                      str(exc)[:200]).pack()
        answer = p.encode_frame(p.Frame(mtype, frame.seq, payload))
        self._last_key, self._last_answer = key, answer
        return answer

    # ---- messages -----------------------------------------------------------------------
    def _dispatch(self, frame: p.Frame) -> tuple[int, bytes]:
        handlers: dict[int, Callable[[p.Frame], tuple[int, bytes]]] = {
            p.MsgType.HELLO: self._hello, p.MsgType.START: self._start,
            p.MsgType.AUDIO: self._audio, p.MsgType.END: self._end,
            p.MsgType.ABORT: self._abort,
        }
        handler = handlers.get(frame.type)
        if handler is None:
            raise DeviceFault(p.ErrorCode.UNKNOWN_TYPE, f"unknown message type 0x{frame.type:02x}")
        return handler(frame)

    def _hello(self, frame: p.Frame) -> tuple[int, bytes]:
        p.parse_empty(frame.payload, "HELLO")
        return p.MsgType.IDENTIFY, self.identity.pack()

    def _start(self, frame: p.Frame) -> tuple[int, bytes]:
        start = p.Start.unpack(frame.payload)
        if self.session is not None:
            raise DeviceFault(p.ErrorCode.BUSY, "a session is running; send ABORT first")
        if start.sample_rate_hz != self.spec.sample_rate_hz:
            raise DeviceFault(p.ErrorCode.WRONG_RATE,
                              f"model runs at {self.spec.sample_rate_hz} Hz, "
                              f"not {start.sample_rate_hz} Hz")
        if start.flags & p.FLAG_FEATURES and not self.identity.features:
            raise DeviceFault(p.ErrorCode.BAD_PAYLOAD, "feature windows do not fit a frame")
        self.session = Session(self.spec, start, frame.seq)
        return p.MsgType.ACK, p.Ack(p.MsgType.START).pack()

    def _audio(self, frame: p.Frame) -> tuple[int, bytes]:
        s = self._session()
        audio = p.Audio.unpack(frame.payload)
        n = audio.samples.size
        if n > self.max_chunk:
            raise DeviceFault(p.ErrorCode.BAD_PAYLOAD,
                              f"chunk of {n} samples exceeds {self.max_chunk}")
        if frame.seq != (s.last_seq + 1) % p.SEQ_MODULO or audio.offset != s.received:
            raise DeviceFault(p.ErrorCode.BAD_SEQUENCE,
                              f"expected seq {(s.last_seq + 1) % p.SEQ_MODULO} at sample "
                              f"{s.received}, got seq {frame.seq} at sample {audio.offset}")
        s.last_seq = frame.seq
        s.received += n
        wins = s.cutter.push(s.stream.push(audio.samples))
        if not wins:
            return p.MsgType.ACK, p.Ack(p.MsgType.AUDIO, s.received, len(s.scores)).pack()
        window = wins[-1]  # max_chunk <= window hop: never more than one
        try:
            scores = self.model.scores(window)
        except Exception as exc:  # the interpreter failing is the device failing
            self.session = None
            raise DeviceFault(p.ErrorCode.INTERNAL, f"model invoke failed: {exc}") from None
        s.scores.append(scores)
        result = p.Result(len(s.scores) - 1, s.received, scores,
                          window if s.features else None)
        return p.MsgType.RESULT, result.pack()

    def _end(self, frame: p.Frame) -> tuple[int, bytes]:
        p.parse_empty(frame.payload, "END")
        s = self._session()
        self.session = None
        if s.expected and s.expected != s.received:
            raise DeviceFault(p.ErrorCode.BAD_SEQUENCE,
                              f"START announced {s.expected} samples, got {s.received}")
        k = self.model.meta.n_classes
        raw = np.stack(s.scores) if s.scores else np.zeros((0, k), np.int8)
        code, prob = self.model.decide(raw)
        sums = tuple(int(v) for v in raw.astype(np.int64).sum(axis=0)) if s.scores else (0,) * k
        return p.MsgType.DONE, p.Done(code, prob, len(s.scores), s.received, sums).pack()

    def _abort(self, frame: p.Frame) -> tuple[int, bytes]:
        p.parse_empty(frame.payload, "ABORT")
        self.session = None
        return p.MsgType.ACK, p.Ack(p.MsgType.ABORT).pack()

    def _session(self) -> Session:
        if self.session is None:
            raise DeviceFault(p.ErrorCode.NO_SESSION, "no session: send START first")
        return self.session


# ------------------------------------------------------------------------- the cable


Mangle = Callable[[bytes], bytes]


@dataclass
class LineFaults:
    """Byte mangling on the cable: ``to_device`` on every read the device makes,
    ``to_host`` on every frame it writes (one call per answer frame)."""

    to_device: Mangle | None = None
    to_host: Mangle | None = None


def random_faults(rate: float, seed: int = 0) -> Mangle:
    """Flip, drop or duplicate each byte with probability ``rate`` (seeded)."""
    rng = random.Random(seed)

    def mangle(data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            r = rng.random()
            if r < rate / 3:
                out.append(byte ^ (1 << rng.randrange(8)))
            elif r < 2 * rate / 3:
                continue
            elif r < rate:
                out += bytes([byte, byte])
            else:
                out.append(byte)
        return bytes(out)

    return mangle


# --------------------------------------------------------------------------- the pty


class Emulator:
    """A :class:`Device` served on a pseudo-terminal from a thread.

    ``port`` is the device node the host opens (``/dev/pts/N``). ``pause()`` makes the
    device deaf and mute (it drops what arrives, like a hung MCU); ``stop()`` closes the
    pty (the host sees the port vanish, like an unplugged cable).
    """

    def __init__(self, model: str | os.PathLike | bytes | None = None, *,
                 faults: LineFaults | None = None, **device_options) -> None:
        self.device = Device(_model_bytes(model), **device_options)
        self.faults = faults or LineFaults()
        self.port = ""
        self._master = self._slave = -1
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Emulator:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._thread = threading.Thread(target=self._serve, name="hs-emulator", daemon=True)
        self._thread.start()
        return self

    def reset(self, faults: LineFaults | None = None) -> None:
        """Reboot the device (see :meth:`Device.reset`) and put new faults on the line."""
        self.faults = faults or LineFaults()
        self.device.reset()
        self.resume()

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], POLL_S)
            if not ready:
                continue
            try:
                data = os.read(self._master, 65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            if self._paused.is_set() or not data:
                continue
            if self.faults.to_device:
                data = self.faults.to_device(data)
            answer = self.device.receive(data)
            for frame in _split_frames(answer):
                self._write(self.faults.to_host(frame) if self.faults.to_host else frame)

    def _write(self, data: bytes) -> None:
        deadline = time.monotonic() + WRITE_GIVE_UP_S
        view = memoryview(data)
        while view and time.monotonic() < deadline and not self._stop.is_set():
            try:
                view = view[os.write(self._master, view):]
            except BlockingIOError:
                select.select([], [self._master], [], POLL_S)
            except OSError:
                return


def _split_frames(wire: bytes) -> list[bytes]:
    """Answers as one wire frame each (every encoded frame is 0x00 ... 0x00)."""
    parts = [part for part in wire.split(p.DELIMITER) if part]
    return [p.DELIMITER + part + p.DELIMITER for part in parts]


def _model_bytes(model: str | os.PathLike | bytes | None) -> bytes:
    from edge.interpreter import model_bytes
    from edge.screening import default_model_path

    return model_bytes(default_model_path() if model is None else model)


# ------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    """Serve a device on a new pty, print its path, run until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m firmware_bridge.emulator",
                                     description="heartsound device emulator on a pty")
    parser.add_argument("--model", type=Path, help="int8 .tflite (default: the shipped one)")
    parser.add_argument("--device-id", default=DEFAULT_DEVICE_ID)
    parser.add_argument("--max-chunk", type=int, default=DEFAULT_MAX_CHUNK,
                        help="largest AUDIO chunk accepted, in samples")
    parser.add_argument("--fault-rate", type=float, default=0.0,
                        help="probability per byte of a flip, drop or duplicate (both ways)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    faults = None
    if args.fault_rate > 0:
        faults = LineFaults(random_faults(args.fault_rate, args.seed),
                            random_faults(args.fault_rate, args.seed + 1))
    from edge.errors import HeartsoundError

    try:
        emu = Emulator(args.model, faults=faults, device_id=args.device_id,
                       max_chunk_samples=args.max_chunk).start()
    except HeartsoundError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return exc.exit_code
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(emu.port, flush=True)
    stop.wait()
    emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
