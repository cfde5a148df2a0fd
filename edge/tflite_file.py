"""Read a .tflite flatbuffer with the standard library only.

The Raspberry Pi must check a model (is it a TFLite file, int8 in and out, which front end
was it built for) before handing it to an interpreter, and it has no TensorFlow to do
that with. A TFLite file is a FlatBuffer with the file identifier ``TFL3``; the few
tables needed here (Model -> SubGraph -> Tensor/Operator, Model -> Metadata -> Buffer)
are read by hand from the schema's field numbers (tensorflow/compiler/mlir/lite/schema/
schema.fbs). Every read is bounds-checked so a truncated or foreign file raises
:class:`~edge.errors.ModelError`, never an IndexError or a silent wrong answer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import ModelError

TFLITE_IDENTIFIER = b"TFL3"
"""Bytes 4..8 of every TFLite flatbuffer."""

#: TensorType enum of the schema, index = value.
TENSOR_TYPES = ("float32", "float16", "int32", "uint8", "int64", "string", "bool", "int16",
                "complex64", "int8", "float64", "complex128", "uint64", "resource", "variant",
                "uint32", "uint16", "int4")

# Field numbers from schema.fbs (the position in each table's declaration).
MODEL_VERSION, MODEL_OPCODES, MODEL_SUBGRAPHS, MODEL_BUFFERS, MODEL_METADATA = 0, 1, 2, 4, 6
_OPCODE_DEPRECATED, _OPCODE_CUSTOM, _OPCODE_VERSION, _OPCODE_BUILTIN = 0, 1, 2, 3
_SUBGRAPH_TENSORS, _SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS, _SUBGRAPH_OPERATORS = 0, 1, 2, 3
_OP_OPCODE_INDEX, _OP_INPUTS, _OP_OUTPUTS = 0, 1, 2
_TENSOR_SHAPE, _TENSOR_TYPE, _TENSOR_BUFFER, _TENSOR_NAME, _TENSOR_QUANT = 0, 1, 2, 3, 4
_QUANT_SCALE, _QUANT_ZERO_POINT = 2, 3
METADATA_NAME_FIELD, METADATA_BUFFER_FIELD = 0, 1
BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE = 0, 1, 2


class CorruptFlatbuffer(Exception):
    """A read outside the file: turned into one ModelError by parse_tflite."""


def _unpack(fmt: str, buf: bytes, pos: int) -> tuple:
    size = struct.calcsize(fmt)
    if pos < 0 or pos + size > len(buf):
        raise CorruptFlatbuffer(pos)
    return struct.unpack_from(fmt, buf, pos)


class Table:
    """One flatbuffer table: field lookups through its vtable (also used by the writer)."""

    __slots__ = ("buf", "pos", "vtable", "vtable_len")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        self.vtable = pos - _unpack("<i", buf, pos)[0]
        self.vtable_len = _unpack("<H", buf, self.vtable)[0]

    def field_offset(self, fld: int) -> int:
        """Offset of field ``fld`` from the table start, 0 when absent."""
        slot = 4 + 2 * fld
        return 0 if slot >= self.vtable_len else _unpack("<H", self.buf, self.vtable + slot)[0]

    def scalar(self, fld: int, fmt: str, default: int | float) -> int | float:
        off = self.field_offset(fld)
        return default if off == 0 else _unpack(fmt, self.buf, self.pos + off)[0]

    def target(self, fld: int) -> int | None:
        """Absolute position an offset field points at (None when absent)."""
        off = self.field_offset(fld)
        if off == 0:
            return None
        at = self.pos + off
        return at + _unpack("<I", self.buf, at)[0]

    def table(self, fld: int) -> Table | None:
        at = self.target(fld)
        return None if at is None else Table(self.buf, at)

    def _vector(self, fld: int) -> tuple[int, int]:
        at = self.target(fld)
        if at is None:
            return 0, 0
        return at + 4, _unpack("<I", self.buf, at)[0]

    def tables(self, fld: int) -> list[Table]:
        start, n = self._vector(fld)
        out = []
        for i in range(n):
            slot = start + 4 * i
            out.append(Table(self.buf, slot + _unpack("<I", self.buf, slot)[0]))
        return out

    def numbers(self, fld: int, code: str) -> tuple:
        start, n = self._vector(fld)
        return _unpack(f"<{n}{code}", self.buf, start) if n else ()

    def raw(self, fld: int) -> bytes:
        start, n = self._vector(fld)
        if start + n > len(self.buf):
            raise CorruptFlatbuffer(start)
        return bytes(self.buf[start:start + n])

    def string(self, fld: int) -> str | None:
        if self.target(fld) is None:
            return None
        return self.raw(fld).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's shape, element type and quantisation (per-tensor or per-channel)."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    buffer: int = 0

    def quant(self) -> dict:
        """Per-tensor quantisation as JSON: what a caller needs to (de)quantise."""
        return {"dtype": self.dtype, "shape": list(self.shape),
                "scale": self.scale[0] if self.scale else 0.0,
                "zero_point": self.zero_point[0] if self.zero_point else 0}


@dataclass(frozen=True)
class OperatorInfo:
    """One node: its builtin code (0 for custom), custom name and tensor indices."""

    builtin_code: int
    custom_code: str | None
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Subgraph:
    """Tensors, graph inputs/outputs and operators of one subgraph."""

    tensors: tuple[TensorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: tuple[OperatorInfo, ...]


@dataclass(frozen=True)
class TfliteModel:
    """What the edge needs from a .tflite file; subgraph 0 is the model's entry point."""

    name: str
    size: int
    schema_version: int
    subgraphs: tuple[Subgraph, ...]
    metadata: dict[str, bytes] = field(default_factory=dict)

    @property
    def input_tensors(self) -> tuple[TensorInfo, ...]:
        main = self.subgraphs[0]
        return tuple(main.tensors[i] for i in main.inputs)

    @property
    def output_tensors(self) -> tuple[TensorInfo, ...]:
        main = self.subgraphs[0]
        return tuple(main.tensors[i] for i in main.outputs)


