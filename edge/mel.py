"""The HTK mel scale and the filterbank's triangles, from plain numbers.

Why a module of its own: :meth:`edge.spec.FeatureSpec.validate` refuses a spec whose mel
bands hold no FFT bin, and :mod:`edge.tables` builds the front end's tables from the same
triangles. Both import this module, which knows nothing of FeatureSpec, so the spec does
not import the tables that are built from it.
"""

from __future__ import annotations

import math

import numpy as np


def mel_hz(mel: np.ndarray) -> np.ndarray:
    """HTK mel to Hz."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def hz_mel(hz: float) -> float:
    """Hz to HTK mel."""
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_triangles(f_min_hz: float, f_max_hz: float, n_mels: int, n_bins: int,
                  bin_hz: float) -> np.ndarray:
    """(n_mels, n_bins) triangles with peak 1, sampled at the bin frequencies."""
    edges = mel_hz(np.linspace(hz_mel(f_min_hz), hz_mel(f_max_hz), n_mels + 2))
    freqs = np.arange(n_bins) * bin_hz
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lo) / (mid - lo)
    falling = (hi - freqs) / (hi - mid)
    return np.clip(np.minimum(rising, falling), 0.0, None)


def quantise(values: np.ndarray, q: int) -> np.ndarray:
    """Table entries in Q``q``: an int16 table up to Q15, else int32 (held as int64)."""
    limit = 32767 if q <= 15 else 2**31 - 1
    return np.clip(np.round(values * (1 << q)), -limit - 1, limit).astype(np.int64)


def empty_bands(triangles: np.ndarray, q: int) -> list[int]:
    """Mel bands whose Q-format weights are all zero (no FFT bin falls inside them)."""
    weights = quantise(triangles, q)
    return [int(b) for b in np.flatnonzero(weights.sum(axis=1) == 0)]
