"""Which operators a .tflite model uses, whether TFLite Micro runs them in int8, and MACs.

The supported set is not typed from memory: :func:`derive_tflm_int8_ops` reads it from the
TFLite Micro source tree the firmware is built from (``../shared/third_party/tflite-micro``):
an op counts when ``MicroMutableOpResolver`` registers it as a builtin and its kernel
sources (the file defining ``Register_<OP>()`` plus its ``_common.cc``, header and CMSIS-NN
twin) either handle ``kTfLiteInt8`` or name no tensor type at all (type-agnostic ops such
as RESHAPE). :data:`TFLM_INT8_OPS` is that result, frozen here so the check works without
the tree; a test re-derives it from the tree and fails if they drift. The check is per
kernel file, so an op sharing a file with int8 ops (SIN in elementwise.cc) may pass it
while failing at run time: the verification also runs every model on TFLite Micro.
"""

from __future__ import annotations

import re
from collections import Counter
from math import prod
from pathlib import Path

from edge.errors import ModelError
from edge.tflite_file import OperatorInfo, Subgraph, TfliteModel, parse_tflite

TFLM_INT8_OPS = frozenset({
    "ABS", "ADD", "ADD_N", "ARG_MAX", "ARG_MIN", "AVERAGE_POOL_2D", "BATCH_MATMUL",
    "BATCH_TO_SPACE_ND", "CALL_ONCE", "CAST", "CONCATENATION", "CONV_2D", "COS", "CUMSUM",
    "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE", "DEQUANTIZE", "DIV", "ELU", "EMBEDDING_LOOKUP", "EQUAL",
    "EXPAND_DIMS", "FILL", "FULLY_CONNECTED", "GATHER", "GATHER_ND", "GREATER", "GREATER_EQUAL",
    "HARD_SWISH", "L2_NORMALIZATION", "LEAKY_RELU", "LESS", "LESS_EQUAL", "LOG", "LOGICAL_AND",
    "LOGICAL_NOT", "LOGICAL_OR", "LOGISTIC", "LOG_SOFTMAX", "MAXIMUM", "MAX_POOL_2D", "MEAN",
    "MINIMUM", "MIRROR_PAD", "MUL", "NEG", "NOT_EQUAL", "PACK", "PAD", "PADV2", "PRELU",
    "QUANTIZE", "READ_VARIABLE", "REDUCE_ALL", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6",
    "RESHAPE", "RESIZE_BILINEAR", "REVERSE_V2", "RSQRT", "SELECT_V2", "SIN", "SLICE", "SOFTMAX",
    "SPACE_TO_BATCH_ND", "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V", "SQRT", "SQUARE",
    "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SVDF", "TANH", "TRANSPOSE",
    "TRANSPOSE_CONV", "UNIDIRECTIONAL_SEQUENCE_LSTM", "UNPACK", "VAR_HANDLE", "WHILE",
    "ZEROS_LIKE",
})
"""Builtin ops TFLite Micro (revision in ../shared/third_party/README.md) runs in int8."""

_RESOLVER = "tensorflow/lite/micro/micro_mutable_op_resolver.h"
_KERNELS = "tensorflow/lite/micro/kernels"
_ADD_BUILTIN = re.compile(r"(Register_\w+)\(\)\)\s*\{\s*return\s+AddBuiltin\(\s*"
                          r"BuiltinOperator_(\w+)")
_TYPE_NAMES = re.compile(r"kTfLite(Float32|Float16|Float64|Int8|UInt8|Int16|Int32|Int64|Bool|"
                         r"Int4)\b")


