"""The three model architectures, all small enough for a Cortex-M4 and all int8-convertible.

Every model is built with **tf-keras** (Keras 2, package ``tf_keras``), not Keras 3:

* the only recurrent route that converts to full int8 and runs on TFLite Micro here is
  tf-keras's ``LSTM``, which the converter fuses into UNIDIRECTIONAL_SEQUENCE_LSTM. Keras 3's
  ``LSTM``/``GRU`` fail (tensor-list ops with a dynamic batch; ``READ_VARIABLE`` failing during
  calibration with a fixed batch) and tf-keras's ``GRU`` kills the converter (SIGSEGV);
* a model with a tf-keras LSTM must be tf-keras throughout, and one framework for the three
  architectures keeps a single training, saving and conversion path;
* the tf-keras CNN converts at least as well as the Keras 3 one: same 74x13 CNN, tf-keras
  gave RESHAPE, CONV_2D, MAX_POOL_2D, MEAN, FULLY_CONNECTED, SOFTMAX; Keras 3 added SHAPE,
  STRIDED_SLICE and PACK around its Reshape (a dynamic batch) and a bigger file.

tf-keras is imported directly (``import tf_keras``), so ``TF_USE_LEGACY_KERAS`` is not needed
and Keras 3 stays importable in the same process for code that wants it.

Every model takes one analysis window, shape ``(frames, ceps)`` (the front end's
``frames_per_window`` x ``n_ceps``), and outputs class probabilities (softmax). Layers are
restricted to what TFLite Micro runs in int8; BatchNormalization folds into the
convolution at conversion and Dropout disappears.

Measured and not adopted (float models, split seed 0, recording-level test AUC PhysioNet /
PASCAL). One CNN over four seeds: 0.808 / 0.719, 0.788 / 0.667, 0.810 / 0.680, 0.749 /
0.573, so a single run's figure moves by up to 0.06 (PhysioNet) and 0.15 (PASCAL):

* ensembles, each member trained alone, scores averaged: four CNN seeds 0.806 / 0.659;
  CNN + RNN + CRNN 0.810 / 0.668; all six 0.807 / 0.664. The members err on the same
  recordings, so a 3-6x larger model buys nothing;
* a source-adversarial head (gradient reversal on the CNN's pooled features, adversary
  told the class, so it removes the stethoscope and not the label-source confound):
  weight 0.3 gave 0.799 / 0.601, weight 1.0 0.742 / 0.580, and at 1.0 leave-one-database-
  out AUC a/b/d 0.54 / 0.66 / 0.53 against 0.73 / 0.71 / 0.55 without it;
* training on recordings instead of windows (the loss on the mean probability of 8 windows
  per recording, the device's own decision rule): 0.803 / 0.706;
* a wider CNN, Conv2D widths 24 / 48 / 48 (2.2x the weights, still under 64 KB in int8),
  four seeds: 0.806 / 0.636, 0.778 / 0.671, 0.838 / 0.582, 0.821 / 0.650, mean 0.811 /
  0.635 against 0.789 / 0.660: capacity is not what the figures lack either;
* less data (a fraction of the training patients, two seeds each): 50 % 0.771 / 0.595,
  75 % 0.808 / 0.584, 100 % (the four seeds above) 0.789 / 0.660. PhysioNet stops
  improving at three quarters of its three databases, so more recordings from the same
  stethoscopes are not what the PhysioNet figures lack; PASCAL may still gain from data.

The seeds, architectures and fractions share one split (a sweep's ``split_seed: 0``;
``heartsound train --seed N`` would move the split too); the ensembles, the adversarial
head, the recording-level loss and the fractions were throwaway scripts around
:func:`train.pipeline.run_training`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edge.errors import UsageError
from edge.spec import DEFAULT_SPEC

CNN_FILTERS = (16, 32, 32)
"""Conv2D widths of the CNN: ~14 k weights, 1.66 M MACs for 74x13 (convert.ops.count_macs)."""

LSTM_UNITS = 32
"""LSTM width of the RNN and CRNN: 4*32*(in+32+1) weights; 0.43 M MACs for 74 frames."""

CRNN_FILTERS = (16, 32)
"""Conv2D widths of the CRNN front, which halves time twice before the LSTM."""

DROPOUT = 0.3


def default_input_shape() -> tuple[int, int]:
    """(frames, ceps) of one analysis window of the default front end."""
    return (DEFAULT_SPEC.frames_per_window, DEFAULT_SPEC.n_ceps)


def _conv_block(k, x, filters: int, pool: tuple[int, int] | None, name: str):
    x = k.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = k.layers.BatchNormalization(name=f"{name}_bn")(x)
    x = k.layers.ReLU(name=f"{name}_relu")(x)
    if pool:
        x = k.layers.MaxPooling2D(pool, name=f"{name}_pool")(x)
    return x


def _head(k, x, n_classes: int):
    x = k.layers.Dropout(DROPOUT, name="dropout")(x)
    return k.layers.Dense(n_classes, activation="softmax", name="scores")(x)


def _cnn(k, inp, n_classes: int):
    """Conv over the (time, cepstrum) image: murmurs are local time-frequency textures."""
    frames, ceps = inp.shape[1], inp.shape[2]
    x = k.layers.Reshape((frames, ceps, 1), name="as_image")(inp)
    for i, filters in enumerate(CNN_FILTERS):
        last = i == len(CNN_FILTERS) - 1
        x = _conv_block(k, x, filters, None if last else (2, 2), f"block{i + 1}")
    # Class scores by a 1x1 convolution, THEN the average: the same function as average ->
    # Dense (both are linear), but it keeps FULLY_CONNECTED out of the graph, whose int8
    # kernel in LiteRT (reference and optimised alike) and in TFLite Micro differ by 1 LSB
    # on about 1 window in 300; CONV_2D and MEAN agree bit for bit.
    x = k.layers.Dropout(DROPOUT, name="dropout")(x)
    x = k.layers.Conv2D(n_classes, 1, name="class_conv")(x)
    x = k.layers.GlobalAveragePooling2D(name="average")(x)
    return k.layers.Softmax(name="scores")(x)


def _rnn(k, inp, n_classes: int):
    """LSTM over the frames: follows the S1-systole-S2-diastole sequence in time."""
    x = k.layers.LSTM(LSTM_UNITS, name="lstm")(inp)
    return _head(k, x, n_classes)


def _crnn(k, inp, n_classes: int):
    """Conv front for local texture, pooled to a 4x shorter sequence for the LSTM."""
    frames, ceps = inp.shape[1], inp.shape[2]
    x = k.layers.Reshape((frames, ceps, 1), name="as_image")(inp)
    x = _conv_block(k, x, CRNN_FILTERS[0], (2, 2), "block1")
    ceps_left = ceps // 2
    x = _conv_block(k, x, CRNN_FILTERS[1], (2, ceps_left), "block2")  # -> (frames//4, 1, F)
    x = k.layers.Reshape((frames // 4, CRNN_FILTERS[1]), name="as_sequence")(x)
    x = k.layers.LSTM(LSTM_UNITS, name="lstm")(x)
    return _head(k, x, n_classes)


@dataclass(frozen=True)
class Architecture:
    """A named model family; ``recurrent`` models get the 1-LSB parity rule, not bit-exact."""

    name: str
    build: Callable
    recurrent: bool
    summary: str


DEFAULT_ARCH = "cnn"
"""What `heartsound train` and a sweep build when no architecture is named."""

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a for a in (
        Architecture("cnn", _cnn, False, "3 Conv2D blocks + global average pool + dense"),
        Architecture("rnn", _rnn, True, f"LSTM({LSTM_UNITS}) over frames + dense"),
        Architecture("crnn", _crnn, True,
                     "2 Conv2D blocks pooling time by 4 + LSTM + dense"),
    )
}


def get_architecture(name: str) -> Architecture:
    """The registry entry for ``name`` (a one-line UsageError listing the choices if unknown)."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UsageError(f"unknown architecture {name!r}; choose one of "
                         f"{', '.join(ARCHITECTURES)}") from None


def build_model(name: str, input_shape: tuple[int, int] | None = None, n_classes: int = 2,
                seed: int = 0):
    """A fresh, uncompiled tf-keras model ``heartsound_<name>``; same seed, same weights.

    Seeds Python, numpy and TensorFlow globally (tf-keras's initialisers draw from them),
    which is what a reproducible training run wants anyway.
    """
    arch = get_architecture(name)
    frames, ceps = input_shape or default_input_shape()
    if n_classes < 2:
        raise UsageError(f"n_classes={n_classes}: a classifier needs at least 2 classes")
    if frames < 8 or ceps < 2:
        raise UsageError(f"input shape {frames}x{ceps} is too small for {name}; expected "
                         "(frames_per_window, n_ceps) of the feature spec")
    from train.tensorflow_quiet import import_tensorflow

    import_tensorflow()
    import tf_keras as k

    k.utils.set_random_seed(seed)
    inp = k.Input((frames, ceps), name="mfcc")
    return k.Model(inp, arch.build(k, inp, n_classes), name=f"heartsound_{name}")
