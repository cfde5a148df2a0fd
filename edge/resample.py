"""Integer polyphase rational resampler: int16 in, int16 out, no SciPy.

Why our own: the Raspberry Pi side has numpy only, the microcontroller side needs the
same arithmetic in C, and the features the model is trained on must be computed from
exactly the samples the device will see. So the filter is designed once in float64,
quantised to int16, and the filtering itself is integer only (int64 accumulators,
rounding shift, saturation), the same bits in batch and streaming use.

Conventions (all tested in ``tests/test_resample.py``):

* ``L/M = dst/src`` reduced by their gcd. Output sample ``n`` is the input signal at
  time ``n * M / L`` input samples: zero delay, so S1/S2 annotations stay where they
  are. The kernel is centred on that instant (taps from ``base - (K/2 - 1)`` to
  ``base + K/2`` where ``base = floor(n * M / L)``); input before the start and after
  the end counts as zeros.
* Output length is ``ceil(len(x) * L / M)``: every output instant that lies inside the
  recording (``n * M / L < len(x)``) and no other. 1 s at 44.1 kHz gives exactly
  2000 samples at 2 kHz; 1 sample gives 1 sample.
* Equal rates are an identity copy.

Filter: Kaiser-windowed sinc, designed in float64 once per ``(L, M)`` and cached.
Passband flat to 0.8 x the lower Nyquist (800 Hz at the 2 kHz model rate, 1600 Hz at
4 kHz), stopband from the lower Nyquist itself, 80 dB Kaiser design; K taps per phase
(e.g. 1108 for 44.1 kHz -> 2 kHz, 102 for 4 kHz -> 2 kHz, 52 for any upsampling by an
integer-ish factor). Why those edges: see PASSBAND_EDGE below.

Fixed-point formats (per output sample)::

    x          int16 q15                 input samples
    h[p, j]    int16 q(F)                F = 15..19, the finest that fits the table's
                                         largest tap (q19 for 44.1k->2k, q15 upsampling)
    acc        int64 q(15+F)             sum of K products, |acc| < 2^15 * 2^F * sum|h|
    y          int16 q15                 (acc + 2^(F-1)) >> F, saturated to int16
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import as_strided

from edge.errors import AudioError

__all__ = [
    "FilterTable",
    "Resampler",
    "design_filter",
    "resample",
    "resample_reference",
]

# Anti-alias band edges as fractions of the LOWER of the two Nyquist frequencies.
# Heart sounds carry their energy below ~800 Hz (S1/S2 mostly < 200 Hz, murmurs up to
# ~600-800 Hz). At the 2 kHz model rate (Nyquist 1000 Hz) a 0.8 passband edge keeps
# 0-800 Hz flat, and a stopband starting AT Nyquist means nothing aliases at all, not
# even into the 800-1000 Hz guard band. At 4 kHz the passband is 0-1600 Hz. A wider
# transition would shorten the filter, a narrower one would cost taps for bandwidth
# that holds no heart sound.
PASSBAND_EDGE = 0.8
STOPBAND_EDGE = 1.0
CUTOFF = 0.5 * (PASSBAND_EDGE + STOPBAND_EDGE)  # -6 dB point of the windowed sinc
# Kaiser design target. 80 dB puts aliases below the 16-bit noise of a typical
# recording; the int16 coefficients (see COEF_BITS) keep the quantised floor under it.
STOPBAND_DB = 80.0

COEF_BITS = 16  # coefficients are stored as int16 (q15 or finer, see design_filter)
COEF_MAX = (1 << (COEF_BITS - 1)) - 1
MIN_FRAC_BITS = 15  # never coarser than q15
MAX_FRAC_BITS = 30  # keeps |acc| < 2^15 * 2^30 * sum|h| well inside int64
INT16_MIN, INT16_MAX = -32768, 32767
MAX_PHASES = 8192  # L beyond this means a table of tens of MB: refuse instead
CHUNK_ELEMENTS = 1 << 18  # samples gathered per block: bounds memory (2 MB as int64)
PER_PHASE_MIN_ROWS = 16  # below this many outputs per phase, gather instead of striding


@dataclass(frozen=True)
class FilterTable:
    """One polyphase filter: row ``p`` holds the K taps for output phase ``p``.

    ``coef_q[p, j]`` is ``round(coef[p, j] * 2**frac_bits)`` as int16 (format
    q``frac_bits``), with each row adjusted to sum to exactly ``2**frac_bits`` so that
    DC passes with gain 1 in every phase (silence stays silence, a constant stays that
    constant). ``coef`` is the float64 table the integer one approximates.
    """

    up: int
    down: int
    taps: int
    frac_bits: int
    coef: np.ndarray
    coef_q: np.ndarray

    @property
    def left(self) -> int:
        """Input samples needed before ``base`` (the kernel's left half)."""
        return self.taps // 2 - 1

    @property
    def right(self) -> int:
        """Input samples needed after ``base`` (the look-ahead, i.e. the latency)."""
        return self.taps // 2


def _kaiser_beta(atten_db: float) -> float:
    """Kaiser's empirical beta for a stopband attenuation in dB."""
    if atten_db > 50.0:
        return 0.1102 * (atten_db - 8.7)
    if atten_db >= 21.0:
        return 0.5842 * (atten_db - 21.0) ** 0.4 + 0.07886 * (atten_db - 21.0)
    return 0.0


def _taps_per_phase(transition: float, atten_db: float) -> int:
    """Kaiser's length estimate, in input samples, rounded up to an even number.

    ``transition`` is the transition width in cycles per input sample.
    """
    n = (atten_db - 7.95) / (2.285 * 2.0 * math.pi * transition) + 1.0
    k = max(2, math.ceil(n))
    return k + (k % 2)


def _round_to_sum(scaled: np.ndarray, total: int) -> np.ndarray:
    """Round each row to integers that sum to exactly ``total``, each within 1 of ideal.

    Plain rounding leaves a row sum a few LSB off (DC gain != 1, a pattern of period L
    in the output). Instead of dumping that residual on one tap (an error of several
    LSB on the biggest coefficient), flip the rounding of the taps that were nearest to
    a half: the error of every tap stays below 1 LSB.
    """
    q = np.floor(scaled).astype(np.int64)
    frac = scaled - q  # in [0, 1): how much each tap was rounded down
    need = total - q.sum(axis=1)  # taps per row that must be rounded up instead
    order = np.argsort(-frac, axis=1, kind="stable")  # most rounded-down first
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(scaled.shape[1])[None, :], axis=1)
    return q + (rank < need[:, None])


