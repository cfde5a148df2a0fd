"""`heartsound bench` reports every stage's figures on a real recording (no timing bounds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import outside_checkout_env

REPO = Path(__file__).resolve().parent.parent
STAGES = ("front_end_ms", "front_end_float64_ms", "interpreter_ms", "window_ms",
          "recording_window_ms")


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", "bench", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_bench_json_has_every_stage(data_root):
    wav = data_root / "physionet2016/training-b/b0001.wav"
    result = _bench("--wav", str(wav), "--runs", "20", "--warmup", "2", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["recording"] == str(wav)
    assert figures["init_ms"] > 0 and figures["first_inference_ms"] > 0
    for stage in STAGES:
        s = figures[stage]
        assert 0 < s["p50"] <= s["p95"] <= s["p99"] <= s["max"]
        assert s["mean"] <= s["max"]
    assert 10 < figures["peak_rss_mb"] < 10_000
    from edge.audio import read_wav  # the recording's own window count divides its cost
    from edge.spec import DEFAULT_SPEC as S

    frames = S.n_frames(len(read_wav(wav, S.sample_rate_hz)))
    assert figures["recording_window_ms"]["windows"] == 1 + (
        frames - S.frames_per_window) // S.window_hop_frames
    alt = figures["alternatives"]
    for route in ("int8_optimised", "float32"):
        for stage in ("interpreter_ms", "window_ms"):
            assert 0 < alt[route][stage]["p50"] <= alt[route][stage]["max"], (route, stage)
    assert alt["float32_model"].endswith("heartsound_int8.float32.tflite")
    ratios = figures["speedup_vs_float32"]
    assert ratios["int8_reference"]["window_ms"] == pytest.approx(
        alt["float32"]["window_ms"]["p50"] / figures["window_ms"]["p50"])
    assert ratios["int8_optimised"]["interpreter_ms"] == pytest.approx(
        alt["float32"]["interpreter_ms"]["p50"] / alt["int8_optimised"]["interpreter_ms"]["p50"])


def test_bench_counts_where_the_two_int8_kernel_sets_differ(tmp_path):
    """The optimised-vs-reference figures: on the recording, recounted here with the
    converter's own LiteRT runner; on the verification windows, the shipped report's."""
    from convert.tflm import run_litert
    from edge.audio import read_wav
    from edge.commands.bench import BENCH_RECORDING
    from edge.screening import PACKAGED_MODEL, Screener

    result = _bench("--runs", "3", "--warmup", "0", "--json")
    assert result.returncode == 0, result.stderr
    agreement = json.loads(result.stdout)["alternatives"]["kernel_agreement"]
    screener = Screener()
    q = screener.classifier.quantise(screener.feature_windows(
        read_wav(BENCH_RECORDING, screener.spec.sample_rate_hz)))
    data = PACKAGED_MODEL.read_bytes()
    diff = np.abs(run_litert(data, q, "reference").astype(int)
                  - run_litert(data, q, "builtin").astype(int)).max(axis=1)
    rec = agreement["recording"]
    assert rec["windows"] == len(q) and rec["bits_differ"] == np.count_nonzero(diff)
    assert rec["max_lsb"] == diff.max()
    report = json.loads(PACKAGED_MODEL.with_suffix(".verify.json").read_text())
    opt = report["parity"]["litert_optimised_vs_tflm"]
    ver = agreement["verification"]
    assert ver["windows"] == opt["windows"] == report["data"]["windows"]["total"]
    assert ver["bits_differ"] == opt["windows"] - opt["identical"]
    assert ver["decisions_differ"] == report["decisions"]["int8_optimised_vs_tflm"]["differ"]
    assert ver["reference_bits_differ"] == 0  # the reference kernels are TFLite Micro's bits


def test_bench_without_a_float32_companion_says_so(tmp_path):
    """A model copied alone (no X.float32.tflite, no verify report) still benchmarks; the
    missing baseline is named with the command that writes it."""
    from edge.screening import PACKAGED_MODEL

    model = tmp_path / "alone.tflite"
    model.write_bytes(PACKAGED_MODEL.read_bytes())
    result = _bench("--model", str(model), "--runs", "3", "--warmup", "0")
    assert result.returncode == 0, result.stderr
    assert "no float32 baseline: no alone.float32.tflite beside the model; `heartsound " \
           "convert` writes it" in result.stdout
    assert "no verification report for this model" in result.stdout


def test_bench_table_and_bad_arguments():
    table = _bench("--runs", "5", "--warmup", "0")
    assert table.returncode == 0, table.stderr
    assert "whole window" in table.stdout and "peak RSS" in table.stdout
    assert _bench("--runs", "0").returncode == 2


def test_bench_baseline_names_the_command_that_writes_the_run(tmp_path):
    """The README's `--baseline runs/default` on a checkout without runs/: one line that
    says which command writes that folder, usage exit code, no traceback."""
    result = _bench("--baseline", str(tmp_path), "--runs", "1", "--warmup", "0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "not a training run folder" in lines[0] and "`invoke pipeline` writes" in lines[0]


@pytest.mark.slow
def test_bench_runs_from_the_wheel_in_a_fresh_venv(installed_station, tmp_path):
    """`pip install` the wheel into a new venv and bench from outside any checkout: the
    recording it times must come with the package (it used to say "no example recordings
    found")."""
    venv = installed_station
    env = outside_checkout_env()
    out = tmp_path / "elsewhere"
    out.mkdir()
    result = subprocess.run([str(venv / "bin/heartsound"), "bench", "--runs", "5", "--warmup",
                             "1", "--json"], capture_output=True, text=True, cwd=out, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert Path(figures["recording"]).resolve().is_relative_to(venv.resolve())
    assert figures["recording"].endswith("physionet_a0336_abnormal.wav")
    assert figures["window_ms"]["mean"] > 0
    # the float32 companion came with the package: the fair baseline runs on the device
    assert Path(figures["alternatives"]["float32_model"]).resolve().is_relative_to(
        venv.resolve())
    assert figures["speedup_vs_float32"]["int8_reference"]["window_ms"] > 0
