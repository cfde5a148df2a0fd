"""Familiarity gate: say ``unsure`` when a recording's stethoscope is unlike every training one.

A model trained on a few stethoscopes gives confident answers on any other, right or
wrong (leave-one-database-out MAcc 0.49-0.69). Each stethoscope has its own frequency
response, which shows in the *average* spectral shape of its recordings: the mean over a
recording's frames of cepstra c1..c12 (c0 is the gain, which the model's ``c0``
normalisation removes anyway). That mean is the recording's **profile**. Training keeps,
per training database, the mean and SD of the profile over its training recordings (the
**reference**); a recording's **distance** is the RMS over the 12 cepstra of its z-score
against a database's reference, the smallest over databases ("SD from the nearest
training database"). Above the reference's threshold (the 99th percentile of the
validation recordings' distances, so about 1 % of familiar recordings are refused) the
recording is ``unsure``.

Why these features (measured from the training feature cache, each leave-one-database-out
fold's training sources as reference, threshold at the fold's validation 99th
percentile; a throwaway script over the cached frame matrices): means of c1..c12 flag 0 % of
held-out PhysioNet a, b and d and 11 % of e; adding c0's mean changes nothing (12 % of e);
adding the per-cepstrum SDs flags 5 % of b, 4 % of d and 5 % of e, but the SDs describe
the heart sound itself (murmurs, rhythm): the b recordings they flag are 57 % abnormal
against 21 % in b, so the SDs would refuse the sick rather than the stethoscope.

Deterministic on every device: the profile is an exact int64 sum of the int16 frame
matrix divided once in float64; the distance is float64 arithmetic in a fixed order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge.errors import ModelError
from edge.quality import Quality

PROFILE_FEATURES = "mean_c1_c12"
"""Name of the profile in the model's metadata: a reader refuses a name it does not know."""
FIRST_CEP, LAST_CEP = 1, 12
SD_FLOOR = 1.0
"""Smallest SD (front-end LSB) a reference divides by: a database whose recordings all
share one value must not make a one-LSB difference infinitely far."""
DEFAULT_PERCENTILE = 99.0
DIGITS = 4
"""Decimals kept of a reference's numbers, before training measures with it, so the
figures in the card are those of the reference the device reads from the metadata."""

UNFAMILIAR = "unfamiliar stethoscope"
"""Start of the reason: screening.advice and the report recognise the gate by it."""
HINT = ("this model was not trained on a stethoscope like this one; screen with a "
        "stethoscope of one of its training databases ({databases}), or retrain with "
        "recordings of this one")
"""What to do, naming the model's databases (see :func:`hint`)."""
ADVICE = "use a stethoscope the model knows"


@dataclass(frozen=True)
class SourceReference:
    """One training database: how many recordings, and its profile's mean and SD."""

    name: str
    n: int
    mean: tuple[float, ...]
    sd: tuple[float, ...]


@dataclass(frozen=True)
class Reference:
    """What a model knows about its training stethoscopes, and where it stops trusting."""

    sources: tuple[SourceReference, ...]
    threshold: float
    percentile: float
    features: str = PROFILE_FEATURES

    def to_dict(self) -> dict:
        """JSON-ready: the ``familiarity`` block of metrics.json and of the model metadata."""
        return {"features": self.features, "cepstra": [FIRST_CEP, LAST_CEP],
                "threshold": self.threshold, "percentile": self.percentile,
                "sources": {s.name: {"n": s.n, "mean": list(s.mean), "sd": list(s.sd)}
                            for s in self.sources}}

    @classmethod
    def from_dict(cls, data: object) -> Reference:
        """The block back; a malformed or unknown one raises ModelError (convert again)."""
        try:
            return _parse(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"familiarity reference in the metadata is malformed ({exc}); "
                             "convert the model again") from None


@dataclass(frozen=True)
class Verdict:
    """Distance of one recording to the nearest training database, and the call."""

    distance: float
    nearest: str
    threshold: float

    @property
    def familiar(self) -> bool:
        return self.distance <= self.threshold

    def figures(self) -> dict:
        return {"familiarity_distance": round(self.distance, 2), "nearest_database":
                self.nearest, "familiarity_threshold": round(self.threshold, 2)}

    def reason(self) -> str:
        return (f"{UNFAMILIAR}: the recording's spectrum lies {self.distance:.2f} SD from "
                f"the nearest training database ({self.nearest}; the model trusts up to "
                f"{self.threshold:.2f})")


