"""`heartsound bench`: latency and memory of the screening pipeline on this device.

Prints a table (or ``--json``) like TFLite's benchmark_model: init, first inference,
then mean / p50 / p95 / p99 / max of the front end, the interpreter and the whole
analysis window, and the process's peak RSS. With ``--baseline RUN_DIR`` (host only,
needs TensorFlow) the same window is also run through the float64 reference front end
and the float Keras model of that training run (called through ``predict``, eagerly, and as
a traced graph), and the speed-up against each is printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edge.errors import UsageError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="int8 .tflite model (default: "
                        "$HEARTSOUND_MODEL, else the deployed release's model, else the model "
                        "shipped with heartsound)")
    parser.add_argument("--wav", type=Path, help="real recording to time on (default: the "
                        "first example recording)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per stage "
                        "(default %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first "
                        "(default %(default)s)")
    parser.add_argument("--baseline", type=Path, metavar="RUN_DIR",
                        help="also time the float64 reference front end + float Keras model "
                        "of this training run (host only) and print the ratio")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    from edge.audio import read_wav
    from edge.benchmark import bench_edge, peak_rss_mb
    from edge.screening import Screener

    if args.runs < 1 or args.warmup < 0:
        raise UsageError("--runs must be at least 1 and --warmup at least 0")
    t0 = time.perf_counter()
    screener = Screener(args.model)
    init_ms = (time.perf_counter() - t0) * 1000.0
    wav = args.wav or _first_example()
    pcm = read_wav(wav, screener.spec.sample_rate_hz)
    figures = {"model_sha256": screener.classifier.sha256, "interpreter":
               screener.classifier.backend, "recording": str(wav), "init_ms": init_ms}
    figures.update(bench_edge(screener, pcm, args.runs, args.warmup))
    if args.baseline:
        from train.baseline import bench_float

        figures["float_baseline"] = bench_float(args.baseline, pcm, screener.spec,
                                                args.runs, args.warmup)
        figures["speedup_vs_float"] = speedups(figures)
    figures["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(figures, indent=2) if args.json else _table(figures))
    return 0


KERAS_CALL_NAMES = {"predict": "model.predict, the Keras inference API",
                    "eager": "eager model(x) call",
                    "graph": "traced tf.function, the fastest host route"}


def speedups(figures: dict) -> dict[str, float]:
    """Mean float window time / mean int8 window time, per way of calling Keras."""
    base = figures["float_baseline"]
    return {call: base[f"window_{call}_ms"]["mean"] / figures["window_ms"]["mean"]
            for call in KERAS_CALL_NAMES}


def _first_example() -> Path:
    found = sorted(EXAMPLES.glob("*.wav")) if EXAMPLES.is_dir() else []
    if not found:
        raise UsageError("no example recordings found: pass --wav FILE")
    return found[0]


def _table(f: dict) -> str:
    rows = [f"model {f['model_sha256'][:12]} on {f['interpreter']}; recording {f['recording']}",
            f"init {f['init_ms']:.1f} ms, first inference {f['first_inference_ms']:.2f} ms",
            f"{'stage (ms)':<26}{'mean':>9}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}"]
    stages = [("front end", f["front_end_ms"]), ("interpreter", f["interpreter_ms"]),
              ("whole window", f["window_ms"])]
    if "recording_window_ms" in f:
        stages.append((f"window in a recording ({f['recording_window_ms']['windows']})",
                       f["recording_window_ms"]))
    if "float_baseline" in f:
        stages += [(f"float {k}", v) for k, v in f["float_baseline"].items()
                   if k.endswith("_ms")]
    for name, s in stages:
        rows.append(f"{name:<26}" + "".join(f"{s[k]:>9.3f}" for k in
                                            ("mean", "p50", "p95", "p99", "max")))
    for call, ratio in f.get("speedup_vs_float", {}).items():
        rows.append(f"whole window is {ratio:5.1f}x faster than the float reference front end "
                    f"+ float Keras model ({KERAS_CALL_NAMES[call]})")
    rows.append(f"peak RSS {f['peak_rss_mb']:.1f} MB")
    return "\n".join(rows)
