"""One small real training run and its int8 model, made once per test session.

`heartsound convert` and `heartsound verify` need a real run folder: a model trained on
real recordings of every source, its splits and its representative windows. Training
one takes ~20 s (about 12 recordings per source, one epoch, a CNN), converting it ~30 s,
so both test files share them through the session's base temporary folder: the first
file to ask builds them, the second finds them there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN_LIMIT = 12  # recordings per source: every source keeps both classes in val and test
TIMEOUT_S = 600
_NOISE = ("I0000", "W0000", "E0000", "WARNING: All log messages", "To enable the following")


def heartsound(*args: str | Path, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run the real `heartsound` command line in a child process, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without TensorFlow's start-up chatter: what heartsound itself said."""
    return [ln for ln in proc.stderr.splitlines()
            if ln.strip() and not ln.startswith(_NOISE)]


def data_args(data_root: Path) -> list[str]:
    return ["--data", str(data_root / "pascal"), "--data", str(data_root / "physionet2016")]


def small_run(tmp_path_factory, data_root: Path) -> Path:
    """The session's run folder (CNN, real recordings of every source), trained once."""
    base = tmp_path_factory.getbasetemp() / "heartsound-convert"
    run = base / "run"
    if not (run / "metrics.json").exists():
        proc = heartsound("train", *data_args(data_root), "--out", run, "--cache",
                          base / "cache", "--limit", RUN_LIMIT, "--epochs", 1, "--copies", 1,
                          "--no-lodo", "--arch", "cnn", "--quiet", "--force")
        assert proc.returncode == 0, proc.stderr[-2000:]
    return run


def cache_of(run: Path) -> Path:
    return run.parent / "cache"


PLACEHOLDER = b"an older model that --force must replace\n"


def converted_model(tmp_path_factory, data_root: Path) -> tuple[Path, str]:
    """(int8 model of the session's run, what `heartsound convert` printed), made once.

    The output path already holds :data:`PLACEHOLDER` and the conversion runs with
    --force, so the one (30 s) conversion also exercises replacing an existing file.
    """
    run = small_run(tmp_path_factory, data_root)
    model = run.parent / "model_int8.tflite"
    printed = model.with_suffix(".convert.txt")
    if not printed.exists():
        model.write_bytes(PLACEHOLDER)
        proc = heartsound("convert", run, "--out", model, "--force")
        assert proc.returncode == 0, proc.stderr[-2000:]
        printed.write_text(proc.stdout)
    return model, printed.read_text()
