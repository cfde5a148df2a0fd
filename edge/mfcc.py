"""Fixed-point MFCC: int16 PCM to int16 cepstra with integer arithmetic only.

This is THE front end: training computes its features here and the device runs the same
bits (``firmware_bridge/c/hs_mfcc.c`` is a line-by-line twin). Per frame:

1. pre-emphasis y = x[n] - a x[n-1]             int32, y * 2^15 (Q15 of int16 units)
2. Hann window (Q30)                             int64, y * w * 2^(15+window_q)  (< 2^61)
3. block floating point: shift the frame by s so its peak is < 2^fft_in_bits (23 for a
   128-point FFT); s is the frame's exponent. No per-stage FFT scaling is needed because a
   radix-2 FFT grows a component at most 2x per stage: every value stays < 2^30.
4. radix-2 decimation-in-time FFT, Q30 twiddles, rounded products   int32 values < 2^30
5. power re^2 + im^2 (< 2^61), then a second block exponent s_p so the frame's peak bin is
   < 2^power_bits (bins needed by the mel sums stay below 2^62)
6. mel sums with Q(mel_q) weights                                          int64 < 2^62
7. log2: leading-zero count + 129-entry table, plus the exponents      Q(log_q) int32
8. orthonormal DCT-II with Q(dct_q) weights                       int64, Q(dct_q+log_q)
9. round and saturate to int16 with out_frac_bits fraction bits          Q8.7 by default

Frames: frame i covers samples [i*hop, i*hop + frame_length); audio shorter than one frame
gives 0 frames (an empty (0, n_ceps) array), not an error. Digital silence gives every band
the log floor, so all-zero input is finite and defined. Full-scale input cannot overflow
(bounds above).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from edge.errors import AudioError
from edge.fixed_point import bit_length, isqrt, log2_q, round_shift, saturate
from edge.spec import DEFAULT_SPEC, RECORDING_NORMALISATIONS, FeatureSpec
from edge.tables import (
    LOG_TABLE_BITS,
    LOG_TABLE_Q,
    PREEMPH_IN_Q,
    TWIDDLE_Q,
    FrontEndTables,
    tables_for,
)

INT16_MIN, INT16_MAX = -32768, 32767


def check_pcm(pcm: np.ndarray, what: str = "audio") -> np.ndarray:
    """The samples as a 1-D int16 array (subclasses kept), or AudioError saying why not."""
    arr = np.asanyarray(pcm)
    if arr.dtype != np.int16:
        raise AudioError(f"{what}: samples are {arr.dtype}, the front end takes int16 PCM; "
                         "read the file with edge.audio.read_wav")
    if arr.ndim != 1:
        raise AudioError(f"{what}: samples have shape {arr.shape}, expected one channel "
                         "(1-D); mix to mono first")
    return arr


def mfcc(pcm: np.ndarray, spec: FeatureSpec = DEFAULT_SPEC) -> np.ndarray:
    """(n_frames, n_ceps) int16 cepstra of int16 PCM at spec.sample_rate_hz.

    Integer-only from the samples to the result; the pre-emphasis starts from a zero
    sample before the recording (as a fresh :class:`MfccStream` does).
    """
    x = check_pcm(pcm)
    return frames_to_mfcc(x, 0, spec)


def frames_to_mfcc(x: np.ndarray, prev_sample: int, spec: FeatureSpec) -> np.ndarray:
    """Cepstra of every whole frame of ``x``; ``prev_sample`` is the sample before x[0].

    After the window the arrays are laid out (bins, frames): every butterfly then works
    on contiguous rows of all frames at once, which is what makes numpy fast here.
    """
    tab = tables_for(spec)
    n_frames = spec.n_frames(x.shape[0])
    if n_frames == 0:
        return np.zeros((0, spec.n_ceps), dtype=np.int16)
    y = _preemphasis(x, prev_sample, spec)                      # int32: y * 2^15
    view = np.lib.stride_tricks.sliding_window_view(y, spec.frame_length, subok=True)
    frames = view[: n_frames * spec.hop_length : spec.hop_length]
    windowed = frames * tab.window                              # y*w * 2^(15+window_q)
    fft_in, s_fft = _block_float(windowed, tab, spec.n_fft)     # (n_fft, frames) < 2^23
    re, im = _fft(fft_in, tab)                                  # < 2^30
    power, s_pow = _power(re, im, spec.n_fft_bins, tab.power_bits)   # < 2^power_bits
    mel = _mel_sums(power, spec)                                # int64 < 2^62
    logmel = _log2_mel(mel, 2 * s_fft + s_pow - tab.exp_offset, spec)  # Q(log_q)
    return _dct(logmel, tab, spec)


def _preemphasis(x: np.ndarray, prev_sample: int, spec: FeatureSpec) -> np.ndarray:
    xs = x.astype(np.int64)
    before = np.empty_like(xs)
    before[0] = prev_sample
    before[1:] = xs[:-1]
    # |y| <= 2^30 + 32767 * 2^15 < 2^31: int32 in C, no saturation needed
    return (xs << PREEMPH_IN_Q) - spec.preemph_q15 * before      # Q15 (y * 2^15)


def _block_float(windowed: np.ndarray, tab: FrontEndTables,
                 n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame exponents s and the (n_fft, frames) FFT input in bit-reversed row order."""
    peak = np.abs(windowed).max(axis=1)
    shift = bit_length(peak) - tab.fft_in_bits                  # frame exponent s
    scaled = round_shift(windowed, shift[:, None]).T            # |v| <= 2^fft_in_bits
    rows = tab.bitrev[tab.bitrev < scaled.shape[0]]             # zero padding stays 0
    # C order: zeros_like would copy the transposed (Fortran) layout of `scaled`, and the
    # FFT's row reshapes then copied every stage (cProfile: 40 % of the front end).
    out = np.zeros_like(scaled, shape=(n_fft, scaled.shape[1]), order="C")
    out[np.flatnonzero(tab.bitrev < scaled.shape[0])] = scaled[rows]
    return out, shift


