"""The familiarity reference of a training run, and what it flags (see edge.familiarity).

The reference comes from the training split's recordings, per source, and its threshold
from the validation split's: the same recordings as the model, so a leave-one-database-out
fold's reference knows only that fold's training databases. On the test recordings this
measures what the gate would do on the device: how many it flags, per source, and the
screening figures of the model on the rest (flagged recordings are ``unsure`` there, so
they leave the Se/Sp/MAcc and are counted apart).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from edge.familiarity import Reference, build_reference, distances, profile
from train.evaluate import binary_metrics, screening_score

KEPT = ("n", "se", "sp", "macc", "auc")


def reference_of(train_sources: Sequence[str], train_feats: Sequence[np.ndarray],
                 val_feats: Sequence[np.ndarray]) -> Reference:
    """Per-source reference from training frame matrices, threshold from validation."""
    by_source: dict[str, list[np.ndarray]] = defaultdict(list)
    for source, feats in zip(train_sources, train_feats, strict=True):
        by_source[source].append(profile(feats))
    val = np.array([profile(f) for f in val_feats])
    return build_reference({s: np.array(p) for s, p in by_source.items()}, val)


def flag_figures(reference: Reference, sources: Sequence[str], feats: Sequence[np.ndarray],
                 y_class: np.ndarray, probs: np.ndarray, threshold: float,
                 normal_index: int) -> dict:
    """Per source: recordings flagged (share, and how many abnormal), the model's
    Se/Sp/MAcc/AUC on all of them and on the unflagged rest (flagged left out)."""
    d, nearest = distances(np.array([profile(f) for f in feats]), reference)
    flagged = d > reference.threshold
    y_abn = np.asarray(y_class) != normal_index
    score = screening_score(probs, normal_index)
    src = np.asarray(sources)
    out = {}
    for name in sorted(set(src.tolist())):
        mask = src == name
        rest = mask & ~flagged
        out[name] = {
            "n": int(mask.sum()), "flagged": int((mask & flagged).sum()),
            "flagged_share": float((mask & flagged).mean() / mask.mean()),
            "flagged_abnormal": int((mask & flagged & y_abn).sum()),
            "median_distance": float(np.median(d[mask])),
            "nearest": _most_common([n for n, m in zip(nearest, mask, strict=True) if m]),
            "all": _kept(binary_metrics(y_abn[mask], score[mask], threshold)),
            "rest": _kept(binary_metrics(y_abn[rest], score[rest], threshold))
            if rest.any() else None,
        }
    return out


def _kept(metrics: dict) -> dict:
    return {k: metrics[k] for k in KEPT}


def _most_common(names: list[str]) -> str:
    return max(sorted(set(names)), key=names.count) if names else ""
