"""FeatureSpec: the one description of the fixed-point MFCC front end (the feature contract).

Training, conversion, the Raspberry Pi runtime and the C firmware all read their front-end
numbers from a :class:`FeatureSpec`; nothing retypes a sample rate or a coefficient count.
The spec travels inside the model's metadata as JSON (:meth:`FeatureSpec.to_json`), and a
model and a front end whose specs differ refuse to run together.

Why the defaults (measured on the real recordings in ``../shared/data``, 60 files per
source, 55 for PhysioNet d; ``python3 bench/bench_frontend.py --spectra`` reproduces them):

* **2000 Hz.** Mean fraction of spectral energy (above 20 Hz) below 800 Hz: PASCAL A 0.836
  (iPhone app: the rest is mostly room noise and speech), PASCAL B 0.980, PhysioNet a 0.997,
  b 1.000, d 1.000. Below 200 Hz: A 0.61, B 0.85, PhysioNet a/b/d 0.99. So 2 kHz (PhysioNet's
  native rate; PASCAL B 4 kHz and A 44.1 kHz are resampled) keeps the heart, and the mel
  bank stops at 800 Hz, below the resampler's roll-off near Nyquist.
* **Frame 128 samples (64 ms), FFT 128.** Most energy sits below 200 Hz, so the bins must be
  narrow there: 2000/128 = 15.6 Hz gives 12 bins below 200 Hz (a 25 ms frame would give 6)
  and every one of the 20 mel bands at least 3 bins.
* **Hop 80 samples (40 ms).** 25 frames per second. The shortest S1-to-S2 interval in the
  expert timing of PASCAL A is 176 ms (5th percentile 215 ms, median 298 ms), so systole
  spans at least 4 hops; two adjacent Hann frames still weight every sample by >= 0.31.
* **Analysis window 3 s, hop 1 s.** The cardiac cycle in PASCAL A's timing has median
  0.72 s, 95th percentile 1.02 s and maximum 1.66 s, so 3 s holds at least one full cycle
  and usually 3-4. A window is 74 frames x 13 cepstra = 962 int8 model inputs: small
  enough for a Cortex-M4.
* **Fixed windows, not heart cycles: measured.** An envelope segmenter (25-400 Hz RMS at
  50 Hz, heart period and systole from its autocorrelation, S1 tracked period by period;
  64-88 bpm median per database) cut windows at each S1 instead of every second.
  Leave-one-database-out recording AUC a / b / d / e (same setup as the normalisation
  bullet below), mean of training seeds 0-2: 0.758 / 0.631 / 0.709 / 0.400 against
  ``c0``'s 0.772 / 0.609 / 0.681 / 0.388; the mean over databases moves by +0.04, -0.003
  and -0.001 with seeds 0, 1 and 2 (+0.012 on average, inside the seed noise), so the
  device is spared a causal segmenter. A Potes et al. (2016) style input (the cycle as
  four band-passed signals at 1 kHz, two Conv1D layers, 21 k parameters; seed 0) reached
  0.641 / 0.531 / 0.560 / 0.412 on cycles and 0.595 / 0.489 / 0.358 / 0.322 on fixed
  windows: segmentation helps that network, yet it transfers to an unseen stethoscope
  worse than this MFCC front end.
* **Measured alternatives, none better.** The default CNN, same patient-level split,
  recording-level AUC validation / test PhysioNet / test PASCAL: these defaults 0.878 /
  0.808 / 0.719 (seed 1: 0.845 / 0.788 / 0.667, so seeds alone move AUC by 0.03-0.05);
  hop 40 (20 ms) 0.877 / 0.811 / 0.631; 20 cepstra 0.858 / 0.777 / 0.605; hop 40 and 20
  cepstra 0.880 / 0.781 / 0.619; 5 s windows 0.849 / 0.804 / 0.655. Each enlarges the
  input (x1.5 to x3.1) for no gain above the seed noise. ``normalise="cmn"`` (every
  cepstrum's window mean removed, the stethoscope's response with it) 0.784 / 0.710 /
  0.739, and on the database it never saw (leave-one-database-out AUC a/b/d) 0.68 / 0.70
  / 0.64 against 0.73 / 0.71 / 0.55, with the threshold transferring no better.
  Reproduce one with, e.g., ``heartsound train --spec hop_length=40``, or all with
  ``--sweep FILE`` (``spec:``).
* **Per-recording normalisation: measured, not the default.** ``rec_mean`` and ``rec_mvn``
  normalise each window by the statistics of the recording heard up to the window's end,
  the form a microcontroller can stream (216 bytes of state, bit-exact in C). Leave-one-
  database-out recording AUC a / b / d / e of the CNN, trained 12 epochs on PASCAL and the
  other three PhysioNet databases without augmented copies, split seed 0: ``c0`` 0.767 /
  0.597 / 0.730 / 0.331 (training seed 1: 0.768 / 0.626 / 0.634 / 0.486); ``rec_mvn``
  0.719 / 0.652 / 0.677 / 0.365; the same over the whole recording (not streamable)
  0.655 / 0.643 / 0.685 / 0.243; ``rec_mean`` over the whole recording 0.606 / 0.680 /
  0.569 / 0.377. Band-limited to 25-400 Hz (``f_max_hz=400``): ``c0`` 0.725 / 0.474 /
  0.354 / 0.341, whole-recording ``rec_mvn`` 0.697 / 0.578 / 0.574 / 0.176. On the main
  split (test MAcc a / b / PASCAL B at the validation threshold) ``c0`` 0.682 / 0.793 /
  0.668 against whole-recording ``rec_mvn`` 0.556 / 0.526 / 0.577: similar AUC, and a
  threshold that transfers worse between databases. None beats ``c0`` beyond the seed
  noise, and every one ranks training-e backwards when it is held out in these short
  runs (README, "The shipped model"). With the shipped model's whole recipe (20 epochs,
  2 augmented copies), ``rec_mvn`` against the shipped ``c0``: LODO AUC 0.769 / 0.611 /
  0.606 / 0.362 against 0.785 / 0.684 / 0.566 / 0.841, LODO MAcc mean 0.540 against
  0.597, test MAcc a / b / PASCAL 0.716 / 0.543 / 0.689 against 0.705 / 0.741 / 0.721.
  Reproduce with ``heartsound train --lodo --spec normalise=rec_mvn``.
* **Pre-emphasis 0.95.** Heart-sound spectra fall steeply (above); 0.95 lifts 800 Hz by
  about 26 dB relative to 25 Hz, which keeps the Hann window's leakage from the loud low
  bins out of the murmur bands and leaves the weak high bands more fixed-point headroom.
* **Gain.** The RMS level of a recording spans 77 to 18377 int16 units across the sources
  (47 dB, leaving out a near-silent PASCAL A artifact at 2), and the median per source from
  820 (PhysioNet d) to 5966 (PhysioNet b): a 7x gain difference between two stethoscopes.
  A stethoscope's gain adds a constant to every log-mel band, which the orthonormal DCT
  puts into c0 alone. ``normalise="c0"``
  therefore subtracts each analysis window's mean c0 from c0: the features become
  independent of gain while keeping the loudness envelope (S1/S2 against silence) inside
  the window. ``"cmn"`` also removes the window's mean of every cepstrum (the stethoscope's
  frequency response, a second source fingerprint) at the cost of the average spectral
  shape; ``"none"`` keeps absolute levels.

Units along the pipeline (see :mod:`edge.mfcc` for the Q format after each stage): mel
energies are sums of ``|DFT|^2`` of the pre-emphasised, windowed int16 samples (int16 units
squared), logarithms are base 2, and the output is int16 with ``out_frac_bits`` fraction
bits (Q8.7 by default: 1 LSB = 1/128 of a log2 unit of the orthonormal DCT).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from edge.errors import SpecError

#: Bumped whenever the same spec numbers would give different feature bits.
FEATURE_CONTRACT_VERSION = 1

NORMALISATIONS = ("none", "c0", "cmn", "rec_mean", "rec_mvn")
RECORDING_NORMALISATIONS = ("rec_mean", "rec_mvn")
"""Normalisations by the statistics of the recording heard so far (edge.mfcc.recording_stats)."""
WINDOWS = ("hann",)
_FFT_MIN, _FFT_MAX = 16, 1024


@dataclass(frozen=True)
class FeatureSpec:
    """The numbers of the fixed-point MFCC front end; see the module docstring for why."""

    version: int = FEATURE_CONTRACT_VERSION
    """Feature contract version: features differ between versions for the same numbers."""

    sample_rate_hz: int = 2000
    """Input rate in Hz; audio at another rate is resampled before the front end."""

    frame_length: int = 128
    """Samples per frame (64 ms at 2 kHz)."""

    hop_length: int = 80
    """Samples between frame starts (40 ms at 2 kHz)."""

    n_fft: int = 128
    """FFT length, a power of two >= frame_length; the frame is zero-padded to it."""

    window: str = "hann"
    """Analysis window (periodic Hann), stored in Q``window_q``."""

    preemph_q15: int = 31130
    """Pre-emphasis coefficient a of y[n] = x[n] - a x[n-1] in Q15 (31130 = 0.95)."""

    n_mels: int = 20
    """Triangular mel bands (HTK mel scale, peak weight 1) between f_min_hz and f_max_hz."""

    f_min_hz: float = 25.0
    """Lower edge of the first mel band in Hz."""

    f_max_hz: float = 800.0
    """Upper edge of the last mel band in Hz (at most Nyquist)."""

    n_ceps: int = 13
    """Cepstra kept, c0..c(n_ceps-1), of the orthonormal DCT-II of the log2 mel energies."""

    log2_floor: int = 0
    """Floor of the log2 mel energy (int16 units squared): 0 means an energy of 1, below
    the ~4 LSB^2 per bin that the int16 quantisation noise alone gives, so the floor only
    acts on digital silence (and keeps all-zero input finite)."""

    window_q: int = 30
    """Q format of the window table (int32 above 15, else int16). Q30, not Q15: a Q15 Hann
    leaks about -100 dB around a strong tone, which put a 0.22 log2-unit error into a PASCAL
    A artifact recording whose bands span 100 dB; in Q30 the worst error there is 0.007."""

    mel_q: int = 15
    """Q format of the mel weights (int16 table)."""

    dct_q: int = 15
    """Q format of the DCT matrix (int16 table)."""

    log_q: int = 16
    """Fraction bits of the int32 log2 mel energies between the log and the DCT."""

    out_frac_bits: int = 7
    """Fraction bits of the int16 cepstra (Q8.7: 1 LSB = 1/128 log2 unit, range +-256)."""

    window_s: float = 3.0
    """Analysis window (one model input) in seconds."""

    window_hop_s: float = 1.0
    """Seconds between analysis-window starts; a whole number of hops."""

    normalise: str = "c0"
    """Normalisation applied by edge.mfcc.windows: "none"; per window "c0" (subtract the
    window's mean c0: gain-free) or "cmn" (the window's mean of every cepstrum); per
    recording "rec_mean" (every cepstrum minus its mean over the recording heard up to the
    window's end) or "rec_mvn" (that, divided by the running standard deviation)."""

    # ---- derived numbers -------------------------------------------------------------
    @property
    def n_fft_bins(self) -> int:
        """Bins 0..n_fft/2 of the real FFT."""
        return self.n_fft // 2 + 1

    @property
    def window_samples(self) -> int:
        """Samples in one analysis window."""
        return round(self.window_s * self.sample_rate_hz)

    @property
    def frames_per_window(self) -> int:
        """Frames in one analysis window: the model input has this many rows."""
        return 1 + (self.window_samples - self.frame_length) // self.hop_length

    @property
    def window_hop_frames(self) -> int:
        """Frames between analysis-window starts."""
        return round(self.window_hop_s * self.sample_rate_hz) // self.hop_length

    @property
    def frames_per_second(self) -> float:
        """Frame rate in Hz."""
        return self.sample_rate_hz / self.hop_length

    def n_frames(self, n_samples: int) -> int:
        """Frames the front end makes from ``n_samples`` samples (0 if shorter than a frame)."""
        if n_samples < self.frame_length:
            return 0
        return 1 + (n_samples - self.frame_length) // self.hop_length

    # ---- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain dict of the fields (JSON types only)."""
        return asdict(self)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces) so equal specs give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        """Spec from a dict; unknown or ill-typed keys raise SpecError, then validate()."""
        if not isinstance(data, dict):
            raise SpecError(f"feature spec: expected a JSON object, got {type(data).__name__}; "
                            "pass the dict written by FeatureSpec.to_json()")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SpecError(f"feature spec: unknown field(s) {', '.join(unknown)}; "
                            "the spec comes from a newer heartsound, upgrade it")
        kwargs = {}
        for name, value in data.items():
            kwargs[name] = _coerce(name, value)
        spec = cls(**kwargs)
        spec.validate()
        return spec

    @classmethod
    def from_json(cls, text: str | bytes) -> FeatureSpec:
        """Spec from :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise SpecError(f"feature spec: not valid JSON ({exc}); "
                            "pass the text written by FeatureSpec.to_json()") from None
        return cls.from_dict(data)

    # ---- validation ------------------------------------------------------------------
    def validate(self) -> FeatureSpec:
        """Raise SpecError naming the first number that cannot work; return self if fine."""
        for check in _CHECKS:
            problem = check(self)
            if problem:
                raise SpecError(f"feature spec: {problem}")
        return self


def field_type(name: str) -> type:
    """The Python type of one FeatureSpec field: the annotations are strings here (``from
    __future__ import annotations``), and whoever parses a field's text needs the type."""
    declared = {f.name: str(f.type) for f in fields(FeatureSpec)}[name]
    return {"int": int, "float": float, "str": str}[declared]


