"""edge.resample: the integer polyphase resampler against its own float64 reference on real
recordings, its frequency response, saturation, and batch/streaming bit-exactness.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.audio import read_wav
from edge.errors import AudioError
from edge.resample import (
    CUTOFF,
    STOPBAND_DB,
    Resampler,
    design_filter,
    resample,
    resample_reference,
)
from tests.data_sources import pascal_a_at

RATES_IN = (2000, 4000, 8000, 16000, 44100, 48000)
MODEL_RATES = (2000, 4000)
PAIRS = sorted({(s, d) for s in RATES_IN for d in MODEL_RATES if s != d}
               | {(d, s) for s in RATES_IN for d in MODEL_RATES if s != d})
SEGMENT_SECONDS = 6.0  # per real recording: enough to measure, fast enough for CI
INT16_MAX = 32767


SOURCES = {  # source -> (folder under the data root, files sampled, their rate)
    "pascal_a": ("pascal/set_a", 6, 44100),  # the phone's rate: files picked by labels.csv
    "pascal_a_4k": ("pascal/set_a", 4, 4000),
    "pascal_b": ("pascal/set_b", 6, 4000),
    "physionet_a": ("physionet2016/training-a", 4, 2000),
    "physionet_b": ("physionet2016/training-b", 4, 2000),
    "physionet_d": ("physionet2016/training-d", 4, 2000),
    "physionet_e": ("physionet2016/training-e", 4, 2000),
    "physionet_f": ("physionet2016/training-f", 4, 2000),
}


def _files(data_root: Path, source: str) -> list[Path]:
    """A deterministic spread of files over the sorted folder (several patients)."""
    folder, n, rate = SOURCES[source]
    if folder == "pascal/set_a":  # stored at two rates: the one asked for, by labels.csv
        files = pascal_a_at(data_root, rate)
    else:
        files = sorted((data_root / folder).glob("*.wav"))
    assert files, f"no WAV files in {data_root / folder}"
    return [files[i] for i in np.linspace(0, len(files) - 1, n).astype(int)]


def _segment(path: Path, rate: int, seconds: float = SEGMENT_SECONDS) -> np.ndarray:
    x = read_wav(path)
    n = int(seconds * rate)
    start = max(0, (x.size - n) // 2)  # the middle: past any start-up transient
    return x[start:start + n]


# ---------------------------------------------------------------- accuracy on real data

ACCURACY_CASES = [(name, dst) for name, (_, _, rate) in SOURCES.items()
                  for dst in (2000, 4000, 44100) if dst != rate]
# Measured (see the report / bench): aggregate SNR 73-86 dB; error rms 0.35-0.68 LSB
# (0.29 is the rounding to int16 alone); max error 5 LSB, on loud passages where the
# q15 coefficient error scales with the signal. Per-file SNR is NOT bounded: a quiet
# PASCAL A file (rms 12 LSB) is limited to ~46 dB by the int16 output itself.
MIN_SNR_DB = 70.0
MAX_ERR_RMS_LSB = 0.75
MAX_ERR_LSB = 6.0


@pytest.mark.parametrize(("source", "dst"), ACCURACY_CASES)
def test_integer_matches_float_reference_on_real_recordings(data_root, source, dst) -> None:
    rate = SOURCES[source][2]
    signal = error = 0.0
    for path in _files(data_root, source):
        x = _segment(path, rate)
        y = resample(x, rate, dst).astype(np.float64)
        ref = np.clip(resample_reference(x, rate, dst), -32768, INT16_MAX)  # same saturation
        err = y - ref
        assert np.sqrt(np.mean(err ** 2)) <= MAX_ERR_RMS_LSB, path.name
        assert np.max(np.abs(err)) <= MAX_ERR_LSB, path.name
        signal += float(np.sum(ref ** 2))
        error += float(np.sum(err ** 2))
    assert 10 * np.log10(signal / error) >= MIN_SNR_DB


def test_thirty_seconds_of_44k1_to_2k_is_fast_and_memory_bounded(data_root) -> None:
    files, rate = _files(data_root, "pascal_a"), 44100
    x = np.concatenate([read_wav(p) for p in files * 4])[:30 * rate]
    assert x.size == 30 * rate
    resample(x, rate, 2000)  # table design is cached from here on
    best = min(_timed(resample, x, rate, 2000) for _ in range(3))
    assert best < 0.5, f"{best:.3f} s for 30 s of 44.1 kHz"
    x48 = np.resize(x, 30 * 48000)
    resample(x48, 48000, 2000)
    tracemalloc.start()
    resample(x48, 48000, 2000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # input 2.9 MB + padded copy 2.9 MB + output; a full gather matrix would be 578 MB
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- frequency response

def _tone(freq: float, rate: int, seconds: float = 2.0, amp: float = 20000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amp * np.sin(2 * np.pi * freq * t + 0.3)).astype(np.int16)


def _amplitude(y: np.ndarray, freq: float, rate: int) -> float:
    """Least-squares amplitude of a sinusoid at ``freq``, ignoring 0.2 s at each end."""
    trim = rate // 5
    y = y[trim:-trim].astype(np.float64)
    t = (np.arange(y.size) + trim) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef = np.linalg.lstsq(basis, y, rcond=None)[0]
    return float(np.hypot(*coef))


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_passband_is_flat(src, dst) -> None:
    """0-800 Hz at 2 kHz out (0-1600 Hz at 4 kHz): within 0.01 dB (measured < 0.001 dB)."""
    edge = 0.4 * min(src, dst)
    for freq in (20.0, 100.0, 0.5 * edge, edge):
        gain_db = 20 * np.log10(_amplitude(resample(_tone(freq, src), src, dst), freq, dst)
                                / 20000.0)
        assert abs(gain_db) < 0.01, f"{freq} Hz: {gain_db:+.4f} dB"


@pytest.mark.parametrize(("src", "dst"), [p for p in PAIRS if p[1] < p[0]])
def test_tones_above_output_nyquist_are_removed(src, dst) -> None:
    """Design: 80 dB Kaiser; measured >= 83 dB. The requirement is 50; we hold 75."""
    for factor in (1.01, 1.07, 1.37, 2.71):
        freq = factor * dst / 2
        if freq >= src / 2:
            continue
        y = resample(_tone(freq, src), src, dst)[dst // 5:-dst // 5].astype(np.float64)
        atten_db = 20 * np.log10(20000.0 / np.sqrt(2) / max(np.sqrt(np.mean(y ** 2)), 1e-9))
        assert atten_db >= 75.0, f"{freq:.0f} Hz: only {atten_db:.1f} dB"


@pytest.mark.parametrize(("src", "dst"), [(2000, 44100), (2000, 4000), (4000, 48000)])
def test_upsampling_images_are_removed(src, dst) -> None:
    freq = 0.35 * src
    y = resample(_tone(freq, src), src, dst)[dst // 5:-dst // 5].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    freqs = np.fft.rfftfreq(y.size, 1 / dst)
    images = spectrum[freqs > src / 2].max()
    assert 20 * np.log10(spectrum.max() / images) >= 75.0


# ---------------------------------------------------------------- exact properties

@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_silence_stays_silence_and_dc_passes_exactly(src, dst) -> None:
    assert not np.any(resample(np.zeros(3 * src, np.int16), src, dst))
    y = resample(np.full(3 * src, -12345, np.int16), src, dst)
    table = design_filter(dst // np.gcd(src, dst), src // np.gcd(src, dst))
    margin = -(-table.taps * dst // src)  # outputs whose kernel overlaps the ends
    assert np.all(y[margin:-margin] == -12345)


@pytest.mark.parametrize(("src", "dst"), [(44100, 2000), (4000, 2000), (2000, 4000),
                                          (2000, 44100), (48000, 4000)])
def test_full_scale_square_wave_saturates_without_wrapping(src, dst) -> None:
    period = max(8, src // 100)
    x = np.where((np.arange(3 * src) // (period // 2)) % 2 == 0, INT16_MAX, -32768)
    x = x.astype(np.int16)
    ref = resample_reference(x, src, dst)
    assert ref.max() > INT16_MAX and ref.min() < -32768  # Gibbs overshoot: must clip
    y = resample(x, src, dst)
    assert y.max() == INT16_MAX and y.min() == -32768
    # no wrap-around: a wrapped sample would be ~65536 LSB off; q15-coefficient error at
    # full scale is a few LSB (measured <= 2.3)
    assert np.max(np.abs(y - np.clip(ref, -32768, INT16_MAX))) <= MAX_ERR_LSB


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 5000), pair=st.sampled_from(PAIRS + [(44100, 4000), (22050, 2000)]))
def test_output_length_is_ceil(n, pair) -> None:
    src, dst = pair
    y = resample(np.zeros(n, np.int16), src, dst)
    assert y.size == -(-n * dst // src)


def test_one_second_gives_exactly_the_target_rate() -> None:
    for src, dst in PAIRS:
        assert resample(np.ones(src, np.int16), src, dst).size == dst


def test_equal_rates_is_an_identity_copy(data_root) -> None:
    x = _segment(_files(data_root, "pascal_b")[0], 4000, 1.0)
    y = resample(x, 4000, 4000)
    np.testing.assert_array_equal(y, x)
    assert y is not x and not np.shares_memory(x, y)
    stream = Resampler(4000, 4000)
    np.testing.assert_array_equal(np.concatenate([stream.process(x), stream.flush()]), x)


def test_zero_delay_alignment() -> None:
    """A click at input sample i peaks at output n = i * L / M (annotations keep their time)."""
    for src, dst in [(44100, 2000), (4000, 2000), (2000, 4000), (48000, 4000)]:
        x = np.zeros(2 * src, np.int16)
        x[src] = 30000
        assert int(np.argmax(resample(x, src, dst))) == dst  # input 1.0 s -> output 1.0 s


def test_filter_tables() -> None:
    for src, dst in PAIRS + [(44100, 4000), (11025, 2000)]:
        g = np.gcd(src, dst)
        table = design_filter(dst // g, src // g)
        assert table is design_filter(dst // g, src // g)  # cached
        assert table.coef_q.dtype == np.int16 and table.frac_bits >= 15
        assert table.taps % 2 == 0 and table.coef_q.shape == (dst // g, table.taps)
        one = 1 << table.frac_bits
        assert np.all(table.coef_q.astype(np.int64).sum(axis=1) == one)  # DC gain exactly 1
        assert np.max(np.abs(table.coef_q - table.coef * one)) < 1.0  # within 1 LSB
        np.testing.assert_allclose(table.coef.sum(axis=1), 1.0)


def test_bad_arguments() -> None:
    x = np.zeros(100, np.int16)
    with pytest.raises(TypeError):
        resample(x.astype(np.float32), 4000, 2000)
    with pytest.raises(TypeError):
        resample(np.zeros((10, 2), np.int16), 4000, 2000)
    for src, dst in [(0, 2000), (4000, -1), (44100.5, 2000)]:
        with pytest.raises(AudioError, match="positive"):
            resample(x, src, dst)
    with pytest.raises(AudioError, match="phases"):
        resample(x, 2000, 44111)
    with pytest.raises(AudioError):
        Resampler(0, 2000)


# ---------------------------------------------------------------- streaming == batch

@pytest.fixture(scope="module")
def stream_inputs(data_root) -> dict[int, np.ndarray]:
    """Real audio at every rate used: native recordings, plus 8/16/22.05/48 kHz made from
    PASCAL A with the batch resampler (no real recordings exist at those rates)."""
    a = _segment(_files(data_root, "pascal_a")[2], 44100, 1.0)
    return {44100: a, 4000: _segment(_files(data_root, "pascal_b")[1], 4000, 1.0),
            2000: _segment(_files(data_root, "physionet_a")[1], 2000, 1.0),
            **{r: resample(a, 44100, r) for r in (8000, 16000, 48000, 22050)}}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=st.sampled_from(PAIRS + [(22050, 2000), (44100, 4000)]), data=st.data())
def test_streaming_equals_batch_for_any_chunking(stream_inputs, pair, data) -> None:
    src, dst = pair
    x = stream_inputs[src][: data.draw(st.integers(0, src // 2), label="length")]
    cuts = sorted(data.draw(st.lists(st.integers(0, x.size), max_size=12), label="cuts"))
    stream = Resampler(src, dst)
    pieces = [stream.process(x[a:b]) for a, b in zip([0, *cuts], [*cuts, x.size], strict=True)]
    pieces.append(stream.flush())
    np.testing.assert_array_equal(np.concatenate(pieces), resample(x, src, dst))
    # flush() resets: the same object then streams a second recording correctly
    np.testing.assert_array_equal(np.concatenate([stream.process(x), stream.flush()]),
                                  resample(x, src, dst))


def test_streaming_latency_and_bounded_state(stream_inputs) -> None:
    src, dst = 44100, 2000
    x = stream_inputs[src]
    stream = Resampler(src, dst)
    emitted = 0
    for start in range(0, x.size, 441):  # 10 ms blocks, as a microphone delivers them
        emitted += stream.process(x[start:start + 441]).size
        received = min(start + 441, x.size)
        # everything whose kernel has fully arrived is out, nothing more
        ready = received - stream.latency
        assert emitted == max(0, -(-ready * dst // src))
        assert stream._buf.size <= design_filter(20, 441).taps + 441 + 441
    assert emitted + stream.flush().size == -(-x.size * dst // src)


@pytest.mark.parametrize(("src", "dst"), [(44100, 2000), (4000, 2000), (2000, 4000),
                                          (2000, 44100), (16000, 4000)])
def test_reference_is_the_documented_formula(data_root, src, dst) -> None:
    """Independent of the polyphase indexing: y[n] = sum_i x[i] w(n*M/L - i) / sum_i w(...),
    w = windowed sinc with a continuous Kaiser window, i over the K samples around n*M/L."""
    g = np.gcd(src, dst)
    up, down = dst // g, src // g
    k = design_filter(up, down).taps
    fc = 0.5 * CUTOFF * min(1.0, up / down)  # cycles per input sample
    beta = 0.1102 * (STOPBAND_DB - 8.7)
    x = _segment(_files(data_root, "pascal_b")[3], 4000, 2.0)  # real samples, any rate label
    ref = resample_reference(x, src, dst)
    y = resample(x, src, dst)
    rng = np.random.default_rng(3)
    for n in np.concatenate([[0, 1, ref.size - 1], rng.integers(0, ref.size, 40)]):
        base = n * down // up
        i = np.arange(base - k // 2 + 1, base + k // 2 + 1)
        t = n * down / up - i
        window = np.i0(beta * np.sqrt(1 - (t / (k / 2)) ** 2)) / np.i0(beta)  # Kaiser
        w = 2 * fc * np.sinc(2 * fc * t) * window
        inside = (i >= 0) & (i < x.size)
        expected = np.sum(w[inside] * x[i[inside]]) / np.sum(w)
        assert ref[n] == pytest.approx(expected, abs=1e-6)
        assert abs(int(y[n]) - np.clip(expected, -32768, INT16_MAX)) <= MAX_ERR_LSB
