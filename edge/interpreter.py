"""One int8 TFLite interpreter, the same bits on every device.

Why this module exists: a Raspberry Pi image may carry ``ai-edge-litert`` (current),
``tflite-runtime`` (older images, numpy<2) or, on a workstation, only TensorFlow. All three
run the same kernels *if* the default XNNPACK delegate is kept out: XNNPACK rounds int8
convolutions differently in the last bit (see ``../shared/docs/TOOLCHAIN_FACTS.md``), and a
screening that changes with the device is not acceptable. The built-in *optimised*
kernels without a delegate are not enough either: measured on the shipped CNN, they differ
from TFLite Micro (the microcontroller) by 1-4 LSB on some windows, and a per-channel 1x1
convolution differed on every window, which flipped recordings near the threshold. Only
the reference kernels give TFLite Micro's bits. So every interpreter here is built with
``OpResolverType.BUILTIN_REF`` (about 0.8 ms per window here instead of 0.07 ms with
the optimised kernels, nothing next to a one-second window hop; `heartsound bench` times
both), and the caller is told which package was used.

Feature -> int8 input, in integer arithmetic (what a microcontroller does too)::

    x      = v * 2^-f                 float value the model was trained on for a cepstrum v;
                                      f = 0 for heartsound models: train/trainer.py feeds
                                      the int16 Q8.7 values as they are (the model
                                      standardises them itself), so x = v
    q      = round(x / s) + z         TFLite's input quantisation (scale s, zero point z)
           = round(v * M * 2^-n) + z  M = round(2^n / (s * 2^f)), a 31-bit multiplier

    q = ((v * M + 2^(n-1)) >> n) + z, saturated to [-128, 127]

Rounding: half up (toward +infinity) on the exact product ``v * M``. TFLite's float
QUANTIZE rounds half away from zero; the two differ only when ``v / (s * 2^f)`` lies
within ``|v| * 2^-31`` of a half-integer below zero, and the 31-bit M itself moves the
quotient by at most ``|v| * 2^-31`` (far below one output step for |v| < 2^15).
``tests/test_interpreter.py`` measures the agreement with the float formula on real
features.

The module imports no interpreter at the top: ``heartsound --help`` stays instant.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import ModelError

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "KERNELS",
    "Classifier",
    "Prediction",
    "Quantisation",
    "load_interpreter",
    "model_bytes",
]

#: Interpreter packages in order of preference (import name, pip name).
BACKENDS: tuple[tuple[str, str], ...] = (
    ("ai_edge_litert", "ai-edge-litert"),
    ("tflite_runtime", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow-cpu"),
)
#: Set to one backend's import name to force it (tests run both device interpreters).
BACKEND_ENV = "HEARTSOUND_INTERPRETER"
RESOLVER = "BUILTIN_REF"
#: Kernel sets by name -> OpResolverType. ``reference`` is what screening runs (TFLite
#: Micro's bits); ``optimised`` (LiteRT's built-in kernels, no delegate) and ``default``
#: (what a plain Interpreter does: XNNPACK for float models) only for `heartsound bench`.
KERNELS = {"reference": RESOLVER, "optimised": "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
           "default": "AUTO"}
INT8_MIN, INT8_MAX = -128, 127
MULT_BITS = 31  # the input multiplier M lies in [2^30, 2^31): 31 significant bits
INSTALL_HINT = "install one with `pip install ai-edge-litert` (or tflite-runtime on older Pis)"


# ---------------------------------------------------------------------------- loading


def model_bytes(model: str | os.PathLike | bytes) -> bytes:
    """The model file's bytes, or the bytes given; ModelError names a missing file."""
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model)
    path = Path(model)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: no such model file; pass the .tflite written by "
                         "`heartsound convert`") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: is a directory; pass the .tflite file itself") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror}); "
                         "check the path and its permissions") from None
    if not data:
        raise ModelError(f"{path}: model file is empty (0 bytes); convert or copy it again")
    return data


def _backend_module(name: str):
    """(Interpreter class, OpResolverType enum) of one backend, or None if not installed."""
    try:
        if name == "tensorflow.lite":
            # Last resort (workstations): TensorFlow is far too heavy for a Pi.
            tf = importlib.import_module("tensorflow")
            return tf.lite.Interpreter, tf.lite.experimental.OpResolverType
        module = importlib.import_module(f"{name}.interpreter")
    except ImportError:
        return None
    return module.Interpreter, module.OpResolverType


