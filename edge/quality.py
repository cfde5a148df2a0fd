"""Signal-quality gate: refuse to guess on a recording that holds no usable heart sound.

A screening tool that classifies speech, a rubbed microphone or silence as "normal" is
worse than one that says "retake". This gate runs before the model and answers *unsure*
with a reason and a hint when the recording is:

1. **too short**: under :data:`MIN_SECONDS` (2 s, two cardiac cycles at 60 bpm). A
   recording between that and one analysis window is looped to fill the window
   (:func:`edge.mfcc.fill_window`), exactly as training does;
2. **silent**: baseline-free RMS below :data:`SILENT_RMS` int16 units (-66 dBFS). The
   quietest labelled heart recording here has an RMS of 54 (PASCAL A), the quietest
   PASCAL ``artifact`` ("silence") 12;
3. **clipped**: more than :data:`CLIP_SHARE_PERMILLE` per mille of samples at or beyond
   :data:`CLIP_LEVEL` (99 % of full scale). Measured at 2 kHz on the labelled heart
   recordings: 7 of 1382 have more than 2 %, 3 more than 5 % (up to 11 %);
4. **too coarse**: the signal's rms below :data:`MIN_RMS_STEPS` quantisation steps of the
   recording's own sample grid (see :func:`quantisation_step` and "Resolution" below);
5. **no heart sound**: heart sounds put nearly all their energy below ~200 Hz (spec
   docstring: 0.89-0.98 of it, by source); noise, speech and music do not. The figure is
   the share of the baseline-free energy that passes a low-pass, and a recording below
   :data:`LOW_SHARE_MIN_Q15` is rejected.

Everything is integer arithmetic on int16 PCM at the front end's rate (boxcar sums from a
cumulative sum, int64 energies with a block exponent, one exact integer comparison per
test), so a recording gets the same verdict on every device and a microcontroller can do
the same. The filters (lengths in samples at 2 kHz):

* baseline removal ``hp = 80 x[n] - sum(x[n-40 .. n+39])``: a 40 ms moving average
  subtracted (first null 25 Hz: breathing, handling and DC go), int64, Q(hp) = x * 80;
* low-pass: :data:`LP_PASSES` cascaded boxcars of :data:`LP_LEN` samples (gain
  ``LP_LEN ** LP_PASSES``; 5 samples = first null at 400 Hz, two passes keep 67 % of the
  power at 100 Hz and 18 % at 200 Hz).

How the numbers were chosen (``python3 bench/bench_quality.py --calibrate``): on a fixed,
seeded half of the recordings *by group* (calibration), the filter and the threshold that
catch the most ``artifact`` recordings while wrongly rejecting at most 1 % of the
labelled heart recordings (normal and abnormal, every source); the other half (held out)
is only measured, by ``bench/bench_quality.py`` and ``tests/test_quality.py``. Chosen:
5-sample boxcar twice, threshold 0.214 (calibration half: 18/18 artifacts, 4/659 good
rejected). Held out: 13 of 14 artifacts caught; 2 of 631 good recordings long enough to
screen rejected (one "no heart sound", one clipped). 42 of 1382 labelled recordings (38
PASCAL B, 4 PASCAL A) are shorter than 2 s and are "too short" whatever they hold.

Resolution. An 8-bit file (or a 16-bit one with a tiny signal) reaches the front end as
int16 samples on a coarse grid: 8-bit samples decode to multiples of 256. At a few steps
quantisation is distortion that follows the signal rather than white noise (the quiet
stretches between S1 and S2, where murmurs are, turn into flat runs and steps), and the
log mel bands above the heart sound's own spectrum hold it instead of the recording's
noise floor (a reading of why, not measured here); the decision moves (measured below).
The figure that matters is the heart-band signal in steps of the *source* grid: the gate's
baseline-free rms at the front end's rate (resampling and the low-pass keep the heart
band) divided by :func:`quantisation_step` of the decoded samples *before* resampling
(after it the grid is gone). It is reported as an effective resolution in bits,
``log2(rms / step) + 1.5``: the bit depth whose full-scale sine has this rms.

How :data:`MIN_RMS_STEPS` was chosen (``python3 bench/bench_resolution.py --grids``): 270
labelled recordings (45 per source: PASCAL A at 44.1 kHz, PASCAL B at 4 kHz, PhysioNet
a/b/d/e at 2 kHz), each peak-normalised, scaled by 2^-k and requantised to 8 bits
(k = 0..7) and to 16 bits (k = 5..12), screened with the shipped model; a decision that
differs from the untouched recording's is a flip. Pooled (8-bit rows up to 24 steps,
16-bit rows above; at 16-24 steps the 16-bit rows flip 12 %, the 8-bit ones 16 %):

    rms / step    0-1   1-2   2-3   3-4   4-6   6-8  8-12 12-16 16-24 24-32 32-64 64-128 >128
    flips %        44    36    30    22    19    17    15    15    12    14    10     7     3
    median |dP|  0.59  0.31  0.20  0.11  0.10  0.06  0.07  0.06  0.05  0.04  0.02  0.01  0.01

The median shift of P(abnormal) halves with every doubling of the rms up to 4 steps and
then levels off. Per source, PASCAL A, PASCAL B and PhysioNet e flip 23 %, 30 % and
22 % at 2-4 steps but 8 %, 12 % and 7 % at 4-8 steps and little more than at full
resolution from there. PhysioNet b and d flip 24-41 % at every reduced resolution up to
64 steps, in 16-bit files too: a resolution test cannot fix them without refusing
ordinary recordings. And 17 real PhysioNet e recordings already lie on a coarse grid
(step 256 at 17-18 steps rms, step 1024 at 5.8-6.3 steps): the model was trained on
them and the gate must pass them. Hence 4 steps (3.5 bits): below it the decision is
mostly the quantiser's; above it a healthy 8-bit recording (PASCAL A stored as 8-bit:
12-17 steps) is screened. For 16-bit audio the step is 1 and the silent test (16) comes
first, so this test only fires on coarse grids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge.spec import DEFAULT_SPEC, FeatureSpec

__all__ = [
    "CLIP_LEVEL",
    "CLIP_SHARE_PERMILLE",
    "LOW_SHARE_MIN_Q15",
    "Quality",
    "REASONS",
    "SILENT_RMS",
    "assess",
    "low_band_share_q15",
    "quantisation_step",
]

# ---- thresholds (see the module docstring for where each comes from) --------------------
MIN_SECONDS = 2.0  # shortest recording screened; training leaves shorter ones out too
SILENT_RMS = 16  # int16 units, RMS of the baseline-free signal (-66 dBFS)
CLIP_LEVEL = 32440  # |x| >= 99 % of full scale counts as clipped
CLIP_SHARE_PERMILLE = 50  # more than 5 % of samples clipped -> retake
LOW_SHARE_MIN_Q15 = 7013  # calibrated (bench_quality --calibrate): share < 0.214
MIN_RMS_STEPS = 4  # rms of at least 4 source quantisation steps (3.5 bits), see "Resolution"
SINE_BITS = 1.5  # log2(2 sqrt 2): a full-scale N-bit sine has an rms of 2^(N - 1.5) steps

# ---- filters, as fractions of the sample rate (exact at 2 kHz) ---------------------------
HP_DIVISOR = 25  # baseline window = rate / 25 samples (80 at 2 kHz, 40 ms)
LP_DIVISOR = 400  # low-pass boxcar = rate / 400 samples (5 at 2 kHz)
LP_PASSES = 2
Q15 = 15
ENERGY_BITS = 62  # a sum of squares stays below 2^62 (int64, one bit of margin)

TOO_SHORT, SILENT, CLIPPED, NO_HEART = "too short", "silent", "clipped", "no heart sound"
COARSE = "too coarse"
REASONS = (TOO_SHORT, SILENT, COARSE, CLIPPED, NO_HEART)
HINTS = {
    TOO_SHORT: "record again for at least {need:g} s (20-30 s is best) and keep the chest "
               "piece still",
    SILENT: "check that the stethoscope or microphone is connected, unmuted and on the "
            "chest, then record again",
    COARSE: "effective resolution {bits:.1f} bits (signal {steps:.1f} steps rms, {grid}; "
            "the front end needs {need} steps, {need_bits:g} bits): record at 16 bits, or "
            "raise the input level",
    CLIPPED: "the signal is too loud: lower the input gain or press the chest piece more "
             "lightly, then record again",
    NO_HEART: "place the chest piece on bare skin at the apex or left lower sternal border, "
              "keep still and quiet, then record again",
}


@dataclass(frozen=True)
class Quality:
    """Verdict of the gate: ``ok`` or a reason (one of :data:`REASONS`) and a hint.

    ``figures`` holds what was measured (seconds, rms, quantisation_step, resolution_bits,
    clipped_share, low_band_share) so the log and ``--json`` can show why.
    """

    ok: bool
    reason: str | None
    hint: str | None
    figures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready form for ``--json`` and the screening log."""
        return {"ok": self.ok, "reason": self.reason, "hint": self.hint,
                "figures": dict(self.figures)}


