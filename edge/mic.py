"""Microphone capture with PyAudio: int16 mono at the device's own rate.

Why the device's native rate by default: USB stethoscopes and sound cards run at 44.1 or
48 kHz and many refuse 2 kHz, or resample badly in the driver; we capture what the
device does natively and resample in fixed point (:class:`edge.resample.Resampler`) to
the model's rate, the same bits on every device.

PyAudio is imported lazily (the ``mic`` extra): screening files needs no audio stack.
PortAudio and ALSA print pages of probing noise on stderr while they enumerate devices;
that is silenced (file descriptor 2) during initialisation so a person sees one line,
unless ``HEARTSOUND_AUDIO_DEBUG=1``.

Errors: PyAudio missing, no input device, a device that refuses the format or fails
while recording -> :class:`edge.errors.DeviceError`, one line that says what to install
or plug in.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edge.errors import DeviceError, UsageError

__all__ = ["InputDevice", "Microphone", "chunks", "input_devices", "record"]

DEFAULT_CHUNK_FRAMES = 1024  # ~23 ms at 44.1 kHz: small enough to stop on time
DEBUG_ENV = "HEARTSOUND_AUDIO_DEBUG"
SAMPLE_BYTES = 2  # int16
INSTALL_HINT = ("install it with `pip install 'heartsound[mic]'` (on Debian/Raspberry Pi OS "
                "first `sudo apt install portaudio19-dev`)")
PLUG_HINT = ("plug in a USB microphone or stethoscope (check it with `arecord -l`), or "
             "screen a WAV file instead")


@dataclass(frozen=True)
class InputDevice:
    """An audio input as PortAudio lists it."""

    index: int
    name: str
    channels: int
    default_rate: int


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C-level stderr (ALSA/JACK probing noise) unless debugging is asked for."""
    if os.environ.get(DEBUG_ENV):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _pyaudio():
    try:
        import pyaudio
    except ImportError:
        raise DeviceError(f"microphone capture needs PyAudio, which is not installed; "
                          f"{INSTALL_HINT}") from None
    return pyaudio


def _open_portaudio():
    pyaudio = _pyaudio()
    with _quiet_stderr():
        try:
            return pyaudio, pyaudio.PyAudio()
        except Exception as exc:  # PortAudio init failure has no specific type
            raise DeviceError(f"the audio system could not start ({exc}); {PLUG_HINT}") from None


def _list(pa) -> list[InputDevice]:
    out = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info.get("maxInputChannels", 0)) > 0:
            out.append(InputDevice(i, str(info["name"]), int(info["maxInputChannels"]),
                                   int(round(float(info["defaultSampleRate"])))))
    return out


def input_devices() -> list[InputDevice]:
    """Every input device PortAudio sees (empty without a microphone)."""
    _, pa = _open_portaudio()
    try:
        return _list(pa)
    finally:
        pa.terminate()


def _pick(pa, device: int | str | None) -> InputDevice:
    devices = _list(pa)
    if not devices:
        raise DeviceError(f"no microphone found (no audio input device); {PLUG_HINT}")
    if device is None:
        try:
            default = int(pa.get_default_input_device_info()["index"])
        except OSError:
            default = devices[0].index
        return next((d for d in devices if d.index == default), devices[0])
    if isinstance(device, int) or str(device).isdigit():
        found = [d for d in devices if d.index == int(device)]
    else:
        found = [d for d in devices if str(device).lower() in d.name.lower()]
    if not found:
        names = ", ".join(f"{d.index}: {d.name}" for d in devices)
        raise DeviceError(f"no input device {device!r}; available: {names}")
    return found[0]


def _mix_to_mono(frames: np.ndarray, channels: int) -> np.ndarray:
    """Average channels with one round-half-up, as edge.audio does for WAV files."""
    if channels == 1:
        return frames
    total = frames.reshape(-1, channels).astype(np.int32).sum(axis=1)
    return ((total + channels // 2) // channels).astype(np.int16)


class Microphone:
    """An open input stream; ``chunks()`` yields int16 mono blocks as they arrive.

    ``rate`` None opens the device at its default (native) rate; ``self.rate`` is the
    rate actually used. Mono is asked for; a device that refuses mono is opened in
    stereo and averaged.
    """

    def __init__(self, rate: int | None = None, device: int | str | None = None,
                 chunk_frames: int = DEFAULT_CHUNK_FRAMES) -> None:
        self._pyaudio, self._pa = _open_portaudio()
        try:
            self.device = _pick(self._pa, device)
            self.rate = int(rate) if rate else self.device.default_rate
            self.chunk_frames = int(chunk_frames)
            self._stream, self.channels = self._open()
        except BaseException:
            self._pa.terminate()
            raise

    def _open(self):
        last = None
        for channels in (1, min(2, self.device.channels)):
            with _quiet_stderr():
                try:
                    stream = self._pa.open(format=self._pyaudio.paInt16, channels=channels,
                                           rate=self.rate, input=True,
                                           input_device_index=self.device.index,
                                           frames_per_buffer=self.chunk_frames)
                    return stream, channels
                except (OSError, ValueError) as exc:
                    last = exc
        raise DeviceError(f"input device {self.device.name!r} refused 16-bit capture at "
                          f"{self.rate} Hz ({last}); try another --rate or device") from None

    def read(self, frames: int) -> np.ndarray:
        """Exactly ``frames`` int16 mono samples (blocks until they are there)."""
        try:
            data = self._stream.read(frames, exception_on_overflow=False)
        except OSError as exc:
            raise DeviceError(f"input device {self.device.name!r} stopped while recording "
                              f"({exc}); check the cable and record again") from None
        pcm = np.frombuffer(data, dtype="<i2").astype(np.int16)
        return _mix_to_mono(pcm, self.channels)

    def chunks(self, seconds: float | None = None) -> Iterator[np.ndarray]:
        """Blocks of ``chunk_frames`` samples (the last one shorter) until ``seconds``.

        ``seconds`` None streams until the caller stops iterating.
        """
        left = None if seconds is None else int(round(seconds * self.rate))
        while left is None or left > 0:
            n = self.chunk_frames if left is None else min(self.chunk_frames, left)
            block = self.read(n)
            if left is not None:
                left -= n
            yield block

    def close(self) -> None:
        """Stop the stream and release PortAudio."""
        with contextlib.suppress(OSError):
            self._stream.stop_stream()
        self._stream.close()
        self._pa.terminate()

    def __enter__(self) -> Microphone:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def chunks(seconds: float | None = None, rate: int | None = None,
           device: int | str | None = None,
           chunk_frames: int = DEFAULT_CHUNK_FRAMES) -> Iterator[tuple[np.ndarray, int]]:
    """Generator of (int16 mono block, rate) from a microphone; closes it when done."""
    with Microphone(rate, device, chunk_frames) as mic:
        for block in mic.chunks(seconds):
            yield block, mic.rate


def record(seconds: float, rate: int | None = None,
           device: int | str | None = None) -> tuple[np.ndarray, int]:
    """(int16 mono samples, rate) of ``seconds`` from a microphone.

    ``rate`` None uses the device's native rate (resample afterwards with
    :func:`edge.resample.resample` or stream through :class:`edge.resample.Resampler`).
    """
    if not seconds > 0:
        raise UsageError(f"cannot record {seconds!r} seconds; ask for a positive duration "
                          "such as --seconds 20")
    with Microphone(rate, device) as mic:
        blocks = list(mic.chunks(seconds))
        return np.concatenate(blocks) if blocks else np.zeros(0, np.int16), mic.rate