def _tensor(index: int, t: Table) -> TensorInfo:
    type_code = t.scalar(_TENSOR_TYPE, "<b", 0)
    dtype = TENSOR_TYPES[type_code] if 0 <= type_code < len(TENSOR_TYPES) else f"type{type_code}"
    q = t.table(_TENSOR_QUANT)
    scale = q.numbers(_QUANT_SCALE, "f") if q else ()
    zero = q.numbers(_QUANT_ZERO_POINT, "q") if q else ()
    return TensorInfo(index, t.string(_TENSOR_NAME) or "", tuple(t.numbers(_TENSOR_SHAPE, "i")),
                      dtype, tuple(scale), tuple(zero), int(t.scalar(_TENSOR_BUFFER, "<I", 0)))


def _subgraph(sg: Table, opcodes: list[tuple[int, str | None, int]]) -> Subgraph:
    tensors = tuple(_tensor(i, t) for i, t in enumerate(sg.tables(_SUBGRAPH_TENSORS)))
    ops = []
    for op in sg.tables(_SUBGRAPH_OPERATORS):
        index = op.scalar(_OP_OPCODE_INDEX, "<I", 0)
        if index >= len(opcodes):
            raise CorruptFlatbuffer(index)
        code, custom, version = opcodes[index]
        ops.append(OperatorInfo(code, custom, version, op.numbers(_OP_INPUTS, "i"),
                                op.numbers(_OP_OUTPUTS, "i")))
    inputs, outputs = sg.numbers(_SUBGRAPH_INPUTS, "i"), sg.numbers(_SUBGRAPH_OUTPUTS, "i")
    n = len(tensors)
    if not all(0 <= i < n for i in (*inputs, *outputs)) or not all(
            -1 <= i < n for op in ops for i in (*op.inputs, *op.outputs)):
        raise CorruptFlatbuffer("tensor index")
    return Subgraph(tensors, inputs, outputs, tuple(ops))


def _buffer_bytes(buf: bytes, b: Table) -> bytes:
    data = b.raw(BUFFER_DATA)
    offset = b.scalar(BUFFER_OFFSET, "<Q", 0)
    if not data and offset > 1:  # models over 2 GB keep buffers after the flatbuffer
        size = b.scalar(BUFFER_SIZE, "<Q", 0)
        if offset + size > len(buf):
            raise CorruptFlatbuffer(offset)
        data = bytes(buf[offset:offset + size])
    return data


def root_table(buf: bytes) -> Table:
    """The Model table of a TFLite flatbuffer."""
    return Table(buf, _unpack("<I", buf, 0)[0])


def _parse(buf: bytes, name: str) -> TfliteModel:
    root = root_table(buf)
    opcodes = []
    for oc in root.tables(MODEL_OPCODES):
        code = max(oc.scalar(_OPCODE_DEPRECATED, "<b", 0), oc.scalar(_OPCODE_BUILTIN, "<i", 0))
        opcodes.append((int(code), oc.string(_OPCODE_CUSTOM), int(oc.scalar(_OPCODE_VERSION,
                                                                            "<i", 1))))
    subgraphs = tuple(_subgraph(sg, opcodes) for sg in root.tables(MODEL_SUBGRAPHS))
    buffers = root.tables(MODEL_BUFFERS)
    metadata = {}
    for m in root.tables(MODEL_METADATA):
        index = m.scalar(METADATA_BUFFER_FIELD, "<I", 0)
        if index >= len(buffers):
            raise CorruptFlatbuffer(index)
        metadata[m.string(METADATA_NAME_FIELD) or ""] = _buffer_bytes(buf, buffers[index])
    return TfliteModel(name, len(buf), int(root.scalar(MODEL_VERSION, "<I", 0)), subgraphs,
                       metadata)


def parse_tflite(data: bytes, name: str = "model") -> TfliteModel:
    """Parse a TFLite flatbuffer held in memory; ``name`` is used in error messages."""
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise ModelError(f"{name}: not a TFLite model (no 'TFL3' identifier in its first 8 "
                         "bytes); pass the .tflite file written by `heartsound convert`")
    try:
        model = _parse(data, name)
    except (CorruptFlatbuffer, struct.error, ValueError):
        raise ModelError(f"{name}: truncated or corrupt TFLite flatbuffer ({len(data)} bytes); "
                         "convert the model again") from None
    if not model.subgraphs:
        raise ModelError(f"{name}: TFLite file has no subgraph; convert the model again")
    return model


def read_tflite(path: str | Path) -> TfliteModel:
    """Parse a .tflite file from disk."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found; check the path") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: is a folder, not a .tflite model file") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror})") from None
    return parse_tflite(data, str(path))