def profile(frames: np.ndarray) -> np.ndarray:
    """Mean of cepstra c1..c12 over a recording's int16 frame matrix (n_frames, n_ceps),
    float64 in front-end LSB: an exact int64 sum, one division."""
    x = np.asarray(frames)
    if x.ndim != 2 or x.dtype != np.int16 or x.shape[0] == 0 or x.shape[1] <= LAST_CEP:
        raise ValueError(f"profile() takes a non-empty (n_frames, >{LAST_CEP}) int16 matrix, "
                         f"got {x.dtype} {x.shape}")
    sums = x[:, FIRST_CEP:LAST_CEP + 1].astype(np.int64).sum(axis=0)
    return sums.astype(np.float64) / x.shape[0]


def distances(profiles: np.ndarray, reference: Reference) -> tuple[np.ndarray, list[str]]:
    """RMS z-score of each profile (rows) to its nearest source, and that source's name."""
    p = np.atleast_2d(np.asarray(profiles, dtype=np.float64))
    per_source = np.stack([_rms_z(p, s) for s in reference.sources])
    nearest = per_source.argmin(axis=0)
    return per_source.min(axis=0), [reference.sources[i].name for i in nearest]


def check(frames: np.ndarray, reference: Reference) -> Verdict:
    """The verdict for one recording's frame matrix."""
    d, nearest = distances(profile(frames)[None, :], reference)
    return Verdict(float(d[0]), nearest[0], reference.threshold)


def hint(reference: Reference) -> str:
    """:data:`HINT` with the databases the model knows, so "use one of them" names them."""
    return HINT.format(databases=", ".join(s.name for s in reference.sources))


def gate(frames: np.ndarray, reference: Reference, quality: Quality) -> Quality:
    """``quality`` (passed by edge.quality) with the distance among its figures, turned
    into ``unsure`` with :data:`UNFAMILIAR`'s reason and :func:`hint` beyond the threshold:
    the one check that screening and the serial host (firmware_bridge) both run."""
    verdict = check(frames, reference)
    figures = quality.figures | verdict.figures()
    if verdict.familiar:
        return Quality(True, None, None, figures)
    return Quality(False, verdict.reason(), hint(reference), figures)


def build_reference(profiles_by_source: dict[str, np.ndarray], validation: np.ndarray,
                    percentile: float = DEFAULT_PERCENTILE) -> Reference:
    """Reference from training profiles per source; threshold: ``percentile`` of the
    validation profiles' distances (recordings the model was not fitted on)."""
    sources = tuple(_source(name, np.atleast_2d(p))
                    for name, p in sorted(profiles_by_source.items()) if len(p) >= 2)
    if not sources:
        raise ValueError("a familiarity reference needs a source with two recordings")
    partial = Reference(sources, math.inf, percentile)
    d, _ = distances(validation, partial)
    return Reference(sources, round(float(np.percentile(d, percentile)), DIGITS), percentile)


def _source(name: str, p: np.ndarray) -> SourceReference:
    mean = np.round(p.mean(axis=0), DIGITS)
    sd = np.round(p.std(axis=0, ddof=1), DIGITS)
    return SourceReference(name, len(p), tuple(map(float, mean)), tuple(map(float, sd)))


def _rms_z(p: np.ndarray, source: SourceReference) -> np.ndarray:
    sd = np.maximum(np.asarray(source.sd), SD_FLOOR)
    z = (p - np.asarray(source.mean)) / sd
    return np.sqrt(np.mean(z * z, axis=1))


def _parse(data: object) -> Reference:
    if not isinstance(data, dict):
        raise TypeError(f"expected an object, got {type(data).__name__}")
    if data["features"] != PROFILE_FEATURES:
        raise ValueError(f"profile {data['features']!r} is not the {PROFILE_FEATURES!r} this "
                         "heartsound computes")
    width = LAST_CEP - FIRST_CEP + 1
    sources = []
    for name, s in sorted(data["sources"].items()):
        mean, sd = tuple(map(float, s["mean"])), tuple(map(float, s["sd"]))
        if len(mean) != width or len(sd) != width:
            raise ValueError(f"source {name} has {len(mean)} means, {len(sd)} SDs, not {width}")
        sources.append(SourceReference(str(name), int(s["n"]), mean, sd))
    threshold = float(data["threshold"])
    if not sources or not math.isfinite(threshold) or threshold <= 0:
        raise ValueError("no sources or no positive finite threshold")
    return Reference(tuple(sources), threshold, float(data["percentile"]))


def from_document(document: dict) -> Reference | None:
    """The reference in a model's metadata document, or None (an older model: gate off)."""
    block = document.get("familiarity")
    return None if block is None else Reference.from_dict(block)
