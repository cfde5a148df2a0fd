"""edge.interpreter on a real full-int8 model converted here from a tiny Keras CNN.

The model is untrained (seeded weights): these tests are about running an int8 model
the same way everywhere, not about accuracy. Its representative data and every input
below are real fixed-point features of real recordings from every source.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.audio import read_wav
from edge.errors import ModelError
from edge.interpreter import (
    Classifier,
    Quantisation,
    load_interpreter,
    quantise_features,
    quantise_float,
)
from edge.mfcc import mfcc, windows
from edge.spec import DEFAULT_SPEC

REPO = Path(__file__).resolve().parent.parent
# Models trained by train/ take the int16 Q8.7 values as they are (float value = v).
FRAC = 0
# Two recordings per source, chosen by sorted name: every database is covered.
SOURCES = {
    "pascal-a": ("pascal/set_a", "normal__*.wav"),
    "pascal-b": ("pascal/set_b", "normal__*.wav"),
    "physionet-a": ("physionet2016/training-a", "a*.wav"),
    "physionet-b": ("physionet2016/training-b", "b*.wav"),
    "physionet-d": ("physionet2016/training-d", "d*.wav"),
    "physionet-e": ("physionet2016/training-e", "e*.wav"),
    "physionet-f": ("physionet2016/training-f", "f*.wav"),
    "circor": ("circor2022/training_data", "*.wav"),
}


def _windows_of(path: Path) -> np.ndarray:
    pcm = read_wav(path, DEFAULT_SPEC.sample_rate_hz)
    return windows(mfcc(pcm, DEFAULT_SPEC), DEFAULT_SPEC)


@pytest.fixture(scope="session")
def real_windows(data_root: Path) -> dict[str, np.ndarray]:
    """int16 feature windows (n, frames, ceps) of two recordings per source."""
    out = {}
    for source, (folder, pattern) in SOURCES.items():
        paths = sorted((data_root / folder).glob(pattern))[:2]
        assert paths, f"no {pattern} in {data_root / folder}"
        out[source] = np.concatenate([_windows_of(p) for p in paths])
    return out


@pytest.fixture(scope="session")
def int8_model(tmp_path_factory, real_windows) -> tuple[Path, object]:
    """(path of a full-int8 .tflite, the float Keras model it came from)."""
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    keras.utils.set_random_seed(1234)
    shape = (DEFAULT_SPEC.frames_per_window, DEFAULT_SPEC.n_ceps, 1)
    flat = np.concatenate(list(real_windows.values())).reshape(-1, DEFAULT_SPEC.n_ceps)
    # Like train/trainer.py: int16 values in, standardised inside the model (there a 1x1
    # convolution; any in-graph standardisation serves this test of the input path).
    model = keras.Sequential([
        keras.Input(shape=shape),
        keras.layers.Reshape(shape[:2]),
        keras.layers.Normalization(axis=-1, mean=flat.mean(axis=0),
                                   variance=np.maximum(flat.var(axis=0), 1.0)),
        keras.layers.Reshape(shape),
        keras.layers.Conv2D(4, (5, 3), activation="relu"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Conv2D(8, (3, 3), activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2, activation="softmax"),
    ])
    calib = np.concatenate(list(real_windows.values())).astype(np.float32) / 2**FRAC

    def representative():
        for w in calib:
            yield [w[None, :, :, None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    path = tmp_path_factory.mktemp("model") / "tiny_int8.tflite"
    path.write_bytes(converter.convert())
    return path, model


def _all(real_windows) -> np.ndarray:
    return np.concatenate(list(real_windows.values()))


def test_prefers_ai_edge_litert_without_xnnpack(int8_model):
    interpreter, backend = load_interpreter(int8_model[0])
    assert backend == "ai_edge_litert"
    assert interpreter.get_input_details()[0]["dtype"] == np.int8


@pytest.mark.parametrize("frac", [0, DEFAULT_SPEC.out_frac_bits])
def test_integer_input_quantisation_matches_tflite_float_formula(int8_model, real_windows,
                                                                  frac):
    clf = Classifier(int8_model[0])
    # The same int8 codes whether the model reads v or v * 2^-7 (scale moved with it).
    quant = Quantisation(clf.input_quant.scale / 2**frac, clf.input_quant.zero_point)
    v = _all(real_windows)
    q_int = quantise_features(v, quant, frac).astype(int)
    q_float = quantise_float(v.astype(np.float64) / 2**frac, quant).astype(int)
    diff = np.abs(q_int - q_float)
    # Ties are the only possible difference (half up vs half away from zero).
    assert diff.max() <= 1
    assert np.count_nonzero(diff) <= v.size * 1e-3, f"{np.count_nonzero(diff)} of {v.size}"
    assert q_int.min() >= -128 and q_int.max() <= 127
    assert len(np.unique(q_int)) > 50  # real features use the int8 range, not a corner


def test_int8_model_tracks_float_keras_on_real_windows(int8_model, real_windows):
    path, keras_model = int8_model
    clf = Classifier(path, feature_frac_bits=FRAC)
    for source, wins in real_windows.items():
        pred = clf.predict(wins)
        assert pred.raw.dtype == np.int8 and pred.raw.shape == (len(wins), 2)
        ref = keras_model(wins[..., None].astype(np.float32) / 2**FRAC).numpy()
        err = np.abs(pred.probabilities - ref).max()
        # Output step 1/256; measured max 0.0055 (PhysioNet b). 0.03 = 8 steps of int8 error.
        assert err < 0.03, f"{source}: int8 vs float max error {err:.3f}"
        np.testing.assert_allclose(pred.probabilities.sum(axis=1), 1.0, atol=0.02)


def test_batch_one_per_window_equals_single_calls(int8_model, real_windows):
    clf = Classifier(int8_model[0])
    wins = real_windows["physionet-b"]
    together = clf.predict(wins).raw
    alone = np.stack([clf.predict(w[None]).raw[0] for w in wins])
    np.testing.assert_array_equal(together, alone)


def test_tensorflow_lite_backend_gives_identical_bits(int8_model, real_windows):
    pytest.importorskip("tensorflow")
    wins = _all(real_windows)
    litert = Classifier(int8_model[0], backend="ai_edge_litert")
    tfl = Classifier(int8_model[0], backend="tensorflow.lite")
    assert tfl.backend == "tensorflow.lite"
    np.testing.assert_array_equal(litert.predict(wins).raw, tfl.predict(wins).raw)


def test_tflite_runtime_backend_identical_or_clear_message(int8_model, real_windows):
    wins = _all(real_windows)[:20]
    try:
        other = Classifier(int8_model[0], backend="tflite_runtime")
    except ModelError as exc:
        assert "pip install tflite-runtime" in str(exc)
        return
    ref = Classifier(int8_model[0], backend="ai_edge_litert")
    np.testing.assert_array_equal(ref.predict(wins).raw, other.predict(wins).raw)


def test_float_windows_are_quantised_like_tflite(int8_model, real_windows):
    clf = Classifier(int8_model[0], feature_frac_bits=FRAC)
    wins = real_windows["pascal-a"][:3]
    as_float = clf.predict(wins.astype(np.float32) / 2**FRAC).raw
    as_int = clf.predict(wins).raw
    assert np.abs(as_float.astype(int) - as_int.astype(int)).max() <= 1


def test_model_errors_are_one_line(tmp_path, int8_model):
    with pytest.raises(ModelError, match="no such model file"):
        Classifier(tmp_path / "missing.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"this is not a flatbuffer" * 10)
    with pytest.raises(ModelError, match="not a usable TFLite model") as info:
        Classifier(bad)
    assert "\n" not in str(info.value)
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        Classifier(empty)
    clf = Classifier(int8_model[0])
    with pytest.raises(ModelError, match="another front end"):
        clf.predict(np.zeros((2, 60, 13), dtype=np.int16))
    with pytest.raises(ModelError, match="unknown"):
        load_interpreter(int8_model[0], backend="onnx")


def test_quantisation_rejects_float_tensors():
    detail = {"dtype": np.float32, "quantization_parameters": {"scales": np.zeros(0),
                                                               "zero_points": np.zeros(0)}}
    with pytest.raises(ModelError, match="per-tensor int8"):
        Quantisation.of(detail, "input")


def test_edge_loads_model_without_tensorflow(int8_model):
    code = (
        "import sys; from edge.interpreter import Classifier; import numpy as np\n"
        f"c = Classifier({str(int8_model[0])!r})\n"
        "c.predict(np.zeros((1, 74, 13), np.int16))\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'scipy') if m in sys.modules]\n"
        "print(c.backend, heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["ai_edge_litert", "[]"] or out.stdout.strip().endswith(
        "ai_edge_litert []"), out.stdout


SECOND_PYTHON_ENV = "HEARTSOUND_TFLITE_RUNTIME_PYTHON"
# scripts/setup.sh makes this environment (tflite-runtime 2.14, numpy<2), as CI does.
DEFAULT_SECOND_PYTHON = REPO / ".venv-tflrt" / "bin" / "python"


def _second_python() -> str:
    """The older-Pi Python; missing is a failure, not a skip: CI must prove both."""
    path = os.environ.get(SECOND_PYTHON_ENV) or str(DEFAULT_SECOND_PYTHON)
    if not Path(path).exists():
        pytest.fail(f"no tflite-runtime environment at {path}: run scripts/setup.sh or set "
                    f"{SECOND_PYTHON_ENV}", pytrace=False)
    return path


def test_tflite_runtime_in_second_environment_gives_identical_bits(int8_model, real_windows,
                                                                   tmp_path):
    """The older-Pi interpreter (tflite-runtime 2.14, numpy<2) in its own environment."""
    wins = _all(real_windows)
    np.save(tmp_path / "wins.npy", wins)
    src, dst = str(tmp_path / "wins.npy"), str(tmp_path / "out.npy")
    code = (
        "import sys, numpy as np; from edge.interpreter import Classifier\n"
        f"c = Classifier({str(int8_model[0])!r}, backend='tflite_runtime')\n"
        f"np.save({dst!r}, c.predict(np.load({src!r})).raw)\n"
        "print(c.backend, np.__version__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(SECOND_PYTHON_ENV, None)
    res = subprocess.run([_second_python(), "-c", code], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "tflite_runtime"
    ref = Classifier(int8_model[0], backend="ai_edge_litert").predict(wins).raw
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), ref)
