"""Integer helpers shared by the fixed-point front end (numpy, vectorised, integer only).

Each helper has a C twin in ``firmware_bridge/c/hs_mfcc.c`` that gives the same bits;
right shifts of negative numbers are arithmetic (floor) in both (numpy by definition, C by
GCC's documented behaviour).
"""

from __future__ import annotations

import numpy as np

_POWERS_OF_TWO = np.left_shift(np.int64(1), np.arange(63, dtype=np.int64))  # 2^0 .. 2^62


def bit_length(values: np.ndarray) -> np.ndarray:
    """Bits needed for each non-negative int64 (0 for 0): how many of 2^0 .. 2^62 are <= v.

    One integer binary search in C (``searchsorted``) instead of a float log2 keeps the
    path integer-only; it replaced six rounds of numpy shifts (the profile's second
    largest cost). The C twin counts leading zeros.
    """
    n = np.searchsorted(_POWERS_OF_TWO, values, side="right")
    return n.astype(np.int64, copy=False)


def round_shift(values: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """values / 2^shift rounded half up for shift > 0, values * 2^-shift for shift <= 0.

    Shift amounts broadcast (one per frame). Right: (v + 2^(s-1)) >> s; left: v << -s.
    """
    right = np.maximum(shift, 0)
    left = np.maximum(-np.asanyarray(shift), 0)
    half = (np.ones_like(right) << right) >> 1
    return ((values + half) >> right) << left


def isqrt(values: np.ndarray) -> np.ndarray:
    """floor(sqrt(v)) of each int64 v in 0..2^62, exact, digit by digit in base 4 (the
    C twin's loop): no float estimate, so no rounding to correct."""
    v = np.array(values, dtype=np.int64)
    root = np.zeros_like(v)
    bit = np.int64(1) << 62
    while bit:
        trial = root + bit
        fits = v >= trial
        v = np.where(fits, v - trial, v)
        root = np.where(fits, (root >> 1) + bit, root >> 1)
        bit >>= 2
    return root


def saturate(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Clamp to [lo, hi] (the C code's saturation), keeping the integer dtype."""
    return np.minimum(np.maximum(values, lo), hi)


def log2_q(values: np.ndarray, table: np.ndarray, table_bits: int,
           table_q: int, out_q: int) -> tuple[np.ndarray, np.ndarray]:
    """(log2(v) in Q(out_q), v > 0) for int64 v >= 0; entries with v == 0 are 0.

    Integer part = bit_length - 1 (a leading-zero count); the mantissa is normalised to
    [1, 2) in Q(table_q) by truncation and log2 of it interpolated linearly in ``table``.
    """
    positive = values > 0
    exponent = bit_length(values) - 1                       # floor(log2 v), -1 for 0
    down = np.maximum(exponent - table_q, 0)
    up = np.maximum(table_q - exponent, 0) * positive
    mant = ((values >> down) << up) - (positive << table_q)  # Q(table_q) in [0, 1)
    mant = mant * positive
    frac_bits = table_q - table_bits
    idx = mant >> frac_bits
    frac = mant & ((1 << frac_bits) - 1)                     # Q(frac_bits)
    base = table[idx]
    step = table[idx + 1] - base
    lg = base + ((step * frac + (1 << (frac_bits - 1))) >> frac_bits)   # Q(table_q)
    lg = (lg + (1 << (table_q - out_q - 1))) >> (table_q - out_q)       # Q(out_q)
    return ((exponent << out_q) + lg) * positive, positive
