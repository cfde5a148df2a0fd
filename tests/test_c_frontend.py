"""The C99 front end compiled with gcc gives the same bits as edge.mfcc on real recordings
and on random signals, with no undefined behaviour (UBSan/ASan build): the cepstra, and the
model inputs of every normalisation (per window, and by the running statistics of the
recording, across the frame cap of those statistics too)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.mfcc import STATS_MAX_FRAMES, mfcc, normalise_by_recording, windows
from edge.spec import DEFAULT_SPEC, RECORDING_NORMALISATIONS, FeatureSpec
from firmware_bridge.tables_header import DEFAULT_HEADER, render_header
from tests.mfcc_recordings import load, sample

C_DIR = DEFAULT_HEADER.parent
SOURCES = ("hs_mfcc.c", "hs_mfcc.h", "hs_mfcc_cli.c")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
SANITIZE = ["-O1", "-g", "-fsanitize=undefined,address", "-fno-sanitize-recover=all"]
OTHER_SPEC = FeatureSpec(sample_rate_hz=4000, frame_length=200, n_fft=256, hop_length=100,
                         f_max_hz=1500.0, n_mels=26, n_ceps=10, window_hop_s=0.5,
                         normalise="cmn", log2_floor=-4)
#: The same front end normalised by the recording, with another output Q format.
OTHER_REC_SPEC = replace(OTHER_SPEC, normalise="rec_mvn", out_frac_bits=9)
#: The default front end with each per-recording normalisation.
REC_SPECS = {mode: replace(DEFAULT_SPEC, normalise=mode).validate()
             for mode in RECORDING_NORMALISATIONS}


def build(folder: Path, spec: FeatureSpec, flags: list[str]) -> Path:
    """Compile the driver in ``folder`` against a header generated for ``spec``."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc not found: install Debian's gcc (the C front end is tested with it)",
                    pytrace=False)
    folder.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        shutil.copy(C_DIR / name, folder / name)
    (folder / "hs_mfcc_tables.h").write_text(render_header(spec), encoding="ascii")
    exe = folder / "hs_mfcc_cli"
    subprocess.run([gcc, *STRICT, *flags, "-o", str(exe), str(folder / "hs_mfcc.c"),
                    str(folder / "hs_mfcc_cli.c")], check=True, capture_output=True, text=True)
    return exe


def run_c(exe: Path, pcm: np.ndarray, n_ceps: int, chunk: int = 4096,
          mode: list[str] | None = None) -> np.ndarray:
    proc = subprocess.run([str(exe), str(chunk), *(mode or [])], input=pcm.tobytes(),
                          capture_output=True, check=True)
    return np.frombuffer(proc.stdout, dtype=np.int16).reshape(-1, n_ceps)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("c_o2"), DEFAULT_SPEC, ["-O2"])


@pytest.fixture(scope="module")
def cli_sanitized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("c_san"), DEFAULT_SPEC, SANITIZE)


@pytest.fixture(scope="module")
def rec_cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """-O2 drivers for rec_mean and rec_mvn."""
    return {mode: build(tmp_path_factory.mktemp(f"c_{mode}"), spec, ["-O2"])
            for mode, spec in REC_SPECS.items()}


@pytest.fixture(scope="module")
def rec_cli_sanitized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """UBSan/ASan drivers for rec_mean and rec_mvn."""
    return {mode: build(tmp_path_factory.mktemp(f"c_san_{mode}"), spec, SANITIZE)
            for mode, spec in REC_SPECS.items()}


def c_windows(exe: Path, pcm: np.ndarray, spec: FeatureSpec, chunk: int) -> np.ndarray:
    """(n_windows, frames_per_window, n_ceps) model inputs of the C driver's windows mode."""
    got = run_c(exe, pcm, spec.n_ceps, chunk, ["windows"])
    return got.reshape(-1, spec.frames_per_window, spec.n_ceps)


def test_committed_header_is_generated_from_default_spec() -> None:
    assert DEFAULT_HEADER.read_text(encoding="ascii") == render_header(DEFAULT_SPEC), (
        "regenerate with: python3 -m firmware_bridge.tables_header")


