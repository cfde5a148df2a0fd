"""edge.mic through real PyAudio and ALSA, with no sound card.

An ALSA ``file`` PCM defined in a test HOME's ``.asoundrc`` plays a real recording (as a
headerless int16 file) into the capture side; PyAudio lists it as an input device and
``record`` must return exactly the recording's samples. Every run is a subprocess so the
test's HOME (and so its ALSA configuration) never touches the real user's setup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.audio import read_wav
from edge.errors import DeviceError

REPO = Path(__file__).resolve().parent.parent
DEVICE = "hs_capture"
ASOUNDRC = """pcm.{name} {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{raw}"
    format "raw"
}}
"""
# Records in the child and writes what it got as raw int16 plus a JSON summary.
RECORDER = r"""
import json, sys
import numpy as np
from edge.errors import HeartsoundError
from edge import mic
mode, seconds, rate, out = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
rate = None if rate == "native" else int(rate)
try:
    if mode == "record":
        pcm, got_rate = mic.record(seconds, rate=rate, device=sys.argv[5] or None)
        n_blocks = 1
    else:
        blocks = list(mic.chunks(seconds, rate=rate, chunk_frames=700))
        pcm = np.concatenate([b for b, _ in blocks])
        got_rate, n_blocks = blocks[0][1], len(blocks)
except HeartsoundError as exc:
    print(f"heartsound: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
pcm.astype("<i2").tofile(out)
names = [d.name for d in mic.input_devices()]
print(json.dumps({"rate": got_rate, "n": int(pcm.size), "blocks": n_blocks, "devices": names}))
"""


def _home_with_device(home: Path, raw: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / ".asoundrc").write_text(ASOUNDRC.format(name=DEVICE, raw=raw))
    return home


def _run(home: Path, *args: str, extra_code: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home)}
    env.pop("HEARTSOUND_AUDIO_DEBUG", None)
    return subprocess.run([sys.executable, "-c", extra_code + RECORDER, *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=60)


@pytest.fixture(scope="module")
def recordings(data_root: Path, tmp_path_factory) -> dict[str, tuple[np.ndarray, Path]]:
    """Real recordings at their own rates, and each as a headerless int16 file."""
    pytest.importorskip("pyaudio", reason="the 'mic' extra (PyAudio) is not installed")
    folder = tmp_path_factory.mktemp("raw")
    picks = {"physionet-a": data_root / "physionet2016/training-a/a0007.wav",
             "pascal-b": sorted((data_root / "pascal/set_b").glob("normal__*.wav"))[0]}
    out = {}
    for name, path in picks.items():
        pcm = read_wav(path)  # the file's own rate: what a device at that rate would give
        raw = folder / f"{name}.raw"
        pcm.astype("<i2").tofile(raw)
        out[name] = (pcm, raw)
    return out


def test_record_returns_the_recordings_samples(tmp_path, recordings):
    pcm, raw = recordings["physionet-a"]
    home = _home_with_device(tmp_path / "home", raw)
    out = tmp_path / "got.raw"
    res = _run(home, "record", "4.5", "2000", str(out), DEVICE)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["rate"] == 2000 and info["n"] == 9000 and DEVICE in info["devices"]
    got = np.fromfile(out, dtype="<i2")
    np.testing.assert_array_equal(got, pcm[:9000])
    assert res.stderr == ""  # ALSA's probing noise is silenced


def test_native_rate_and_default_device(tmp_path, recordings):
    """No rate asked: the device's default rate; no device named: the default input."""
    pcm, raw = recordings["pascal-b"]
    home = _home_with_device(tmp_path / "home", raw)
    out = tmp_path / "got.raw"
    res = _run(home, "record", "0.5", "native", str(out), "")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    # The file plugin's default rate; the bytes are the file's whatever the rate.
    assert info["rate"] > 0 and info["n"] == round(0.5 * info["rate"])
    np.testing.assert_array_equal(np.fromfile(out, dtype="<i2"), pcm[: info["n"]])


def test_streaming_chunks_concatenate_to_the_recording(tmp_path, recordings):
    pcm, raw = recordings["pascal-b"]  # 4 kHz DigiScope recording
    home = _home_with_device(tmp_path / "home", raw)
    out = tmp_path / "got.raw"
    res = _run(home, "chunks", "1.3", "4000", str(out))
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["n"] == 5200 and info["blocks"] == -(-5200 // 700)
    np.testing.assert_array_equal(np.fromfile(out, dtype="<i2"), pcm[:5200])


def test_no_input_device_is_one_clear_line(tmp_path):
    home = tmp_path / "empty-home"
    home.mkdir()
    res = _run(home, "record", "1", "native", str(tmp_path / "x.raw"), "")
    assert res.returncode == DeviceError.exit_code
    assert res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("heartsound: no microphone found") and "plug in" in res.stderr


def test_unknown_device_names_the_available_ones(tmp_path, recordings):
    home = _home_with_device(tmp_path / "home", recordings["physionet-a"][1])
    res = _run(home, "record", "1", "2000", str(tmp_path / "x.raw"), "stethoscope-9")
    assert res.returncode == DeviceError.exit_code
    assert "no input device 'stethoscope-9'" in res.stderr and DEVICE in res.stderr


def test_missing_pyaudio_says_what_to_install(tmp_path):
    block = "import sys; sys.modules['pyaudio'] = None  # as if not installed\n"
    res = _run(tmp_path, "record", "1", "native", str(tmp_path / "x.raw"), "",
               extra_code=block)
    assert res.returncode == DeviceError.exit_code
    assert "PyAudio" in res.stderr and "pip install" in res.stderr
    assert res.stderr.count("\n") == 1


def test_screen_from_the_microphone_logs_no_file_name(tmp_path, recordings):
    """`heartsound screen --mic` end to end through the ALSA device; the log's schema
    says file is NULL for the microphone, and so it is."""
    import sqlite3

    _, raw = recordings["physionet-a"]
    home = _home_with_device(tmp_path / "home", raw)
    db = tmp_path / "log.db"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home),
           "HEARTSOUND_HOME": str(home / ".heartsound")}
    env.pop("HEARTSOUND_MODEL", None)
    res = subprocess.run([sys.executable, "-m", "edge.cli", "screen", "--mic", "--seconds",
                          "6", "--rate", "2000", "--device", DEVICE, "--db", str(db),
                          "--json"], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout.splitlines()[-1])
    assert row["decision"] in ("normal", "abnormal", "unsure") and row["file"] == "microphone"
    with sqlite3.connect(db) as con:
        files = con.execute("SELECT file, decision FROM screenings").fetchall()
    assert files == [(None, row["decision"])]
