"""One model, four executions: float Keras, and int8 on LiteRT, TFLite Micro, tflite-runtime.

Every int8 execution takes the SAME int8 input windows (quantised once, by the device's
own integer path, :meth:`edge.interpreter.Classifier.quantise`), so a difference in the
outputs is a difference between interpreters, never between input roundings.

TFLite Micro runs in a child process: its Python wheel can kill the process with a
segmentation fault (seen with LSTM arenas), and a verification must end with a one-line
reason, not a dead interpreter. tflite-runtime 2.14 (the interpreter of older Raspberry Pi
images) needs numpy < 2, so it lives in its own environment (``.venv-tflrt``, made by
scripts/setup.sh) and is run there on the same inputs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.errors import ModelError

if TYPE_CHECKING:
    from convert.run_folder import RunFolder
    from edge.interpreter import Classifier

REPO_ROOT = Path(__file__).resolve().parent.parent
TFLITE_RUNTIME_PYTHON_ENV = "HEARTSOUND_TFLITE_RUNTIME_PYTHON"
DEFAULT_TFLITE_RUNTIME_PYTHON = REPO_ROOT / ".venv-tflrt" / "bin" / "python"
CHILD_TIMEOUT_S = 1800
FLOAT_BATCH = 512
"""Batch of the float predictions: the one training's evaluation used (train/trainer.py)."""

_TFLM_CODE = """
import sys, numpy as np
from convert.tflm import run_tflm
model = open(sys.argv[1], 'rb').read()
np.save(sys.argv[3], run_tflm(model, np.load(sys.argv[2])))
"""

_TFLITE_RUNTIME_CODE = """
import sys, numpy as np
from importlib.metadata import version
from edge.interpreter import Classifier
c = Classifier(sys.argv[1], backend='tflite_runtime')
inputs = np.load(sys.argv[2])
np.save(sys.argv[3], np.stack([c.invoke(w) for w in inputs]))
print(c.backend, version('tflite-runtime'), np.__version__)
"""


def run_float(model_path: Path, windows: np.ndarray) -> np.ndarray:
    """Class probabilities of the float Keras model on int16 windows fed as float."""
    from convert.quantize import _framework_of

    framework = _framework_of(model_path)
    if framework == "tf_keras":
        from train.tensorflow_quiet import import_tensorflow

        import_tensorflow()
        import tf_keras

        model = tf_keras.models.load_model(model_path, compile=False)
    else:
        import keras

        model = keras.saving.load_model(model_path, compile=False)
    x = windows.astype(np.float32)
    return np.asarray(model.predict(x, batch_size=FLOAT_BATCH, verbose=0), dtype=np.float64)


def float_inputs(run: RunFolder, windows: np.ndarray, q: np.ndarray,
                 device: Classifier) -> np.ndarray:
    """What the float model is scored on: the features as training scored it.

    A run trained on the int8 input grid (``int8_inputs``, train.trainer.InputGrid) was
    selected and thresholded on grid-snapped features, and that grid is the converted
    model's input quantisation; scoring its float model on raw features would compare
    int8 with a model nobody measured (it moved val MAcc by 1.5 points here).
    """
    if run.metrics.get("config", {}).get("int8_inputs"):
        return device.input_quant.dequantise(q).astype(np.float32)
    return windows.astype(np.float32)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _run_child(python: str, code: str, model: Path, inputs: np.ndarray,
               what: str) -> tuple[np.ndarray, str]:
    """(outputs, child's stdout); a crash or error becomes a one-line ModelError."""
    with tempfile.TemporaryDirectory(prefix="heartsound-verify-") as tmp:
        src, dst = Path(tmp) / "inputs.npy", Path(tmp) / "outputs.npy"
        np.save(src, inputs)
        try:
            proc = subprocess.run([python, "-c", code, str(model.resolve()), str(src), str(dst)],
                                  capture_output=True, text=True, env=_child_env(),
                                  cwd=REPO_ROOT, timeout=CHILD_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise ModelError(f"{model}: {what} did not finish in {CHILD_TIMEOUT_S} s") from None
        if proc.returncode != 0 or not dst.exists():
            raise ModelError(f"{model}: {what} failed ({_exit_text(proc.returncode)}): "
                             f"{_last_line(proc.stderr)}")
        return np.load(dst), proc.stdout


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no message"


def run_tflm_isolated(model: Path, inputs: np.ndarray) -> np.ndarray:
    """int8 outputs of TFLite Micro (Python wheel) in a child process, state reset per window."""
    return _run_child(sys.executable, _TFLM_CODE, model, inputs, "TFLite Micro")[0]


def tflite_runtime_python() -> Path | None:
    """The second environment's Python (``$HEARTSOUND_TFLITE_RUNTIME_PYTHON`` or
    ``.venv-tflrt``), or None when it is not installed."""
    path = Path(os.environ.get(TFLITE_RUNTIME_PYTHON_ENV) or DEFAULT_TFLITE_RUNTIME_PYTHON)
    return path if path.exists() else None


def run_tflite_runtime(python: Path, model: Path, inputs: np.ndarray) -> tuple[np.ndarray, str]:
    """(int8 outputs, "tflite-runtime X, numpy Y") from the device's Classifier on
    tflite-runtime in the second environment (built-in kernels, no XNNPACK)."""
    out, stdout = _run_child(str(python), _TFLITE_RUNTIME_CODE, model, inputs,
                             "tflite-runtime")
    fields = (stdout.strip().splitlines() or [""])[-1].split()
    label = (f"tflite-runtime {fields[1]}, numpy {fields[2]}" if len(fields) == 3
             else "tflite-runtime")
    return out, label
