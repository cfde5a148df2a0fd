"""How well the signal-quality gate (edge.quality) separates heart sounds from non-heart sounds.

The PASCAL ``artifact`` recordings (noise, speech, music, silence, set A) are the real
examples of "no heart sound"; every other labelled recording (normal and abnormal, all
five sources) is a good one. Recordings are split in two halves *by group* (a PASCAL A
sitting, a PASCAL B patient, a PhysioNet recording) with a fixed seed:

* ``--calibrate`` chooses, on the calibration half only, the low-pass design and the
  low-band-share threshold: most artifacts caught with at most ``--budget`` (1 %) of
  the long-enough good recordings wrongly rejected for "no heart sound"; ties go to fewer
  false rejects, then to the design with the widest gap; the threshold sits midway in
  that gap. Copy what it prints into edge/quality.py.
* the default run measures the gate as it is in edge/quality.py and prints, per source
  and half, how many recordings each reason rejects. The held-out half is the honest
  figure; tests/test_quality.py asserts bounds on it.

    python3 bench/bench_quality.py [--calibrate] [--half held-out|calibration|all] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge import quality  # noqa: E402
from edge.audio import read_wav  # noqa: E402
from edge.spec import DEFAULT_SPEC  # noqa: E402
from train.datasets import Recording, load_records  # noqa: E402

SPLIT_SALT = "quality-gate-v1"  # changing it re-draws the halves (and voids the calibration)
ARTIFACT = "artifact"
SOURCES = ("pascal-a", "pascal-b", "physionet-a", "physionet-b", "physionet-d")
# (lp_divisor, passes): boxcar of rate/lp_divisor samples, cascaded `passes` times
DESIGNS = [(d, p) for d in (200, 250, 333, 400) for p in (1, 2, 3)]
DEFAULT_BUDGET = 0.01


def half_of(group: str) -> str:
    """'calibration' or 'held-out' for a group, fixed by a salted hash (no RNG state)."""
    digest = hashlib.sha256(f"{SPLIT_SALT}:{group}".encode()).digest()
    return "calibration" if digest[0] % 2 == 0 else "held-out"


def gate_records(half: str = "held-out", paths: Iterable[Path] | None = None
                 ) -> list[Recording]:
    """Labelled recordings of one half ('all' for both), artifacts included."""
    records = [r for r in load_records(list(paths) if paths else None) if r.label]
    return [r for r in records if half == "all" or half_of(r.group) == half]


def load_pcm(record: Recording) -> np.ndarray:
    """The recording as the model sees it: int16 mono at the front end's rate."""
    return read_wav(record.path, DEFAULT_SPEC.sample_rate_hz)


def measure(records: list[Recording]) -> dict:
    """Gate every recording: per source/kind counts by reason, plus the totals."""
    table: dict = defaultdict(lambda: defaultdict(int))
    for r in records:
        verdict = quality.assess(load_pcm(r))
        row = table[(r.source, "artifact" if r.label == ARTIFACT else "good")]
        row["n"] += 1
        row[verdict.reason or "ok"] += 1
    return {f"{s}/{k}": dict(v) for (s, k), v in sorted(table.items())}


def summary(table: dict) -> dict:
    """Artifacts caught, and good recordings rejected (all reasons, and 'no heart sound')."""
    art = [v for k, v in table.items() if k.endswith("/artifact")]
    good = [v for k, v in table.items() if k.endswith("/good")]
    n_art = sum(v["n"] for v in art)
    caught = sum(v["n"] - v.get("ok", 0) for v in art)
    n_good = sum(v["n"] for v in good)
    short = sum(v.get(quality.TOO_SHORT, 0) for v in good)
    no_heart = sum(v.get(quality.NO_HEART, 0) for v in good)
    rejected = sum(v["n"] - v.get("ok", 0) for v in good)
    return {"artifacts": n_art, "artifacts_caught": caught,
            "good": n_good, "good_too_short": short,
            "good_rejected_other": rejected - short, "good_rejected_no_heart": no_heart,
            "catch_rate": caught / n_art if n_art else None,
            "false_reject_rate": (rejected - short) / (n_good - short) if n_good > short
            else None}


def print_table(table: dict, title: str) -> None:
    cols = ("n", "ok", *quality.REASONS)
    print(f"\n{title}")
    print(f"{'source / kind':24s}" + "".join(f"{c:>16s}" for c in cols))
    for key, row in table.items():
        print(f"{key:24s}" + "".join(f"{row.get(c, 0):16d}" for c in cols))
    s = summary(table)
    print(f"artifacts caught: {s['artifacts_caught']}/{s['artifacts']} "
          f"({100 * (s['catch_rate'] or 0):.1f} %)")
    print(f"good recordings wrongly rejected (long enough to screen): "
          f"{s['good_rejected_other']}/{s['good'] - s['good_too_short']} "
          f"({100 * (s['false_reject_rate'] or 0):.2f} %), of which no heart sound: "
          f"{s['good_rejected_no_heart']}; too short (under 2 s): "
          f"{s['good_too_short']}/{s['good']}")


