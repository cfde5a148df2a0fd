"""Host side of the serial protocol: talk to a heartsound device with pyserial.

Stop-and-wait: one request in flight, answered by exactly one frame carrying the same
sequence number. Every read has a deadline, so nothing here can hang: a request that
gets no intact answer within ``timeout`` seconds is sent again (the device answers a
repeated request from its cache, without processing it twice), ``retries`` times, and
then the client raises a one-line :class:`~edge.errors.DeviceError` saying what
happened (no answer, corrupted answers, device-reported error, version mismatch). A
request therefore takes at most ``(retries + 1) * timeout`` seconds.

Nothing from the device is trusted unchecked: frames pass COBS, length and CRC-32
checks in :class:`~firmware_bridge.protocol.StreamDecoder`; a window's index must be
the next one; the DONE message's window count and per-class score sums must equal what
the host received. The recording's decision is recomputed here from the int8 window
scores with the same code as ``heartsound screen`` (:mod:`edge.decision`), so the two
agree bit for bit when the device's scores do.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from edge import decision
from edge.errors import DeviceError
from edge.interpreter import Quantisation
from edge.spec import DEFAULT_SPEC, FeatureSpec
from firmware_bridge import protocol as p
from firmware_bridge.link_settings import (
    DEFAULT_BAUD,
    DEFAULT_MAX_BAD_FRAMES,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    NAK_GRACE,
)

REQUEST_NAMES = {t.value: t.name for t in p.MsgType}
Notify = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"heartsound: {message}", file=sys.stderr, flush=True)


class NoAnswerError(DeviceError):
    """The device did not answer a request at all (after every retry)."""


class LinkError(DeviceError):
    """Answers arrived but corrupted, too often: a bad cable, baud rate or ground."""


class ProtocolMismatchError(DeviceError):
    """The device speaks another protocol version."""


class DeviceReportedError(DeviceError):
    """The device answered with an ERROR message."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class LinkStats:
    """What the link went through: shown with --json, asserted by the fault tests."""

    requests: int = 0
    retransmissions: int = 0
    naks: int = 0
    bad_frames: int = 0
    stale_frames: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class DeviceRun:
    """One recording screened by the device: every window's int8 scores and the DONE."""

    info: p.Identify
    scores: np.ndarray
    features: np.ndarray | None
    done: p.Done
    samples: int
    stats: LinkStats = field(default_factory=LinkStats)