def _coerce(name: str, value: object) -> object:
    wanted = field_type(name)
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise SpecError(f"feature spec: field {name} must be {wanted.__name__}, got {value!r}; "
                        "fix the spec JSON")
    return value


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check_version(s: FeatureSpec) -> str | None:
    if s.version != FEATURE_CONTRACT_VERSION:
        return (f"contract version {s.version} is not the {FEATURE_CONTRACT_VERSION} this "
                "heartsound computes; use a heartsound release of that version or retrain")
    return None


def _check_rates(s: FeatureSpec) -> str | None:
    if s.sample_rate_hz < 500 or s.sample_rate_hz > 48000:
        return f"sample_rate_hz={s.sample_rate_hz} is outside 500..48000 Hz"
    if s.frame_length < 8:
        return f"frame_length={s.frame_length} is shorter than 8 samples"
    if not 1 <= s.hop_length <= s.frame_length:
        return (f"hop_length={s.hop_length} must be 1..frame_length ({s.frame_length}): "
                "a larger hop skips samples")
    return None


def _check_fft(s: FeatureSpec) -> str | None:
    if not _is_pow2(s.n_fft) or not _FFT_MIN <= s.n_fft <= _FFT_MAX:
        return f"n_fft={s.n_fft} must be a power of two in {_FFT_MIN}..{_FFT_MAX}"
    if s.n_fft < s.frame_length:
        return f"n_fft={s.n_fft} is shorter than the frame ({s.frame_length} samples)"
    if s.window not in WINDOWS:
        return f"window={s.window!r} is not one of {', '.join(WINDOWS)}"
    if not 0 <= s.preemph_q15 < 32768:
        return f"preemph_q15={s.preemph_q15} must be in 0..32767 (Q15 of 0..<1)"
    return None


