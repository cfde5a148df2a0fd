"""A training run folder -> the int8 .tflite the devices run, metadata inside.

Everything the model file says about itself comes from the run folder, never from
defaults: the FeatureSpec the features were computed with, the class names and their
order, the validation threshold, the training data summary. The calibration windows are
the run's own (training split, every source and class); on them, the systematic error the
quantisation leaves in the class logits is measured and taken out of the logit bias
(:mod:`convert.bias_correction`). The result is read back through
the device's reader (:func:`edge.model_meta.read_model_meta`) before anyone writes it, so
a model that the device would refuse is never produced.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from convert.bias_correction import correct_logit_bias
from convert.interpreter_runs import float_inputs, run_float
from convert.metadata import add_metadata, build_document, float_document
from convert.ops import check_tflm_ops
from convert.quantize import check_representative, to_float32, to_int8
from convert.run_folder import RunFolder
from edge.errors import ModelError, UsageError
from edge.interpreter import Classifier
from edge.model_meta import read_model_meta

VERSION_HASH_CHARS = 12


def default_version(run: RunFolder) -> str:
    """``<label set>-<architecture>-<sha256 of model.keras>``: names the exact weights."""
    digest = hashlib.sha256(run.model_path.read_bytes()).hexdigest()[:VERSION_HASH_CHARS]
    return f"{run.label_set}-{run.architecture}-{digest}"


def check_output(out: Path, force: bool) -> None:
    """Refuse to overwrite without ``force``, and a path that cannot be a file."""
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; pass --out with a .tflite file path")
    if out.exists() and not force:
        raise UsageError(f"{out}: already exists; pass --force to replace it or choose "
                         "another --out")


def convert_run(run: RunFolder, version: str | None = None) -> bytes:
    """Full-int8 model of the run with its metadata; ModelError for anything unusable."""
    rep = run.representative()
    check_representative(rep, run.spec)
    if rep.dtype.kind not in "iu":
        raise ModelError(f"{run.path / 'representative.npy'}: holds {rep.dtype} values, the "
                         "model takes the front end's int16 features; train the run again")
    model = to_int8(str(run.model_path), rep, spec=run.spec, architecture=run.architecture)
    check_tflm_ops(model, f"{run.path.name} ({run.architecture})")
    model, correction = correct_run_bias(run, model, rep)
    document = build_document(model, spec=run.spec, class_names=run.class_names,
                              threshold=run.threshold, normal_class=run.normal_class,
                              training=run.training_summary(),
                              version=version or default_version(run),
                              architecture=run.architecture,
                              bias_correction=correction,
                              familiarity=run.model_info.get("familiarity"))
    model = add_metadata(model, document)
    read_model_meta(model, spec=run.spec, name="converted model")  # the device's own check
    return model


def convert_float_companion(run: RunFolder, int8_model: bytes) -> bytes:
    """The run's float Keras model as a float32 .tflite, with the int8 model's metadata
    (:func:`convert.metadata.float_document`): `heartsound bench`'s fair baseline."""
    rep = run.representative()
    model = to_float32(str(run.model_path), rep, spec=run.spec, architecture=run.architecture)
    grid = bool(run.metrics.get("config", {}).get("int8_inputs"))
    document = float_document(int8_model, model, "int8_grid" if grid else "features")
    return add_metadata(model, document)


def correct_run_bias(run: RunFolder, model: bytes, rep) -> tuple[bytes, dict]:
    """:func:`convert.bias_correction.correct_logit_bias` on the calibration windows, the
    float model scored on the same inputs as training scored it."""
    device = Classifier(model, backend="ai_edge_litert")
    q = device.quantise(rep.astype(np.int16))
    float_probs = run_float(run.model_path, float_inputs(run, rep, q, device))
    return correct_logit_bias(model, q, float_probs)


MODEL_MODE = 0o644


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same folder, then rename: a killed run leaves no half model.

    The file gets the usual 0644-under-umask mode, not mkstemp's 0600: a model is shipped
    and read by other users (the packaged model, a device's service account).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, MODEL_MODE & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