def test_c_equals_python_on_every_frame_of_real_recordings(data_root: Path,
                                                           cli: Path) -> None:
    chunks = (1, 79, 80, 333, 4096)
    frames = 0
    for i, (_source, path) in enumerate(sample(data_root)):
        x = load(path)
        expected = mfcc(x)
        got = run_c(cli, x, DEFAULT_SPEC.n_ceps, chunks[i % len(chunks)])
        np.testing.assert_array_equal(got, expected, err_msg=path.name)
        frames += got.shape[0]
    assert frames > 3000


def test_c_windows_equal_python(data_root: Path, cli: Path) -> None:
    for _source, path in sample(data_root)[::3]:
        x = load(path)
        got = run_c(cli, x, DEFAULT_SPEC.n_ceps, 500, ["windows"])
        expected = windows(mfcc(x))
        np.testing.assert_array_equal(got.reshape(expected.shape), expected,
                                      err_msg=path.name)


def test_sanitized_build_on_real_and_extreme_input(data_root: Path,
                                                   cli_sanitized: Path) -> None:
    n = 3000
    extremes = [np.where(np.arange(n) % 2 == 0, 32767, -32768), np.full(n, -32768),
                np.zeros(n), np.where(np.arange(n) % 97 == 0, -32768, 32767)]
    signals = [load(path)[:8000] for _s, path in sample(data_root)[::2]]
    for x in signals + [e.astype(np.int16) for e in extremes]:
        np.testing.assert_array_equal(run_c(cli_sanitized, x, DEFAULT_SPEC.n_ceps, 123),
                                      mfcc(x))


def test_other_spec_builds_and_matches(data_root: Path, tmp_path: Path) -> None:
    exe = build(tmp_path, OTHER_SPEC, ["-O2"])
    x = load(sample(data_root)[2][1], OTHER_SPEC.sample_rate_hz)
    feats = mfcc(x, OTHER_SPEC)
    np.testing.assert_array_equal(run_c(exe, x, OTHER_SPEC.n_ceps, 1000), feats)
    got = run_c(exe, x, OTHER_SPEC.n_ceps, 1000, ["windows"])
    expected = windows(feats, OTHER_SPEC)
    np.testing.assert_array_equal(got.reshape(expected.shape), expected)


@pytest.mark.parametrize("mode", RECORDING_NORMALISATIONS)
def test_c_recording_normalised_windows_equal_python(mode: str, data_root: Path,
                                                     rec_cli: dict[str, Path]) -> None:
    """Every window normalised by the statistics of the recording up to its last frame,
    streamed in chunks that split frames anywhere."""
    spec = REC_SPECS[mode]
    chunks = (1, 79, 80, 333, 512, 4096)
    n_windows = 0
    for i, (_source, path) in enumerate(sample(data_root)):
        x = load(path)
        expected = windows(mfcc(x, spec), spec)
        got = c_windows(rec_cli[mode], x, spec, chunks[i % len(chunks)])
        np.testing.assert_array_equal(got, expected, err_msg=f"{mode} {path.name}")
        n_windows += expected.shape[0]
    assert n_windows > 100


