"""Multiply-accumulates per inference of an int8 model: the floor for instruction counts.

Counted from the flatbuffer's shapes (no interpreter): the issue reports instructions per
inference on the emulated Cortex-M4 next to this number. With the M4's dual 16-bit MAC
(SMLAD) a kernel can at best do two MACs per instruction, so instructions >= MACs / 2.
Only the ops that do the arithmetic are counted (convolutions, fully connected, LSTM);
pooling, softmax and requantisation add work but no MACs.
"""

from __future__ import annotations

from math import prod

from edge.tflite_file import Subgraph, parse_tflite
from firmware_bridge.tflm_tree import builtin_names

#: UNIDIRECTIONAL_SEQUENCE_LSTM inputs 1-4 are the input weights (i, f, c, o gates), 5-8
#: the recurrent weights (TFLite's lstm_shared.h numbering).
LSTM_WEIGHT_INPUTS = range(1, 9)


def _shape(sub: Subgraph, index: int) -> tuple[int, ...]:
    return sub.tensors[index].shape


def _op_macs(name: str, sub: Subgraph, inputs: tuple[int, ...], outputs: tuple[int, ...]) -> int:
    out = _shape(sub, outputs[0])
    if name == "CONV_2D":  # filter [out_c, kh, kw, in_c]: every output element sums kh*kw*in_c
        _, kh, kw, in_c = _shape(sub, inputs[1])
        return prod(out) * kh * kw * in_c
    if name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, out_c]: kh*kw per output element
        _, kh, kw, _ = _shape(sub, inputs[1])
        return prod(out) * kh * kw
    if name == "FULLY_CONNECTED":  # weights [units, in]
        units, n_in = _shape(sub, inputs[1])
        return prod(out) // units * units * n_in
    if name == "UNIDIRECTIONAL_SEQUENCE_LSTM":  # input [batch, time, in] (time-major: [t, b, in])
        steps = prod(_shape(sub, inputs[0])[:-1])
        weights = sum(prod(_shape(sub, inputs[i])) for i in LSTM_WEIGHT_INPUTS if inputs[i] >= 0)
        return steps * weights
    return 0


def model_macs(model: bytes) -> int:
    """Multiply-accumulates of one inference (subgraph 0, batch as converted)."""
    names = builtin_names()
    sub = parse_tflite(model).subgraphs[0]
    return sum(_op_macs(names.get(op.builtin_code, ""), sub, op.inputs, op.outputs)
               for op in sub.operators)