def _moving_sum(x: np.ndarray, length: int) -> np.ndarray:
    """Sums of every run of ``length`` samples (len(x) - length + 1 of them), int64."""
    c = np.concatenate((np.zeros(1, np.int64), np.cumsum(x, dtype=np.int64)))
    return c[length:] - c[:-length]


def _energy(v: np.ndarray) -> tuple[int, int]:
    """(sum of squares after a right shift by s, s): energy ~ result * 4^s, no overflow.

    Block exponent: the peak keeps ``(62 - bits(n)) / 2`` bits (23 for a minute at
    2 kHz), so n squares sum below 2^62 whatever the recording's length.
    """
    peak = int(np.abs(v).max()) if v.size else 0
    peak_bits = (ENERGY_BITS - int(v.size).bit_length()) // 2
    shift = max(0, peak.bit_length() - peak_bits)
    w = v >> shift                                         # |w| < 2^peak_bits
    return int(np.dot(w, w)), shift                        # < 2^62


def _filtered(pcm: np.ndarray, rate: int, lp_divisor: int = LP_DIVISOR,
              passes: int = LP_PASSES) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(baseline-free hp, its low-passed version, hp gain, low-pass gain)."""
    hp_len = max(2, rate // HP_DIVISOR)
    lp_len = max(1, rate // lp_divisor)
    x = pcm.astype(np.int64)
    centre = hp_len // 2
    s = _moving_sum(x, hp_len)
    hp = hp_len * x[centre:centre + s.size] - s            # x * hp_len, |.| < 2^23
    lp = hp
    for _ in range(passes):
        lp = _moving_sum(lp, lp_len)                       # gain lp_len per pass, < 2^28
    return hp, lp, hp_len, lp_len**passes


def low_band_share_q15(pcm: np.ndarray, rate: int = DEFAULT_SPEC.sample_rate_hz,
                       lp_divisor: int = LP_DIVISOR, passes: int = LP_PASSES) -> int:
    """Share of the baseline-free energy below ~200 Hz, in Q15 (32768 = all of it).

    Exact integer: e_lp * 4^s_lp * 2^15 // (gain^2 * e_hp * 4^s_hp) in Python ints.
    ``lp_divisor`` and ``passes`` exist for calibration; the gate uses the defaults.
    """
    hp, lp, _, lp_gain = _filtered(np.asarray(pcm), rate, lp_divisor, passes)
    return _low_share(hp, lp, lp_gain)


def _low_share(hp: np.ndarray, lp: np.ndarray, lp_gain: int) -> int:
    e_hp, s_hp = _energy(hp)
    e_lp, s_lp = _energy(lp)
    if e_hp == 0:
        return 0
    num = e_lp << (2 * s_lp + Q15)                         # Q15 * lp_gain^2 units
    den = (lp_gain * lp_gain * e_hp) << (2 * s_hp)
    return min(num // den, 1 << Q15)


def assess(pcm: np.ndarray, spec: FeatureSpec = DEFAULT_SPEC, step: int | None = None
           ) -> Quality:
    """Gate one recording: int16 mono at ``spec.sample_rate_hz`` (what the model sees).

    ``step`` is :func:`quantisation_step` of the decoded samples *before* they were
    resampled (resampling hides the grid); None measures it on ``pcm``, which is right
    only when ``pcm`` was not resampled.
    """
    x = np.asarray(pcm)
    if x.dtype != np.int16 or x.ndim != 1:
        raise ValueError("assess() takes 1-D int16 PCM at the spec's rate")
    step = quantisation_step(x) if step is None else max(1, int(step))
    rate = spec.sample_rate_hz
    n = int(x.size)
    figures: dict = {"seconds": round(n / rate, 3)}
    need = min_samples(spec)
    if n < max(need, rate // HP_DIVISOR + 1):
        return _unsure(TOO_SHORT, figures, need=need / rate)
    hp, lp, hp_gain, lp_gain = _filtered(x, rate)
    e_hp, s_hp = _energy(hp)
    rms = float(np.sqrt(float(e_hp) * 4.0**s_hp / hp.size)) / hp_gain
    clipped = int(np.count_nonzero((x >= CLIP_LEVEL) | (x <= -CLIP_LEVEL)))
    low_q15 = _low_share(hp, lp, lp_gain)
    bits = round(float(np.log2(rms / step)) + SINE_BITS, 2) if rms > 0 else None
    figures.update(rms=round(rms, 2), quantisation_step=step, resolution_bits=bits,
                   clipped_share=round(clipped / n, 5),
                   low_band_share=round(low_q15 / (1 << Q15), 4))
    # Integer forms of rms < LIMIT: e_hp * 4^s < LIMIT^2 * hp_gain^2 * n_hp
    energy, floor = e_hp << (2 * s_hp), hp_gain**2 * hp.size
    if energy < SILENT_RMS**2 * floor:
        return _unsure(SILENT, figures)
    if energy < (MIN_RMS_STEPS * step) ** 2 * floor:
        return _unsure(COARSE, figures, bits=bits, steps=rms / step, need=MIN_RMS_STEPS,
                       need_bits=np.log2(MIN_RMS_STEPS) + SINE_BITS,
                       grid=_grid(step))
    if clipped * 1000 > CLIP_SHARE_PERMILLE * n:
        return _unsure(CLIPPED, figures)
    if low_q15 < LOW_SHARE_MIN_Q15:
        return _unsure(NO_HEART, figures)
    return Quality(True, None, None, figures)


def quantisation_step(pcm: np.ndarray) -> int:
    """The grid the decoded samples lie on, in int16 units: the gcd of all of them.

    256 for an 8-bit file, 16 for a 12-bit converter's left-aligned words, 1 for ordinary
    16-bit audio (and 1 for silence). Measured on the samples, not read from the header,
    so a 16-bit file holding 8-bit data counts as 8-bit. One sample off the grid (an
    edited or mixed file) makes it 1: the test then errs on the side of screening.
    """
    x = np.asarray(pcm).astype(np.int64)
    return max(1, int(np.gcd.reduce(np.abs(x)))) if x.size else 1


def _grid(step: int) -> str:
    """'8-bit samples' for a power-of-two step, else the grid in int16 units."""
    if step & (step - 1) == 0:
        return f"{17 - step.bit_length()}-bit samples"
    return f"samples on a grid of {step} int16 units"


def min_samples(spec: FeatureSpec = DEFAULT_SPEC) -> int:
    """Samples of the shortest recording screened (:data:`MIN_SECONDS`, at most a window)."""
    return min(spec.window_samples, round(MIN_SECONDS * spec.sample_rate_hz))


def _unsure(reason: str, figures: dict, **fmt) -> Quality:
    return Quality(False, reason, HINTS[reason].format(**fmt), figures)