def _choose_backend(backend: str | None):
    wanted = backend or os.environ.get(BACKEND_ENV) or None
    names = [b for b, _ in BACKENDS]
    if wanted is not None and wanted not in names:
        raise ModelError(f"interpreter backend {wanted!r} is unknown; choose one of "
                         f"{', '.join(names)} (or unset ${BACKEND_ENV})")
    for name in [wanted] if wanted else names:
        found = _backend_module(name)
        if found is not None:
            return name, found
    if wanted:
        pip_name = dict(BACKENDS)[wanted]
        raise ModelError(f"interpreter backend {wanted} is not installed; "
                         f"`pip install {pip_name}` or unset ${BACKEND_ENV}")
    raise ModelError(f"no TFLite interpreter found (tried {', '.join(names)}); {INSTALL_HINT}")


def load_interpreter(model: str | os.PathLike | bytes, *, backend: str | None = None,
                     num_threads: int = 1, kernels: str = "reference") -> tuple[object, str]:
    """(allocated interpreter, backend import name) for a .tflite path or its bytes.

    The reference kernels (``kernels``: see :data:`KERNELS`), so the int8 results are the
    same under every backend and on the microcontroller. ``backend`` (or
    ``$HEARTSOUND_INTERPRETER``) forces one; otherwise ai_edge_litert, then
    tflite_runtime, then tensorflow.lite. One thread by
    default: the model is tiny and threads only add jitter on a Pi.
    """
    data = model_bytes(model)
    name, (interpreter_cls, resolver_enum) = _choose_backend(backend)
    what = model if not isinstance(model, bytes | bytearray | memoryview) else "model bytes"
    try:
        interpreter = interpreter_cls(
            model_content=data,
            num_threads=num_threads,
            experimental_op_resolver_type=getattr(resolver_enum, KERNELS[kernels]),
        )
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{what}: not a usable TFLite model ({first}); convert it again "
                         "with `heartsound convert`") from None
    return interpreter, name


# --------------------------------------------------------------------------- quantisation


@dataclass(frozen=True)
class Quantisation:
    """Affine int8 quantisation of one tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    @classmethod
    def of(cls, detail: dict, what: str) -> Quantisation:
        """From an interpreter's tensor details; ModelError if it is not per-tensor int8."""
        params = detail.get("quantization_parameters", {})
        scales = np.asarray(params.get("scales", []))
        if detail["dtype"] != np.int8 or scales.size != 1 or not scales[0] > 0:
            raise ModelError(f"model {what} tensor is {np.dtype(detail['dtype']).name} with "
                             f"{scales.size} scale(s), expected per-tensor int8; convert with "
                             "full-integer quantisation (`heartsound convert`)")
        return cls(float(scales[0]), int(np.asarray(params["zero_points"])[0]))

    def dequantise(self, q: np.ndarray) -> np.ndarray:
        """float32 values of int8 codes."""
        return ((q.astype(np.int32) - self.zero_point) * np.float32(self.scale)).astype(
            np.float32)


def input_multiplier(scale: float, frac_bits: int) -> tuple[int, int]:
    """(M, n) with M * 2^-n ~= 1 / (scale * 2^frac_bits) and 2^30 <= M < 2^31.

    Same normalisation as TFLite's QuantizeMultiplier: 31 significant bits whatever the
    scale, so the relative error of the multiplier is below 2^-30.
    """
    ratio = 1.0 / (scale * 2.0**frac_bits)
    mantissa, exponent = np.frexp(ratio)  # ratio = mantissa * 2^exponent, 0.5 <= m < 1
    shift = MULT_BITS - int(exponent)
    mult = round(float(mantissa) * 2**MULT_BITS)
    if mult == 1 << MULT_BITS:  # rounding reached 1.0: renormalise
        mult, shift = mult >> 1, shift - 1
    if shift < 1:
        raise ModelError(f"model input scale {scale:g} is too small for features with "
                         f"{frac_bits} fraction bits; the model was quantised for other data")
    return mult, shift


