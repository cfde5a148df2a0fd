"""From window scores to the recording decision a clinician acts on.

One rule, shared by training's evaluation and every device, so that the threshold chosen
on validation data means the same thing at the bedside: the recording's score for each
class is the mean of its windows' probabilities, and the screening score is
P(abnormal) = 1 - P(normal), whatever classes the model names (a condition model's
murmur, extra sound and extrastole all count against "normal").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NORMAL = "normal"
ABNORMAL = "abnormal"
UNSURE = "unsure"


def normal_index(class_names: Sequence[str], normal_class: str | None = None) -> int:
    """Index of the model's normal class (named in its metadata, else 'normal')."""
    name = normal_class or NORMAL
    if name not in class_names:
        raise ValueError(f"no '{name}' class among {list(class_names)}")
    return list(class_names).index(name)


def abnormal_probability(probs: np.ndarray, normal_idx: int) -> np.ndarray:
    """Per-window (or per-recording) P(abnormal) = 1 - P(normal), from (n, classes)."""
    return 1.0 - np.asarray(probs, dtype=np.float64)[..., normal_idx]


def recording_probabilities(window_probs: np.ndarray) -> np.ndarray:
    """Mean class probabilities over a recording's windows: (n_windows, k) -> (k,)."""
    probs = np.asarray(window_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError("a recording needs at least one window of class probabilities")
    return probs.mean(axis=0)


def decide(probability_abnormal: float, threshold: float) -> str:
    """Refer (abnormal) at or above the threshold chosen on validation data."""
    return ABNORMAL if probability_abnormal >= threshold else NORMAL
