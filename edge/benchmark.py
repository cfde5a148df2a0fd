"""Latency of the edge pipeline, reported the way TFLite's benchmark_model does.

Init (model load and interpreter allocation), the first inference, a warm-up, then
many timed runs of each stage on its own: the fixed-point front end for one analysis
window of audio, one interpreter invoke, the whole window (front end + invoke +
decision), and the cost per window of screening the whole recording. Percentiles, not
only the mean: a bedside device is judged by its slow runs.

Fair baselines, in the same process on the same window (:func:`bench_alternatives`):
what a Pi would run without the int8 work is the float32 companion of the model
(``X.float32.tflite``, written by `heartsound convert`) on the same LiteRT with its
default kernels; beside it the int8 model on LiteRT's optimised kernels, which are faster
than the reference kernels screening uses but not bit-exact with the microcontroller
(how often they differ is read from the model's verification report and counted on the
benchmark recording). Ratios are of medians: on a shared machine the mean follows
whatever else runs.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge import decision
from edge.interpreter import Classifier, load_interpreter
from edge.mfcc_reference import mfcc_reference
from edge.model_meta import float_companion_path, read_float_companion

PERCENTILES = (50, 95, 99)
RECORDING_MIN_RUNS = 5


def timings_ms(fn: Callable[[], object], runs: int, warmup: int) -> dict[str, float]:
    """Mean, percentiles and max of ``runs`` calls after ``warmup`` untimed ones, in ms."""
    for _ in range(warmup):
        fn()
    samples = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        samples[i] = (time.perf_counter() - t0) * 1000.0
    stats = {"mean": float(samples.mean())}
    stats.update({f"p{p}": float(np.percentile(samples, p)) for p in PERCENTILES})
    stats["max"] = float(samples.max())
    return stats


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def window_audio(pcm: np.ndarray, spec) -> np.ndarray:
    """The first analysis window's samples: what one model input is computed from."""
    if len(pcm) < spec.window_samples:
        raise ValueError("benchmark recording is shorter than one analysis window")
    return pcm[: spec.window_samples]


def bench_edge(screener, pcm: np.ndarray, runs: int = 200, warmup: int = 10) -> dict:
    """Time front end, interpreter and whole window of the int8 pipeline on real audio
    (the float64 reference front end beside it, for scale: it is not bit-exact)."""
    spec = screener.spec
    audio = window_audio(pcm, spec)
    clf = screener.classifier

    def front_end():
        return screener.feature_windows(audio)

    model_input = clf.quantise(front_end())[0]
    t0 = time.perf_counter()
    clf.invoke(model_input)
    first_ms = (time.perf_counter() - t0) * 1000.0

    def whole():
        return screener.classifier.predict(front_end()).probabilities

    return {
        "first_inference_ms": first_ms,
        "front_end_ms": timings_ms(front_end, runs, warmup),
        "front_end_float64_ms": timings_ms(lambda: mfcc_reference(audio, spec), runs, warmup),
        "interpreter_ms": timings_ms(lambda: clf.invoke(model_input), runs, warmup),
        "window_ms": timings_ms(whole, runs, warmup),
        "recording_window_ms": recording_window_ms(screener, pcm, runs, warmup),
    }


