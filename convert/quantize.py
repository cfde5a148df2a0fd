"""Keras model -> full-integer int8 TFLite flatbuffer (int8 weights, activations, in and out).

The conversion runs in a child process (:mod:`convert._convert_child`): with this
TensorFlow the converter kills its process with a segmentation fault on some recurrent
layers instead of raising, and a training run must survive that and say which
architecture failed. Full integer with no SELECT_TF_OPS, because TFLite Micro has no
float fallback and no TensorFlow kernels.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import ModelError
from edge.model_meta import QUANTISED_TYPE
from edge.spec import FeatureSpec
from edge.tflite_file import parse_tflite

from ._convert_child import EXIT_USER_ERROR

CONVERT_TIMEOUT_S = 900
"""A child takes 15-25 s here (mostly importing TensorFlow; converting 1-7 s): 15 min is a hang."""

DEFAULT_REPRESENTATIVE = 1000
"""Calibration windows (a few seconds of converter time). They set the int8 ranges and
measure the logit bias the conversion corrects (convert.bias_correction); on the shipped
CNN, 300 left P(abnormal) of int8 0.0016 above float on average and flipped 4 of 407
val/test recordings, about 1000 left 0.0006 and flipped 2."""

_REPO_ROOT = Path(__file__).resolve().parent.parent


def representative_windows(windows: np.ndarray, labels: np.ndarray,
                           n: int = DEFAULT_REPRESENTATIVE, seed: int = 0) -> np.ndarray:
    """Up to ``n`` windows drawn evenly from every class present in ``labels``.

    Even per class because calibration fixes each activation's range, and a rare class
    (extrastole) left out would have its activations clipped.
    """
    windows, labels = np.asarray(windows), np.asarray(labels)
    if len(windows) == 0 or len(windows) != len(labels):
        raise ModelError(f"representative set: {len(windows)} windows for {len(labels)} labels; "
                         "pass the training windows and their labels")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = max(1, n // len(classes))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return windows[np.sort(np.concatenate(picks))]


def check_representative(rep: np.ndarray, spec: FeatureSpec | None = None) -> np.ndarray:
    """Float32 copy of ``rep`` after checking it can calibrate a model (one-line errors)."""
    rep = np.asarray(rep)
    if rep.ndim < 2 or len(rep) == 0:
        raise ModelError(f"representative set is empty (shape {rep.shape}); pass a few hundred "
                         "feature windows from the training data, all classes")
    if not np.issubdtype(rep.dtype, np.number) or not np.all(np.isfinite(rep)):
        raise ModelError("representative set holds non-finite or non-numeric values; "
                         "recompute the features")
    if spec is not None and rep.shape[1:3] != (spec.frames_per_window, spec.n_ceps):
        raise ModelError(f"representative windows are {rep.shape[1]}x{rep.shape[2]} but the "
                         f"front end makes {spec.frames_per_window}x{spec.n_ceps}: they come from "
                         "another feature spec; recompute them with this one")
    return rep.astype(np.float32)


def to_int8(model_or_path: object, representative: np.ndarray, *,
            spec: FeatureSpec | None = None, architecture: str | None = None,
            timeout_s: float = CONVERT_TIMEOUT_S) -> bytes:
    """Full-integer int8 flatbuffer of a Keras model (object or saved file), converted in a
    child process; a converter crash becomes a :class:`ModelError` naming the architecture."""
    name = architecture or ""
    return to_int8_many({name: model_or_path}, representative, spec=spec, workers=1,
                        timeout_s=timeout_s)[name]


def to_float32(model_or_path: object, representative: np.ndarray, *,
               spec: FeatureSpec | None = None, architecture: str | None = None,
               timeout_s: float = CONVERT_TIMEOUT_S) -> bytes:
    """Float32 flatbuffer of the same Keras model, no optimisation: what a Raspberry Pi
    would run without the int8 work, and so the fair speed baseline of `heartsound bench`
    (same LiteRT, same process). ``representative`` only gives the input shape."""
    name = architecture or ""
    return to_int8_many({name: model_or_path}, representative, spec=spec, workers=1,
                        timeout_s=timeout_s, precision=FLOAT32)[name]


INT8, FLOAT32 = "int8", "float32"


def to_int8_many(models: dict[str, object], representative: np.ndarray, *,
                 spec: FeatureSpec | None = None, workers: int = 2,
                 timeout_s: float = CONVERT_TIMEOUT_S,
                 precision: str = INT8) -> dict[str, bytes]:
    """:func:`to_int8` for several models (keyed by architecture name), ``workers`` child
    processes at a time: most of a conversion is the child importing TensorFlow, so two
    run in the time of one on two cores. Models are saved one by one in this process.
    ``precision=FLOAT32`` converts without quantisation (:func:`to_float32`)."""
    rep = check_representative(representative, spec)
    with tempfile.TemporaryDirectory(prefix="heartsound-convert-") as tmp:
        jobs = []
        for i, (name, model) in enumerate(models.items()):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            jobs.append(_stage(model, name, rep, folder, precision))
        with ThreadPoolExecutor(max(1, workers)) as pool:
            results = list(pool.map(lambda job: _convert_staged(job, timeout_s), jobs))
    return dict(zip(models, results, strict=True))


@dataclass(frozen=True)
class _Job:
    """One staged conversion: the files the child reads and writes."""

    label: str
    folder: Path
    model_path: Path
    framework: str
    precision: str


def _stage(model: object, name: str, rep: np.ndarray, folder: Path, precision: str) -> _Job:
    model_path, framework, label = _stage_model(model, folder, rep.shape[1:])
    np.save(folder / "representative.npy", rep)
    return _Job(name or label, folder, model_path, framework, precision)


def _convert_staged(job: _Job, timeout_s: float) -> bytes:
    out, err, log = job.folder / "model.tflite", job.folder / "error.json", job.folder / "log"
    args = [str(job.model_path), job.framework, str(job.folder / "representative.npy"),
            str(out), str(err), job.precision]
    code = _run_child(args, log, timeout_s, job.label)
    if code == EXIT_USER_ERROR and err.exists():
        raise ModelError(f"{job.label}: {json.loads(err.read_text())['message']}")
    if code != 0 or not out.exists():
        raise ModelError(_failure_message(job.label, code, log.read_text(errors="replace")))
    data = out.read_bytes()
    if job.precision == INT8:
        _check_full_int8(data, job.label)
    return data


def _stage_model(model: object, tmp: Path,
                 window_shape: tuple[int, ...]) -> tuple[Path, str, str]:
    """(path the child loads, framework, label for messages)."""
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if not path.exists():
            raise ModelError(f"{path}: model file not found; check the path")
        return path, _framework_of(path), path.stem
    module = type(model).__module__.split(".")[0]
    if module not in ("tf_keras", "keras"):
        raise ModelError(f"cannot convert a {type(model).__name__}: pass a tf-keras or Keras "
                         "model, or the path of a saved one")
    want = tuple(model.inputs[0].shape[1:])
    if want != tuple(window_shape):
        raise ModelError(f"{model.name}: representative windows are "
                         f"{'x'.join(map(str, window_shape))} but the model takes "
                         f"{'x'.join(map(str, want))}; compute them with the model's feature spec")
    path = tmp / "model.keras"
    model.save(path)
    return path, module, getattr(model, "name", "model")


def _framework_of(path: Path) -> str:
    """Which library saved ``path``: tf-keras writes keras_version 2.x, Keras 3 writes 3.x."""
    if path.is_dir():
        return "saved_model"
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as z:
                version = json.loads(z.read("metadata.json"))["keras_version"]
        elif path.suffix == ".h5":
            import h5py

            with h5py.File(path, "r") as f:
                version = str(f.attrs.get("keras_version", "2"))
        else:
            raise ModelError(f"{path}: not a Keras model (.keras, .h5 or a SavedModel folder)")
    except (zipfile.BadZipFile, KeyError, OSError, ValueError):
        raise ModelError(f"{path}: not a readable Keras model file; save it again") from None
    return "tf_keras" if str(version).startswith("2") else "keras"


def _run_child(args: list[str], log: Path, timeout_s: float, label: str) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT),
                                                      env.get("PYTHONPATH", "")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with open(log, "wb") as out:
            proc = subprocess.run([sys.executable, "-m", "convert._convert_child", *args],
                                  stdout=out, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ModelError(f"{label}: the TFLite converter did not finish in {timeout_s:.0f} s; "
                         "try a smaller model") from None
    return proc.returncode


def _failure_message(label: str, code: int, log: str) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return (f"{label}: the TFLite converter crashed ({name}) during full-int8 conversion; "
                "this architecture cannot be converted with this TensorFlow (see "
                "TOOLCHAIN_FACTS: use tf-keras LSTM, not GRU or Keras 3 recurrent layers)")
    lines = [ln.strip() for ln in log.splitlines() if "error" in ln.lower() and ln.strip()]
    detail = (lines[-1] if lines else (log.strip().splitlines() or ["no output"])[-1])[:240]
    return f"{label}: full-int8 conversion failed (exit {code}): {detail}"


def _check_full_int8(data: bytes, label: str) -> None:
    model = parse_tflite(data, label)
    for t in (*model.input_tensors, *model.output_tensors):
        if t.dtype != QUANTISED_TYPE:
            raise ModelError(f"{label}: converter left a {t.dtype} model input/output; "
                             "expected full int8")
