"""Child process of :func:`convert.quantize.to_int8`: one full-int8 conversion, then exit.

Runs apart from the caller because the TFLite converter can die with a segmentation
fault (Keras 3 recurrent layers, tf-keras GRU) instead of raising. Usage:

    python -m convert._convert_child MODEL FRAMEWORK REPRESENTATIVE.npy OUT.tflite ERROR.json \
        [PRECISION]

FRAMEWORK is ``tf_keras`` or ``keras`` (which library saved MODEL) or ``saved_model``.
PRECISION is ``int8`` (default: full-integer, calibrated on REPRESENTATIVE) or ``float32``
(no optimisation: the float model as a Pi would run it without heartsound's int8 path;
REPRESENTATIVE then only gives the input shape).
A problem the caller should report as one line is written to ERROR.json and the exit
status is :data:`EXIT_USER_ERROR`.
"""

from __future__ import annotations

import json
import sys

import numpy as np

EXIT_USER_ERROR = 3
CALIBRATION_BATCH = 1
"""Recurrent layers need a static batch: tf-keras's LSTM only fuses to
UNIDIRECTIONAL_SEQUENCE_LSTM when the TensorList element shape is known, so the model
is traced with batch 1 (what the device runs) instead of the Keras model's batch None.
Keras 3 models take ``from_keras_model`` instead (see _converter)."""


def _load(path: str, framework: str):
    if framework == "tf_keras":
        from train.tensorflow_quiet import import_tensorflow

        import_tensorflow()
        import tf_keras

        return tf_keras.models.load_model(path, compile=False)
    import keras

    return keras.saving.load_model(path, compile=False)


def _converter(path: str, framework: str, frame_shape: tuple[int, ...]):
    from train.tensorflow_quiet import import_tensorflow

    tf = import_tensorflow()

    if framework == "saved_model":
        return tf.lite.TFLiteConverter.from_saved_model(path), None
    model = _load(path, framework)
    want = tuple(model.inputs[0].shape[1:])
    if want != frame_shape:
        return None, (f"representative windows are {'x'.join(map(str, frame_shape))} but the "
                      f"model takes {'x'.join(map(str, want))}; compute them with the model's "
                      "feature spec")
    if framework == "keras":
        # A tf.function over a Keras 3 model reads its weights through resource variables
        # that calibration cannot see (READ_VARIABLE fails); its own route works for CNNs.
        return tf.lite.TFLiteConverter.from_keras_model(model), None
    fn = tf.function(lambda x: model(x, training=False))
    spec = tf.TensorSpec((CALIBRATION_BATCH, *want), tf.float32)
    return tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function(spec)],
                                                           model), None


def main(argv: list[str]) -> int:
    model_path, framework, rep_path, out_path, err_path, *rest = argv
    precision = rest[0] if rest else "int8"
    from train.tensorflow_quiet import import_tensorflow

    tf = import_tensorflow()

    rep = np.load(rep_path).astype(np.float32)
    converter, problem = _converter(model_path, framework, tuple(rep.shape[1:]))
    if problem:
        with open(err_path, "w") as f:
            json.dump({"message": problem}, f)
        return EXIT_USER_ERROR
    if precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([w[None]] for w in rep)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with open(out_path, "wb") as f:
        f.write(converter.convert())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