def _fft(x: np.ndarray, tab: FrontEndTables) -> tuple[np.ndarray, np.ndarray]:
    """Radix-2 DIT FFT down the rows (input in bit-reversed order); components < 2^30."""
    n, n_cols = x.shape
    pairs = x.reshape(n // 2, 2, n_cols)                        # stage 1: real input, w = 1
    re = np.empty_like(pairs)
    np.add(pairs[:, 0], pairs[:, 1], out=re[:, 0])
    np.subtract(pairs[:, 0], pairs[:, 1], out=re[:, 1])
    re, im = re.reshape(n, n_cols), np.zeros_like(x)
    half = 2
    rnd = 1 << (TWIDDLE_Q - 1)
    while half < n:
        groups = n // (2 * half)
        re4 = re.reshape(groups, 2, half, n_cols)
        im4 = im.reshape(groups, 2, half, n_cols)
        ar, ai, br, bi = re4[:, 0], im4[:, 0], re4[:, 1], im4[:, 1]
        if half == 2:                       # twiddles 1 and -i: exact, no multiply
            tr, ti = br.copy(), bi.copy()
            tr[:, 1], ti[:, 1] = bi[:, 1], -br[:, 1]
        else:
            wr = tab.twiddle_re[::groups, None]                 # Q30
            wi = tab.twiddle_im[::groups, None]
            tr = br * wr
            tr -= bi * wi                                       # < 2^61
            tr += rnd
            tr >>= TWIDDLE_Q
            ti = br * wi
            ti += bi * wr
            ti += rnd
            ti >>= TWIDDLE_Q
        out_re = np.empty_like(re4)
        out_im = np.empty_like(im4)
        np.add(ar, tr, out=out_re[:, 0])
        np.subtract(ar, tr, out=out_re[:, 1])
        np.add(ai, ti, out=out_im[:, 0])
        np.subtract(ai, ti, out=out_im[:, 1])
        re, im = out_re.reshape(n, n_cols), out_im.reshape(n, n_cols)
        half *= 2
    return re, im


def _power(re: np.ndarray, im: np.ndarray, n_bins: int,
           power_bits: int) -> tuple[np.ndarray, np.ndarray]:
    r, i = re[:n_bins], im[:n_bins]
    power = r * r + i * i                                       # < 2^61
    shift = np.maximum(bit_length(power.max(axis=0)) - power_bits, 0)   # block exponent
    return round_shift(power, shift), shift                     # < 2^power_bits


def _mel_sums(power: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(n_mels, frames) = mel weights @ power, summing only each band's own bins.

    Why: a triangle covers a few of the n_fft/2+1 bins, and numpy's integer matmul has no
    BLAS: the dense product was a tenth of the front end's time. Integer sums are exact
    in any order, so the bits are the matmul's (and the C twin's, which loops over the
    same extents)."""
    bins, weights, starts = _mel_bands(spec)
    return np.add.reduceat(power[bins] * weights, starts, axis=0)


@lru_cache(maxsize=16)
def _mel_bands(spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every band's bins (tables' mel_start, mel_len) one after the other, their Q(mel_q)
    weights as a column, and where each band starts; a validated spec has no empty band."""
    tab = tables_for(spec)
    if not np.all(tab.mel_len > 0):
        raise AudioError("feature spec has an empty mel band; validate it with FeatureSpec")
    band = np.repeat(np.arange(len(tab.mel_len)), tab.mel_len)
    bins = np.concatenate([np.arange(s, s + n) for s, n in zip(tab.mel_start, tab.mel_len,
                                                                 strict=True)])
    starts = np.concatenate([[0], np.cumsum(tab.mel_len)[:-1]])
    return bins, tab.mel[band, bins][:, None], starts


def _log2_mel(mel: np.ndarray, exponent: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    tab = tables_for(spec)
    lg, positive = log2_q(mel, tab.log2_table, LOG_TABLE_BITS, LOG_TABLE_Q, spec.log_q)
    lg = lg + (exponent << spec.log_q)                          # log2 of int16 units^2
    floor = spec.log2_floor << spec.log_q
    lg = np.maximum(lg, floor)
    return lg * positive + floor * (positive == 0)             # Q(log_q), silence -> floor


def _dct(logmel: np.ndarray, tab: FrontEndTables, spec: FeatureSpec) -> np.ndarray:
    acc = tab.dct @ logmel                                      # Q(dct_q + log_q) int64
    shift = spec.dct_q + spec.log_q - spec.out_frac_bits
    out = (acc + (1 << (shift - 1))) >> shift                   # Q(out_frac_bits)
    return saturate(out, INT16_MIN, INT16_MAX).astype(np.int16).T.copy()


class MfccStream:
    """Frame-by-frame front end with state: same bits as :func:`mfcc` for any chunking.

    Keeps the samples of the next unfinished frame and the sample before them (the
    pre-emphasis memory). ``push`` returns the frames completed by a chunk.
    """

    def __init__(self, spec: FeatureSpec = DEFAULT_SPEC) -> None:
        self.spec = spec
        self.reset()

    def reset(self) -> None:
        """Start a new recording: empty buffer, pre-emphasis memory 0."""
        self._pending = np.zeros(0, dtype=np.int16)
        self._prev = 0
        self.frames_out = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """(k, n_ceps) int16 cepstra of the frames this chunk completes (k may be 0)."""
        x = check_pcm(chunk, "audio chunk")
        buf = np.concatenate([self._pending, x]) if self._pending.size else x
        out = frames_to_mfcc(buf, self._prev, self.spec)
        consumed = out.shape[0] * self.spec.hop_length
        if consumed:
            self._prev = int(buf[consumed - 1])
            buf = buf[consumed:]
        self._pending = np.array(buf, dtype=np.int16)
        self.frames_out += out.shape[0]
        return out


def fill_window(pcm: np.ndarray, spec: FeatureSpec = DEFAULT_SPEC) -> np.ndarray:
    """A recording shorter than one analysis window, repeated until it fills one.

    Why: heart sounds are periodic, so two or more cardiac cycles looped are still a
    plausible recording, and the model needs a whole window. Training and the device
    apply the same rule (recordings under :data:`edge.quality.MIN_SECONDS` are refused
    before this as "too short"); longer recordings pass unchanged.
    """
    n = spec.window_samples
    if pcm.size >= n or pcm.size == 0:
        return pcm
    return np.tile(pcm, -(-n // pcm.size))[:n]


def windows(features: np.ndarray, spec: FeatureSpec = DEFAULT_SPEC,
            offset: int = 0) -> np.ndarray:
    """(n_windows, frames_per_window, n_ceps) int16 model inputs from a recording's features.

    ``features`` start at the recording's first frame. Window j starts at frame ``offset +
    j * window_hop_frames`` (training draws a random ``offset`` per epoch; the device's is
    0); fewer frames than one window give 0 windows. spec.normalise then centres each
    window (:func:`normalise_windows`) or normalises it by the recording heard so far
    (:func:`normalise_by_recording`).
    """
    feats = np.asanyarray(features)
    if feats.ndim != 2 or feats.shape[1] != spec.n_ceps or feats.dtype != np.int16:
        raise AudioError(f"features: got {feats.dtype} {feats.shape}, expected int16 "
                         f"(n_frames, {spec.n_ceps}) from edge.mfcc.mfcc with the same spec")
    size, hop = spec.frames_per_window, spec.window_hop_frames
    if feats.shape[0] - offset < size:
        return np.zeros((0, size, spec.n_ceps), dtype=np.int16)
    n_win = 1 + (feats.shape[0] - offset - size) // hop
    view = np.lib.stride_tricks.sliding_window_view(feats[offset:], size, axis=0, subok=True)
    wins = view[: n_win * hop : hop].transpose(0, 2, 1).astype(np.int32)
    if spec.normalise in RECORDING_NORMALISATIONS:
        ends = offset + size + hop * np.arange(n_win)
        return normalise_by_recording(wins, recording_stats(feats, ends), spec)
    return normalise_windows(wins, spec)


def normalise_windows(wins: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Subtract per-window means per spec.normalise ("c0", "cmn"); saturate to int16."""
    if spec.normalise not in ("c0", "cmn") or wins.shape[0] == 0:
        return wins.astype(np.int16)
    cols = 1 if spec.normalise == "c0" else spec.n_ceps
    mean = wins[:, :, :cols].sum(axis=1, keepdims=True) // spec.frames_per_window
    wins = wins.copy()
    wins[:, :, :cols] -= mean
    return saturate(wins, INT16_MIN, INT16_MAX).astype(np.int16)


# ---- per-recording normalisation -------------------------------------------------------
# The statistics of every frame heard so far, as the device keeps them while it streams:
# per cepstrum the count n, the sum S and the sum of squares Q (int64). Window j uses the
# statistics at its last frame, so a window never depends on frames after it, and a
# microcontroller needs 16 * n_ceps + 8 bytes (216 for 13 cepstra, hs_mfcc_stats) instead
# of the whole recording. The count stops at STATS_MAX_FRAMES (43.7 min at 25 frames/s), which
# keeps n * Q and S * S below 2^62.

STATS_MAX_FRAMES = (1 << 16) - 1
"""Frames counted into the running statistics; later frames leave them unchanged."""

SD_FLOOR = 16
"""Smallest standard deviation divided by (Q8.7 LSB: 1/8 of a log2 unit), so a constant
cepstrum (digital silence) gives 0 instead of a division by zero."""


def recording_stats(features: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, ...]:
    """(n, S, Q) of frames [0, end) for each end: n (k,), S and Q (k, n_ceps) int64."""
    x = np.asarray(features, dtype=np.int64)
    n = np.minimum(np.asarray(ends, dtype=np.int64), STATS_MAX_FRAMES)
    zero = np.zeros((1, x.shape[1]), dtype=np.int64)
    csum = np.concatenate([zero, np.cumsum(x, axis=0)])
    csq = np.concatenate([zero, np.cumsum(x * x, axis=0)])
    return n, csum[n], csq[n]


def normalise_by_recording(wins: np.ndarray, stats: tuple[np.ndarray, ...],
                           spec: FeatureSpec) -> np.ndarray:
    """Each window minus the recording's running mean ("rec_mean"), or in units of the
    running standard deviation too ("rec_mvn": 2^out_frac_bits per SD); int16.

    mean = floor(S / n); var = floor((n Q - S^2) / n^2); sd = max(isqrt(var), SD_FLOOR);
    mvn = floor((2 (x - mean) 2^out_frac_bits + sd) / (2 sd)) (rounded half up).
    """
    n, s, q = stats
    nn = n[:, None]
    mean = s // nn
    d = wins - mean[:, None, :].astype(np.int32)
    if spec.normalise == "rec_mvn":
        var = (nn * q - s * s) // (nn * nn)
        sd = np.maximum(isqrt(var), SD_FLOOR)[:, None, :]
        d = (2 * (d.astype(np.int64) << spec.out_frac_bits) + sd) // (2 * sd)
    return saturate(d, INT16_MIN, INT16_MAX).astype(np.int16)