def builtin_names() -> dict[int, str]:
    """Builtin operator code -> name, from the schema shipped with the tflite-micro wheel."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items()
            if k.isupper() and isinstance(v, int)}


def _op_name(op: OperatorInfo, names: dict[int, str]) -> str:
    if op.custom_code is not None:
        return f"CUSTOM:{op.custom_code}"
    return names.get(op.builtin_code, f"BUILTIN_{op.builtin_code}")


def list_ops(model: bytes | TfliteModel) -> list[str]:
    """Op names in execution order (entry subgraph first, then WHILE/IF bodies)."""
    parsed = model if isinstance(model, TfliteModel) else parse_tflite(model)
    names = builtin_names()
    return [_op_name(op, names) for sg in parsed.subgraphs for op in sg.operators]


def unsupported_ops(model: bytes | TfliteModel) -> list[str]:
    """Ops of ``model`` outside :data:`TFLM_INT8_OPS` (custom ops are always outside)."""
    return sorted({op for op in list_ops(model) if op not in TFLM_INT8_OPS})


def check_tflm_ops(model: bytes | TfliteModel, name: str = "model") -> list[str]:
    """The model's ops; one-line ModelError if any is not run by TFLite Micro in int8."""
    bad = unsupported_ops(model)
    if bad:
        raise ModelError(f"{name}: uses {', '.join(bad)}, which TFLite Micro does not run in "
                         "int8; choose another architecture or layer")
    return list_ops(model)


def derive_tflm_int8_ops(tflm_root: str | Path) -> frozenset[str]:
    """Re-derive :data:`TFLM_INT8_OPS` from a TFLite Micro source tree (see module doc)."""
    root = Path(tflm_root)
    kernels = root / _KERNELS
    sources = {p: p.read_text(errors="replace")
               for p in [*kernels.glob("*.cc"), *kernels.glob("cmsis_nn/*.cc")]}
    found = set()
    for register, op in _ADD_BUILTIN.findall((root / _RESOLVER).read_text()):
        definition = re.compile(rf"TFLMRegistration\s+{register}\(\)\s*\{{")
        defining = [p for p, text in sources.items() if definition.search(text)]
        types: set[str] = set()
        for path in defining:
            stem = path.stem.removesuffix("_common")
            for sibling in (f"{stem}.cc", f"{stem}_common.cc", f"{stem}.h", f"cmsis_nn/{stem}.cc"):
                if (kernels / sibling).exists():
                    types |= set(_TYPE_NAMES.findall((kernels / sibling).read_text()))
        if defining and ("Int8" in types or not types):
            found.add(op)
    return frozenset(found)


# ---- multiply-accumulates ----------------------------------------------------------------

def _conv_macs(sg: Subgraph, op: OperatorInfo) -> int:
    filt = sg.tensors[op.inputs[1]].shape  # [out_ch, kh, kw, in_ch]
    return prod(sg.tensors[op.outputs[0]].shape) * prod(filt[1:])


def _depthwise_macs(sg: Subgraph, op: OperatorInfo) -> int:
    filt = sg.tensors[op.inputs[1]].shape  # [1, kh, kw, out_ch]
    return prod(sg.tensors[op.outputs[0]].shape) * filt[1] * filt[2]


def _fc_macs(sg: Subgraph, op: OperatorInfo) -> int:
    weights = sg.tensors[op.inputs[1]].shape  # [units, in]
    return prod(sg.tensors[op.outputs[0]].shape) * weights[-1]


def _lstm_macs(sg: Subgraph, op: OperatorInfo) -> int:
    batch_time = prod(sg.tensors[op.inputs[0]].shape[:-1])  # [batch, time, in]
    # inputs 1..8: input-to-gate and recurrent-to-gate weights, [units, in] / [units, units]
    gates = sum(prod(sg.tensors[i].shape) for i in op.inputs[1:9] if i >= 0)
    return batch_time * gates


_MAC_RULES = {"CONV_2D": _conv_macs, "DEPTHWISE_CONV_2D": _depthwise_macs,
              "FULLY_CONNECTED": _fc_macs, "UNIDIRECTIONAL_SEQUENCE_LSTM": _lstm_macs}


def count_macs(model: bytes | TfliteModel) -> dict[str, int]:
    """Multiply-accumulates per inference by op type (convolutions, dense, LSTM gates).

    Element-wise ops, pooling and softmax are left out: they are a few percent of the
    work in these models and not multiply-accumulates.
    """
    parsed = model if isinstance(model, TfliteModel) else parse_tflite(model)
    names = builtin_names()
    macs: Counter[str] = Counter()
    for sg in parsed.subgraphs:
        for op in sg.operators:
            rule = _MAC_RULES.get(_op_name(op, names))
            if rule:
                macs[_op_name(op, names)] += rule(sg, op)
    return dict(macs)
