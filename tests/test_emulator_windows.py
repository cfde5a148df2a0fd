"""The emulator's window cutter is edge.mfcc.windows in streaming form, for every
normalisation: frames arrive in chunks of any size, each window is normalised as soon as
its last frame arrives, per window or by the running statistics of the recording heard so
far (count, int64 sums and sums of squares, capped at STATS_MAX_FRAMES frames as on the
device). The firmware's C twin is checked against the same function in
tests/test_c_frontend.py and, through a served model, in tests/test_firmware_qemu.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge.mfcc import STATS_MAX_FRAMES, mfcc, windows
from edge.spec import DEFAULT_SPEC, NORMALISATIONS, FeatureSpec
from firmware_bridge.emulator import WindowCutter
from tests.mfcc_recordings import load, sample

#: Frames per push: one at a time, a few, one window hop, one window, many windows.
CHUNKS = (1, 3, 25, 74, 500)


def cut(features: np.ndarray, spec: FeatureSpec, chunk: int) -> tuple[np.ndarray, WindowCutter]:
    """Every window the cutter gives for ``features`` pushed ``chunk`` frames at a time."""
    cutter = WindowCutter(spec)
    out: list[np.ndarray] = []
    for start in range(0, features.shape[0], chunk):
        out += cutter.push(features[start:start + chunk])
    empty = np.zeros((0, spec.frames_per_window, spec.n_ceps), dtype=np.int16)
    return (np.stack(out) if out else empty), cutter


@pytest.mark.parametrize("mode", NORMALISATIONS)
def test_cutter_gives_the_windows_of_the_whole_recording(mode: str, data_root: Path) -> None:
    spec = replace(DEFAULT_SPEC, normalise=mode).validate()
    n_windows = 0
    for i, (_source, path) in enumerate(sample(data_root)):
        feats = mfcc(load(path), spec)
        got, cutter = cut(feats, spec, CHUNKS[i % len(CHUNKS)])
        expected = windows(feats, spec)
        assert got.dtype == np.int16
        np.testing.assert_array_equal(got, expected, err_msg=f"{mode} {path.name}")
        assert cutter.windows_out == expected.shape[0]
        assert cutter.frames_seen == cutter.n == feats.shape[0]  # all under the cap
        n_windows += expected.shape[0]
    assert n_windows > 100


@pytest.mark.parametrize("mode", ["rec_mean", "rec_mvn"])
def test_cutter_statistics_stop_at_the_frame_cap(mode: str) -> None:
    """Synthetic features (a unit test of the cutter) longer than the cap, with other
    levels after it: the statistics hold the first STATS_MAX_FRAMES frames alone, and the
    windows are still edge.mfcc.windows's."""
    spec = replace(DEFAULT_SPEC, normalise=mode).validate()
    rng = np.random.default_rng(5)
    n_frames = STATS_MAX_FRAMES + 300
    feats = rng.normal(0.0, 900.0, (n_frames, spec.n_ceps))
    feats[STATS_MAX_FRAMES:] = rng.normal(4000.0, 3000.0, (300, spec.n_ceps))
    feats[STATS_MAX_FRAMES:, 0] = -32768  # full-scale values after the cap
    feats = np.clip(np.round(feats), -32768, 32767).astype(np.int16)
    got, cutter = cut(feats, spec, 997)
    np.testing.assert_array_equal(got, windows(feats, spec))
    counted = feats[:STATS_MAX_FRAMES].astype(np.int64)
    assert cutter.frames_seen == n_frames and cutter.n == STATS_MAX_FRAMES
    np.testing.assert_array_equal(cutter.sums, counted.sum(axis=0))
    np.testing.assert_array_equal(cutter.sumsq, (counted * counted).sum(axis=0))
