"""`heartsound verify MODEL --run RUN_DIR` on a real small run: its figures are real.

The verification runs once, as a user runs it (child process), on the session's real run
(tests/convert_run.py). The tests then recompute parts of its report independently:
the windows of the val+test recordings from splits.json, the device's int8 scores and
TFLite Micro's on one recording of every source, the decisions from the scores.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from convert.interpreter_runs import tflite_runtime_python
from convert.tflm import run_litert, run_tflm
from convert.verify import requirements
from edge.decision import abnormal_probability, recording_probabilities
from edge.interpreter import Classifier
from edge.spec import FeatureSpec
from tests.convert_run import (
    cache_of,
    converted_model,
    data_args,
    heartsound,
    small_run,
    stderr_lines,
)
from tests.data_sources import SCREENING_SOURCES as SOURCES
from train.datasets import SCREENING, load_records
from train.features import IDENTITY, FeatureCache, extract_all, recording_windows
from train.targets import release_checks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root) -> Path:
    return small_run(tmp_path_factory, data_root)


@pytest.fixture(scope="module")
def model(tmp_path_factory, data_root) -> Path:
    return converted_model(tmp_path_factory, data_root)[0]


@pytest.fixture(scope="module")
def verified(model, run, data_root, tmp_path_factory) -> tuple[subprocess.CompletedProcess,
                                                               dict]:
    out = tmp_path_factory.mktemp("verify") / "report.json"
    proc = heartsound("verify", model, "--run", run, "--json", out, "--cache", cache_of(run),
                      *data_args(data_root))
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


@pytest.fixture(scope="module")
def eval_windows(run, data_root) -> dict[str, np.ndarray]:
    """Independently: int16 windows of every labelled val/test recording in splits.json."""
    splits = json.loads((run / "splits.json").read_text())
    spec = FeatureSpec.from_json((run / "spec.json").read_text())
    by_name = {r.name: r for r in load_records([data_root / "pascal",
                                                data_root / "physionet2016"])}
    chosen = SCREENING.select(by_name[n] for n in splits["val"] + splits["test"])
    feats, _ = extract_all([(r.path, IDENTITY) for r in chosen], spec,
                           FeatureCache(cache_of(run), spec), progress=False)
    return {r.name: recording_windows(f, spec) for r, f in zip(chosen, feats, strict=True)}


# ------------------------------------------------------------------------------ figures


def test_exit_status_follows_the_requirements(verified):
    proc, report = verified
    assert report["requirements"] and report["pass"] == all(r["ok"] for r in
                                                            report["requirements"])
    assert proc.returncode == (0 if report["pass"] else 1)
    if not report["pass"]:
        lines = stderr_lines(proc)
        assert len(lines) == 1 and report["reason"] in lines[0]
    for r in report["requirements"]:
        assert f"{'PASS' if r['ok'] else 'FAIL'}  {r['name']}" in proc.stdout


def test_targets_flag_is_a_release_check(model, run, data_root, tmp_path):
    """--targets prints every target with its figure and exits 1 when any is missed,
    as the run's metrics and the verification report say (a 1-epoch model misses)."""
    out = tmp_path / "report.json"
    proc = heartsound("verify", model, "--run", run, "--json", out, "--cache", cache_of(run),
                      "--targets", "--no-tflite-runtime", *data_args(data_root))
    report = json.loads(out.read_text())
    checks = release_checks(json.loads((run / "metrics.json").read_text()), report)
    assert report["pass"], report["reason"]
    missed = [name for name, (ok, _) in checks.items() if not ok]
    assert "test physionet-a" in checks and "model <= 64 KB" in checks
    for name, (ok, figure) in checks.items():
        assert f"{'MET ' if ok else 'MISS'} {name}{figure}" in proc.stdout
    assert proc.returncode == (1 if missed else 0)
    if missed:
        lines = stderr_lines(proc)
        assert len(lines) == 1 and missed[0] in lines[0] and "targets missed" in lines[0]


