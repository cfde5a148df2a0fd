"""A small, fixed sample of real recordings from every source, at the front end's rate.

The front-end tests (tests/test_mfcc*.py, tests/test_c_frontend.py) use the same few
files per source (PASCAL A, PASCAL B, PhysioNet a-f, CirCor) so they stay fast while every
stethoscope is covered; the full sweep over all PASCAL frames is bench/bench_frontend.py.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from edge.audio import read_wav
from edge.spec import DEFAULT_SPEC

SOURCES = {
    "pascal_a": ("pascal/set_a", 3),
    "pascal_b": ("pascal/set_b", 3),
    "physionet_a": ("physionet2016/training-a", 2),
    "physionet_b": ("physionet2016/training-b", 2),
    "physionet_d": ("physionet2016/training-d", 2),
    "physionet_e": ("physionet2016/training-e", 2),
    "physionet_c": ("physionet2016/training-c", 1),
    "physionet_f": ("physionet2016/training-f", 2),
    "circor": ("circor2022/training_data", 2),
}


def pick(data_root: Path, folder: str, count: int) -> list[Path]:
    """``count`` files spread evenly over the sorted folder (deterministic)."""
    files = sorted((data_root / folder).glob("*.wav"))
    assert files, f"no WAV files in {data_root / folder}"
    step = max(len(files) // count, 1)
    return files[step // 2::step][:count]


@lru_cache(maxsize=64)
def load(path: Path, rate: int = DEFAULT_SPEC.sample_rate_hz) -> np.ndarray:
    """int16 samples at ``rate`` (cached: several tests read the same files)."""
    return read_wav(path, rate)


def sample(data_root: Path) -> list[tuple[str, Path]]:
    """(source, path) for the fixed sample of every source."""
    return [(source, path) for source, (folder, count) in SOURCES.items()
            for path in pick(data_root, folder, count)]