class DeviceClient:
    """A serial connection to one device; use as a context manager."""

    def __init__(self, port: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, baudrate: int = DEFAULT_BAUD,
                 max_bad_frames: int = DEFAULT_MAX_BAD_FRAMES, notify: Notify = _stderr) -> None:
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be > 0 and retries >= 0")
        self.port, self.timeout, self.retries = port, timeout, retries
        self.baudrate, self.max_bad_frames = baudrate, max_bad_frames
        self.notify = notify  # one-line notes for a person (a stale session was aborted)
        self.decoder = p.StreamDecoder()
        self.stats = LinkStats()
        self._damage: Counter[str] = Counter()  # rejected frames by reason, this request
        self._bytes_in = 0  # bytes read from the port, to tell noise from silence
        self._pending: deque[p.Frame | p.Rejected] = deque()
        self._seq = random.randrange(p.SEQ_MODULO)  # a fresh run never looks like a repeat
        self._serial = None
        self._info: p.Identify | None = None

    # ---- port ---------------------------------------------------------------------------
    def open(self) -> DeviceClient:
        import serial

        try:
            # exclusive: while we hold the port no other host can feed a device session,
            # so a session the device still runs is one an earlier run left (see run())
            self._serial = serial.Serial(self.port, self.baudrate, timeout=self.timeout,
                                         write_timeout=self.timeout, exclusive=True)
            self._serial.reset_input_buffer()  # whatever an earlier session left behind
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceError(f"{self.port}: cannot open the serial port ({_why(exc)}); "
                              "check --port and that no other program holds it") from None
        return self

    def close(self) -> None:
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.close()
            self._serial = None

    def __enter__(self) -> DeviceClient:
        return self.open() if self._serial is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- requests -----------------------------------------------------------------------
    def request(self, mtype: p.MsgType, payload: bytes = b"",
                expect: tuple[int, ...] = (p.MsgType.ACK,)) -> p.Frame:
        """Send one request and return its answer, retransmitting on loss or damage."""
        self._seq = (self._seq + 1) % p.SEQ_MODULO
        wire = p.encode_frame(p.Frame(mtype, self._seq, payload))
        self.stats.requests += 1
        self._damage.clear()
        misses: Counter[str] = Counter()  # attempts without an answer, by what came instead
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retransmissions += 1
            self._write(wire)
            damaged, read = sum(self._damage.values()), self._bytes_in
            answer = self._await(self._seq, expect, time.monotonic() + self.timeout)
            if isinstance(answer, p.Frame):
                return answer
            if answer == "nak" or sum(self._damage.values()) > damaged:
                misses[answer] += 1
            else:
                misses["noise" if self._bytes_in > read else "lost"] += 1
        raise self._give_up(mtype, misses)

    def _await(self, seq: int, expect: tuple[int, ...], deadline: float) -> p.Frame | str:
        """The answer to ``seq``, or "nak"/"timeout" when it is time to retransmit.

        A NAK (BAD_CRC error) shortens the wait to :data:`NAK_GRACE` of the timeout
        instead of ending it: the NAK may be for the damaged rest of an *earlier* attempt,
        cut off by this attempt's leading 0x00, with this attempt's answer right behind.
        So every fault on the line costs at most one retransmission.
        """
        nak = False
        while True:
            item = self._next_item(deadline)
            if item is None:
                return "nak" if nak else "timeout"
            if isinstance(item, p.Rejected):
                self._rejected(item)
                continue
            if item.type == p.MsgType.ERROR:
                err = _error_of(item)
                if err.code == p.ErrorCode.BAD_CRC:
                    self.stats.naks += 1
                    nak = True
                    deadline = min(deadline, time.monotonic() + NAK_GRACE * self.timeout)
                    continue
                if item.seq == seq:
                    raise self._reported(err)
                self.stats.stale_frames += 1
                continue
            if item.seq != seq:
                self.stats.stale_frames += 1  # an answer to an earlier retransmission
                continue
            if item.type not in expect:
                raise DeviceError(f"{self.port}: device answered {_name(item.type)} where "
                                  f"{'/'.join(_name(t) for t in expect)} was due; it does not "
                                  "follow heartsound protocol v1")
            return item

    def _next_item(self, deadline: float) -> p.Frame | p.Rejected | None:
        while not self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._pending.extend(self.decoder.feed(self._read(remaining)))
        return self._pending.popleft()

    def _read(self, timeout: float) -> bytes:
        import serial

        ser = self._port()
        try:
            ser.timeout = timeout
            data = ser.read(max(1, ser.in_waiting))
            self._bytes_in += len(data)
            return data
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"{self.port}: serial port failed while reading ({_why(exc)}); "
                              "the device was disconnected or reset") from None

    def _write(self, data: bytes) -> None:
        import serial

        ser = self._port()
        try:
            ser.write(data)
            ser.flush()
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"{self.port}: serial port failed while writing ({_why(exc)}); "
                              "the device was disconnected or reset") from None

    def _port(self):
        if self._serial is None:
            self.open()
        return self._serial

    def _rejected(self, item: p.Rejected) -> None:
        if item.reason == "version":
            raise ProtocolMismatchError(
                f"{self.port}: device speaks serial protocol v{item.version}, this heartsound "
                f"speaks v{p.PROTOCOL_VERSION}; use a heartsound release for v{item.version} "
                "or update the firmware")
        self.stats.bad_frames += 1
        self._damage[item.reason] += 1
        if self.stats.bad_frames > self.max_bad_frames:
            raise LinkError(f"{self.port}: {self.stats.bad_frames} corrupted frames from the "
                            f"device ({_damage_text(self.decoder.rejected)}); check the cable, "
                            "the baud rate and the ground")

    def _reported(self, err: p.Error) -> DeviceError:
        if err.code == p.ErrorCode.UNSUPPORTED_VERSION:
            return ProtocolMismatchError(f"{self.port}: device refused protocol "
                                         f"v{p.PROTOCOL_VERSION} ({err.message}); update the "
                                         "firmware or use a matching heartsound release")
        hint = {p.ErrorCode.BUSY: "; rerun with --force to abort the running session",
                p.ErrorCode.WRONG_RATE: "; the device's model runs at another rate"}
        return DeviceReportedError(f"{self.port}: device reported {err.code_name} for "
                                   f"{_name(err.offending_type)}: {err.message}"
                                   f"{hint.get(err.code, '')}", err.code)

    def _give_up(self, mtype: int, misses: Counter[str]) -> DeviceError:
        """What the attempts met, named: a damaged line or a silent device."""
        attempts = self.retries + 1
        what = f"{self.port}: no intact answer to {_name(mtype)} in {attempts} attempts"
        if self._damage or misses["nak"] or misses["noise"]:
            seen = [_damage_text(self._damage)] if self._damage else []
            if misses["nak"]:
                seen.append(_count(misses["nak"], "request") + " rejected by the device as "
                            "damaged")
            if misses["noise"]:
                seen.append(_count(misses["noise"], "answer") + " drowned in bytes with no "
                            "frame end (noise)")
            if misses["lost"]:
                seen.append(_count(misses["lost"], "answer") + " lost (nothing came back)")
            return LinkError(f"{what}: {', '.join(seen)}; the line damages frames: check "
                             "the cable, the baud rate and the ground")
        return NoAnswerError(f"{what} of {self.timeout:g} s each: the device does not answer; "
                             "check that it is powered and runs heartsound firmware, the "
                             "--port and the baud rate (or raise --timeout)")

    # ---- messages -----------------------------------------------------------------------
    def identify(self) -> p.Identify:
        """Who the device is and what model it runs (HELLO -> IDENTIFY)."""
        frame = self.request(p.MsgType.HELLO, b"", (p.MsgType.IDENTIFY,))
        try:
            self._info = p.Identify.unpack(frame.payload)
        except p.PayloadError as exc:
            raise DeviceError(f"{self.port}: device sent an unreadable IDENTIFY ({exc}); "
                              "it does not follow heartsound protocol v1") from None
        return self._info

    def abort(self) -> None:
        """End any session the device is running (it answers ACK even when idle)."""
        self.request(p.MsgType.ABORT)

    def run(self, pcm: np.ndarray, *, features: bool = False, force: bool = False) -> DeviceRun:
        """Stream int16 samples (at the device's rate) and collect every window's scores.

        ``features`` asks for each window's int16 features too (for bit-exact checks);
        ``force`` aborts any session first. Without it a START answered BUSY aborts the
        session and starts again, with one note: the port is ours alone (opened
        exclusively), so that session is one an earlier run left open when its link
        failed, and nobody will ever finish it.
        """
        info = self._info or self.identify()
        if features and not info.features:
            raise DeviceError(f"{self.port}: device {info.device_id} cannot send feature "
                              "windows; drop --features")
        if force:
            self.abort()
        pcm = np.ascontiguousarray(pcm, dtype=np.int16)
        flags = p.FLAG_FEATURES if features else 0
        self._start(p.Start(info.sample_rate_hz, pcm.size, flags), info)
        try:
            results = self._stream(pcm, info)
            done = self._done(self.request(p.MsgType.END, b"", (p.MsgType.DONE,)))
        except DeviceReportedError:
            self._abort_quietly()
            raise
        return self._checked_run(info, results, done, pcm.size)

    def _start(self, start: p.Start, info: p.Identify) -> None:
        try:
            self.request(p.MsgType.START, start.pack())
        except DeviceReportedError as exc:
            if exc.code != p.ErrorCode.BUSY:
                raise
            self.abort()
            self.notify(f"{self.port}: device {info.device_id} still held a session an "
                        "earlier run left open (its link failed); aborted it and started "
                        "this recording afresh")
            self.request(p.MsgType.START, start.pack())

    def _stream(self, pcm: np.ndarray, info: p.Identify) -> list[p.Result]:
        results: list[p.Result] = []
        chunk = info.max_chunk_samples
        for offset in range(0, pcm.size, chunk):
            part = pcm[offset:offset + chunk]
            frame = self.request(p.MsgType.AUDIO, p.Audio(offset, part).pack(),
                                 (p.MsgType.ACK, p.MsgType.RESULT))
            received = offset + part.size
            if frame.type == p.MsgType.RESULT:
                res = self._parse(p.Result, frame)
                self._check(res.window_index == len(results) and res.samples_received
                            == received, f"RESULT for window {res.window_index} at sample "
                            f"{res.samples_received}, expected window {len(results)} at "
                            f"{received}")
                results.append(res)
            else:
                ack = self._parse(p.Ack, frame)
                self._check(ack.samples_received == received and ack.windows_done
                            == len(results), f"ACK at sample {ack.samples_received} with "
                            f"{ack.windows_done} windows, expected {received} and {len(results)}")
        return results

    def _done(self, frame: p.Frame) -> p.Done:
        return self._parse(p.Done, frame)

    def _checked_run(self, info: p.Identify, results: list[p.Result], done: p.Done,
                     n: int) -> DeviceRun:
        k = len(info.class_names)
        scores = np.stack([r.scores for r in results]) if results else np.zeros((0, k), np.int8)
        self._check(scores.shape[1] == k, f"{scores.shape[1]} scores per window for {k} classes")
        sums = tuple(int(v) for v in scores.astype(np.int64).sum(axis=0))
        self._check(done.windows == len(results) and done.samples_received == n
                    and done.score_sums == sums,
                    f"DONE reports {done.windows} windows, {done.samples_received} samples and "
                    f"score sums {done.score_sums}; received {len(results)}, {n} and {sums}")
        feats = None
        if results and results[0].features is not None:
            feats = np.stack([r.features for r in results])
        return DeviceRun(info, scores, feats, done, n, self.stats)

    def _abort_quietly(self) -> None:
        with contextlib.suppress(DeviceError):
            self.request(p.MsgType.ABORT)

    def _parse(self, cls, frame: p.Frame):
        try:
            return cls.unpack(frame.payload)
        except p.PayloadError as exc:
            raise DeviceError(f"{self.port}: device sent an unreadable {_name(frame.type)} "
                              f"({exc}); it does not follow heartsound protocol v1") from None

    def _check(self, ok: bool, what: str) -> None:
        if not ok:
            raise DeviceError(f"{self.port}: device and host disagree: {what}; the firmware "
                              "or the link lost data, screen the recording again")