def _quantise_rows(coef: np.ndarray) -> tuple[np.ndarray, int]:
    """Quantise each row to int16 with the finest q format that fits, rows summing to 1.

    Decimating filters have small taps (about 0.04 for 44.1 kHz -> 2 kHz): in plain
    q15 they would keep only ~10 significant bits. Choosing ``frac_bits`` per table
    (block floating point, as CMSIS does with a post-shift) keeps ~15 bits for every
    table and costs nothing: the shift after the accumulation is a constant.
    """
    peak = float(np.max(np.abs(coef)))
    frac = int(math.floor(math.log2(COEF_MAX / peak)))
    frac = min(max(frac, MIN_FRAC_BITS), MAX_FRAC_BITS)
    while True:
        one = 1 << frac
        q = _round_to_sum(coef * one, one)
        if np.max(np.abs(q)) <= COEF_MAX or frac == MIN_FRAC_BITS:
            break
        frac -= 1
    if np.max(np.abs(q)) > COEF_MAX:  # only if a design ever had a tap >= 1.0
        raise AudioError(f"resampler filter: a tap of {peak:.3f} does not fit int16 q15; "
                         "this is a bug in heartsound's filter design, please report it")
    return q.astype(np.int16), frac


@lru_cache(maxsize=32)
def design_filter(up: int, down: int) -> FilterTable:
    """Design the polyphase windowed-sinc table for ``L = up``, ``M = down`` (coprime).

    The prototype lives on the upsampled grid (``L * K + 1`` points, Kaiser window from
    ``np.kaiser``), centred on 0; phase ``p`` takes the points ``t = p/L + K/2 - 1 - j``
    input samples away from tap ``j``. Cached per ``(L, M)`` because the design costs
    milliseconds and a live capture calls it once.
    """
    ratio = up / down
    cutoff = 0.5 * CUTOFF * min(1.0, ratio)  # cycles per input sample
    transition = 0.5 * (STOPBAND_EDGE - PASSBAND_EDGE) * min(1.0, ratio)
    k = _taps_per_phase(transition, STOPBAND_DB)
    half = up * k // 2
    grid = np.arange(-half, half + 1, dtype=np.float64) / up  # time in input samples
    proto = 2.0 * cutoff * np.sinc(2.0 * cutoff * grid) * np.kaiser(grid.size,
                                                                      _kaiser_beta(STOPBAND_DB))
    # Tap j of phase p sits at grid index p + up * (K - 1 - j); the last grid point
    # (t = +K/2) is never used, which makes the kernel span exactly K input samples.
    phase = np.arange(up)[:, None]
    tap = np.arange(k)[None, :]
    coef = proto[phase + up * (k - 1 - tap)]
    coef = coef / coef.sum(axis=1, keepdims=True)  # DC gain 1 in every phase
    coef_q, frac = _quantise_rows(coef)
    coef.setflags(write=False)
    coef_q.setflags(write=False)
    return FilterTable(up, down, k, frac, coef, coef_q)


