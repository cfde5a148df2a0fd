"""PNG figures of a run: training curves and the test confusion matrix (matplotlib Agg).

Agg because training runs on headless machines (CI, a server over SSH): no display needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

FIG_DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: Mapping[str, Sequence[float]], best_epoch: int, path: Path,
                    title: str) -> Path:
    """Loss (train, validation) and the validation AUC used for model selection, per epoch."""
    plt = _pyplot()
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(epochs, history["loss"], label="train (weighted)")
    ax_loss.plot(epochs, history["val_loss"], label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy per window")
    ax_loss.legend()
    ax_auc.plot(epochs, history["val_auc"], color="tab:green")
    ax_auc.axvline(best_epoch, color="grey", linestyle="--", label=f"kept: epoch {best_epoch}")
    ax_auc.set_xlabel("epoch")
    ax_auc.set_ylabel("validation AUC (within source, weighted)")
    ax_auc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=FIG_DPI)
    plt.close(fig)
    return path


def confusion_matrices(panels: Mapping[str, Sequence[Sequence[int]]],
                       class_names: Mapping[str, Sequence[str]], path: Path,
                       title: str) -> Path:
    """One heat map per panel (e.g. overall, each source), counts written in the cells."""
    plt = _pyplot()
    names = list(panels)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        cm = np.asarray(panels[name])
        labels = class_names[name]
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))  # equal cells stay legible
        for (i, j), value in np.ndenumerate(cm):
            color = "white" if value > cm.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", color=color)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=FIG_DPI)
    plt.close(fig)
    return path