def test_window_and_recording_counts_are_the_val_and_test_recordings(verified, eval_windows):
    _, report = verified
    assert report["data"]["windows"]["total"] == sum(len(w) for w in eval_windows.values())
    assert report["data"]["windows"]["val"] + report["data"]["windows"]["test"] == \
        report["data"]["windows"]["total"]
    assert sorted(r["name"] for r in report["recordings"]) == sorted(eval_windows)
    assert {r["name"]: r["windows"] for r in report["recordings"]} == \
        {n: len(w) for n, w in eval_windows.items()}
    assert set(report["data"]["sources"]) == set(SOURCES)
    for key in ("litert_device_vs_tflm", "litert_optimised_vs_tflm"):
        parity = report["parity"][key]
        assert parity["windows"] == report["data"]["windows"]["total"]
        assert set(parity["by_source"]) == set(SOURCES)


def test_cnn_outputs_of_tflite_micro_equal_the_devices_litert(verified):
    _, report = verified
    assert not report["recurrent"]
    ref = report["parity"]["litert_device_vs_tflm"]
    assert ref["identical"] == ref["windows"] and ref["max_lsb"] == 0
    assert report["decisions"]["int8_litert_vs_tflm"]["differ"] == 0


def test_int8_and_tflm_scores_recomputed_on_one_recording_per_source(verified, eval_windows,
                                                                     model):
    """The report's scores are what the device (and TFLite Micro) compute, to the bit."""
    _, report = verified
    rows = {r["name"]: r for r in report["recordings"]}
    picked = {}
    for r in report["recordings"]:
        picked.setdefault(r["source"], r["name"])
    assert set(picked) == set(SOURCES)
    clf = Classifier(model)
    data = model.read_bytes()
    normal = report["class_names"].index("normal")
    for name in picked.values():
        q = clf.quantise(eval_windows[name])
        device = clf.predict(eval_windows[name])
        tflm = clf.output_quant.dequantise(run_tflm(data, q))
        np.testing.assert_array_equal(run_litert(data, q, "reference"), run_tflm(data, q))
        np.testing.assert_array_equal(device.raw, run_tflm(data, q))  # the device's path
        for key, probs in (("device", device.probabilities), ("tflm", tflm)):
            p = float(abnormal_probability(recording_probabilities(probs), normal))
            assert rows[name]["p_abnormal"][key] == pytest.approx(p, abs=1e-12), (name, key)


def test_decisions_and_metrics_follow_the_scores(verified):
    _, report = verified
    threshold, rows = report["threshold"], report["recordings"]
    flips = sum((r["p_abnormal"]["float"] >= threshold) != (r["p_abnormal"]["device"]
                                                             >= threshold) for r in rows)
    assert report["decisions"]["float_vs_int8"]["differ"] == flips
    for split in ("val", "test"):
        mine = [r for r in rows if r["split"] == split]
        for run_key, score_key in (("float", "float"), ("int8", "device"), ("tflm", "tflm")):
            tp = sum(r["label"] != "normal" and r["p_abnormal"][score_key] >= threshold
                     for r in mine)
            tn = sum(r["label"] == "normal" and r["p_abnormal"][score_key] < threshold
                     for r in mine)
            overall = report["metrics"][split][run_key]["overall"]
            assert overall["confusion"][1][1] == tp and overall["confusion"][0][0] == tn
        diff = report["macc_diff"][split]
        ints = report["metrics"][split]
        if diff is not None:
            assert diff == pytest.approx(abs(ints["int8"]["overall"]["macc"]
                                             - ints["float"]["overall"]["macc"]))


