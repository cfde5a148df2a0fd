"""Convert each architecture to full int8 and measure what the microcontroller cares about.

For every architecture in train.models: flatbuffer bytes, smallest TFLite Micro arena
(bisection, one child process per probe), op list and the TFLite Micro int8 check, MACs
per window, conversion time, and parity on real feature windows from every source:
TFLite Micro vs LiteRT reference kernels, vs LiteRT optimised built-in kernels, and
int8 vs float. Untrained weights (seeded): the numbers describe the conversion and the
interpreters, not accuracy.

    python3 bench/bench_convert.py [--per-source 3] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from convert.ops import check_tflm_ops, count_macs  # noqa: E402
from convert.quantize import to_int8  # noqa: E402
from convert.tflm import (  # noqa: E402
    compare,
    dequantise_outputs,
    quantise_windows,
    run_litert,
    run_tflm,
    smallest_arena,
)
from edge.audio import read_wav  # noqa: E402
from edge.mfcc import mfcc, windows  # noqa: E402
from edge.spec import DEFAULT_SPEC  # noqa: E402
from train.models import ARCHITECTURES, build_model  # noqa: E402

SOURCES = ("pascal/set_a", "pascal/set_b", "physionet2016/training-a",
           "physionet2016/training-b", "physionet2016/training-d")


def real_windows(data_root: Path, per_source: int) -> np.ndarray:
    """Float windows (log2 units) from ``per_source`` evenly spaced files of each source."""
    out = []
    for folder in SOURCES:
        files = sorted((data_root / folder).glob("*.wav"))
        step = max(len(files) // per_source, 1)
        for path in files[step // 2::step][:per_source]:
            pcm = read_wav(path, DEFAULT_SPEC.sample_rate_hz)
            out.append(windows(mfcc(pcm, DEFAULT_SPEC), DEFAULT_SPEC))
    return np.concatenate(out).astype(np.float32) * 2.0 ** -DEFAULT_SPEC.out_frac_bits


def measure(name: str, x: np.ndarray, seed: int) -> dict:
    model = build_model(name, seed=seed)
    start = time.perf_counter()
    tflite = to_int8(model, x, spec=DEFAULT_SPEC, architecture=name)
    seconds = time.perf_counter() - start
    q = quantise_windows(tflite, x)
    micro = run_tflm(tflite, q)
    float_scores = model.predict(x, verbose=0)
    return {
        "bytes": len(tflite), "arena_bytes": smallest_arena(tflite),
        "ops": check_tflm_ops(tflite, name), "macs": count_macs(tflite),
        "convert_s": round(seconds, 1), "windows": len(x),
        "tflm_vs_litert_reference": compare(micro, run_litert(tflite, q)).to_dict(),
        "tflm_vs_litert_builtin": compare(micro, run_litert(tflite, q, "builtin")).to_dict(),
        "int8_vs_float_max_abs": float(np.abs(dequantise_outputs(tflite, micro)
                                              - float_scores).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-source", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    x = real_windows(args.data, args.per_source)
    results = {name: measure(name, x, args.seed) for name in ARCHITECTURES}
    for name, r in results.items():
        ref, opt = r["tflm_vs_litert_reference"], r["tflm_vs_litert_builtin"]
        print(f"{name:5s} {r['bytes']:6d} B  arena {r['arena_bytes']:6d} B  "
              f"MACs {sum(r['macs'].values()):9,d}  convert {r['convert_s']:5.1f} s  "
              f"TFLM=ref {ref['identical']}/{ref['windows']} (max {ref['max_lsb']} LSB)  "
              f"TFLM=builtin {opt['identical']}/{opt['windows']} (max {opt['max_lsb']} LSB)  "
              f"|int8-float| <= {r['int8_vs_float_max_abs']:.4f}")
        print(f"      ops: {' '.join(r['ops'])}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