@pytest.mark.parametrize("mode", RECORDING_NORMALISATIONS)
def test_sanitized_recording_normalisation_on_real_and_extreme_input(
        mode: str, data_root: Path, rec_cli_sanitized: dict[str, Path]) -> None:
    """No undefined behaviour in the int64 statistics, the floor divisions or the integer
    square root: real recordings, full-scale square waves, constant and silent input (a
    constant cepstrum: variance 0, the SD floor divides) and random input at every level."""
    spec = REC_SPECS[mode]
    n = 4 * spec.window_samples
    k = np.arange(n)
    extremes = [np.where(k % 2 == 0, 32767, -32768), np.full(n, -32768), np.zeros(n),
                np.where(k % 97 == 0, -32768, 32767), np.where(k < n // 2, 0, 32767)]
    rng = np.random.default_rng(7)
    noise = [(rng.integers(-32768, 32768, n) >> shift) for shift in (0, 6, 12, 15)]
    signals = [load(path) for _s, path in sample(data_root)[::3]]
    for x in signals + [e.astype(np.int16) for e in extremes + noise]:
        np.testing.assert_array_equal(c_windows(rec_cli_sanitized[mode], x, spec, 123),
                                      windows(mfcc(x, spec), spec))


def test_other_spec_with_rec_mvn_builds_and_matches(data_root: Path, tmp_path: Path) -> None:
    exe = build(tmp_path, OTHER_REC_SPEC, ["-O2"])
    for _source, path in sample(data_root)[1::4]:
        x = load(path, OTHER_REC_SPEC.sample_rate_hz)
        expected = windows(mfcc(x, OTHER_REC_SPEC), OTHER_REC_SPEC)
        np.testing.assert_array_equal(c_windows(exe, x, OTHER_REC_SPEC, 1000), expected,
                                      err_msg=path.name)


def _uncapped(features: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """edge.mfcc.windows as if the statistics counted every frame (no STATS_MAX_FRAMES)."""
    size, hop = spec.frames_per_window, spec.window_hop_frames
    n_win = 1 + (features.shape[0] - size) // hop
    ends = size + hop * np.arange(n_win)
    x = features.astype(np.int64)
    zero = np.zeros((1, spec.n_ceps), dtype=np.int64)
    csum = np.concatenate([zero, np.cumsum(x, axis=0)])[ends]
    csq = np.concatenate([zero, np.cumsum(x * x, axis=0)])[ends]
    view = np.lib.stride_tricks.sliding_window_view(features, size, axis=0)
    wins = view[: n_win * hop : hop].transpose(0, 2, 1).astype(np.int32)
    return normalise_by_recording(wins, (ends, csum, csq), spec)


def test_c_statistics_stop_at_the_frame_cap_like_python(rec_cli: dict[str, Path]) -> None:
    """A synthetic recording (a unit test of one function) longer than STATS_MAX_FRAMES
    frames: noise, then 40 s 8x louder after the cap. The windows after the cap are
    normalised by the statistics of the first STATS_MAX_FRAMES frames alone, in C as in
    Python, and that differs from counting every frame (so the cap was crossed)."""
    spec = DEFAULT_SPEC
    n_frames = STATS_MAX_FRAMES + 1000
    n = spec.frame_length + (n_frames - 1) * spec.hop_length
    loud_from = STATS_MAX_FRAMES * spec.hop_length  # first sample of the first uncounted frame
    rng = np.random.default_rng(65535)
    x = rng.normal(0.0, 1000.0, n)
    x[loud_from:] *= 8
    pcm = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    feats = mfcc(pcm, spec)
    assert feats.shape[0] == n_frames
    for mode, exe in rec_cli.items():
        rec = REC_SPECS[mode]
        expected = windows(feats, rec)
        got = c_windows(exe, pcm, rec, 4096)
        np.testing.assert_array_equal(got, expected, err_msg=mode)
        last_counted = (STATS_MAX_FRAMES - rec.frames_per_window) // rec.window_hop_frames
        np.testing.assert_array_equal(expected[:last_counted + 1],
                                      _uncapped(feats, rec)[:last_counted + 1])
        assert not np.array_equal(expected[-1], _uncapped(feats, rec)[-1]), mode


@settings(max_examples=30, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=6000).map(
        lambda b: np.frombuffer(b[: len(b) // 2 * 2], dtype="<i2").astype(np.int16)),
    shift=st.integers(0, 15),
    chunk=st.integers(1, 700),
)
def test_random_signals_c_equals_python(cli_sanitized: Path, data: np.ndarray, shift: int,
                                        chunk: int) -> None:
    x = (data >> shift).astype(np.int16)  # from full scale down to a few LSB
    np.testing.assert_array_equal(run_c(cli_sanitized, x, DEFAULT_SPEC.n_ceps, chunk),
                                  mfcc(x))