def test_float_model_reproduces_the_runs_own_test_figures(verified, run):
    """Same recordings, same windows, same model: the float test AUC is training's."""
    _, report = verified
    recorded = json.loads((run / "metrics.json").read_text())["test"]["recording"]["overall"]
    assert report["metrics"]["test"]["float"]["overall"]["n"] == recorded["n"]
    assert report["float_reproduces_training_metrics"] is (recorded["auc"] is not None)
    # the same patients resampled the same way: the same AUC interval as training's
    if recorded["auc"] is not None:
        assert report["metrics"]["test"]["float"]["overall"]["ci95"]["auc"] == pytest.approx(
            recorded["ci95"]["auc"], abs=1e-3)
    assert set(report["metrics"]["test"]["int8"]["overall"]["ci95"]) == {"se", "sp", "macc",
                                                                         "auc"}


def test_tflite_runtime_is_compared_when_installed(verified):
    _, report = verified
    parity = report["parity"]["tflite_runtime_vs_litert_device"]
    if tflite_runtime_python() is None:
        assert parity is None
        return
    assert report["interpreters"]["tflite_runtime"].startswith("tflite-runtime 2.14")
    assert parity["identical"] == parity["windows"] == report["data"]["windows"]["total"]


def test_size_report_is_included(verified, model):
    size = verified[1]["size"]
    assert size["model_bytes"] == model.stat().st_size
    assert size["arena_bytes"] and size["ok"] is True


# ---------------------------------------------------------------------------- refusals


def _one_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    lines = stderr_lines(proc)
    assert proc.returncode == code, proc.stderr[-1500:]
    assert len(lines) == 1 and lines[0].startswith("heartsound: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_refuses_a_file_that_is_not_a_model(run, tmp_path):
    fake = tmp_path / "fake.tflite"
    fake.write_text("this is not a flatbuffer\n" * 20)
    _one_line(heartsound("verify", fake, "--run", run), 4, "fake.tflite")


def test_refuses_a_folder_that_is_not_a_run(model, tmp_path):
    _one_line(heartsound("verify", model, "--run", tmp_path), 2, "not a training run")


def test_refuses_a_model_converted_from_another_run(model, run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("spec.json", "splits.json", "metrics.json", "representative.npy",
                 "model.keras"):
        (other / name).write_bytes((run / name).read_bytes())
    info = json.loads((run / "model.json").read_text())
    info["threshold"] = info["threshold"] / 2 + 0.01
    (other / "model.json").write_text(json.dumps(info))
    _one_line(heartsound("verify", model, "--run", other), 4, "another run")


# ------------------------------------------------------------- requirement rules (unit)


def _report(recurrent: bool, identical: int, differ: int, macc: float | None,
            max_lsb: int = 1) -> dict:
    parity = {"windows": 100, "identical": identical,
              "max_lsb": 0 if identical == 100 else max_lsb}
    return {"recurrent": recurrent,
            "parity": {"litert_device_vs_tflm": parity,
                       "tflite_runtime_vs_litert_device": None},
            "decisions": {"int8_litert_vs_tflm": {"differ": differ, "recordings": 20}},
            "macc_diff": {"val": macc, "test": 0.0}}


@pytest.mark.parametrize(("recurrent", "identical", "differ", "macc", "max_lsb", "ok"), [
    (False, 100, 0, 0.004, 0, True),
    (False, 99, 0, 0.004, 1, False),    # a CNN must be bit-exact on every window
    (True, 90, 0, 0.004, 1, True),      # a recurrent model: within 1 LSB, same decisions
    (True, 90, 0, 0.004, 2, False),
    (True, 90, 1, 0.004, 1, False),
    (False, 100, 0, 0.011, 0, False),   # more than 1 point of MAcc lost
    (False, 100, 0, None, 0, False),    # MAcc undefined: nothing proven
])
def test_requirement_rules(recurrent, identical, differ, macc, max_lsb, ok):
    reqs = requirements(_report(recurrent, identical, differ, macc, max_lsb),
                        max_macc_diff=0.01)
    assert all(r["ok"] for r in reqs) is ok
    assert any("every window" in r["name"] for r in reqs) is not recurrent
