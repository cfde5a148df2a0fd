"""The validation and test recordings of a run, as model-input windows.

Verification must look at exactly what training evaluated: the recordings named in the
run's ``splits.json`` (never a fresh split), their labels through the run's label set, and
their windows from the device's fixed-point front end via the training feature cache
(:mod:`train.features`), cut with no time shift as training's evaluation cuts them. A
recording the data folders no longer hold is a refusal, not a silent smaller test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.run_folder import RunFolder
from edge.errors import DataError
from train.datasets import default_data_paths, get_label_set, load_records
from train.features import IDENTITY, FeatureCache, extract_all, recording_windows

SPLITS = ("val", "test")
MAX_MISSING_SHOWN = 3


@dataclass(frozen=True)
class EvalSet:
    """Recordings (one row each) and their windows (one row each, ``recording`` maps back)."""

    names: tuple[str, ...]
    sources: tuple[str, ...]
    datasets: tuple[str, ...]
    splits: tuple[str, ...]
    groups: tuple[str, ...]  # patient (or session, or file) of each recording
    y: np.ndarray  # class index per recording
    windows: np.ndarray  # (n_windows, frames, ceps) int16
    recording: np.ndarray  # recording index of each window

    def __len__(self) -> int:
        return len(self.names)

    def split_mask(self, split: str) -> np.ndarray:
        """Recordings of one split (bool per recording)."""
        return np.array([s == split for s in self.splits], dtype=bool)

    def window_counts(self) -> dict[str, int]:
        per_rec = np.bincount(self.recording, minlength=len(self))
        return {s: int(per_rec[self.split_mask(s)].sum()) for s in SPLITS}


def data_folders(run: RunFolder, data: Sequence[Path] | None) -> list[Path]:
    """``--data`` if given, else the run's own folders if present, else the defaults."""
    if data:
        return [Path(p) for p in data]
    recorded = [Path(p) for p in run.metrics.get("data", {}).get("folders", [])]
    if recorded and all(p.is_dir() for p in recorded):
        return recorded
    return default_data_paths()


def load_eval_set(run: RunFolder, data: Sequence[Path] | None = None,
                  cache_dir: Path | None = None, *, workers: int = 2,
                  progress: bool = False) -> EvalSet:
    """Val and test recordings of ``run`` with their labels and int16 windows."""
    label_set = get_label_set(run.label_set)
    by_name = {r.name: r for r in load_records(data_folders(run, data))}
    chosen, split_of = [], []
    for split in SPLITS:
        names = run.split_names(split)
        missing = [n for n in names if n not in by_name]
        if missing:
            shown = ", ".join(missing[:MAX_MISSING_SHOWN])
            raise DataError(f"{len(missing)} {split} recordings of run {run.path} are not in "
                            f"the data folders (e.g. {shown}); pass --data with the folders "
                            "the run was trained on")
        usable = label_set.select(by_name[n] for n in names)
        chosen += usable
        split_of += [split] * len(usable)
    if not chosen:
        raise DataError(f"run {run.path}: no labelled validation or test recordings")
    cache = FeatureCache(cache_dir, run.spec) if cache_dir is not None else None
    feats, _ = extract_all([(r.path, IDENTITY) for r in chosen], run.spec, cache,
                           workers=workers, progress=progress, desc="verify features")
    wins = [recording_windows(f, run.spec) for f in feats]
    return EvalSet(
        names=tuple(r.name for r in chosen),
        sources=tuple(r.source for r in chosen),
        datasets=tuple(r.dataset for r in chosen),
        splits=tuple(split_of),
        groups=tuple(r.group for r in chosen),
        y=np.array([label_set.index(r) for r in chosen], dtype=np.int64),
        windows=np.concatenate(wins),
        recording=np.concatenate([np.full(len(w), i) for i, w in enumerate(wins)]),
    )
