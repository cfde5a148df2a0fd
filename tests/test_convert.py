"""Full-int8 conversion, TFLite Micro budget and parity, metadata, and the refusals.

Each architecture is converted ONCE (module fixture, in a child process as in production)
from untrained models calibrated on real feature windows of every source (PASCAL A and B,
PhysioNet a, b, d). Untrained weights are enough here: what is tested is the conversion and
the interpreters, not accuracy (that is measured by the training run on real splits).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from convert.bias_correction import (
    correct_logit_bias,
    find_logit_op,
    logit_error,
    shift_bias,
)
from convert.metadata import add_metadata, build_document
from convert.ops import (
    TFLM_INT8_OPS,
    builtin_names,
    check_tflm_ops,
    count_macs,
    derive_tflm_int8_ops,
    list_ops,
)
from convert.quantize import (
    check_representative,
    representative_windows,
    to_int8,
    to_int8_many,
)
from convert.tflm import (
    arena_fits,
    compare,
    dequantise_outputs,
    quantise_windows,
    run_litert,
    run_tflm,
    smallest_arena,
)
from edge.errors import ModelError
from edge.mfcc import mfcc, windows
from edge.model_meta import METADATA_NAME, read_model_meta
from edge.spec import DEFAULT_SPEC
from edge.tflite_file import OperatorInfo, Subgraph, TfliteModel, parse_tflite
from tests import mfcc_recordings
from train.models import ARCHITECTURES, CNN_FILTERS, LSTM_UNITS, build_model

MAX_MODEL_BYTES = 64 * 1024
MAX_ARENA_BYTES = 48 * 1024
THIRD_PARTY_TFLM = Path(__file__).resolve().parents[2] / "shared" / "third_party" / "tflite-micro"
CLASSES = ("normal", "abnormal")


@pytest.fixture(scope="module")
def real_windows(data_root) -> np.ndarray:
    """Float feature windows (log2 units) from the fixed sample of every source."""
    per_source = []
    for _, path in mfcc_recordings.sample(data_root):
        wins = windows(mfcc(mfcc_recordings.load(path), DEFAULT_SPEC), DEFAULT_SPEC)
        per_source.append(wins[:: max(1, len(wins) // 30)])
    scale = 2.0 ** -DEFAULT_SPEC.out_frac_bits
    return (np.concatenate(per_source).astype(np.float32) * scale)


@pytest.fixture(scope="module")
def keras_models() -> dict:
    return {name: build_model(name, seed=1) for name in ARCHITECTURES}


@pytest.fixture(scope="module")
def converted(keras_models, real_windows) -> dict[str, bytes]:
    return to_int8_many(keras_models, real_windows, spec=DEFAULT_SPEC)


@pytest.fixture(scope="module")
def with_metadata(converted) -> bytes:
    doc = build_document(converted["cnn"], spec=DEFAULT_SPEC, class_names=CLASSES,
                         threshold=0.42, training={"windows": 1234}, version="test-1",
                         architecture="cnn")
    return add_metadata(converted["cnn"], doc)


names = pytest.mark.parametrize("name", sorted(ARCHITECTURES))


# ---- conversion and budget -----------------------------------------------------------------

@names
def test_converts_to_full_int8_within_size_and_op_budget(name, converted):
    model = parse_tflite(converted[name])
    assert len(converted[name]) <= MAX_MODEL_BYTES
    assert [t.dtype for t in (*model.input_tensors, *model.output_tensors)] == ["int8", "int8"]
    ops = check_tflm_ops(converted[name], name)
    assert not {"QUANTIZE", "DEQUANTIZE", "WHILE"} & set(ops), ops
    assert ("UNIDIRECTIONAL_SEQUENCE_LSTM" in ops) == ARCHITECTURES[name].recurrent
    weights = [t for t in model.subgraphs[0].tensors if t.buffer and t.dtype == "float32"]
    assert not weights, "float tensors left in a full-int8 model"


@pytest.mark.slow
@names
def test_smallest_arena_is_measured_and_within_budget(name, converted, tmp_path):
    arena = smallest_arena(converted[name])
    assert arena <= MAX_ARENA_BYTES
    path = tmp_path / "m.tflite"
    path.write_bytes(converted[name])
    assert arena_fits(path, arena) and not arena_fits(path, arena - 16)


def test_macs_follow_the_cnn_shapes(converted):
    frames, ceps = DEFAULT_SPEC.frames_per_window, DEFAULT_SPEC.n_ceps
    f1, f2, f3 = CNN_FILTERS
    last = (frames // 4) * (ceps // 4)  # positions after two 2x2 poolings
    expected = (frames * ceps * f1 * 9 + (frames // 2) * (ceps // 2) * f2 * 9 * f1
                + last * f3 * 9 * f2 + last * f3 * len(CLASSES))  # 3x3 convs + 1x1 class conv
    assert count_macs(converted["cnn"]) == {"CONV_2D": expected}
    assert count_macs(converted["rnn"])["FULLY_CONNECTED"] == LSTM_UNITS * len(CLASSES)


# ---- parity --------------------------------------------------------------------------------

@names
def test_tflm_matches_litert_on_real_windows(name, converted, real_windows):
    x = quantise_windows(converted[name], real_windows)
    micro = run_tflm(converted[name], x)
    reference = compare(micro, run_litert(converted[name], x, "reference"))
    builtin = compare(micro, run_litert(converted[name], x, "builtin"))
    if ARCHITECTURES[name].recurrent:
        # TFLite Micro's integer LSTM differs by <= 1 LSB in its output and in the logits; the
        # softmax turned that into 2 LSB of probability on a few real windows (measured).
        for parity in (reference, builtin):
            assert parity.max_lsb <= 2 and parity.same_argmax == parity.windows, parity
            assert parity.identical_share >= 0.8, parity
    else:
        assert reference.identical == reference.windows, reference
        assert builtin.max_lsb <= 1
    assert len(x) >= 100


@names
def test_int8_scores_track_the_float_model(name, converted, keras_models, real_windows):
    x = quantise_windows(converted[name], real_windows)
    int8 = dequantise_outputs(converted[name], run_tflm(converted[name], x))
    float_scores = keras_models[name].predict(real_windows, verbose=0)
    assert np.abs(int8 - float_scores).max() < 0.05


# ---- bias correction -----------------------------------------------------------------------

def _float_probs(keras_model, model: bytes, x: np.ndarray) -> np.ndarray:
    """The float model on the int8 inputs' own values, as a run trained on the grid."""
    inp = parse_tflite(model).input_tensors[0]
    deq = (x.astype(np.float32) - inp.zero_point[0]) * inp.scale[0]
    return keras_model.predict(deq, verbose=0)


