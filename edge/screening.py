"""Screen one recording: audio -> quality gate -> fixed-point MFCC -> int8 model -> decision.

This is the device's whole job, kept in one place so that the command line, the
microphone path, batch screening and the serial-device emulator give the same answer
for the same samples. A recording that fails the quality gate is ``unsure`` with a
reason and a hint to retake: the model is not asked to guess on noise. A model that
carries a familiarity reference (edge.familiarity) also answers ``unsure``, with the
reason "unfamiliar stethoscope", for a recording whose spectrum lies far from every
training database: a confident answer there would be a guess.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge import decision, familiarity
from edge.errors import ModelError
from edge.interpreter import Classifier
from edge.mfcc import fill_window, mfcc, windows
from edge.model_meta import ModelMeta, read_model_meta
from edge.quality import Quality, assess, quantisation_step
from edge.release import release_model
from edge.resample import resample
from edge.spec import FEATURE_CONTRACT_VERSION

MODEL_ENV = "HEARTSOUND_MODEL"
PACKAGED_MODEL = Path(__file__).resolve().parent / "models" / "heartsound_int8.tflite"


def default_model_path() -> Path:
    """$HEARTSOUND_MODEL, else the model of the deployed release this runs from (the one
    the service screens with, `edge.release`), else the model shipped inside the package."""
    return Path(os.environ.get(MODEL_ENV) or release_model() or PACKAGED_MODEL)


@dataclass
class ScreeningResult:
    """What one screening says, in the fields `heartsound screen --json` prints."""

    file: str
    decision: str
    probability_abnormal: float | None
    quality: dict
    windows: list[dict]
    classes: dict[str, float] = field(default_factory=dict)
    threshold: float = 0.5
    seconds: float = 0.0
    model_sha256: str = ""
    interpreter: str = ""
    latency_ms: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class Screener:
    """A loaded model and its front end, ready to screen many recordings."""

    def __init__(self, model: str | os.PathLike | None = None, *,
                 backend: str | None = None) -> None:
        path = Path(model) if model is not None else default_model_path()
        if not path.is_file():
            raise ModelError(f"{path}: no model file there; pass --model PATH or set "
                             f"{MODEL_ENV}")
        self.meta: ModelMeta = read_model_meta(path)
        if self.meta.spec.version != FEATURE_CONTRACT_VERSION:
            raise ModelError(f"{path}: built for feature contract v{self.meta.spec.version}, "
                             f"this heartsound computes v{FEATURE_CONTRACT_VERSION}; use a "
                             "model converted for this version")
        self.spec = self.meta.spec
        self.classifier = Classifier(path, backend=backend)
        expected = self.spec.frames_per_window * self.spec.n_ceps
        if self.classifier.window_size != expected:
            raise ModelError(f"{path}: model input {self.classifier.input_shape} does not hold "
                             f"one {self.spec.frames_per_window}x{self.spec.n_ceps} feature "
                             "window of its own spec; convert the model again")
        self.normal_idx = decision.normal_index(self.meta.class_names, self.meta.normal_class)

    def screen_pcm(self, pcm: np.ndarray, rate: int, name: str = "<audio>", *,
                   start: float | None = None, step: int | None = None) -> ScreeningResult:
        """Screen int16 mono samples at ``rate`` (resampled in fixed point if needed).

        ``start`` (a ``time.perf_counter()`` reading) lets the caller count file reading
        into ``latency_ms``. ``step``: the quantisation step of the source samples when the
        caller resampled them already (:func:`edge.audio.read_wav_for_screening`); None
        measures it here, on ``pcm`` before resampling.
        """
        start = time.perf_counter() if start is None else start
        step = quantisation_step(pcm) if step is None else step
        if rate != self.spec.sample_rate_hz:
            pcm = resample(pcm, rate, self.spec.sample_rate_hz)
        quality = assess(pcm, self.spec, step)
        result = self._classify(pcm, quality, name) if quality.ok else self._unsure(quality, name)
        result.seconds = round(len(pcm) / self.spec.sample_rate_hz, 3)
        result.latency_ms = round((time.perf_counter() - start) * 1000.0, 2)
        return result

    def _result(self, name: str, quality: Quality, **fields) -> ScreeningResult:
        return ScreeningResult(file=name, quality=quality.to_dict(),
                               threshold=self.meta.threshold,
                               model_sha256=self.classifier.sha256,
                               interpreter=self.classifier.backend, **fields)

    def _unsure(self, quality: Quality, name: str) -> ScreeningResult:
        return self._result(name, quality, decision=decision.UNSURE,
                            probability_abnormal=None, windows=[])

    def feature_frames(self, pcm: np.ndarray) -> np.ndarray:
        """int16 (n_frames, n_ceps) of a recording that passed the gate (looped to one
        window when shorter, as training does)."""
        return mfcc(fill_window(pcm, self.spec), self.spec)

    def feature_windows(self, pcm: np.ndarray) -> np.ndarray:
        """int16 model inputs of a recording that passed the gate: the one path from audio
        to windows, shared with the benchmark so that it times what screening runs."""
        return windows(self.feature_frames(pcm), self.spec)

    def _classify(self, pcm: np.ndarray, quality: Quality, name: str) -> ScreeningResult:
        frames = self.feature_frames(pcm)
        probs = self.classifier.predict(windows(frames, self.spec)).probabilities
        per_window = decision.abnormal_probability(probs, self.normal_idx)
        mean = decision.recording_probabilities(probs)
        p_abnormal = float(decision.abnormal_probability(mean, self.normal_idx))
        if self.meta.familiarity is not None:
            quality = familiarity.gate(frames, self.meta.familiarity, quality)
            if not quality.ok:
                # The model's score stays among the figures as information, not as the decision.
                quality.figures["model_probability_abnormal"] = round(p_abnormal, 6)
                return self._unsure(quality, name)
        hop = self.spec.window_hop_s
        return self._result(
            name, quality,
            decision=decision.decide(p_abnormal, self.meta.threshold),
            probability_abnormal=round(p_abnormal, 6),
            classes={c: round(float(p), 6) for c, p in zip(self.meta.class_names, mean,
                                                           strict=True)},
            windows=[{"start_s": round(i * hop, 3), "probability_abnormal": round(float(p), 6)}
                     for i, p in enumerate(per_window)],
        )


ADVICE = {decision.ABNORMAL: "refer for a closer look", decision.NORMAL: "no referral",
          decision.UNSURE: "retake the recording"}
"""What to do next after each decision, in the words the text output and the report share."""


def advice(result: ScreeningResult) -> str:
    """What the clinician does next: refer, no referral, or retake (see :data:`ADVICE`);
    after the familiarity gate, another stethoscope rather than another recording."""
    if is_unfamiliar(result):
        return familiarity.ADVICE
    return ADVICE[result.decision]


def is_unfamiliar(result: ScreeningResult) -> bool:
    """Unsure because the stethoscope is unlike every training one (edge.familiarity)."""
    return (result.decision == decision.UNSURE
            and str(result.quality.get("reason") or "").startswith(familiarity.UNFAMILIAR))


def describe(result: ScreeningResult, where: str | None = None) -> str:
    """One line a clinician can read at a glance, then the detail.

    ``where`` names the device that ran the model (serial link); an unsure recording was
    then judged on the host and never sent.
    """
    if result.decision == decision.UNSURE:
        q = result.quality
        detail = (f"{result.seconds:g} s, {result.latency_ms:.0f} ms" if where is None
                  else f"{result.seconds:g} s; checked on the host, not sent {where}")
        return f"{result.file}: UNSURE - {q['reason']}. {q['hint']} ({detail})"
    span = f"{len(result.windows)} windows of {result.seconds:g} s" + (f" {where}" if where
                                                                        else "")
    return (f"{result.file}: {result.decision.upper()} - {advice(result)} "
            f"(P(abnormal) {result.probability_abnormal:.2f}, threshold "
            f"{result.threshold:.2f}; {span}; {result.latency_ms:.0f} ms)")
