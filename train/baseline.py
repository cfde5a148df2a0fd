"""The float pipeline the edge runtime replaces, timed on the same analysis window.

``heartsound bench --baseline RUN_DIR`` compares the device's int8 path (fixed-point
MFCC + int8 interpreter) with what a host would run without the edge work: the float64
reference front end (:func:`edge.mfcc_reference.mfcc_reference`), the same per-window
normalisation in float, and the run's float Keras model. Same audio, same window, same
timing rules (:func:`edge.benchmark.timings_ms`), so the ratio is a like-for-like speed-up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.benchmark import timings_ms, window_audio
from edge.errors import ModelError, UsageError
from edge.mfcc import SD_FLOOR, STATS_MAX_FRAMES
from edge.mfcc_reference import mfcc_reference
from edge.spec import RECORDING_NORMALISATIONS, FeatureSpec

MODEL_FILE = "model.keras"
SPEC_FILE = "spec.json"
DEFAULT_RUN = "runs/default"
"""The run folder `invoke pipeline` trains (tasks.RUN_DIR) and the packaged model comes from."""


def float_windows(features: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(n_windows, frames_per_window, n_ceps) float64: :func:`edge.mfcc.windows` without
    the integer steps (the mean is exact, no floor division, no int16 saturation)."""
    size, hop = spec.frames_per_window, spec.window_hop_frames
    if features.shape[0] < size:
        return np.zeros((0, size, spec.n_ceps))
    n_win = 1 + (features.shape[0] - size) // hop
    view = np.lib.stride_tricks.sliding_window_view(features, size, axis=0)
    wins = view[: n_win * hop : hop].transpose(0, 2, 1).astype(np.float64)
    if spec.normalise in RECORDING_NORMALISATIONS:
        return _by_recording(features.astype(np.float64), wins, spec)
    if spec.normalise != "none":
        cols = 1 if spec.normalise == "c0" else spec.n_ceps
        wins[:, :, :cols] -= wins[:, :, :cols].mean(axis=1, keepdims=True)
    return wins


def _by_recording(features: np.ndarray, wins: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The running statistics of edge.mfcc.normalise_by_recording, in float."""
    ends = np.minimum(spec.frames_per_window + spec.window_hop_frames * np.arange(len(wins)),
                      STATS_MAX_FRAMES)
    for j, end in enumerate(ends):
        heard = features[:end]
        wins[j] -= heard.mean(axis=0)
        if spec.normalise == "rec_mvn":
            wins[j] *= (1 << spec.out_frac_bits) / np.maximum(heard.std(axis=0), SD_FLOOR)
    return wins


def load_float_model(run_dir: Path):
    """The run's float Keras model (tf-keras, else Keras 3), uncompiled."""
    path = run_dir / MODEL_FILE
    try:
        from train.tensorflow_quiet import import_tensorflow

        import_tensorflow()
        import tf_keras

        return tf_keras.models.load_model(path, compile=False)
    except (ValueError, TypeError, OSError):
        import keras

        try:
            return keras.saving.load_model(path, compile=False)
        except (ValueError, TypeError, OSError) as exc:
            raise ModelError(f"{path}: not a loadable Keras model ({type(exc).__name__}); "
                             "train the run again") from None


def check_run(run_dir: Path, spec: FeatureSpec) -> FeatureSpec:
    """The run's spec, after checking it is a training run of the benchmarked model's front
    end (one-line errors)."""
    if not (run_dir / MODEL_FILE).is_file() or not (run_dir / SPEC_FILE).is_file():
        raise UsageError(f"{run_dir}: not a training run folder (no {MODEL_FILE} or "
                         f"{SPEC_FILE}); `invoke pipeline` writes {DEFAULT_RUN}, "
                         "`heartsound train --out RUN_DIR` any other")
    run_spec = FeatureSpec.from_json((run_dir / SPEC_FILE).read_text())
    if run_spec != spec:
        raise ModelError(f"{run_dir}: trained on another front end than the benchmarked model; "
                         "pass the run the model was converted from")
    return run_spec


KERAS_CALLS = ("predict", "eager", "graph")
"""How a host runs one window through the float Keras model, from the stock API to the
fastest route: ``model.predict`` (what Keras documents for inference), an eager
``model(x)`` call, and a traced ``tf.function`` with a fixed input signature."""


def _keras_calls(model, inputs: np.ndarray) -> dict:
    from train.tensorflow_quiet import import_tensorflow

    tf = import_tensorflow()

    graph = tf.function(lambda x: model(x, training=False),
                        input_signature=[tf.TensorSpec(inputs.shape, tf.float32)])
    graph(inputs)  # trace once, outside the timings
    return {
        "predict": lambda x: model.predict(x, batch_size=len(x), verbose=0),
        "eager": lambda x: model(x, training=False).numpy(),
        "graph": lambda x: graph(x).numpy(),
    }


def bench_float(run_dir: str | Path, pcm: np.ndarray, spec: FeatureSpec, runs: int,
                warmup: int) -> dict:
    """Timings (ms) of the float pipeline of ``run_dir``: the float64 reference front end,
    then the float Keras model called each way of :data:`KERAS_CALLS`.

    All three are reported because they differ by an order of magnitude and each is a
    fair answer to "what would the host run": ``predict`` is Keras's inference API, the
    traced graph is the best a TensorFlow expert gets; a speed-up is only meaningful with
    the route named next to it.
    """
    run_dir = Path(run_dir)
    spec = check_run(run_dir, spec)
    model = load_float_model(run_dir)
    audio = window_audio(pcm, spec)

    def front_end() -> np.ndarray:
        return float_windows(mfcc_reference(audio, spec), spec).astype(np.float32)

    inputs = front_end()
    figures = {"front_end_ms": timings_ms(front_end, runs, warmup)}
    for name, call in _keras_calls(model, inputs).items():
        figures[f"model_{name}_ms"] = timings_ms(lambda c=call: c(inputs), runs, warmup)
        figures[f"window_{name}_ms"] = timings_ms(lambda c=call: c(front_end()), runs, warmup)
    return figures
