"""`heartsound convert RUN_DIR` on a real small training run, and its refusals of bad input.

The command runs in a child process exactly as a user runs it. The run folder is a real
one (tests/convert_run.py: a CNN trained one epoch on ~12 recordings of every source).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from convert.ops import count_macs, list_ops
from convert.size_report import MAX_ARENA_BYTES, MAX_MODEL_BYTES
from convert.tflm import ARENA_STEP, arena_fits
from edge.model_meta import read_model_meta
from edge.spec import FeatureSpec
from tests.convert_run import (
    PLACEHOLDER,
    REPO,
    converted_model,
    heartsound,
    small_run,
    stderr_lines,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root) -> Path:
    return small_run(tmp_path_factory, data_root)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, data_root) -> tuple[Path, str]:
    return converted_model(tmp_path_factory, data_root)


@pytest.fixture
def run_copy(run, tmp_path) -> Path:
    """A private copy of the run folder to damage."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.png"))
    return copy


def _one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    lines = stderr_lines(proc)
    assert proc.returncode == code, proc.stderr[-1500:]
    assert len(lines) == 1 and lines[0].startswith("heartsound: "), lines
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------ result


def test_model_carries_the_runs_contract(converted, run):
    model, _ = converted
    assert model.read_bytes() != PLACEHOLDER  # --force replaced the existing file
    spec = FeatureSpec.from_json((run / "spec.json").read_text())
    meta = read_model_meta(model, spec=spec)  # the device's own reader and spec check
    info = json.loads((run / "model.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(meta.class_names) == info["class_names"]
    assert meta.threshold == info["threshold"]
    assert meta.normal_class == info["normal_class"]
    assert meta.architecture == info["architecture"] == "cnn"
    assert meta.input.dtype == meta.output.dtype == "int8"
    assert meta.training["split_id"] == metrics["data"]["split_id"]
    assert meta.training["counts"] == metrics["data"]["counts"]
    assert meta.version.startswith("screening-cnn-")
    assert not list(model.parent.glob(".*.tmp"))  # atomic write left nothing behind


def test_float32_companion_is_the_runs_float_model_with_its_metadata(converted, run):
    """Beside the int8 model: the same float model as float32 .tflite (bench's fair
    baseline), carrying the int8 model's metadata and tied to its file by sha256; its
    outputs on the run's real calibration windows are the Keras model's."""
    import hashlib

    from ai_edge_litert.interpreter import Interpreter

    from convert.interpreter_runs import run_float
    from edge.interpreter import Classifier
    from edge.model_meta import float_companion_path, read_float_companion

    model, printed = converted
    companion = float_companion_path(model)
    assert companion.name == "model_int8.float32.tflite" and companion.name in printed
    doc = read_float_companion(companion, hashlib.sha256(model.read_bytes()).hexdigest())
    meta = read_model_meta(model)
    for key in ("spec", "class_names", "threshold", "version", "normal_class"):
        assert doc[key] == meta.document[key], key
    assert doc["input"]["dtype"] == doc["output"]["dtype"] == "float32"
    with pytest.raises(Exception, match="float32"):  # never screened with
        read_model_meta(companion)
    windows = np.load(run / "representative.npy")[:50]
    device = Classifier(model)
    x = (device.input_quant.dequantise(device.quantise(windows))
         if doc["float_input"] == "int8_grid" else windows.astype(np.float32))
    interp = Interpreter(model_path=str(companion))
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    outs = []
    for w in x:
        interp.set_tensor(i, w[None])
        interp.invoke()
        outs.append(interp.get_tensor(o)[0].copy())
    np.testing.assert_allclose(np.array(outs), run_float(run / "model.keras", x), atol=1e-5)


def test_printed_sizes_ops_and_macs_are_the_models(converted):
    model, printed = converted
    data = model.read_bytes()
    size = int(re.search(r"model size\s+([\d,]+) bytes", printed).group(1).replace(",", ""))
    assert size == len(data) <= MAX_MODEL_BYTES
    ops_line = re.search(r"ops\s+(.+)", printed).group(1)
    for op in set(list_ops(data)):
        assert op in ops_line
    macs = int(re.search(r"MACs per window\s+([\d,]+)", printed).group(1).replace(",", ""))
    assert macs == sum(count_macs(data).values()) > 0
    assert re.search(r"TFLite Micro int8\s+PASS", printed)


def test_logit_bias_is_corrected_on_the_runs_calibration_windows(converted, run):
    model, printed = converted
    c = read_model_meta(model.read_bytes()).document["bias_correction"]
    assert c["applied"] and c["windows"] == len(np.load(run / "representative.npy"))
    before, after = np.abs(c["logit_error_before"]), np.abs(c["logit_error_after"])
    assert after.max() < 0.01 and after.max() <= before.max()
    assert f"{c['logit_error_before'][0]:+.4f}" in re.search(r"int8 logit bias\s+(.+)",
                                                           printed).group(1)


def test_printed_arena_is_the_smallest_that_runs(converted):
    """The arena figure is measured: it allocates and runs, 16 bytes less does not."""
    model, printed = converted
    found = re.search(r"arena \(TFLite Micro\)\s+([\d,]+) bytes.*(PASS|FAIL)", printed)
    arena = int(found.group(1).replace(",", ""))
    assert found.group(2) == ("PASS" if arena <= MAX_ARENA_BYTES else "FAIL")
    assert arena_fits(model, arena)
    assert not arena_fits(model, arena - ARENA_STEP)


# ---------------------------------------------------------------------------- refusals


def test_refuses_to_overwrite_without_force(run, tmp_path):
    out = tmp_path / "model.tflite"
    out.write_bytes(b"keep me")
    proc = heartsound("convert", run, "--out", out)
    _one_line_error(proc, 2, str(out), "--force")
    assert out.read_bytes() == b"keep me"


def test_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    _one_line_error(heartsound("convert", tmp_path), 2, str(tmp_path), "not a training run")
    missing = tmp_path / "nowhere"
    _one_line_error(heartsound("convert", missing), 2, str(missing))


def test_refuses_a_corrupted_representative_set(run_copy, tmp_path):
    (run_copy / "representative.npy").write_bytes(b"\x93NUMPY garbage")
    out = tmp_path / "m.tflite"
    _one_line_error(heartsound("convert", run_copy, "--out", out), 4, "representative.npy")
    assert not out.exists()


def test_refuses_an_empty_representative_set(run_copy, tmp_path):
    np.save(run_copy / "representative.npy", np.zeros((0, 74, 13), np.int16))
    _one_line_error(heartsound("convert", run_copy, "--out", tmp_path / "m.tflite"), 4,
                    "representative set is empty")


def test_refuses_a_representative_set_from_another_spec(run_copy, tmp_path):
    rep = np.load(run_copy / "representative.npy")
    np.save(run_copy / "representative.npy", rep[:, : rep.shape[1] // 2])  # shorter windows
    _one_line_error(heartsound("convert", run_copy, "--out", tmp_path / "m.tflite"), 4,
                    "another feature spec")


def test_refuses_a_model_with_ops_tflite_micro_lacks(run_copy, tmp_path):
    """A real conversion whose result uses EXP (no int8 TFLite Micro kernel): no file."""
    code = textwrap.dedent(f"""
        import tf_keras as k
        i = k.Input((74, 13))
        x = k.layers.Rescaling(1 / 1000.0)(i)
        x = k.layers.Activation("exponential")(x)
        x = k.layers.GlobalAveragePooling1D()(x)
        k.Model(i, k.layers.Dense(2, activation="softmax")(x)).save({str(run_copy)!r} +
                                                                   "/model.keras")
    """)
    made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert made.returncode == 0, made.stderr[-1000:]
    out = tmp_path / "m.tflite"
    _one_line_error(heartsound("convert", run_copy, "--out", out), 4, "EXP", "TFLite Micro")
    assert not out.exists()


def test_command_modules_import_nothing_heavy():
    code = ("import sys, convert.commands.convert, convert.commands.verify\n"
            "print([m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------- float baseline (bench)


def test_bench_baseline_times_the_runs_float_pipeline(converted, run):
    model, _ = converted
    proc = heartsound("bench", "--model", model, "--baseline", run, "--runs", 5, "--warmup", 1,
                      "--json", "--wav", REPO / "examples" / "physionet_a0336_abnormal.wav")
    assert proc.returncode == 0, proc.stderr[-1500:]
    figures = json.loads(proc.stdout)
    baseline = figures["float_baseline"]
    calls = ("predict", "eager", "graph")
    stages = ["front_end_ms"] + [f"{s}_{c}_ms" for s in ("model", "window") for c in calls]
    assert sorted(baseline) == sorted(stages)
    for stage in stages:
        assert 0 < baseline[stage]["p50"] <= baseline[stage]["max"], stage
    for call in calls:
        assert figures["speedup_vs_float"][call] == pytest.approx(
            baseline[f"window_{call}_ms"]["p50"] / figures["window_ms"]["p50"])


@pytest.mark.parametrize(("normalise", "max_lsb"), [
    ("c0", 1.0), ("rec_mean", 1.0),
    ("rec_mvn", 8.0),  # the mean's floor scaled by 128 / SD, and the SD's floor: 1/16 SD
])
def test_float_windows_match_the_integer_windows_on_real_features(data_root, normalise,
                                                                  max_lsb):
    """Same cut and normalisation as edge.mfcc.windows; only the integer floors (the
    mean's, and for rec_mvn the SD's) tell them apart."""
    from edge.audio import read_wav
    from edge.mfcc import mfcc, windows
    from train.baseline import float_windows

    spec = FeatureSpec(normalise=normalise)
    pcm = read_wav(data_root / "physionet2016" / "training-a" / "a0001.wav",
                   spec.sample_rate_hz)
    feats = mfcc(pcm, spec)
    ints, floats = windows(feats, spec), float_windows(feats.astype(np.float64), spec)
    assert ints.shape == floats.shape and len(ints) > 5
    assert np.abs(ints - floats).max() < max_lsb
