"""Where coarse quantisation starts to move the shipped model's decision (edge.quality).

Each of ``--per-source`` labelled heart recordings per source (seeded choice, at least
5 s, screened as usable in its original form) is peak-normalised to 31000, scaled by
2^-k and requantised: to 8 bits for k = 0..7 and to 16 bits for k = 5..12. Every version
is screened with the shipped model (the quality gate's "too coarse" test is switched off
for the measurement) and compared with the untouched recording. Rows are binned by the
gate's own figure, rms / quantisation step; a *flip* is a decision that differs from the
original's. ``--grids`` also lists the real recordings whose samples already lie on a
coarse grid (step > 1) and what the gate measures on them. Copy the conclusion into the
"Resolution" section of edge/quality.py.

    python3 bench/bench_resolution.py [--per-source 45] [--seed 7] [--grids] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge import quality  # noqa: E402
from edge.audio import load_audio  # noqa: E402
from edge.screening import Screener  # noqa: E402
from train.datasets import load_records  # noqa: E402

PEAK = 31000
EDGES = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, float("inf"))
SCALES = {8: range(0, 8), 16: range(5, 13)}  # k in 2^-k per bit depth


def requantise(x: np.ndarray, gain: float, bits: int) -> np.ndarray:
    """x * gain on a ``bits``-bit grid, as int16 (what decoding such a file gives)."""
    step = 1 << (16 - bits)
    top = 1 << (bits - 1)
    q = np.clip(np.rint(x.astype(np.float64) * gain / step), -top, top - 1)
    return (q.astype(np.int64) * step).astype(np.int16)


def pick(per_source: int, seed: int) -> list:
    """Seeded choice of labelled heart recordings (no artifacts) of 5 s or more."""
    rng = np.random.default_rng(seed)
    by_source: dict = {}
    for r in load_records():
        if r.label and r.label != "artifact" and r.seconds >= 5:
            by_source.setdefault(r.source, []).append(r)
    out = []
    for _, records in sorted(by_source.items()):
        idx = rng.choice(len(records), size=min(per_source, len(records)), replace=False)
        out += [records[i] for i in sorted(idx)]
    return out


def sweep(records: list, screener: Screener) -> list[dict]:
    """One row per requantised version: source, bits, rms/step, original and new result."""
    rows = []
    for r in records:
        x, info = load_audio(r.path)
        base = screener.screen_pcm(x, info.sample_rate)
        if base.probability_abnormal is None:
            continue
        gain = PEAK / max(1, int(np.abs(x.astype(np.int64)).max()))
        for bits, ks in SCALES.items():
            for k in ks:
                res = screener.screen_pcm(requantise(x, gain * 2.0**-k, bits), info.sample_rate)
                fig = res.quality["figures"]
                if res.probability_abnormal is None:  # silent: not a resolution question
                    continue
                rows.append({"source": r.source, "bits": bits,
                             "steps": fig["rms"] / fig["quantisation_step"],
                             "flip": res.decision != base.decision,
                             "dp": abs(res.probability_abnormal - base.probability_abnormal)})
    return rows


def table(rows: list[dict]) -> list[dict]:
    """Per rms/step bin and bit depth: n, flip %, median and 90th percentile of |dP|."""
    out = []
    for lo, hi in zip(EDGES, EDGES[1:], strict=False):
        for bits in SCALES:
            sel = [r for r in rows if r["bits"] == bits and lo <= r["steps"] < hi]
            if len(sel) >= 5:
                dp = np.array([r["dp"] for r in sel])
                out.append({"bin": f"{lo:g}-{hi:g}", "bits": bits, "n": len(sel),
                            "flips_pct": round(100 * np.mean([r["flip"] for r in sel]), 1),
                            "median_dp": round(float(np.median(dp)), 3),
                            "p90_dp": round(float(np.percentile(dp, 90)), 3)})
    return out


def by_source(rows: list[dict], cuts=(2, 4, 8, 16, 64)) -> dict:
    """Flip % per source and coarse bin (both bit depths pooled)."""
    out: dict = {}
    bounds = (0, *cuts, float("inf"))
    for src in sorted({r["source"] for r in rows}):
        cells = {}
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            sel = [r["flip"] for r in rows if r["source"] == src and lo <= r["steps"] < hi]
            cells[f"{lo:g}-{hi:g}"] = (round(100 * np.mean(sel)), len(sel)) if sel else None
        out[src] = cells
    return out


def coarse_grids() -> list[dict]:
    """Real labelled recordings whose decoded samples lie on a grid coarser than 1."""
    out = []
    for r in load_records():
        if not r.label:
            continue
        x, info = load_audio(r.path)
        step = quality.quantisation_step(x)
        if step > 1:
            pcm = load_audio(r.path, 2000)[0]
            q = quality.assess(pcm, step=step)
            out.append({"file": str(r.path.name), "source": r.source, "step": step,
                        "steps_rms": round(q.figures["rms"] / step, 2),
                        "reason": q.reason})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-source", type=int, default=45)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--grids", action="store_true", help="also scan every real recording")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    quality.MIN_RMS_STEPS = 0  # measure what the model does below the gate's threshold
    rows = sweep(pick(args.per_source, args.seed), Screener())
    report = {"table": table(rows), "by_source": by_source(rows)}
    if args.grids:
        report["coarse_grids"] = coarse_grids()
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{'rms/step':>9} {'bits':>4} {'n':>5} {'flips %':>7} {'med|dP|':>7} {'p90|dP|':>7}")
    for t in report["table"]:
        print(f"{t['bin']:>9} {t['bits']:>4} {t['n']:>5} {t['flips_pct']:>7} "
              f"{t['median_dp']:>7} {t['p90_dp']:>7}")
    print("flips % (n) per source and rms/step bin:")
    for src, cells in report["by_source"].items():
        print(f"  {src:<12} " + "  ".join(f"{b}: {c[0]}% ({c[1]})" if c else f"{b}: -"
                                          for b, c in cells.items()))
    for g in report.get("coarse_grids", []):
        print(f"  coarse grid: {g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
