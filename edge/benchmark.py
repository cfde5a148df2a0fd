"""Latency of the edge pipeline, reported the way TFLite's benchmark_model does.

Init (model load and interpreter allocation), the first inference, a warm-up, then
many timed runs of each stage on its own: the fixed-point front end for one analysis
window of audio, one interpreter invoke, the whole window (front end + invoke +
decision), and the cost per window of screening the whole recording. Percentiles, not
only the mean: a bedside device is judged by its slow runs.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable

import numpy as np

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
    """Time front end, interpreter and whole window of the int8 pipeline on real audio."""
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