def _check_mel(s: FeatureSpec) -> str | None:
    nyquist = s.sample_rate_hz / 2
    if not math.isfinite(s.f_min_hz) or not math.isfinite(s.f_max_hz):
        return "f_min_hz and f_max_hz must be finite numbers"
    if s.f_min_hz < 0 or s.f_min_hz >= s.f_max_hz:
        return f"band edges f_min_hz={s.f_min_hz} and f_max_hz={s.f_max_hz} need 0 <= min < max"
    if s.f_max_hz > nyquist:
        return f"f_max_hz={s.f_max_hz} is above Nyquist ({nyquist:g} Hz at {s.sample_rate_hz} Hz)"
    if not 2 <= s.n_mels <= 64:
        return f"n_mels={s.n_mels} must be in 2..64"
    if not 1 <= s.n_ceps <= s.n_mels:
        return f"n_ceps={s.n_ceps} must be in 1..n_mels ({s.n_mels})"
    return _check_band_bins(s)


def _check_band_bins(s: FeatureSpec) -> str | None:
    # Imported here: numpy loads only when a spec is checked.
    from edge.mel import empty_bands, mel_triangles

    empty = empty_bands(mel_triangles(s.f_min_hz, s.f_max_hz, s.n_mels, s.n_fft_bins,
                                      s.sample_rate_hz / s.n_fft), s.mel_q)
    if empty:
        return (f"mel band(s) {empty} hold no FFT bin (bins are {s.sample_rate_hz / s.n_fft:.3g} "
                "Hz apart): use fewer mel bands, a larger n_fft or a higher f_min_hz")
    return None


