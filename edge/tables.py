"""Constant tables of the front end, generated once from a FeatureSpec.

Like CMSIS-DSP's generated MFCC tables, these are computed in float64 once per spec and
rounded to integers; the per-recording path in :mod:`edge.mfcc` then touches integers only.
The C header ``firmware_bridge/c/hs_mfcc_tables.h`` is written from the same tables, so
Python and C share every coefficient. The float64 versions (``*_f64``) are the exact values
the float reference uses, so measured errors include the rounding of these tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from edge.mel import mel_triangles, quantise

if TYPE_CHECKING:
    from edge.spec import FeatureSpec

TWIDDLE_Q = 30
"""Q format of the FFT twiddles (int32): Q30 keeps a product of two Q30 values in int63."""

FFT_OUT_BITS = 30
"""The FFT input is scaled so no output component can exceed 2^30 (no per-stage shifts)."""

LOG_TABLE_BITS = 7
"""log2(1+f) is interpolated in a 2^7 + 1 entry table: error < 1.2e-5 log2 units."""

LOG_TABLE_Q = 30
"""Q format of the log2 mantissa table (int32) and of the normalised mantissa."""

PREEMPH_IN_Q = 15
"""The pre-emphasised signal is kept as y * 2^15 (int32) so no input bit is lost."""

ACC_BITS = 63
"""Signed 64-bit accumulators: every product sum below is bounded under 2^62."""


def mel_matrix_f64(spec: FeatureSpec) -> np.ndarray:
    """(n_mels, n_fft_bins) triangles with peak 1, sampled at the bin frequencies."""
    return mel_triangles(spec.f_min_hz, spec.f_max_hz, spec.n_mels, spec.n_fft_bins,
                         spec.sample_rate_hz / spec.n_fft)


def window_f64(spec: FeatureSpec) -> np.ndarray:
    """Periodic Hann window of frame_length samples."""
    n = np.arange(spec.frame_length)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / spec.frame_length)


def dct_matrix_f64(spec: FeatureSpec) -> np.ndarray:
    """(n_ceps, n_mels) orthonormal DCT-II: a constant over bands lands in c0 alone."""
    k = np.arange(spec.n_ceps)[:, None]
    b = np.arange(spec.n_mels)[None, :]
    dct = np.sqrt(2.0 / spec.n_mels) * np.cos(np.pi * k * (2 * b + 1) / (2 * spec.n_mels))
    dct[0] /= np.sqrt(2.0)
    return dct


def _bitrev(n: int) -> np.ndarray:
    bits = n.bit_length() - 1
    return np.array([int(f"{i:0{bits}b}"[::-1], 2) for i in range(n)], dtype=np.int64)


@dataclass(frozen=True)
class FrontEndTables:
    """Integer tables (int64 arrays for numpy, narrower in C) and shift constants."""

    window: np.ndarray
    """(frame_length,) Hann window, Q(window_q), fits int32 (int16 up to Q15)."""
    twiddle_re: np.ndarray
    """(n_fft/2,) cos(2 pi k / n_fft), Q30, fits int32."""
    twiddle_im: np.ndarray
    """(n_fft/2,) -sin(2 pi k / n_fft), Q30, fits int32."""
    bitrev: np.ndarray
    """(n_fft,) bit-reversed index order for the decimation-in-time FFT."""
    mel: np.ndarray
    """(n_mels, n_fft_bins) mel weights, Q(mel_q), fits int16."""
    mel_start: np.ndarray
    """(n_mels,) first bin with a nonzero weight (the C code loops over these only)."""
    mel_len: np.ndarray
    """(n_mels,) number of bins from mel_start to the last nonzero weight."""
    dct: np.ndarray
    """(n_ceps, n_mels) orthonormal DCT-II, Q(dct_q), fits int16."""
    log2_table: np.ndarray
    """(2^LOG_TABLE_BITS + 1,) log2(1 + i / 2^LOG_TABLE_BITS), Q30, fits int32."""
    fft_in_bits: int
    """Block-floating-point target: the windowed frame is shifted to < 2^fft_in_bits."""
    power_bits: int
    """Power spectrum block exponent target: bins < 2^power_bits keep the mel sums < 2^62."""
    exp_offset: int
    """log2(mel energy in int16 units^2) = log2(M) - exp_offset + 2 s_fft + s_power."""


@lru_cache(maxsize=16)
def tables_for(spec: FeatureSpec) -> FrontEndTables:
    """Tables for a (validated) spec; cached because specs are frozen and hashable."""
    n = spec.n_fft
    k = np.arange(n // 2)
    twiddle = 1 << TWIDDLE_Q
    mel = quantise(mel_matrix_f64(spec), spec.mel_q)
    starts, lengths = _mel_extent(mel)
    mel_sum_bits = int(mel.sum(axis=1).max()).bit_length()
    log_x = np.arange((1 << LOG_TABLE_BITS) + 1) / (1 << LOG_TABLE_BITS)
    return FrontEndTables(
        window=quantise(window_f64(spec), spec.window_q),
        twiddle_re=np.round(np.cos(2 * np.pi * k / n) * twiddle).astype(np.int64),
        twiddle_im=np.round(-np.sin(2 * np.pi * k / n) * twiddle).astype(np.int64),
        bitrev=_bitrev(n),
        mel=mel,
        mel_start=starts,
        mel_len=lengths,
        dct=quantise(dct_matrix_f64(spec), spec.dct_q),
        log2_table=np.round(np.log2(1.0 + log_x) * (1 << LOG_TABLE_Q)).astype(np.int64),
        fft_in_bits=FFT_OUT_BITS - (n.bit_length() - 1),
        power_bits=ACC_BITS - 1 - mel_sum_bits,
        exp_offset=2 * (PREEMPH_IN_Q + spec.window_q) + spec.mel_q,
    )


def _mel_extent(mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts, lengths = [], []
    for row in mel:
        nz = np.flatnonzero(row)
        starts.append(int(nz[0]) if nz.size else 0)
        lengths.append(int(nz[-1] - nz[0] + 1) if nz.size else 0)
    return np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64)