def quantise_features(v: np.ndarray, quant: Quantisation, frac_bits: int) -> np.ndarray:
    """int8 model input from int16 features in Q(15-frac_bits).frac_bits (integer only)."""
    mult, shift = input_multiplier(quant.scale, frac_bits)
    acc = v.astype(np.int64) * mult                       # Q(frac_bits) * M: |.| < 2^46
    q = (acc + (1 << (shift - 1))) >> shift               # int: round half up
    q = q + quant.zero_point                              # int8 code before saturation
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)  # int8


def quantise_float(x: np.ndarray, quant: Quantisation) -> np.ndarray:
    """int8 model input from float features, as TFLite's QUANTIZE op (half away from 0)."""
    y = np.asarray(x, dtype=np.float64) / quant.scale
    q = np.sign(y) * np.floor(np.abs(y) + 0.5) + quant.zero_point
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


# ----------------------------------------------------------------------------- classifier


@dataclass(frozen=True)
class Prediction:
    """Model outputs for n windows: int8 codes (n, classes) and their float values."""

    raw: np.ndarray
    probabilities: np.ndarray


class Classifier:
    """An int8 model with batch-1 input, run window by window.

    Why batch 1 and one invoke per window: the device (Pi stream, microcontroller) sees
    one window at a time, and the same invoke shape keeps host and device results equal.
    ``feature_frac_bits`` says how the model's float input relates to the int16 features
    (value = v * 2^-frac_bits): 0, the default, for models trained by ``train/`` (they
    take the int16 values as they are); 7 for a model trained on Q8.7 read as log2 units.
    The model's own input scale and zero point then define the int8 code.
    """

    def __init__(self, model: str | os.PathLike | bytes, *, feature_frac_bits: int = 0,
                 backend: str | None = None, kernels: str = "reference") -> None:
        data = model_bytes(model)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.interpreter, self.backend = load_interpreter(data, backend=backend,
                                                          kernels=kernels)
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"model has {len(inputs)} inputs and {len(outputs)} outputs, "
                             "expected one of each; convert the screening model again")
        self._in, self._out = inputs[0], outputs[0]
        self.input_quant = Quantisation.of(self._in, "input")
        self.output_quant = Quantisation.of(self._out, "output")
        shape = tuple(int(d) for d in self._in["shape"])
        if not shape or shape[0] != 1:
            raise ModelError(f"model input shape {shape} does not have batch 1; convert it "
                             "with a fixed batch of 1")
        self.input_shape = shape
        self.window_size = int(np.prod(shape[1:]))
        self.n_outputs = int(np.prod(self._out["shape"][1:]))
        self.feature_frac_bits = feature_frac_bits

    def quantise(self, windows: np.ndarray) -> np.ndarray:
        """(n, *input_shape[1:]) int8 inputs from int16 feature windows or float ones."""
        w = np.asarray(windows)
        if w.ndim == 0 or w.size % self.window_size or w.size == 0:
            raise ModelError(f"feature windows of shape {w.shape} do not fit the model input "
                             f"{self.input_shape}: the model was built for another front end")
        if np.issubdtype(w.dtype, np.integer):
            q = quantise_features(w, self.input_quant, self.feature_frac_bits)
        else:
            q = quantise_float(w, self.input_quant)
        return q.reshape((-1, *self.input_shape[1:]))

    def invoke(self, window_int8: np.ndarray) -> np.ndarray:
        """int8 outputs (classes,) of one already quantised window.

        Recurrent models keep their LSTM state in variable tensors between invokes; every
        window is an independent input, so the state is cleared first (without it the
        same window scored differently depending on the one before).
        """
        self.interpreter.reset_all_variables()
        self.interpreter.set_tensor(self._in["index"], window_int8.reshape(self.input_shape))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out["index"]).reshape(-1).copy()

    def predict(self, windows: np.ndarray) -> Prediction:
        """Run every window (batch 1 each): int8 outputs and dequantised probabilities."""
        inputs = self.quantise(windows)
        raw = np.empty((inputs.shape[0], self.n_outputs), dtype=np.int8)
        for i, window in enumerate(inputs):
            raw[i] = self.invoke(window)
        return Prediction(raw, self.output_quant.dequantise(raw))
