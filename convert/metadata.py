"""Write the heartsound metadata (spec, classes, threshold, ...) into a .tflite flatbuffer.

Why a hand-made edit rather than unpacking and re-packing the model with the schema's
object API: re-packing rewrites every buffer with 1-byte alignment (the Python object
API's default), while the converter aligns weight buffers to 16 bytes, which CMSIS-NN
and TFLite Micro are built around. Instead the new entry goes in FRONT of the untouched
converter output: a new root Model table whose buffers and metadata vectors list the old
entries plus ours, followed by the original bytes shifted by a multiple of 16. FlatBuffer
offsets are relative, so every old table, vector and weight stays valid and keeps its
alignment; only the few kilobytes of old header become unused bytes. The reader is
:mod:`edge.model_meta`, standard library only.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from importlib import metadata as pkg_metadata

from edge.errors import ModelError
from edge.familiarity import Reference
from edge.model_meta import FLOAT_PRECISION, METADATA_FORMAT, METADATA_NAME, read_model_meta
from edge.spec import FeatureSpec
from edge.tflite_file import (
    BUFFER_OFFSET,
    METADATA_NAME_FIELD,
    MODEL_BUFFERS,
    MODEL_METADATA,
    MODEL_VERSION,
    TFLITE_IDENTIFIER,
    CorruptFlatbuffer,
    Table,
    parse_tflite,
    root_table,
)

BLOCK_ALIGN = 16
"""Alignment kept for the shifted original and for the new data buffer (weights use 16)."""

_MODEL_FIELDS = 8  # Model has fields 0..7 in schema.fbs; an unknown one is refused, not lost.
_HEADER = 8  # root uoffset + file identifier


def build_document(model: bytes, *, spec: FeatureSpec, class_names: list[str] | tuple[str, ...],
                   threshold: float, normal_class: str | None = "normal",
                   training: dict | None = None, version: str = "",
                   architecture: str = "", bias_correction: dict | None = None,
                   familiarity: dict | None = None) -> dict:
    """The JSON document for ``model``; quantisation is read from the model itself.

    ``bias_correction`` is the report of :mod:`convert.bias_correction`, kept so a model
    says how its int8 logits were adjusted. ``familiarity`` is the run's reference
    (:mod:`edge.familiarity`); without it (older runs) the key is left out and the device
    screens without the unfamiliar-stethoscope gate."""
    parsed = parse_tflite(model, "converted model")
    inp, out = parsed.input_tensors[0], parsed.output_tensors[0]
    classes = [str(c) for c in class_names]
    if len(classes) != out.shape[-1] or len(set(classes)) != len(classes):
        raise ModelError(f"class names {classes} must be {out.shape[-1]} distinct names, one per "
                         "model output")
    if not (isinstance(threshold, float | int) and math.isfinite(threshold)
            and 0.0 <= threshold <= 1.0):
        raise ModelError(f"decision threshold {threshold!r} must be a number in 0..1")
    if normal_class is not None and normal_class not in classes:
        raise ModelError(f"normal class {normal_class!r} is not one of the classes {classes}")
    gate = {} if familiarity is None else {
        "familiarity": Reference.from_dict(familiarity).to_dict()}
    return {
        "format": METADATA_FORMAT,
        "version": version,
        "architecture": architecture,
        "heartsound_version": _package_version(),
        "spec": spec.to_dict(),
        "class_names": classes,
        "normal_class": normal_class,
        "threshold": float(threshold),
        "input": inp.quant(),
        "output": out.quant(),
        "training": training or {},
        "bias_correction": bias_correction or {"applied": False},
    } | gate


FLOAT_INPUTS = ("features", "int8_grid")
"""What the float32 companion takes: the int16 features as floats, or (runs trained on
the int8 input grid) the int8 model input dequantised, as training fed it."""


def float_document(int8_model: bytes, float_model: bytes, float_input: str) -> dict:
    """The int8 model's document for its float32 companion: same spec, classes, threshold
    and version, the float tensors, and the int8 file's sha256 that ties the two."""
    if float_input not in FLOAT_INPUTS:
        raise ModelError(f"float input {float_input!r} must be one of {FLOAT_INPUTS}")
    parsed = parse_tflite(float_model, "float32 model")
    inp, out = parsed.input_tensors[0], parsed.output_tensors[0]
    return read_model_meta(int8_model).document | {
        "precision": FLOAT_PRECISION, "input": inp.quant(), "output": out.quant(),
        "float_input": float_input,
        "int8_model_sha256": hashlib.sha256(int8_model).hexdigest()}


def add_metadata(model: bytes, document: dict, name: str = METADATA_NAME) -> bytes:
    """Return ``model`` with ``document`` (JSON) as metadata entry ``name``.

    An existing entry of the same name is replaced (its old bytes stay unused).
    """
    payload = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")
    parse_tflite(model, "converted model")  # refuse a non-model before touching bytes
    try:
        return _prepend_entry(model, name, payload)
    except CorruptFlatbuffer:
        raise ModelError("converted model: corrupt flatbuffer, cannot add metadata") from None


def _package_version() -> str:
    try:
        return pkg_metadata.version("heartsound")
    except pkg_metadata.PackageNotFoundError:
        return "unknown"


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


