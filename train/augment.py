"""Augmentation that a stethoscope could produce: speed, gain, real noise, time shift.

Why these and no others: a recording changes between visits by the heart rate (a small
speed change, done by resampling so heart sounds and murmurs shift together), by the
stethoscope's gain and pressure (gain), by the room and the handling (noise), and by when
the recording started relative to the cardiac cycle (time shift, applied per epoch by the
trainer as a random frame offset). Pitch-preserving stretches, spectral masking or
mixing two patients' heart sounds are not things a bedside recording does. Two of them
were measured anyway as plain regularisers (CNN, split seed 0, recording-level test AUC
PhysioNet / PASCAL, mean over training seeds; without them 0.789 / 0.660 over seeds
0-3): time masking of up to 10 frames 0.807 / 0.645 (seeds 0-3), mixup (Beta 0.4) 0.797
/ 0.656 (seeds 0-1). Neither moves both data sets beyond the seed noise. A third imitates
another stethoscope exactly where the cepstrum sees it: a stethoscope's response is
convolutive, so additive in c1..c12, and a recording's windows were shifted by (the mean
cepstrum of a random training recording from another database) minus (their own mean),
with probability 0.5. Leave-one-database-out AUC a / b / d / e (split seed 0, 12 epochs,
no copies) fell from 0.767 / 0.597 / 0.730 / 0.331 to 0.694 / 0.555 / 0.360 / 0.498, and
to 0.616 / 0.610 / 0.431 / 0.491 with the donor drawn from the same class: not kept.

Noise comes only from real recordings of the *training* split, so no evaluation patient
leaks into training:

* ``artifact`` recordings (PASCAL A: noise, speech, music, no usable heart sound) may be
  added to any recording;
* recordings the annotators marked noisy (PASCAL B ``noisynormal`` / ``noisymurmur``,
  PhysioNet poor signal quality) carry a heart sound of their own, so they are added only
  to recordings of the same class, where the extra heart sound cannot change the label.

Every draw comes from one seeded generator, so the same seed gives the same variants
and the feature cache serves them on the second run.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.spec import FeatureSpec
from train.datasets import Recording
from train.features import Variant, file_sha256

ARTIFACT_LABEL = "artifact"
# Resampling ratios stay small fractions (19/20 .. 21/20 at 2 kHz) with 50 Hz steps.
SPEED_STEP_HZ = 50


@dataclass(frozen=True)
class AugmentConfig:
    """How many altered copies of each training recording, and how far they may go."""

    copies: int = 2
    """Altered copies per training recording, besides the original."""
    max_speed_change: float = 0.05
    """Largest relative speed change (0.05: 95 % .. 105 %)."""
    max_gain_db: float = 6.0
    """Gain drawn uniformly in +-this many dB."""
    noise_probability: float = 0.5
    """Chance that a copy gets real noise added."""
    snr_db_range: tuple[float, float] = (5.0, 20.0)
    """Signal-to-noise ratio of the added noise, drawn uniformly (dB)."""
    time_shift: bool = True
    """Random window phase per epoch (frames 0 .. window hop - 1)."""
    channel: float = 0.0
    """Random stethoscope response per window and epoch: a constant added to cepstra
    c1.. with this fraction of the between-recording SD (0: off; see trainer). Off by
    default: 0.5 raised the rnn's validation AUC (0.879 -> 0.890) but not the test or
    leave-one-database-out figures (LODO MAcc a/b/d 0.682/0.585/0.442 -> 0.658/0.575/0.496)."""

    def to_dict(self) -> dict:
        return {
            "copies": self.copies,
            "max_speed_change": self.max_speed_change,
            "max_gain_db": self.max_gain_db,
            "noise_probability": self.noise_probability,
            "snr_db_range": list(self.snr_db_range),
            "time_shift": self.time_shift,
            "channel": self.channel,
        }


NO_AUGMENT = AugmentConfig(copies=0, time_shift=False, channel=0.0)


@dataclass(frozen=True)
class NoiseSource:
    """One noise recording; ``target`` None means it may go into any class."""

    path: Path
    sha: str
    target: str | None


def noise_bank(train_records: Sequence[Recording],
               target: Callable[[Recording], str | None]) -> list[NoiseSource]:
    """Artifact and noisy recordings of the training split (see the module docstring)."""
    bank = []
    for record in sorted(train_records, key=lambda r: r.name):
        if record.label == ARTIFACT_LABEL:
            bank.append(NoiseSource(record.path, file_sha256(record.path), None))
        elif record.noisy and target(record) is not None:
            bank.append(NoiseSource(record.path, file_sha256(record.path), target(record)))
    return bank


def speed_rates(spec: FeatureSpec, max_change: float) -> list[int]:
    """Target rates for the speed change, in SPEED_STEP_HZ steps, the spec rate excluded."""
    base = spec.sample_rate_hz
    steps = int(base * max_change) // SPEED_STEP_HZ
    return [base + k * SPEED_STEP_HZ for k in range(-steps, steps + 1) if k != 0]


def draw_variants(
    records: Sequence[Recording],
    target: Callable[[Recording], str | None],
    bank: Sequence[NoiseSource],
    spec: FeatureSpec,
    config: AugmentConfig,
    seed: int,
) -> list[tuple[Recording, Variant]]:
    """``config.copies`` variants of every record, drawn reproducibly from ``seed``."""
    rng = random.Random(f"augment/{seed}")
    rates = speed_rates(spec, config.max_speed_change) or [0]
    out = []
    for record in records:
        own = target(record)
        usable = [n for n in bank if n.target in (None, own) and n.path != record.path]
        for _ in range(config.copies):
            out.append((record, _draw_one(rng, rates, usable, config)))
    return out


def _draw_one(rng: random.Random, rates: Sequence[int], usable: Sequence[NoiseSource],
              config: AugmentConfig) -> Variant:
    rate = rng.choice(rates)
    gain = round(rng.uniform(-config.max_gain_db, config.max_gain_db), 1)
    noise, sha, offset, snr = "", "", 0, 0.0
    if usable and rng.random() < config.noise_probability:
        source = rng.choice(usable)
        noise, sha = str(source.path), source.sha
        offset = rng.randrange(1 << 16)
        snr = round(rng.uniform(*config.snr_db_range), 1)
    return Variant(speed_rate_hz=rate, gain_db=gain, noise=noise, noise_sha=sha,
                   noise_offset=offset, snr_db=snr)
