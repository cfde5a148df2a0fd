"""Run an int8 model on TFLite Micro and on LiteRT, compare them, measure the arena.

The microcontroller runs TFLite Micro; the Raspberry Pi runs LiteRT. The claim that the
device behaves like the host rests on comparing the two on the same int8 inputs:
LiteRT's reference kernels (``BUILTIN_REF``) must equal TFLite Micro bit for bit on
convolutional models. Its optimised built-in kernels (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``)
are NOT bit-exact here: their FULLY_CONNECTED differed by 1 LSB from both the reference
kernel and TFLite Micro on 1 of 200 CNN windows (every earlier layer identical), and the
default XNNPACK delegate differs more often. TFLite Micro's integer LSTM rounds differently
(see ../shared/docs/TOOLCHAIN_FACTS.md): measured per tensor on real windows, the LSTM
output and the logits differ by at most 1 LSB, and the final softmax can turn a 1-LSB
logit difference into 2 LSB of probability; the decision is what must agree.

Recurrent models keep their LSTM state in variable tensors that persist between
``invoke`` calls in both interpreters, so every window starts from a reset: without it
the score of a window depends on the windows before it (measured: the CRNN's output
moved by 1 LSB on the second identical input).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge.errors import ModelError
from edge.tflite_file import parse_tflite

from ._tflm_child import EXIT_NO_FIT

RUN_ARENA_BYTES = 256 * 1024
"""Arena for host-side runs: far above any model here, so the run cannot die of it."""

ARENA_STEP = 16
"""TFLite Micro aligns arena allocations to 16 bytes: a finer search means nothing."""

PROBE_TIMEOUT_S = 120
_REPO_ROOT = Path(__file__).resolve().parent.parent


def _check_inputs(model: bytes, inputs: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    shape = parse_tflite(model).input_tensors[0].shape
    inputs = np.asarray(inputs)
    if inputs.dtype != np.int8 or inputs.shape[1:] != tuple(shape[1:]):
        raise ModelError(f"inputs are {inputs.dtype} {inputs.shape[1:]}, the model takes int8 "
                         f"{tuple(shape[1:])} windows; quantise them with the model's input scale")
    return inputs, tuple(shape)


def quantise_windows(model: bytes, windows: np.ndarray) -> np.ndarray:
    """Float feature windows -> the model's int8 input (its scale and zero point)."""
    t = parse_tflite(model).input_tensors[0]
    q = np.round(np.asarray(windows, dtype=np.float64) / t.scale[0]) + t.zero_point[0]
    return np.clip(q, -128, 127).astype(np.int8)


def dequantise_outputs(model: bytes, outputs: np.ndarray) -> np.ndarray:
    """int8 model outputs -> float scores (probabilities for a softmax model)."""
    t = parse_tflite(model).output_tensors[0]
    return (outputs.astype(np.float64) - t.zero_point[0]) * t.scale[0]


def run_tflm(model: bytes, inputs: np.ndarray, arena_bytes: int = RUN_ARENA_BYTES) -> np.ndarray:
    """int8 outputs of TFLite Micro, one row per input window, state reset per window."""
    from tflite_micro.python.tflite_micro import runtime

    inputs, shape = _check_inputs(model, inputs)
    interp = runtime.Interpreter.from_bytes(model, arena_size=arena_bytes)
    rows = []
    for window in inputs:
        interp.reset()
        interp.set_input(window.reshape(shape), 0)
        interp.invoke()
        rows.append(interp.get_output(0).reshape(-1).copy())
    return np.stack(rows)


LITERT_KERNELS = ("reference", "builtin")
"""LiteRT kernel sets: ``reference`` (BUILTIN_REF) is the one TFLite Micro matches bit for
bit; ``builtin`` (BUILTIN_WITHOUT_DEFAULT_DELEGATES, optimised, no XNNPACK) differs from it
by 1 LSB in FULLY_CONNECTED on about 1 window in 200 (measured on the CNN)."""


def run_litert(model: bytes, inputs: np.ndarray, kernels: str = "reference") -> np.ndarray:
    """int8 outputs of LiteRT without XNNPACK, one row per window, state reset per window."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = {"reference": OpResolverType.BUILTIN_REF,
                "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}[kernels]
    inputs, shape = _check_inputs(model, inputs)
    interp = Interpreter(model_content=model, experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    out = interp.get_output_details()[0]["index"]
    rows = []
    for window in inputs:
        interp.reset_all_variables()
        interp.set_tensor(inp, window.reshape(shape))
        interp.invoke()
        rows.append(interp.get_tensor(out).reshape(-1).copy())
    return np.stack(rows)


@dataclass(frozen=True)
class Parity:
    """How two interpreters' int8 outputs agree, window by window."""

    windows: int
    identical: int
    max_lsb: int
    same_argmax: int

    @property
    def identical_share(self) -> float:
        return self.identical / self.windows if self.windows else 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "identical_share": self.identical_share}


def compare(a: np.ndarray, b: np.ndarray) -> Parity:
    """Window-level agreement of two (windows, classes) int8 output arrays."""
    if a.shape != b.shape:
        raise ValueError(f"output shapes differ: {a.shape} vs {b.shape}")
    diff = np.abs(a.astype(np.int32) - b.astype(np.int32))
    return Parity(len(a), int(np.sum(diff.max(axis=1) == 0)), int(diff.max(initial=0)),
                  int(np.sum(a.argmax(axis=1) == b.argmax(axis=1))))


def arena_fits(model_path: Path, arena_bytes: int) -> bool:
    """Does ``model_path`` allocate and run in ``arena_bytes``? (A child process decides.)"""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT),
                                                      env.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run([sys.executable, "-m", "convert._tflm_child", str(model_path),
                               str(arena_bytes)], capture_output=True, env=env,
                              timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return False
    if proc.returncode not in (0, EXIT_NO_FIT) and proc.returncode > 0:
        raise ModelError(f"{model_path}: TFLite Micro probe failed (exit {proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace').strip()[-200:]}")
    return proc.returncode == 0


def smallest_arena(model: bytes, high: int = RUN_ARENA_BYTES) -> int:
    """Smallest TFLite Micro arena (bytes, a multiple of 16) that allocates and runs.

    Bisection, each probe in its own process (a too-small arena can segfault).
    """
    with tempfile.TemporaryDirectory(prefix="heartsound-arena-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(model)
        if not arena_fits(path, high):
            raise ModelError(f"model does not run on TFLite Micro even with a {high} byte arena")
        lo, hi = 0, high // ARENA_STEP  # in steps: lo fails (or is 0), hi fits
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if arena_fits(path, mid * ARENA_STEP):
                hi = mid
            else:
                lo = mid
        return hi * ARENA_STEP