def recording_window_ms(screener, pcm: np.ndarray, runs: int, warmup: int) -> dict:
    """Cost per window when a whole recording is screened, every figure divided by its
    window count. Why: windows overlap (3 s long, 1 s apart), so a recording or a live
    stream computes each frame once, about a third of a window's frames per window; the
    "whole window" figure recomputes all of them and is the cold, worst case."""
    clf = screener.classifier
    n_windows = len(screener.feature_windows(pcm))

    def recording():
        return clf.predict(screener.feature_windows(pcm)).probabilities

    whole = timings_ms(recording, max(runs // n_windows, RECORDING_MIN_RUNS), warmup)
    return {k: v / n_windows for k, v in whole.items()} | {"windows": n_windows}


ROUTES = {
    "int8_reference": "int8, LiteRT reference kernels: bit-exact with TFLite Micro "
                      "(the microcontroller); what `heartsound screen` runs",
    "int8_optimised": "int8, LiteRT optimised kernels (built-in, no delegate): faster, "
                      "not bit-exact with the microcontroller",
    "float32": "float32 .tflite of the same model, LiteRT default kernels (XNNPACK): "
               "what a Pi runs without the int8 path",
}


class FloatModel:
    """The float32 companion of an int8 model, run window by window like
    :class:`edge.interpreter.Classifier` (batch 1), on the same interpreter package."""

    def __init__(self, path: Path, int8: Classifier) -> None:
        self.document = read_float_companion(path, int8.sha256)
        self.interpreter, self.backend = load_interpreter(path, backend=int8.backend,
                                                          kernels="default")
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self._int8 = int8

    def inputs(self, windows: np.ndarray) -> np.ndarray:
        """float32 model inputs: the features as training fed them (on the int8 grid for
        runs trained on it, else the int16 values as floats)."""
        if self.document.get("float_input") == "int8_grid":
            x = self._int8.input_quant.dequantise(self._int8.quantise(windows))
        else:
            x = np.asarray(windows, dtype=np.float32)
        return x.reshape((-1, *self._int8.input_shape[1:]))

    def invoke(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.reset_all_variables()
        self.interpreter.set_tensor(self._in["index"], x.reshape(self._in["shape"]))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out["index"]).reshape(-1).copy()

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        return np.stack([self.invoke(x) for x in self.inputs(windows)])


def bench_alternatives(screener, pcm: np.ndarray, model_path: Path, runs: int,
                       warmup: int) -> dict:
    """The int8 model on LiteRT's optimised kernels and its float32 companion, timed on
    the same window as :func:`bench_edge`, and how the two int8 kernel sets differ."""
    ref = screener.classifier
    audio = window_audio(pcm, screener.spec)
    optimised = Classifier(model_path, backend=ref.backend, kernels="optimised")
    routes = {"int8_optimised": (optimised.quantise, optimised.invoke,
                                 lambda w: optimised.predict(w).probabilities)}
    companion = float_companion_path(model_path)
    out: dict = {"float32_model": str(companion)}
    if companion.is_file():
        f32 = FloatModel(companion, ref)
        routes["float32"] = (f32.inputs, f32.invoke, f32.probabilities)
    else:
        out["float32_model"] = None
        out["float32_missing"] = (f"no {companion.name} beside the model; `heartsound convert` "
                                  "writes it")
    for name, (inputs, invoke, probabilities) in routes.items():
        x = inputs(screener.feature_windows(audio))[0]
        out[name] = {
            "interpreter_ms": timings_ms(lambda i=invoke, x=x: i(x), runs, warmup),
            "window_ms": timings_ms(lambda p=probabilities: p(screener.feature_windows(audio)),
                                    runs, warmup)}
    out["kernel_agreement"] = {"recording": recording_agreement(screener, pcm, optimised),
                               "verification": verified_agreement(model_path, ref.sha256)}
    return out


def speedups(figures: dict) -> dict[str, dict[str, float]]:
    """Median float32 time / median int8 time, per int8 route, for the interpreter alone
    and for the whole window (both routes share the fixed-point front end)."""
    alt = figures["alternatives"]
    if "float32" not in alt:
        return {}
    int8 = {"int8_reference": {"interpreter_ms": figures["interpreter_ms"],
                               "window_ms": figures["window_ms"]},
            "int8_optimised": alt["int8_optimised"]}
    return {route: {stage: alt["float32"][stage]["p50"] / s[stage]["p50"]
                    for stage in ("interpreter_ms", "window_ms")}
            for route, s in int8.items()}


def recording_agreement(screener, pcm: np.ndarray, optimised: Classifier) -> dict:
    """Windows of the benchmark recording whose int8 outputs differ between the reference
    and the optimised kernels, and whether the recording's decision differs."""
    windows = screener.feature_windows(pcm)
    ref, opt = screener.classifier.predict(windows), optimised.predict(windows)
    diff = np.abs(ref.raw.astype(np.int16) - opt.raw.astype(np.int16)).max(axis=1)
    decisions = [decision.decide(float(decision.abnormal_probability(
        decision.recording_probabilities(p.probabilities), screener.normal_idx)),
        screener.meta.threshold) for p in (ref, opt)]
    return {"windows": len(windows), "bits_differ": int(np.count_nonzero(diff)),
            "max_lsb": int(diff.max(initial=0)), "decision_differs": decisions[0] != decisions[1]}


def verified_agreement(model_path: Path, sha256: str) -> dict | None:
    """Optimised kernels vs TFLite Micro (and so vs the reference kernels, when those
    match TFLite Micro on every window) on the run's validation and test windows, from the
    report `heartsound verify` wrote beside the model; None if there is none for it."""
    path = Path(model_path).with_suffix(".verify.json")
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("model_sha256") != sha256:
        return None
    try:
        opt = report["parity"]["litert_optimised_vs_tflm"]
        ref = report["parity"]["litert_device_vs_tflm"]
        dec = report["decisions"]["int8_optimised_vs_tflm"]
        return {"report": path.name, "windows": opt["windows"],
                "bits_differ": opt["windows"] - opt["identical"], "max_lsb": opt["max_lsb"],
                "argmax_differs": opt["windows"] - opt["same_argmax"],
                "recordings": dec["recordings"], "decisions_differ": dec["differ"],
                "reference_bits_differ": ref["windows"] - ref["identical"]}
    except (KeyError, TypeError):
        return None  # an older report layout: nothing to quote, the timings stand


def fair_lines(f: dict) -> list[str]:
    """Ratios against the float32 .tflite, and how the two int8 kernel sets differ: the
    lines `heartsound bench` prints here and `deploy --bench` prints for a device."""
    alt = f["alternatives"]
    rows = [f"front end: fixed point (bit-exact with the C firmware) "
            f"{f['front_end_ms']['p50'] / f['front_end_float64_ms']['p50']:.1f}x the time of "
            "the float64 numpy MFCC (medians)"]
    if not f["speedup_vs_float32"]:
        rows.append(f"no float32 baseline: {alt['float32_missing']}")
    for route, r in f["speedup_vs_float32"].items():
        rows.append(f"{ROUTES[route]}:")
        rows.append(f"    {r['interpreter_ms']:.2f}x the speed of the float32 .tflite (interpreter "
                    f"alone), {r['window_ms']:.2f}x (whole window); same process, medians")
    rec, ver = alt["kernel_agreement"]["recording"], alt["kernel_agreement"]["verification"]
    rows.append(f"optimised vs reference kernels on this recording: {rec['bits_differ']} of "
                f"{rec['windows']} windows differ in output bits (max {rec['max_lsb']} LSB), "
                f"decision {'differs' if rec['decision_differs'] else 'the same'}")
    if ver is None:
        rows.append("no verification report for this model beside it (`heartsound verify "
                    "MODEL --run RUN` writes MODEL.verify.json)")
    else:
        rows.append(f"optimised kernels vs TFLite Micro on the {ver['windows']:,} verification "
                    f"windows ({ver['report']}): {ver['bits_differ']:,} differ in output bits "
                    f"(max {ver['max_lsb']} LSB), {ver['argmax_differs']} in the window's "
                    f"class, {ver['decisions_differ']} of {ver['recordings']:,} recording "
                    f"decisions; reference kernels: {ver['reference_bits_differ']} differ")
    return rows
