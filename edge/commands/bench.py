"""`heartsound bench`: latency and memory of the screening pipeline on this device.

Prints a table (or ``--json``) like TFLite's benchmark_model: init, first inference,
then mean / p50 / p95 / p99 / max of the front end, the interpreter and the whole
analysis window, and the process's peak RSS. Beside the int8 model on the reference
kernels (what screening runs, bit-exact with the microcontroller) it times, in the same
process, the int8 model on LiteRT's optimised kernels and the model's float32 companion
on LiteRT (the fair baseline on a Pi), and says how often the two int8 kernel sets differ.
With ``--baseline RUN_DIR`` (host only, needs TensorFlow) the same window is also run
through the float64 reference front end and the float Keras model of that training run
(called through ``predict``, eagerly, and as a traced graph).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edge.errors import UsageError

RECORDINGS = Path(__file__).resolve().parents[1] / "recordings"
BENCH_RECORDING = RECORDINGS / "physionet_a0336_abnormal.wav"
"""A real 12.8 s recording shipped inside the package (edge/recordings/README.md), so that
`heartsound bench` after `pip install` times the real path with no checkout around it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="int8 .tflite model (default: "
                        "$HEARTSOUND_MODEL, else the deployed release's model, else the model "
                        "shipped with heartsound)")
    parser.add_argument("--wav", type=Path, help="real recording to time on (default: "
                        "the PhysioNet recording a0336 shipped with heartsound)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per stage "
                        "(default %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first "
                        "(default %(default)s)")
    parser.add_argument("--baseline", type=Path, metavar="RUN_DIR",
                        help="also time the float64 reference front end + float Keras model "
                        "of this training run (host only) and print the ratio; `invoke "
                        "pipeline` writes runs/default, the packaged model's run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    from edge.audio import read_wav
    from edge.benchmark import bench_alternatives, bench_edge, peak_rss_mb, speedups
    from edge.screening import Screener, default_model_path

    if args.runs < 1 or args.warmup < 0:
        raise UsageError("--runs must be at least 1 and --warmup at least 0")
    t0 = time.perf_counter()
    screener = Screener(args.model)
    init_ms = (time.perf_counter() - t0) * 1000.0
    wav = args.wav or BENCH_RECORDING
    pcm = read_wav(wav, screener.spec.sample_rate_hz)
    figures = {"model_sha256": screener.classifier.sha256, "interpreter":
               screener.classifier.backend, "recording": str(wav), "init_ms": init_ms}
    if args.baseline:
        from edge.cli import host_module

        baseline = host_module("bench --baseline")
        baseline.check_run(args.baseline, screener.spec)  # before minutes of timings, not after
    figures.update(bench_edge(screener, pcm, args.runs, args.warmup))
    figures["alternatives"] = bench_alternatives(screener, pcm, args.model or
                                                 default_model_path(), args.runs, args.warmup)
    figures["speedup_vs_float32"] = speedups(figures)
    if args.baseline:
        figures["float_baseline"] = baseline.bench_float(args.baseline, pcm, screener.spec,
                                                args.runs, args.warmup)
        figures["speedup_vs_float"] = keras_speedups(figures)
    figures["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(figures, indent=2) if args.json else _table(figures))
    return 0


KERAS_CALL_NAMES = {"predict": "model.predict, the Keras inference API",
                    "eager": "eager model(x) call",
                    "graph": "traced tf.function, the fastest host route"}


def keras_speedups(figures: dict) -> dict[str, float]:
    """Median float window time / median int8 window time, per way of calling Keras."""
    base = figures["float_baseline"]
    return {call: base[f"window_{call}_ms"]["p50"] / figures["window_ms"]["p50"]
            for call in KERAS_CALL_NAMES}


def _table(f: dict) -> str:
    rows = [f"model {f['model_sha256'][:12]} on {f['interpreter']}; recording {f['recording']}",
            f"init {f['init_ms']:.1f} ms, first inference {f['first_inference_ms']:.2f} ms",
            f"{'stage (ms)':<30}{'mean':>9}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}"]
    alt = f["alternatives"]
    stages = [("front end (fixed point)", f["front_end_ms"]),
              ("front end (float64 MFCC)", f["front_end_float64_ms"]),
              ("interpreter int8 reference", f["interpreter_ms"])]
    stages += [(f"interpreter {k.replace('int8_', 'int8 ')}", alt[k]["interpreter_ms"])
               for k in ("int8_optimised", "float32") if k in alt]
    stages.append(("whole window int8 reference", f["window_ms"]))
    stages += [(f"whole window {k.replace('int8_', 'int8 ')}", alt[k]["window_ms"])
               for k in ("int8_optimised", "float32") if k in alt]
    if "recording_window_ms" in f:
        stages.append((f"window in a recording ({f['recording_window_ms']['windows']})",
                       f["recording_window_ms"]))
    if "float_baseline" in f:
        stages += [(f"float {k}", v) for k, v in f["float_baseline"].items()
                   if k.endswith("_ms")]
    for name, s in stages:
        rows.append(f"{name:<30}" + "".join(f"{s[k]:>9.3f}" for k in
                                            ("mean", "p50", "p95", "p99", "max")))
    from edge.benchmark import fair_lines

    rows += fair_lines(f)
    for call, ratio in f.get("speedup_vs_float", {}).items():
        rows.append(f"whole window at {ratio:5.1f}x the speed of the float reference front end "
                    f"+ float Keras model ({KERAS_CALL_NAMES[call]}; medians)")
    rows.append(f"peak RSS {f['peak_rss_mb']:.1f} MB")
    return "\n".join(rows)