WITH_LOGIT_BIAS = ("cnn",)
"""The untrained RNN's and CRNN's dense biases are all zeros, which the converter drops."""


@names
def test_logit_bias_is_found_behind_softmax(name, converted):
    op = find_logit_op(converted[name])
    assert op is not None and op.logits.shape[-1] == len(CLASSES)
    if name in WITH_LOGIT_BIAS:
        assert op.bias.dtype == "int32" and op.bias.shape == (len(CLASSES),)
    else:
        assert op.bias is None
        model, report = correct_logit_bias(converted[name], np.zeros((1, 74, 13), np.int8),
                                           np.full((1, 2), 0.5))
        assert model == converted[name] and not report["applied"]


@pytest.mark.parametrize("name", WITH_LOGIT_BIAS)
def test_bias_correction_takes_out_a_known_logit_shift(name, converted, keras_models,
                                                       real_windows):
    model = converted[name]
    op = find_logit_op(model)
    x = quantise_windows(model, real_windows)
    probs = _float_probs(keras_models[name], model, x)
    shifted = shift_bias(model, op.bias, np.array([0.4, -0.4]))  # a 0.8 logit error
    corrected, report = correct_logit_bias(shifted, x, probs)
    assert report["applied"] and np.isclose(np.diff(report["logit_error_before"]), -0.8,
                                            atol=0.1).all()
    after = logit_error(corrected, op, x, probs)
    lsb = op.logits.scale[0]
    assert np.abs(after).max() < 0.1 * lsb
    assert np.abs(after).max() <= np.abs(logit_error(model, op, x, probs)).max() + 1e-9