def _check_formats(s: FeatureSpec) -> str | None:
    if not 8 <= s.window_q <= 30:
        return f"window_q={s.window_q} must be in 8..30 (int16 or int32 table)"
    for name in ("mel_q", "dct_q"):
        if not 8 <= getattr(s, name) <= 15:
            return f"{name}={getattr(s, name)} must be in 8..15 (int16 tables)"
    if not 8 <= s.log_q <= 20:
        return f"log_q={s.log_q} must be in 8..20"
    if not 0 <= s.out_frac_bits <= min(10, s.log_q):
        return f"out_frac_bits={s.out_frac_bits} must be in 0..10 and <= log_q"
    if not -64 <= s.log2_floor <= 64:
        return f"log2_floor={s.log2_floor} must be in -64..64"
    return None


def _check_windows(s: FeatureSpec) -> str | None:
    if not math.isfinite(s.window_s) or s.window_samples < s.frame_length:
        return f"window_s={s.window_s} is shorter than one frame ({s.frame_length} samples)"
    hop = s.window_hop_s * s.sample_rate_hz
    if not math.isfinite(hop) or hop <= 0:
        return f"window_hop_s={s.window_hop_s} must be > 0"
    if abs(hop - round(hop)) > 1e-6 or round(hop) % s.hop_length:
        return (f"window_hop_s={s.window_hop_s} is {hop:g} samples, not a whole number of "
                f"hops ({s.hop_length} samples)")
    if s.normalise not in NORMALISATIONS:
        return f"normalise={s.normalise!r} is not one of {', '.join(NORMALISATIONS)}"
    return None


_CHECKS = (_check_version, _check_rates, _check_fft, _check_mel, _check_formats,
           _check_windows)

DEFAULT_SPEC = FeatureSpec().validate()
"""The spec every part uses unless a model's metadata says otherwise."""