# ----------------------------------------------------------------------------- calibration


def _best_threshold(art: np.ndarray, good: np.ndarray, budget: float
                    ) -> tuple[int, int, int, int]:
    """(threshold_q15, caught, false rejects, gap) for 'reject if share < threshold'."""
    allowed = int(np.floor(budget * good.size))
    good_sorted = np.sort(good)
    best = None
    for t in np.unique(np.concatenate([art + 1, good_sorted[: allowed + 1]])):
        fr = int(np.count_nonzero(good < t))
        if fr > allowed:
            continue
        caught = int(np.count_nonzero(art < t))
        below = art[art < t].max(initial=-1)
        above = good[good >= t].min(initial=1 << 15)
        gap = int(above - below)
        key = (caught, -fr, gap)
        if best is None or key > best[0]:
            best = (key, (int(below) + int(above) + 1) // 2, caught, fr, gap)
    return best[1], best[2], best[3], best[4]


def calibrate(budget: float) -> dict:
    """Choose the low-pass design and threshold on the calibration half only."""
    rate = DEFAULT_SPEC.sample_rate_hz
    records = [r for r in gate_records("calibration")]
    pcms = [load_pcm(r) for r in records]
    usable = [(r, x) for r, x in zip(records, pcms, strict=True)
              if quality.assess(x).reason not in (quality.TOO_SHORT, quality.SILENT,
                                                  quality.CLIPPED)]
    results = []
    for lp_divisor, passes in DESIGNS:
        shares = {r.name: quality.low_band_share_q15(x, rate, lp_divisor, passes)
                  for r, x in usable}
        art = np.array([shares[r.name] for r, _ in usable if r.label == ARTIFACT])
        good = np.array([shares[r.name] for r, _ in usable if r.label != ARTIFACT])
        thr, caught, fr, gap = _best_threshold(art, good, budget)
        results.append({"lp_divisor": lp_divisor, "lp_len": rate // lp_divisor,
                        "passes": passes, "threshold_q15": thr, "caught": caught,
                        "artifacts": int(art.size), "false_rejects": fr,
                        "good": int(good.size), "gap_q15": gap})
    results.sort(key=lambda d: (d["caught"], -d["false_rejects"], d["gap_q15"]), reverse=True)
    return {"chosen": results[0], "all": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibrate", action="store_true",
                        help="choose filter and threshold on the calibration half")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help="largest share of good recordings 'no heart sound' may reject")
    parser.add_argument("--half", choices=("held-out", "calibration", "all"),
                        default="held-out")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.calibrate:
        result = calibrate(args.budget)
        if args.json:
            print(json.dumps(result, indent=2))
            return 0
        print(f"{'lp_len':>6s} {'passes':>6s} {'thr_q15':>8s} {'caught':>8s} "
              f"{'false rej':>10s} {'gap':>6s}")
        for d in result["all"]:
            print(f"{d['lp_len']:6d} {d['passes']:6d} {d['threshold_q15']:8d} "
                  f"{d['caught']:4d}/{d['artifacts']:<3d} {d['false_rejects']:5d}/"
                  f"{d['good']:<4d} {d['gap_q15']:6d}")
        c = result["chosen"]
        print(f"\nchosen: LP_DIVISOR = {c['lp_divisor']} ({c['lp_len']} samples), "
              f"LP_PASSES = {c['passes']}, LOW_SHARE_MIN_Q15 = {c['threshold_q15']} "
              f"({c['threshold_q15'] / 32768:.3f})")
        return 0
    table = measure(gate_records(args.half))
    if args.json:
        print(json.dumps({"half": args.half, "table": table, "summary": summary(table)},
                         indent=2))
        return 0
    print(f"quality gate: LP {DEFAULT_SPEC.sample_rate_hz // quality.LP_DIVISOR} samples x "
          f"{quality.LP_PASSES}, low-band share >= {quality.LOW_SHARE_MIN_Q15 / 32768:.3f}, "
          f"silent < {quality.SILENT_RMS} rms, clipped > {quality.CLIP_SHARE_PERMILLE / 10:g} %")
    print_table(table, f"{args.half} half (split by group, salt {SPLIT_SALT!r})")
    print(f"\n({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
