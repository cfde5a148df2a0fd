"""TensorFlow's start-up lines stay off the terminal; a failing import still shows them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ("from train.tensorflow_quiet import import_tensorflow\n"
        "tf = import_tensorflow()\nimport tf_keras\nprint(tf.__name__)\n")


def _run(code: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    paths = [str(extra_path)] if extra_path else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT)])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


@pytest.mark.slow
def test_real_tensorflow_and_tf_keras_load_without_stderr_lines():
    plain = _run("import tensorflow\n")
    quiet = _run(CODE)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "tensorflow"
    assert quiet.stderr == "", quiet.stderr
    # the lines exist without the helper, or this test would prove nothing
    assert "oneDNN" in plain.stderr or "cuda" in plain.stderr.lower(), plain.stderr


def test_a_broken_installation_still_says_why(tmp_path):
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os\nos.write(2, b'libtensorflow_framework.so.2: cannot open shared object\\n')\n"
        "raise ImportError('broken tensorflow')\n")
    res = _run("from train.tensorflow_quiet import import_tensorflow\nimport_tensorflow()\n",
               tmp_path)
    assert res.returncode != 0
    assert "cannot open shared object" in res.stderr and "broken tensorflow" in res.stderr