class _Writer:
    """A little-endian byte area with absolute positions (the new file prefix)."""

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)

    def u16(self, pos: int, value: int) -> None:
        struct.pack_into("<H", self.buf, pos, value)

    def u32(self, pos: int, value: int) -> None:
        struct.pack_into("<I", self.buf, pos, value)

    def i32(self, pos: int, value: int) -> None:
        struct.pack_into("<i", self.buf, pos, value)

    def uoffset(self, pos: int, target: int) -> None:
        """A forward reference: flatbuffer offsets are unsigned and relative to ``pos``."""
        assert target > pos
        self.u32(pos, target - pos)

    def table(self, vtable: int, fields: dict[int, int], n_fields: int) -> int:
        """A vtable at ``vtable`` followed by its table of 4-byte slots; returns the table."""
        vt_len = 4 + 2 * n_fields
        table = _pad(vtable + vt_len, 4)
        order = sorted(fields)
        self.u16(vtable, vt_len)
        self.u16(vtable + 2, 4 + 4 * len(order))
        for k, fld in enumerate(order):
            self.u16(vtable + 4 + 2 * fld, 4 + 4 * k)
        self.i32(table, table - vtable)
        return table

    @staticmethod
    def table_size(vtable: int, n_fields: int, n_slots: int) -> int:
        return _pad(vtable + 4 + 2 * n_fields, 4) + 4 + 4 * n_slots - vtable


def _old_layout(model: bytes) -> tuple[Table, list[int], list[int]]:
    """Root table, Buffer table positions and Metadata table positions (minus ours)."""
    root = root_table(model)
    if root.vtable_len > 4 + 2 * _MODEL_FIELDS:
        raise ModelError("converted model: its Model table has fields this heartsound does not "
                         "know; upgrade heartsound")
    buffers = [t.pos for t in root.tables(MODEL_BUFFERS)]
    for pos in buffers:
        if Table(model, pos).scalar(BUFFER_OFFSET, "<Q", 0) > 1:
            raise ModelError("converted model: weights stored outside the flatbuffer (> 2 GB "
                             "layout) are not supported")
    return root, buffers, [t.pos for t in root.tables(MODEL_METADATA)]


def _prepend_entry(model: bytes, name: str, payload: bytes) -> bytes:
    root, buffers, metas = _old_layout(model)
    metas = [p for p in metas if Table(model, p).string(METADATA_NAME_FIELD) != name]
    present = {f for f in range(_MODEL_FIELDS) if root.field_offset(f)} | {MODEL_BUFFERS,
                                                                            MODEL_METADATA}
    n_fields = max(present) + 1
    name_bytes = name.encode("utf-8")

    # Layout of the prefix, in increasing addresses (every reference points forward).
    model_vt = _HEADER
    buffers_vec = model_vt + _Writer.table_size(model_vt, n_fields, len(present))
    metas_vec = buffers_vec + 4 + 4 * (len(buffers) + 1)
    meta_vt = metas_vec + 4 + 4 * (len(metas) + 1)
    buffer_vt = meta_vt + _Writer.table_size(meta_vt, 2, 2)
    name_str = buffer_vt + _Writer.table_size(buffer_vt, 1, 1)
    data_len_at = _pad(name_str + 4 + len(name_bytes) + 1 + 4, BLOCK_ALIGN) - 4
    prefix_len = _pad(data_len_at + 4 + len(payload), BLOCK_ALIGN)

    w = _Writer(prefix_len)
    shift = prefix_len  # old byte at x is now at x + shift
    model_tab = w.table(model_vt, dict.fromkeys(present, 0), n_fields)
    w.uoffset(0, model_tab)
    w.buf[4:8] = TFLITE_IDENTIFIER
    for k, fld in enumerate(sorted(present)):
        slot = model_tab + 4 + 4 * k
        if fld == MODEL_VERSION:
            w.u32(slot, int(root.scalar(MODEL_VERSION, "<I", 0)))
        elif fld == MODEL_BUFFERS:
            w.uoffset(slot, buffers_vec)
        elif fld == MODEL_METADATA:
            w.uoffset(slot, metas_vec)
        else:
            w.uoffset(slot, root.target(fld) + shift)

    meta_tab = w.table(meta_vt, {0: 0, 1: 0}, 2)
    buffer_tab = w.table(buffer_vt, {0: 0}, 1)
    _vector(w, buffers_vec, [p + shift for p in buffers] + [buffer_tab])
    _vector(w, metas_vec, [p + shift for p in metas] + [meta_tab])
    w.uoffset(meta_tab + 4, name_str)          # Metadata.name
    w.u32(meta_tab + 8, len(buffers))          # Metadata.buffer: the one appended
    w.uoffset(buffer_tab + 4, data_len_at)     # Buffer.data
    w.u32(name_str, len(name_bytes))
    w.buf[name_str + 4:name_str + 4 + len(name_bytes)] = name_bytes
    w.u32(data_len_at, len(payload))
    w.buf[data_len_at + 4:data_len_at + 4 + len(payload)] = payload
    return bytes(w.buf) + model


def _vector(w: _Writer, at: int, targets: list[int]) -> None:
    w.u32(at, len(targets))
    for i, target in enumerate(targets):
        w.uoffset(at + 4 + 4 * i, target)
