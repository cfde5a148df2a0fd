"""Trainer pieces that decide what the model sees: window cutting, weights, the subset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.spec import DEFAULT_SPEC
from train.datasets import Recording, load_records
from train.pipeline import limit_records
from train.trainer import Recordings, cell_weights, cut_windows, window_weights

SPEC = DEFAULT_SPEC


def _rec(source: str, label: str, i: int) -> Recording:
    return Recording(path=Path(f"/nowhere/{source}-{i}.wav"), label=label,
                     group=f"{source}/{i}", source=source, noisy=False, sample_rate=2000,
                     seconds=10.0)


def _recordings(cells: dict[tuple[str, int], int], frames: int = 250) -> Recordings:
    """Synthetic frame matrices (unit test of the bookkeeping, not of the features)."""
    records, feats, y = [], [], []
    rng = np.random.default_rng(0)
    for (source, cls), n in cells.items():
        for i in range(n):
            records.append(_rec(source, ["normal", "abnormal"][cls], len(records) + i))
            feats.append(rng.integers(-500, 500, (frames, SPEC.n_ceps)).astype(np.int16))
            y.append(cls)
    return Recordings(records, feats, np.array(y), list(range(len(records))))


def test_windows_all_without_rng_and_capped_with_it():
    rec = _recordings({("a", 0): 2, ("a", 1): 1})
    per_rec = 1 + (250 - SPEC.frames_per_window) // SPEC.window_hop_frames
    full = cut_windows(rec, SPEC)
    assert full.x.shape == (3 * per_rec, SPEC.frames_per_window, SPEC.n_ceps)
    assert np.bincount(full.recording).tolist() == [per_rec] * 3
    capped = cut_windows(rec, SPEC, np.random.default_rng(1), max_per_recording=2)
    assert np.bincount(capped.recording).tolist() == [2, 2, 2]
    assert capped.y.tolist() == [0, 0, 0, 0, 1, 1]


def test_weights_balance_classes_within_sources_and_overall():
    # source a: 30 normal, 10 abnormal; source b: 5 normal, 15 abnormal
    rec = _recordings({("a", 0): 30, ("a", 1): 10, ("b", 0): 5, ("b", 1): 15})
    cells = cell_weights(rec, 2)
    assert cells["a", 0] == pytest.approx(cells["a", 1])  # balanced inside a source
    assert cells["b", 0] == pytest.approx(cells["b", 1])
    assert cells["a", 0] / cells["b", 0] == pytest.approx(40 / 20)  # sources by size
    win = cut_windows(rec, SPEC, np.random.default_rng(0), max_per_recording=3)
    w = window_weights(win, rec, cells)
    assert w.mean() == pytest.approx(1.0)
    total = {}
    for k, weight in zip(zip(np.array(rec.sources)[win.recording], win.y, strict=True), w,
                         strict=True):
        total[k] = total.get(k, 0.0) + weight
    assert total["a", 0] == pytest.approx(total["a", 1], rel=1e-5)
    assert total["a", 0] + total["b", 0] == pytest.approx(total["a", 1] + total["b", 1],
                                                          rel=1e-5)


def test_limit_keeps_every_source_and_label(data_root):
    records = load_records([data_root / "pascal", data_root / "physionet2016"])
    small = limit_records(records, 12, seed=0)
    for source in {r.source for r in records}:
        labels = {r.label for r in records if r.source == source and r.label}
        assert {r.label for r in small if r.source == source} == labels
    assert all(r.label is not None for r in small)
    assert small == limit_records(records, 12, seed=0)
