"""The heartsound metadata inside a .tflite model, read and checked on the device.

``convert/`` writes one JSON document into the flatbuffer's ``Model.metadata`` list under
the name :data:`METADATA_NAME`: the FeatureSpec the model was trained on, the class names,
the decision threshold, the input/output quantisation, a summary of the training data and
a version. The device reads it here (standard library + numpy only) and refuses a model
it cannot run correctly: a file that is not TFLite, a float model, a model without
heartsound metadata, or a model built for another front end. A model fed features from a
different front end still runs and gives confident nonsense, which is why the spec check
is a refusal and not a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edge.errors import ModelError, SpecError
from edge.familiarity import Reference, from_document
from edge.spec import FeatureSpec
from edge.tflite_file import TensorInfo, TfliteModel, parse_tflite, read_tflite

METADATA_NAME = "heartsound"
"""Name of the metadata entry (``Model.metadata[i].name``) holding the JSON document."""

METADATA_FORMAT = 1
"""Layout version of the JSON document; a reader refuses documents newer than itself."""

QUANTISED_TYPE = "int8"
"""The only tensor type the edge runtime and TFLite Micro model inputs/outputs use."""

FLOAT_SUFFIX = ".float32.tflite"
"""``model.tflite`` -> ``model.float32.tflite``: the float32 companion `heartsound convert`
writes beside every int8 model. Never screened with (the reader below refuses float
tensors); `heartsound bench` times it as the fair baseline: what a Pi runs without the
int8 path, on the same LiteRT."""
FLOAT_PRECISION = "float32"


@dataclass(frozen=True)
class ModelMeta:
    """A checked model: its metadata and its real input/output tensors."""

    name: str
    spec: FeatureSpec
    class_names: tuple[str, ...]
    threshold: float
    normal_class: str | None
    input: TensorInfo
    output: TensorInfo
    version: str
    architecture: str
    training: dict
    document: dict
    familiarity: Reference | None = None
    """Reference of the training stethoscopes (edge.familiarity); None in models converted
    before it existed: their recordings are screened without that gate."""

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def read_model_meta(model: str | Path | bytes, spec: FeatureSpec | None = None,
                    name: str | None = None) -> ModelMeta:
    """Read and check a model's metadata; with ``spec``, refuse a model built for another.

    ``model`` is a path or the file's bytes (then ``name`` labels error messages).
    """
    if isinstance(model, bytes | bytearray | memoryview):
        parsed = parse_tflite(bytes(model), name or "model")
    else:
        parsed = read_tflite(model)
    meta = _meta_from(parsed)
    if spec is not None:
        check_spec(meta, spec)
    return meta


def check_spec(meta: ModelMeta, spec: FeatureSpec) -> None:
    """Refuse a model whose front end differs from ``spec`` (names the differing fields)."""
    mine, theirs = spec.to_dict(), meta.spec.to_dict()
    diffs = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
    if diffs:
        shown = ", ".join(f"{k} {theirs.get(k)!r} in the model vs {mine.get(k)!r} here"
                          for k in diffs[:3])
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise ModelError(f"{meta.name}: built for a different front end ({shown}{more}); use "
                         "a model converted for this front end or run with the model's spec")


def _meta_from(model: TfliteModel) -> ModelMeta:
    inp, out = _single_int8_io(model)
    doc = _document(model)
    try:
        spec = FeatureSpec.from_dict(doc["spec"])
    except SpecError as exc:
        raise ModelError(f"{model.name}: metadata holds an unusable feature spec ({exc})") from None
    classes = tuple(doc["class_names"])
    if not classes or len(classes) != out.shape[-1] or not all(isinstance(c, str)
                                                                 for c in classes):
        raise ModelError(f"{model.name}: metadata names {len(classes)} classes but the model "
                         f"outputs {out.shape[-1]} scores; convert the model again")
    _check_recorded_quant(model.name, "input", doc["input"], inp)
    _check_recorded_quant(model.name, "output", doc["output"], out)
    try:
        familiarity = from_document(doc)
    except ModelError as exc:
        raise ModelError(f"{model.name}: {exc}") from None
    return ModelMeta(model.name, spec, classes, float(doc["threshold"]), doc.get("normal_class"),
                     inp, out, str(doc.get("version", "")), str(doc.get("architecture", "")),
                     dict(doc.get("training", {})), doc, familiarity)


def _single_int8_io(model: TfliteModel) -> tuple[TensorInfo, TensorInfo]:
    ins, outs = model.input_tensors, model.output_tensors
    if len(ins) != 1 or len(outs) != 1:
        raise ModelError(f"{model.name}: has {len(ins)} inputs and {len(outs)} outputs, "
                         "a heartsound model has one of each")
    for role, t in (("input", ins[0]), ("output", outs[0])):
        if t.dtype != QUANTISED_TYPE:
            raise ModelError(f"{model.name}: {role} is {t.dtype}, not int8 (a float or partly "
                             "quantised model); convert it with `heartsound convert`")
        if len(t.scale) != 1 or t.scale[0] <= 0:
            raise ModelError(f"{model.name}: {role} tensor has no per-tensor quantisation; "
                             "convert it with `heartsound convert`")
    return ins[0], outs[0]


_REQUIRED = ("format", "spec", "class_names", "threshold", "input", "output")


def _document(model: TfliteModel) -> dict:
    raw = model.metadata.get(METADATA_NAME)
    if raw is None:
        raise ModelError(f"{model.name}: no '{METADATA_NAME}' metadata (not converted by "
                         "heartsound); convert it with `heartsound convert`")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ModelError(f"{model.name}: '{METADATA_NAME}' metadata is not JSON; "
                         "convert the model again") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{model.name}: '{METADATA_NAME}' metadata is not a JSON object")
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise ModelError(f"{model.name}: metadata lacks {', '.join(missing)}; "
                         "convert the model again")
    if not isinstance(doc["format"], int) or doc["format"] > METADATA_FORMAT:
        raise ModelError(f"{model.name}: metadata format {doc['format']!r} is newer than this "
                         f"heartsound reads ({METADATA_FORMAT}); upgrade heartsound")
    return doc


def _check_recorded_quant(name: str, role: str, recorded: object, actual: TensorInfo) -> None:
    """The JSON copy must agree with the tensor: a mismatch means the file was edited."""
    want = actual.quant()
    ok = (isinstance(recorded, dict)
          and recorded.get("zero_point") == want["zero_point"]
          and isinstance(recorded.get("scale"), float | int)
          and abs(recorded["scale"] - want["scale"]) <= 1e-6 * want["scale"])
    if not ok:
        raise ModelError(f"{name}: metadata {role} quantisation {recorded!r} disagrees with the "
                         f"model's {role} tensor (scale {want['scale']:.6g}, zero point "
                         f"{want['zero_point']}); convert the model again")


def float_companion_path(model: str | Path) -> Path:
    """Where the float32 companion of the int8 model ``model`` lives (may not exist)."""
    path = Path(model)
    return path.with_name(path.name.removesuffix(".tflite") + FLOAT_SUFFIX)


def read_float_companion(path: str | Path, int8_sha256: str) -> dict:
    """The metadata document of a float32 companion, checked to belong to the int8 model
    whose file hash is ``int8_sha256`` (a stale companion would time another model)."""
    parsed = read_tflite(path)
    doc = _document(parsed)
    dtypes = {t.dtype for t in (*parsed.input_tensors, *parsed.output_tensors)}
    if doc.get("precision") != FLOAT_PRECISION or dtypes != {FLOAT_PRECISION}:
        raise ModelError(f"{parsed.name}: not a float32 companion model (tensors "
                         f"{', '.join(sorted(dtypes))}); convert the int8 model again")
    if doc.get("int8_model_sha256") != int8_sha256:
        raise ModelError(f"{parsed.name}: belongs to another int8 model than the one beside "
                         "it; convert again to write both together")
    return doc
