"""The C99 front end compiled with gcc gives the same bits as edge.mfcc on real recordings
and on random signals, with no undefined behaviour (UBSan/ASan build)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.mfcc import mfcc, windows
from edge.spec import DEFAULT_SPEC, FeatureSpec
from firmware_bridge.tables_header import DEFAULT_HEADER, render_header
from tests.mfcc_recordings import load, sample

C_DIR = DEFAULT_HEADER.parent
SOURCES = ("hs_mfcc.c", "hs_mfcc.h", "hs_mfcc_cli.c")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
SANITIZE = ["-O1", "-g", "-fsanitize=undefined,address", "-fno-sanitize-recover=all"]
OTHER_SPEC = FeatureSpec(sample_rate_hz=4000, frame_length=200, n_fft=256, hop_length=100,
                         f_max_hz=1500.0, n_mels=26, n_ceps=10, window_hop_s=0.5,
                         normalise="cmn", log2_floor=-4)


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