# -------------------------------------------------------------------------- screening


def gate_spec(info: p.Identify, candidates: tuple[FeatureSpec, ...] = (DEFAULT_SPEC,)
              ) -> FeatureSpec:
    """The device's FeatureSpec if one of ``candidates`` has its digest, else one with the
    device's rate and window (all the quality gate reads)."""
    for spec in candidates:
        if p.spec_digest(spec) == info.spec_sha256_prefix:
            return spec
    return replace(DEFAULT_SPEC, sample_rate_hz=info.sample_rate_hz,
                   window_s=info.window_samples / info.sample_rate_hz)


def screening_result(run: DeviceRun, name: str):
    """The ``heartsound screen`` result of a device run, computed the way Screener does."""
    from edge.screening import ScreeningResult

    info = run.info
    probs = Quantisation(info.output_scale, info.output_zero_point).dequantise(run.scores)
    per_window = decision.abnormal_probability(probs, info.normal_index)
    mean = decision.recording_probabilities(probs)
    p_abnormal = float(decision.abnormal_probability(mean, info.normal_index))
    hop = info.window_hop_samples / info.sample_rate_hz
    return ScreeningResult(
        file=name, decision=decision.decide(p_abnormal, info.threshold),
        probability_abnormal=round(p_abnormal, 6), quality={}, threshold=info.threshold,
        classes={c: round(float(v), 6) for c, v in zip(info.class_names, mean, strict=True)},
        windows=[{"start_s": round(i * hop, 3), "probability_abnormal": round(float(v), 6)}
                 for i, v in enumerate(per_window)],
        seconds=round(run.samples / info.sample_rate_hz, 3),
        model_sha256=info.model_sha256_prefix.hex(),
        interpreter=f"device {info.device_id} ({info.firmware_version})")


