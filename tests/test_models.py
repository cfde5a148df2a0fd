"""The three architectures: they build, are small, reproducible, and use only convertible layers.

Conversion, size on disk, arena and interpreter parity are in tests/test_convert.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import UsageError
from edge.spec import DEFAULT_SPEC
from train.models import ARCHITECTURES, build_model, default_input_shape, get_architecture

MAX_WEIGHTS = 64 * 1024 - 8 * 1024
"""int8 weights take one byte each; the flatbuffer adds a few KB of graph around them."""

# tf-keras layer classes whose converted form TFLite Micro runs in int8 (checked end to end
# by tests/test_convert.py); anything else needs that test extended first.
CONVERTIBLE_LAYERS = {"InputLayer", "Reshape", "Conv2D", "BatchNormalization", "ReLU",
                      "MaxPooling2D", "GlobalAveragePooling2D", "LSTM", "Dropout", "Dense",
                      "Softmax"}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def built(request):
    return request.param, build_model(request.param, seed=7)


def test_input_shape_comes_from_the_front_end_spec():
    assert default_input_shape() == (DEFAULT_SPEC.frames_per_window, DEFAULT_SPEC.n_ceps)


def test_each_architecture_outputs_class_probabilities(built):
    name, model = built
    x = np.random.default_rng(0).normal(0, 3, (5, *default_input_shape())).astype(np.float32)
    p = model.predict(x, verbose=0)
    assert p.shape == (5, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert model.name == f"heartsound_{name}"


def test_each_architecture_is_tf_keras_built_from_convertible_layers(built):
    name, model = built
    assert type(model).__module__.startswith("tf_keras"), "one framework for all three"
    kinds = {type(layer).__name__ for layer in model.layers}
    assert kinds <= CONVERTIBLE_LAYERS, kinds - CONVERTIBLE_LAYERS
    assert ("LSTM" in kinds) == ARCHITECTURES[name].recurrent


def test_each_architecture_fits_the_weight_budget(built):
    _, model = built
    assert 1000 < model.count_params() <= MAX_WEIGHTS


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (build_model("crnn", seed=s) for s in (3, 3, 4))
    wa, wb, wc = (np.concatenate([w.ravel() for w in m.get_weights()]) for m in (a, b, c))
    np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(wa, wc)


def test_condition_model_and_other_window_lengths_build():
    model = build_model("crnn", input_shape=(50, 20), n_classes=4, seed=0)
    assert model.output_shape == (None, 4)
    assert build_model("cnn", input_shape=(50, 20), n_classes=4).output_shape == (None, 4)


@pytest.mark.parametrize("call", [lambda: get_architecture("gru"),
                                  lambda: build_model("cnn", n_classes=1),
                                  lambda: build_model("rnn", input_shape=(3, 13))])
def test_bad_requests_are_one_line_usage_errors(call):
    with pytest.raises(UsageError) as err:
        call()
    assert "\n" not in str(err.value)
