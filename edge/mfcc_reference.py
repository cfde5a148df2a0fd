"""float64 MFCC with the same spec as :mod:`edge.mfcc`, used only to measure its error.

Same frames, pre-emphasis, window, mel triangles, log floor and DCT, but exact float64
coefficients (``edge.tables.*_f64``) and numpy's FFT, so the error measured against it
includes the rounding of the integer tables. Output is float64 in the same units as the
fixed-point output (log2 units times 2^out_frac_bits), so the two subtract directly.
"""

from __future__ import annotations

import numpy as np

from edge.mfcc import check_pcm
from edge.spec import DEFAULT_SPEC, FeatureSpec
from edge.tables import dct_matrix_f64, mel_matrix_f64, tables_for, window_f64


def reference_tables(spec: FeatureSpec,
                     exact: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window, mel, dct) in float64: exact values, or (``exact=False``) the integer tables
    scaled back, which isolates the arithmetic error from the table rounding."""
    if exact:
        return window_f64(spec), mel_matrix_f64(spec), dct_matrix_f64(spec)
    tab = tables_for(spec)
    return (tab.window / float(1 << spec.window_q), tab.mel / float(1 << spec.mel_q),
            tab.dct / float(1 << spec.dct_q))


def log2_mel_reference(pcm: np.ndarray, spec: FeatureSpec = DEFAULT_SPEC,
                       magnitude: bool = False, exact_tables: bool = True) -> np.ndarray:
    """(n_frames, n_mels) log2 mel energies (int16 units^2) with the spec's floor.

    ``magnitude=True`` sums |X| instead of |X|^2 (CMSIS-DSP's MFCC convention).
    """
    window, mel_matrix, _ = reference_tables(spec, exact_tables)
    x = check_pcm(pcm).astype(np.float64)
    n_frames = spec.n_frames(x.shape[0])
    if n_frames == 0:
        return np.zeros((0, spec.n_mels))
    a = spec.preemph_q15 / 32768.0
    y = x - a * np.concatenate([[0.0], x[:-1]])
    idx = np.arange(n_frames)[:, None] * spec.hop_length + np.arange(spec.frame_length)
    spectrum = np.abs(np.fft.rfft(y[idx] * window, n=spec.n_fft, axis=1))
    mel = (spectrum if magnitude else spectrum**2) @ mel_matrix.T
    with np.errstate(divide="ignore"):
        return np.maximum(np.log2(mel), float(spec.log2_floor))


def mfcc_reference(pcm: np.ndarray, spec: FeatureSpec = DEFAULT_SPEC,
                   exact_tables: bool = True) -> np.ndarray:
    """(n_frames, n_ceps) float64 cepstra in output LSBs (log2 units * 2^out_frac_bits)."""
    dct = reference_tables(spec, exact_tables)[2]
    ceps = log2_mel_reference(pcm, spec, exact_tables=exact_tables) @ dct.T
    return ceps * float(1 << spec.out_frac_bits)