def test_bias_correction_rewrites_only_the_bias_and_keeps_tflm_parity(converted,
                                                                       keras_models,
                                                                       real_windows):
    model = converted["cnn"]
    op = find_logit_op(model)
    x = quantise_windows(model, real_windows)
    corrected, _ = correct_logit_bias(shift_bias(model, op.bias, np.array([0.3, -0.3])), x,
                                      _float_probs(keras_models["cnn"], model, x))
    changed = np.flatnonzero(np.frombuffer(model, np.uint8) != np.frombuffer(corrected,
                                                                              np.uint8))
    assert len(corrected) == len(model) and 0 < changed.size <= 4 * len(CLASSES)
    assert changed.max() - changed.min() < 4 * len(CLASSES)
    np.testing.assert_array_equal(run_tflm(corrected, x), run_litert(corrected, x))


def test_representative_windows_cover_every_class():
    labels = np.array([0] * 90 + [1] * 8 + [2] * 2)
    x = np.arange(100, dtype=np.float32)[:, None, None] * np.ones((1, 4, 3), np.float32)
    rep = representative_windows(x, labels, n=30, seed=0)
    picked = labels[rep[:, 0, 0].astype(int)]
    assert set(picked) == {0, 1, 2} and len(rep) == 10 + 8 + 2


# ---- metadata ------------------------------------------------------------------------------

def test_metadata_round_trips_through_the_edge_reader(with_metadata, converted):
    meta = read_model_meta(with_metadata, spec=DEFAULT_SPEC)
    assert meta.spec == DEFAULT_SPEC
    assert meta.class_names == CLASSES and meta.threshold == 0.42
    assert meta.training == {"windows": 1234} and meta.version == "test-1"
    assert meta.input == parse_tflite(converted["cnn"]).input_tensors[0]
    assert meta.document["input"]["scale"] == meta.input.scale[0]


def test_metadata_leaves_the_model_bit_identical_in_both_interpreters(with_metadata, converted,
                                                                      real_windows):
    x = quantise_windows(converted["cnn"], real_windows[:40])
    before = run_tflm(converted["cnn"], x)
    np.testing.assert_array_equal(run_tflm(with_metadata, x), before)
    np.testing.assert_array_equal(run_litert(with_metadata, x), before)
    assert len(with_metadata) - len(converted["cnn"]) < 2048


def test_rewriting_metadata_replaces_the_entry(with_metadata):
    doc = read_model_meta(with_metadata).document
    again = add_metadata(with_metadata, {**doc, "threshold": 0.6})
    assert read_model_meta(again).threshold == 0.6
    assert list(parse_tflite(again).metadata).count(METADATA_NAME) == 1


