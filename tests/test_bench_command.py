"""`heartsound bench` reports every stage's figures on a real recording (no timing bounds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("front_end_ms", "interpreter_ms", "window_ms", "recording_window_ms")


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


def test_bench_table_and_bad_arguments():
    table = _bench("--runs", "5", "--warmup", "0")
    assert table.returncode == 0, table.stderr
    assert "whole window" in table.stdout and "peak RSS" in table.stdout
    assert _bench("--runs", "0").returncode == 2