def device_decision_name(done: p.Done) -> str:
    """The device's own decision, in the words of :mod:`edge.decision`."""
    return {p.Decision.NORMAL: decision.NORMAL, p.Decision.ABNORMAL: decision.ABNORMAL
            }.get(done.decision, decision.UNSURE)


# ------------------------------------------------------------------------------ helpers


def _error_of(frame: p.Frame) -> p.Error:
    try:
        return p.Error.unpack(frame.payload)
    except p.PayloadError:
        return p.Error(p.ErrorCode.INTERNAL, 0, "unreadable ERROR payload")


def _name(mtype: int) -> str:
    return REQUEST_NAMES.get(mtype, f"type 0x{mtype:02x}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _damage_text(reasons: dict[str, int]) -> str:
    """Rejected frames by kind: CRC failures (flipped bits) apart from broken framing
    (COBS, length, overlong: dropped or duplicated bytes, after which the decoder
    resynchronises at the next 0x00)."""
    crc = reasons.get("crc", 0)
    framing = sum(v for k, v in reasons.items() if k not in ("crc", "version"))
    parts = [_count(crc, "CRC error")] if crc else []
    if framing:
        parts.append(_count(framing, "resync") + " after broken framing (bytes dropped or "
                     "duplicated)")
    return ", ".join(parts) or "no damaged frames"


def _why(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def screen_pcm(client: DeviceClient, pcm: np.ndarray, name: str, *, features: bool = False,
               force: bool = False, specs: tuple[FeatureSpec, ...] = (DEFAULT_SPEC,),
               step: int | None = None, familiarity=None):
    """(ScreeningResult, DeviceRun or None) for samples already at the device's rate.

    ``step``: quantisation step of the samples before they were resampled (see
    :func:`edge.quality.assess`).

    The quality gate runs here, on the host, exactly as ``heartsound screen`` runs it:
    it needs the whole recording, which a microcontroller cannot hold. A recording that
    fails it is ``unsure`` and is not streamed (the model is not asked to guess on noise);
    one shorter than a window is looped to fill it first, as ``heartsound screen`` does.
    ``familiarity``: the device model's reference (edge.familiarity.Reference, from its
    .tflite); the host then also refuses an unfamiliar stethoscope before streaming, from
    the same fixed-point frames the device would compute.
    """
    from edge.familiarity import gate
    from edge.mfcc import fill_window, mfcc
    from edge.quality import assess

    start = time.perf_counter()
    info = client.identify()
    pcm = np.ascontiguousarray(pcm, dtype=np.int16)
    spec = gate_spec(info, specs)
    quality = assess(pcm, spec, step)
    if quality.ok and familiarity is not None:
        quality = gate(mfcc(fill_window(pcm, spec), spec), familiarity, quality)
    run = None
    if quality.ok:
        run = client.run(fill_window(pcm, spec), features=features, force=force)
        result = screening_result(run, name)
    else:
        from edge.screening import ScreeningResult

        result = ScreeningResult(file=name, decision=decision.UNSURE, probability_abnormal=None,
                                 quality={}, windows=[], threshold=info.threshold,
                                 model_sha256=info.model_sha256_prefix.hex(),
                                 interpreter=f"device {info.device_id} "
                                             f"({info.firmware_version})")
    result.quality = quality.to_dict()
    result.seconds = round(pcm.size / info.sample_rate_hz, 3)
    result.latency_ms = round((time.perf_counter() - start) * 1000.0, 2)
    return result, run