def _ratio(src_rate: int, dst_rate: int) -> tuple[int, int]:
    """Reduce dst/src to coprime ``(L, M)``, refusing rates that cannot work."""
    for name, rate in (("source", src_rate), ("target", dst_rate)):
        if int(rate) != rate or rate <= 0:
            raise AudioError(f"resample: {name} sample rate {rate!r} is not a positive "
                             "integer number of Hz; pass rates such as 2000 or 44100")
    g = math.gcd(int(src_rate), int(dst_rate))
    up, down = int(dst_rate) // g, int(src_rate) // g
    if up > MAX_PHASES:
        raise AudioError(f"resample: {src_rate} Hz -> {dst_rate} Hz needs {up} filter "
                         f"phases (limit {MAX_PHASES}); convert the file to a common "
                         "rate (e.g. 44100 or 48000 Hz) first")
    return up, down


def _check_int16(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.int16 or x.ndim != 1:
        raise TypeError(f"resample expects 1-D int16 samples, got {x.ndim}-D {x.dtype}")
    return x


def _out_len(n_in: int, up: int, down: int) -> int:
    """ceil(n_in * L / M): the output instants n*M/L that fall inside the input."""
    return -(-n_in * up // down)


def _accumulate(buf: np.ndarray, buf_start: int, table: FilterTable, n0: int, n1: int,
                coef: np.ndarray, acc_dtype: type) -> np.ndarray:
    """Dot products for outputs ``n0 <= n < n1``; ``buf[0]`` is input sample ``buf_start``.

    Two equivalent layouts (integer sums are exact, so both give the same bits):
    many outputs per phase -> one strided view per phase; few (upsampling with many
    phases, or a small streaming chunk) -> gather the windows of a block of outputs.
    """
    count = max(n1 - n0, 0)
    first, last = n0 * table.down // table.up, (n1 - 1) * table.down // table.up
    if count and (first - table.left < buf_start
                  or last + table.right >= buf_start + buf.size):
        raise RuntimeError("resampler buffer too short: a bug in edge.resample")
    if count >= PER_PHASE_MIN_ROWS * table.up:
        return _accumulate_by_phase(buf, buf_start, table, n0, n1, coef, acc_dtype)
    return _accumulate_gathered(buf, buf_start, table, n0, n1, coef, acc_dtype)


def _accumulate_by_phase(buf: np.ndarray, buf_start: int, table: FilterTable, n0: int,
                         n1: int, coef: np.ndarray, acc_dtype: type) -> np.ndarray:
    """Outputs with ``n = r (mod L)`` share one table row and their windows start ``M``
    samples apart: a strided view of ``buf`` (no copy) times one row. einsum widens the
    samples block by block, so at most ``CHUNK_ELEMENTS`` are widened at once.
    """
    up, down, k = table.up, table.down, table.taps
    acc = np.empty(n1 - n0, dtype=acc_dtype)
    rows = max(1, CHUNK_ELEMENTS // k)
    step = buf.strides[0]
    for r in range(min(up, n1 - n0)):
        first = n0 + r
        count = len(range(first, n1, up))
        h = coef[(first * down) % up]
        start = (first * down) // up - table.left - buf_start  # offset of tap 0 in buf
        for q0 in range(0, count, rows):
            q1 = min(count, q0 + rows)
            view = as_strided(buf[start + q0 * down:], shape=(q1 - q0, k),
                              strides=(step * down, step), writeable=False)
            acc[r + q0 * up:r + q1 * up:up] = np.einsum("qk,k->q", view, h,
                                                       dtype=acc_dtype, casting="unsafe")
    return acc


def _accumulate_gathered(buf: np.ndarray, buf_start: int, table: FilterTable, n0: int,
                         n1: int, coef: np.ndarray, acc_dtype: type) -> np.ndarray:
    """Blocks of outputs: gather each output's K-sample window and its phase's row."""
    up, down, k = table.up, table.down, table.taps
    acc = np.empty(n1 - n0, dtype=acc_dtype)
    block = max(1, CHUNK_ELEMENTS // k)
    taps = np.arange(k)
    for b0 in range(n0, n1, block):
        n = np.arange(b0, min(n1, b0 + block), dtype=np.int64)
        starts = (n * down) // up - table.left - buf_start  # offset of tap 0 in buf
        windows = buf[starts[:, None] + taps]  # block x K samples (a copy, bounded)
        acc[b0 - n0:b0 - n0 + n.size] = np.einsum("bk,bk->b", windows, coef[(n * down) % up],
                                                  dtype=acc_dtype, casting="unsafe")
    return acc


def _round_saturate(acc: np.ndarray, frac_bits: int) -> np.ndarray:
    """q(15+frac) int64 accumulator -> q15 int16: round half up, then saturate."""
    y = (acc + (1 << (frac_bits - 1))) >> frac_bits  # q15, may exceed int16 range
    return np.clip(y, INT16_MIN, INT16_MAX).astype(np.int16)  # q15 saturated


def _padded(x: np.ndarray, table: FilterTable, dtype: type) -> np.ndarray:
    return np.concatenate([np.zeros(table.left, dtype), x.astype(dtype, copy=False),
                           np.zeros(table.right, dtype)])


def resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample int16 samples from ``src_rate`` to ``dst_rate`` Hz with integer arithmetic.

    Returns ``ceil(len(x) * L / M)`` int16 samples (see the module docstring). Bit-exact
    with :class:`Resampler` fed the same samples in any chunks, then flushed.
    """
    x = _check_int16(x)
    up, down = _ratio(src_rate, dst_rate)
    if up == down:
        return x.copy()
    table = design_filter(up, down)
    buf = _padded(x, table, np.int16)  # q15
    acc = _accumulate(buf, -table.left, table, 0, _out_len(x.size, up, down),
                      table.coef_q, np.int64)  # q(15 + frac_bits) in int64
    return _round_saturate(acc, table.frac_bits)


def resample_reference(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """The same filter in float64, unquantised and unrounded: the yardstick for SNR.

    Returns float64 samples on the int16 scale (neither rounded nor clipped).
    """
    x = np.asarray(x)
    up, down = _ratio(src_rate, dst_rate)
    if up == down:
        return x.astype(np.float64)
    table = design_filter(up, down)
    buf = _padded(x, table, np.float64)
    return _accumulate(buf, -table.left, table, 0, _out_len(x.size, up, down),
                       table.coef, np.float64)


class Resampler:
    """Streaming form of :func:`resample` for live capture: same bits, any chunking.

    ``process(chunk)`` returns every output whose whole kernel has arrived (so it lags
    the input by ``K/2`` input samples, the filter's look-ahead); ``flush()`` returns
    the rest as if the input ended there, and resets the state for a new stream.
    Concatenating all returns equals ``resample(all_input, src, dst)`` exactly.
    Memory stays bounded: only the last ``K`` or so input samples are kept.
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self.src_rate = int(src_rate)
        self.dst_rate = int(dst_rate)
        self._up, self._down = _ratio(src_rate, dst_rate)
        self._table = None if self._up == self._down else design_filter(self._up,
                                                                          self._down)
        self.reset()

    def reset(self) -> None:
        """Forget all input: the next sample is the start of a new recording."""
        left = self._table.left if self._table is not None else 0
        self._buf = np.zeros(left, np.int16)  # q15; the zeros before the first sample
        self._buf_start = -left  # input index of self._buf[0]
        self._received = 0  # input samples seen
        self._next = 0  # index of the next output sample to emit

    @property
    def latency(self) -> int:
        """Input samples that must arrive after an instant before its output appears."""
        return self._table.right if self._table is not None else 0

    def _emit(self, n_end: int) -> np.ndarray:
        table = self._table
        acc = _accumulate(self._buf, self._buf_start, table, self._next, n_end,
                          table.coef_q, np.int64)  # q(15 + frac_bits)
        self._next = max(self._next, n_end)
        keep_from = (self._next * self._down) // self._up - table.left  # next tap 0
        drop = min(max(keep_from - self._buf_start, 0), self._buf.size)
        self._buf = self._buf[drop:]
        self._buf_start += drop
        return _round_saturate(acc, table.frac_bits)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed int16 samples; get the int16 outputs that are now complete."""
        chunk = _check_int16(chunk)
        if self._table is None:
            self._received += chunk.size
            return chunk.copy()
        self._buf = np.concatenate([self._buf, chunk])
        self._received += chunk.size
        # Output n is complete when floor(n*M/L) + K/2 <= received - 1.
        ready = self._received - self._table.right
        n_end = max(self._next, _out_len(ready, self._up, self._down) if ready > 0 else 0)
        return self._emit(n_end)

    def flush(self) -> np.ndarray:
        """Outputs still owed for the input so far (trailing zeros assumed); then reset."""
        if self._table is None:
            self.reset()
            return np.zeros(0, np.int16)
        self._buf = np.concatenate([self._buf, np.zeros(self._table.right, np.int16)])
        out = self._emit(_out_len(self._received, self._up, self._down))
        self.reset()
        return out
