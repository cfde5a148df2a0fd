"""A one-page picture of a screening for the clinician: what was heard and what was scored.

Optional: needs matplotlib (the `report` extra), which the Raspberry Pi runtime does not require.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.errors import UsageError
from edge.mfcc import mfcc


def write_report(path: Path, pcm: np.ndarray, screener, result) -> None:
    """Waveform, MFCC image and per-window P(abnormal) against the threshold, as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--report needs matplotlib (the screening above was printed and "
                         "logged): pip install 'heartsound[report]'") from None
    spec = screener.spec
    t = np.arange(len(pcm)) / spec.sample_rate_hz
    feats = mfcc(pcm, spec)
    fig, (ax_w, ax_m, ax_s) = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    ax_w.plot(t, pcm, lw=0.4, color="black")
    ax_w.set_ylabel("int16")
    ax_w.set_title(f"{Path(result.file).name}: {result.decision.upper()}"
                   + (f"  P(abnormal) {result.probability_abnormal:.2f}"
                      if result.probability_abnormal is not None
                      else f"  ({result.quality['reason']})"))
    # c0 (loudness) dwarfs the rest: show c1.. each scaled to its own range
    ceps = feats[:, 1:].T.astype(np.float64)
    ceps = (ceps - ceps.mean(axis=1, keepdims=True)) / (ceps.std(axis=1, keepdims=True) + 1e-9)
    extent = (0, len(feats) * spec.hop_length / spec.sample_rate_hz, 0.5, spec.n_ceps - 0.5)
    ax_m.imshow(ceps, aspect="auto", origin="lower", extent=extent, cmap="magma",
                vmin=-3, vmax=3)
    ax_m.set_ylabel("cepstrum c1..")
    for w in result.windows:
        ax_s.hlines(w["probability_abnormal"], w["start_s"], w["start_s"] + spec.window_s,
                    color="tab:red", alpha=0.6)
    ax_s.axhline(result.threshold, ls="--", color="gray", label="threshold")
    ax_s.set_ylim(0, 1)
    ax_s.set_ylabel("P(abnormal)")
    ax_s.set_xlabel("seconds")
    ax_s.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
