"""Fixed-point MFCC: error against float64 on real recordings, integer-only path, streaming
equals batch, and defined output for bad or extreme input."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edge.fixed_point
import edge.mfcc
from edge.errors import AudioError
from edge.fixed_point import bit_length, log2_q, round_shift
from edge.mfcc import MfccStream, mfcc, windows
from edge.mfcc_reference import mfcc_reference
from edge.spec import DEFAULT_SPEC, FeatureSpec
from edge.tables import LOG_TABLE_BITS, LOG_TABLE_Q, tables_for
from tests.mfcc_recordings import SOURCES, load, sample

SPEC = DEFAULT_SPEC
MIN_SNR_DB = 70.0        # measured 75-82 dB on the sample; the target is 50
MAX_ABS_ERR_LSB = 1.0    # output LSB = 1/128 log2 unit; rounding alone is 0.5


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    err = got.astype(np.float64) - ref
    return 10 * math.log10(float((ref**2).sum()) / max(float((err**2).sum()), 1e-30))


# ---- integer helpers -------------------------------------------------------------------
def test_bit_length_matches_python() -> None:
    rng = np.random.default_rng(1)
    edges = [v for k in range(63) for v in ((1 << k) - 1, 1 << k, (1 << k) + 1)]
    values = np.concatenate([[0, 1, 2, 3, (1 << 62) - 1, 1 << 62, (1 << 63) - 1], edges,
                             rng.integers(0, 1 << 62, 2000, dtype=np.int64) >> rng.integers(
                                 0, 62, 2000)])
    expected = [int(v).bit_length() for v in values]
    assert bit_length(values.astype(np.int64)).tolist() == expected


def test_round_shift_rounds_half_up_and_shifts_left() -> None:
    v = np.array([5, -5, 6, -6, 7], dtype=np.int64)
    assert round_shift(v, 1).tolist() == [3, -2, 3, -3, 4]
    assert round_shift(v, -2).tolist() == [20, -20, 24, -24, 28]
    assert round_shift(v, 0).tolist() == v.tolist()


def test_integer_log2_is_within_table_error() -> None:
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.integers(1, 1 << 62, 5000, dtype=np.int64)
                             >> rng.integers(0, 62, 5000), [1, 2, 3, (1 << 62) - 1]])
    values = values[values > 0].astype(np.int64)
    got, positive = log2_q(values, tables_for(SPEC).log2_table, LOG_TABLE_BITS,
                           LOG_TABLE_Q, 16)
    assert positive.all()
    exact = np.log2(values.astype(np.float64))
    assert np.abs(got / 65536 - exact).max() < 3e-5


# ---- accuracy on real recordings -------------------------------------------------------
def test_error_against_float64_on_every_source(data_root: Path) -> None:
    seen = set()
    for source, path in sample(data_root):
        x = load(path)
        got, ref = mfcc(x), mfcc_reference(x)
        assert got.dtype == np.int16 and got.shape == ref.shape == (SPEC.n_frames(x.size), 13)
        snr = snr_db(ref, got)
        worst = float(np.abs(got - ref).max())
        assert snr >= MIN_SNR_DB, f"{path.name}: SNR {snr:.1f} dB"
        assert worst <= MAX_ABS_ERR_LSB, f"{path.name}: max error {worst:.2f} LSB"
        seen.add(source)
    assert seen == set(SOURCES)


def test_other_spec_with_zero_padding_and_4khz(data_root: Path) -> None:
    spec = FeatureSpec(sample_rate_hz=4000, frame_length=200, n_fft=256, hop_length=100,
                       f_max_hz=1500.0, n_mels=26, window_hop_s=0.5, out_frac_bits=6)
    x = load(sample(data_root)[3][1], 4000)
    got, ref = mfcc(x, spec), mfcc_reference(x, spec)
    assert got.shape == ref.shape
    assert snr_db(ref, got) >= MIN_SNR_DB
    assert np.abs(got - ref).max() <= MAX_ABS_ERR_LSB


# ---- integer only ----------------------------------------------------------------------
class IntOnly(np.ndarray):
    """An array subclass that refuses to exist with a non-integer dtype: every array
    derived from the input (ufunc results, views, copies) is checked as it is made."""

    def __array_finalize__(self, obj: object) -> None:
        if self.dtype.kind not in "biu":
            raise AssertionError(f"non-integer array created: {self.dtype}")


def test_guard_catches_a_float_intermediate() -> None:
    x = np.arange(10, dtype=np.int16).view(IntOnly)
    with pytest.raises(AssertionError, match="non-integer"):
        x * 0.5  # noqa: B018
    with pytest.raises(AssertionError, match="non-integer"):
        np.sqrt(x)


def test_no_float_array_on_the_path(data_root: Path) -> None:
    x = load(sample(data_root)[0][1])[:4000].view(IntOnly)
    out = mfcc(x)
    assert isinstance(out, IntOnly), "the check lost track of the data on the way"
    wins = windows(mfcc(np.tile(x, 2).view(IntOnly)))
    assert isinstance(wins, IntOnly) and wins.dtype == np.int16
    stream_out = MfccStream().push(x)
    assert isinstance(stream_out, IntOnly)
    np.testing.assert_array_equal(out, mfcc(x.view(np.ndarray)))


FLOAT_NAMES = {"float", "float16", "float32", "float64", "log", "log2", "log10", "exp",
               "sqrt", "sin", "cos", "round", "fft", "true_divide", "divide", "frexp"}


@pytest.mark.parametrize("module", [edge.mfcc, edge.fixed_point])
def test_source_has_no_float_operations(module: object) -> None:
    tree = ast.parse(inspect.getsource(module))
    for node in ast.walk(tree):
        assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), (
            f"float literal at line {node.lineno}")
        assert not isinstance(node, ast.Div), f"true division at line {node.lineno}"
        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
        assert name not in FLOAT_NAMES, f"{name} at line {node.lineno}"


def test_tables_are_integers_in_their_formats() -> None:
    tab = tables_for(SPEC)
    for name in ("mel", "dct"):
        table = getattr(tab, name)
        assert table.dtype.kind == "i" and table.min() >= -32768 and table.max() <= 32767
    for name in ("window", "twiddle_re", "twiddle_im", "log2_table"):
        table = getattr(tab, name)
        assert table.dtype.kind == "i" and np.abs(table).max() <= 1 << 30


# ---- streaming -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def excerpt(data_root: Path) -> np.ndarray:
    return load(sample(data_root)[4][1])[:3000]


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 3000), max_size=12))
def test_stream_equals_batch_for_any_chunking(excerpt: np.ndarray, cuts: list[int]) -> None:
    stream = MfccStream()
    pieces = np.split(excerpt, sorted(cuts))
    got = np.concatenate([stream.push(p) for p in pieces])
    np.testing.assert_array_equal(got, mfcc(excerpt))
    assert stream.frames_out == got.shape[0]


def test_stream_reset_starts_a_new_recording(excerpt: np.ndarray) -> None:
    stream = MfccStream()
    stream.push(excerpt[:1000])
    stream.reset()
    np.testing.assert_array_equal(stream.push(excerpt), mfcc(excerpt))


# ---- bad and extreme input -------------------------------------------------------------
def test_short_audio_gives_zero_frames() -> None:
    for n in (0, 1, SPEC.frame_length - 1):
        out = mfcc(np.zeros(n, dtype=np.int16))
        assert out.shape == (0, SPEC.n_ceps) and out.dtype == np.int16
    assert mfcc(np.ones(SPEC.frame_length, dtype=np.int16)).shape == (1, SPEC.n_ceps)
    one_window = SPEC.frame_length + (SPEC.frames_per_window - 1) * SPEC.hop_length
    for n, expected in ((one_window - 1, 0), (one_window, 1)):
        wins = windows(mfcc(np.zeros(n, dtype=np.int16)))
        assert wins.shape == (expected, SPEC.frames_per_window, SPEC.n_ceps)


def test_silence_gives_the_floor_everywhere() -> None:
    out = mfcc(np.zeros(4000, dtype=np.int16))
    floor_c0 = round(SPEC.log2_floor * math.sqrt(SPEC.n_mels) * (1 << SPEC.out_frac_bits))
    assert (out[:, 0] == floor_c0).all() and (out[:, 1:] == 0).all()
    np.testing.assert_allclose(out, mfcc_reference(np.zeros(4000, dtype=np.int16)), atol=1)


@pytest.mark.parametrize("kind", ["square", "nyquist", "noise", "dc", "impulse"])
def test_full_scale_input_does_not_overflow(kind: str) -> None:
    n = 2000
    rng = np.random.default_rng(3)
    signals = {
        "square": np.where(np.arange(n) % 40 < 20, 32767, -32768),
        "nyquist": np.where(np.arange(n) % 2 == 0, 32767, -32768),
        "noise": rng.choice([-32768, 32767], n),
        "dc": np.full(n, -32768),
        "impulse": np.where(np.arange(n) % 128 == 5, -32768, 0),
    }
    x = signals[kind].astype(np.int16)
    got = mfcc(x)
    assert np.abs(got - mfcc_reference(x)).max() <= MAX_ABS_ERR_LSB
    # With the integer tables in the reference, the output rounding (0.5 LSB) is nearly all.
    assert np.abs(got - mfcc_reference(x, exact_tables=False)).max() <= 0.51


def test_wrong_sample_type_is_an_audio_error() -> None:
    with pytest.raises(AudioError, match="int16"):
        mfcc(np.zeros(500, dtype=np.float32))
    with pytest.raises(AudioError, match="one channel"):
        mfcc(np.zeros((500, 2), dtype=np.int16))
    with pytest.raises(AudioError, match="features"):
        windows(np.zeros((100, 5), dtype=np.int16))


# ---- analysis windows ------------------------------------------------------------------
def test_windows_cut_and_normalise_c0(data_root: Path) -> None:
    x = load(sample(data_root)[6][1])
    feats = mfcc(x)
    wins = windows(feats)
    size, hop = SPEC.frames_per_window, SPEC.window_hop_frames
    assert wins.shape == (1 + (feats.shape[0] - size) // hop, size, SPEC.n_ceps)
    np.testing.assert_array_equal(wins[1, :, 1:], feats[hop:hop + size, 1:])
    c0 = feats[hop:hop + size, 0].astype(np.int64)
    np.testing.assert_array_equal(wins[1, :, 0], c0 - c0.sum() // size)


def test_normalised_windows_do_not_depend_on_gain(data_root: Path) -> None:
    """A 12 dB quieter stethoscope moves raw c0 by ~2290 LSB, the normalised input ~not."""
    x = load(sample(data_root)[7][1])
    quiet = (x >> 2).astype(np.int16)
    raw_spec = dataclasses.replace(SPEC, normalise="none")
    raw_shift = np.abs(windows(mfcc(x), raw_spec)[..., 0].astype(np.int64)
                       - windows(mfcc(quiet), raw_spec)[..., 0]).mean()
    assert raw_shift > 2000
    diff = np.abs(windows(mfcc(x)).astype(np.int64) - windows(mfcc(quiet))).mean()
    assert diff < 0.01 * raw_shift


# ---- per-recording normalisation ---------------------------------------------------------
REC_MEAN = dataclasses.replace(SPEC, normalise="rec_mean")
REC_MVN = dataclasses.replace(SPEC, normalise="rec_mvn")


def test_isqrt_is_the_exact_floor() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([np.arange(2000), rng.integers(0, 1 << 62, 20000),
                             [(1 << 62), (1 << 62) - 1, (1 << 31) ** 2 - 1, (1 << 31) ** 2]])
    got = edge.fixed_point.isqrt(values.astype(np.int64))
    assert [math.isqrt(int(v)) for v in values] == got.tolist()


@pytest.mark.parametrize("spec", [REC_MEAN, REC_MVN], ids=lambda s: s.normalise)
def test_recording_normalisation_matches_float_on_every_source(data_root: Path,
                                                                spec: FeatureSpec) -> None:
    """Window j, against float64 statistics of frames [0, end of window j)."""
    size, hop = spec.frames_per_window, spec.window_hop_frames
    for _source, path in sample(data_root):
        feats = mfcc(load(path), spec)
        wins = windows(feats, spec)
        assert wins.dtype == np.int16 and len(wins) == len(windows(feats, SPEC))
        for j in range(len(wins)):
            seen = feats[: j * hop + size].astype(np.float64)
            ref = feats[j * hop: j * hop + size] - seen.mean(axis=0)
            tolerance = 1.0  # the floor of the mean, then rounding
            if spec.normalise == "rec_mvn":
                sd = np.maximum(seen.std(axis=0), edge.mfcc.SD_FLOOR)
                ref = ref / sd * (1 << spec.out_frac_bits)
                # the mean's floor in SD units, and the floor of the SD
                tolerance = 1.0 + (1 << spec.out_frac_bits) / sd + np.abs(ref) / (sd - 1)
            assert (np.abs(wins[j] - ref) <= tolerance).all(), (path.name, j)


@pytest.mark.parametrize("spec", [REC_MEAN, REC_MVN], ids=lambda s: s.normalise)
def test_a_window_depends_only_on_what_was_heard_before_its_end(data_root: Path,
                                                                 spec: FeatureSpec) -> None:
    """What makes it streamable: cutting the recording short changes no earlier window."""
    feats = mfcc(load(sample(data_root)[4][1]), spec)
    whole = windows(feats, spec)
    for end in (spec.frames_per_window, spec.frames_per_window + 30, feats.shape[0] - 7):
        part = windows(feats[:end], spec)
        np.testing.assert_array_equal(part, whole[: len(part)])


def test_offset_windows_keep_the_statistics_from_the_first_frame(data_root: Path) -> None:
    """Training's random phase moves the windows, not the start of the statistics."""
    feats = mfcc(load(sample(data_root)[2][1]), REC_MVN)
    hop = REC_MVN.window_hop_frames
    shifted = windows(feats, REC_MVN, offset=hop)
    np.testing.assert_array_equal(shifted, windows(feats, REC_MVN)[1:])


def test_recording_mvn_does_not_depend_on_gain(data_root: Path) -> None:
    x = load(sample(data_root)[7][1])
    quiet = (x >> 2).astype(np.int16)
    diff = np.abs(windows(mfcc(x, REC_MVN), REC_MVN).astype(np.int64)
                  - windows(mfcc(quiet, REC_MVN), REC_MVN)).mean()
    assert diff < 0.05 * (1 << REC_MVN.out_frac_bits)  # under 5 % of one SD (measured 3.4 %)


def test_statistics_stop_at_the_cap_and_silence_gives_zeros() -> None:
    rng = np.random.default_rng(5)
    cap = edge.mfcc.STATS_MAX_FRAMES
    feats = rng.integers(-3000, 3000, (cap + 300, 2)).astype(np.int16)
    n, s, q = edge.mfcc.recording_stats(feats, np.array([100, cap, cap + 300]))
    assert n.tolist() == [100, cap, cap]
    np.testing.assert_array_equal(s[2], feats[:cap].astype(np.int64).sum(axis=0))
    np.testing.assert_array_equal(q[1], q[2])
    silent = np.full((200, REC_MVN.n_ceps), -1234, dtype=np.int16)
    assert not windows(silent, REC_MVN).any()