def test_edge_reader_imports_no_tensorflow():
    code = ("import sys, edge.model_meta, edge.tflite_file; "
            "bad = [m for m in ('tensorflow', 'keras', 'tf_keras', 'scipy') if m in sys.modules]; "
            "sys.exit(bool(bad))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---- refusals: one line each ---------------------------------------------------------------

def _refused(call, *words: str) -> str:
    with pytest.raises(ModelError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


def test_refuses_a_file_that_is_not_a_model(tmp_path, data_root):
    wav = next((data_root / "pascal" / "set_b").glob("*.wav"))
    _refused(lambda: read_model_meta(wav), str(wav), "not a TFLite model")
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    _refused(lambda: read_model_meta(empty), "not a TFLite model")
    _refused(lambda: read_model_meta(tmp_path / "missing.tflite"), "not found")


def test_refuses_a_truncated_model(with_metadata):
    _refused(lambda: read_model_meta(with_metadata[:600], name="cut.tflite"), "cut.tflite",
             "truncated or corrupt")


def test_damaged_models_raise_model_error_or_parse(with_metadata):
    """The edge reader meets files from disks and networks: any damage must end in a
    ModelError (or a clean parse when the bytes touched were weights), never a crash."""
    rng = np.random.default_rng(5)
    refused = 0
    for trial in range(400):
        data = bytearray(with_metadata)
        if trial % 2:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for at in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
                data[at] = int(rng.integers(0, 256))
        try:
            read_model_meta(bytes(data), name="damaged.tflite")
        except ModelError as err:
            assert "\n" not in str(err)
            refused += 1
    assert refused > 200


def test_refuses_a_float_model(keras_models, tmp_path):
    import tensorflow as tf

    float_model = tf.lite.TFLiteConverter.from_keras_model(keras_models["cnn"]).convert()
    path = tmp_path / "float.tflite"
    path.write_bytes(float_model)
    _refused(lambda: read_model_meta(path), "float32", "not int8")


def test_refuses_a_model_without_heartsound_metadata(converted):
    _refused(lambda: read_model_meta(converted["rnn"], name="bare.tflite"), "bare.tflite",
             f"no '{METADATA_NAME}' metadata")


def test_refuses_a_model_built_for_another_front_end(converted):
    other = replace(DEFAULT_SPEC, n_ceps=12)
    doc = build_document(converted["cnn"], spec=other, class_names=CLASSES, threshold=0.5)
    model = add_metadata(converted["cnn"], doc)
    read_model_meta(model, spec=other)  # fine for the front end it was built for
    _refused(lambda: read_model_meta(model, spec=DEFAULT_SPEC, name="m.tflite"),
             "different front end", "n_ceps 12 in the model vs 13 here")


def test_refuses_metadata_that_disagrees_with_the_tensors(converted):
    doc = build_document(converted["cnn"], spec=DEFAULT_SPEC, class_names=CLASSES,
                         threshold=0.5)
    doc["input"] = {**doc["input"], "zero_point": doc["input"]["zero_point"] + 1}
    _refused(lambda: read_model_meta(add_metadata(converted["cnn"], doc)),
             "input quantisation")
    _refused(lambda: build_document(converted["cnn"], spec=DEFAULT_SPEC,
                                    class_names=("a", "b", "c"), threshold=0.5), "2 distinct names")


def test_refuses_bad_representative_sets(keras_models, real_windows):
    _refused(lambda: check_representative(np.zeros((0, 74, 13))), "empty")
    _refused(lambda: check_representative(real_windows[:, :50], DEFAULT_SPEC),
             "another feature spec")
    _refused(lambda: to_int8(keras_models["cnn"], real_windows[:, :50]), "50x13", "74x13")


def test_refuses_unsupported_ops():
    codes = {name: code for code, name in builtin_names().items()}
    graph = Subgraph(tensors=(), inputs=(), outputs=(), operators=(
        OperatorInfo(codes["CONV_2D"], None, 1, (), ()),
        OperatorInfo(codes["EXP"], None, 1, (), ()),
        OperatorInfo(0, "MyCustomOp", 1, (), ())))
    model = TfliteModel("m.tflite", 0, 3, (graph,))
    assert list_ops(model) == ["CONV_2D", "EXP", "CUSTOM:MyCustomOp"]
    _refused(lambda: check_tflm_ops(model, "m.tflite"), "EXP", "CUSTOM:MyCustomOp")


@pytest.mark.slow
def test_a_converter_crash_is_a_one_line_error(real_windows):
    """tf-keras GRU kills the converter with SIGSEGV (TOOLCHAIN_FACTS); the caller survives."""
    import tf_keras as k

    inp = k.Input(real_windows.shape[1:])
    gru = k.Model(inp, k.layers.Dense(2, activation="softmax")(k.layers.GRU(8)(inp)))
    _refused(lambda: to_int8(gru, real_windows[:20], architecture="gru"), "gru", "crashed",
             "SIGSEGV")


def test_supported_op_set_is_derived_from_the_tflm_tree():
    assert THIRD_PARTY_TFLM.is_dir(), f"TFLite Micro sources not found at {THIRD_PARTY_TFLM}"
    assert derive_tflm_int8_ops(THIRD_PARTY_TFLM) == TFLM_INT8_OPS
