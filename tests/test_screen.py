"""`heartsound screen` end to end: real recordings, the shipped int8 model, the real log.

Runs the command in subprocesses, as a clinician's device does, and checks what it
prints against the same pipeline assembled by hand, under both device interpreters.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.audio import read_wav
from edge.decision import abnormal_probability, decide
from edge.interpreter import Classifier
from edge.mfcc import mfcc, windows
from edge.model_meta import read_model_meta
from edge.screening import default_model_path
from tests.test_interpreter import _second_python  # one way to find the older-Pi Python

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "edge" / "recordings"
#: The PhysioNet examples: clean recordings the gate passes (the CirCor pair is checked by
#: test_the_shipped_recordings_say_what_the_readme_says).
EXAMPLES = sorted((REPO / "examples").glob("physionet_*.wav"))
VOLATILE = ("latency_ms", "interpreter", "time_utc")


def _screen(*args: str, home: Path, python: str = sys.executable,
            env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HEARTSOUND_HOME": str(home),
           **(env_extra or {})}
    env.pop("HEARTSOUND_MODEL", None)
    return subprocess.run([python, "-m", "edge.cli", "screen", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


def _json_lines(result: subprocess.CompletedProcess) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _by_hand(path: Path) -> tuple[float, list[float]]:
    """P(abnormal) and window scores from the parts, without the screening module."""
    meta = read_model_meta(default_model_path())
    spec = meta.spec
    feats = windows(mfcc(read_wav(path, spec.sample_rate_hz), spec), spec)
    probs = Classifier(default_model_path()).predict(feats).probabilities
    idx = list(meta.class_names).index(meta.normal_class)
    per_window = abnormal_probability(probs, idx)
    return float(abnormal_probability(probs.astype(np.float64).mean(0), idx)), list(per_window)


def test_example_recordings_give_the_pipelines_result(tmp_path):
    assert len(EXAMPLES) == 3
    rows = _json_lines(_screen(*map(str, EXAMPLES), "--json", home=tmp_path))
    meta = read_model_meta(default_model_path())
    sha = hashlib.sha256(default_model_path().read_bytes()).hexdigest()
    for path, row in zip(EXAMPLES, rows, strict=True):
        p, per_window = _by_hand(path)
        assert row["file"] == str(path)
        assert row["model_sha256"] == sha
        assert row["quality"]["ok"] is True
        assert row["probability_abnormal"] == pytest.approx(p, abs=1e-6)
        assert [w["probability_abnormal"] for w in row["windows"]] == pytest.approx(
            per_window, abs=1e-6)
        assert row["decision"] == decide(p, meta.threshold)
        n = len(read_wav(path, meta.spec.sample_rate_hz))
        hop = round(meta.spec.window_hop_s * meta.spec.sample_rate_hz)
        assert len(row["windows"]) == 1 + (n - meta.spec.window_samples) // hop
        assert row["latency_ms"] > 0


def test_tflite_runtime_device_gives_identical_results(tmp_path):
    second_python = _second_python()
    args = (*map(str, EXAMPLES), "--json", "--no-log")
    ours = _json_lines(_screen(*args, home=tmp_path))
    old_pi = _screen(*args, home=tmp_path, python=second_python,
                     env_extra={"HEARTSOUND_INTERPRETER": "tflite_runtime"})
    theirs = _json_lines(old_pi)
    assert {r["interpreter"] for r in theirs} == {"tflite_runtime"}
    strip = [{k: v for k, v in r.items() if k not in VOLATILE} for r in ours]
    assert strip == [{k: v for k, v in r.items() if k not in VOLATILE} for r in theirs]


def test_artifact_recording_is_unsure_with_a_hint(data_root, tmp_path):
    artifact = sorted((data_root / "pascal/set_a").glob("artifact__*.wav"))[0]
    (row,) = _json_lines(_screen(str(artifact), "--json", home=tmp_path))
    assert row["decision"] == "unsure"
    assert row["probability_abnormal"] is None and row["windows"] == []
    assert row["quality"]["reason"] and row["quality"]["hint"]


def test_text_output_and_the_log(tmp_path):
    result = _screen(str(EXAMPLES[1]), "--patient", "P-17", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{EXAMPLES[1]}: ")
    db = tmp_path / "screenings.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    history = subprocess.run([sys.executable, "-m", "edge.cli", "history", "--db", str(db),
                              "--csv", "-"], capture_output=True, text=True, cwd=REPO)
    assert history.returncode == 0, history.stderr
    assert "P-17" in history.stdout and EXAMPLES[1].name in history.stdout


def test_no_log_writes_nothing(tmp_path):
    assert _screen(str(EXAMPLES[0]), "--no-log", home=tmp_path).returncode == 0
    assert not (tmp_path / "screenings.db").exists()


def test_report_is_a_png(tmp_path):
    out = tmp_path / "report.png"
    result = _screen(str(EXAMPLES[0]), "--report", str(out), "--no-log", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("heartsound: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


@pytest.mark.parametrize("content, words", [
    (b"", ("empty",)),
    (b"RIFF\x10\x00\x00\x00WAVEjunk", ()),
    (b"this is not audio at all", ("RIFF",)),
])
def test_bad_wav_is_exit_3(tmp_path, content, words):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    _one_line_error(_screen(str(bad), home=tmp_path), 3, "bad.wav", *words)
    assert not (tmp_path / "screenings.db").exists()


def test_truncated_wav_is_exit_3(tmp_path):
    data = EXAMPLES[0].read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    _one_line_error(_screen(str(cut), home=tmp_path), 3, "cut.wav")


def test_not_a_model_is_exit_4(tmp_path):
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"\x00" * 64)
    _one_line_error(_screen(str(EXAMPLES[0]), "--model", str(fake), home=tmp_path), 4,
                    "model.tflite")


def test_model_for_another_front_end_is_exit_4(tmp_path):
    from convert.metadata import add_metadata

    meta = read_model_meta(default_model_path())
    doc = dict(meta.document)
    doc["spec"] = {**doc["spec"], "n_ceps": 20}
    other = tmp_path / "other.tflite"
    other.write_bytes(add_metadata(default_model_path().read_bytes(), doc))
    assert read_model_meta(other).spec.n_ceps == 20
    _one_line_error(_screen(str(EXAMPLES[0]), "--model", str(other), home=tmp_path), 4,
                    "other.tflite")


def test_unwritable_log_is_exit_7_and_keeps_the_result(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log's folder should be")
    result = _screen(str(EXAMPLES[0]), "--db", str(blocker / "screenings.db"), home=tmp_path)
    assert result.returncode == 7, result.stderr
    assert result.stdout.startswith(str(EXAMPLES[0]))
    assert result.stderr.startswith("heartsound: ") and result.stderr.count("\n") == 1


ASOUNDRC = """pcm.hs_capture {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{raw}"
    format "raw"
}}
"""


def test_microphone_screening_equals_the_file(data_root, tmp_path):
    """PyAudio reads a real 4 kHz recording from an ALSA capture device; same result."""
    pytest.importorskip("pyaudio", reason="the 'mic' extra (PyAudio) is not installed")
    wav = sorted((data_root / "pascal/set_b").glob("murmur__*.wav"))[0]
    pcm = read_wav(wav)
    seconds = len(pcm) // 4000
    raw = tmp_path / "capture.raw"
    pcm.astype("<i2").tofile(raw)
    (tmp_path / ".asoundrc").write_text(ASOUNDRC.format(raw=raw))
    clip = tmp_path / "clip.wav"
    _write_wav(clip, pcm[: seconds * 4000], 4000)
    env = {"HOME": str(tmp_path)}
    live = _json_lines(_screen("--mic", "--device", "hs_capture", "--rate", "4000",
                               "--seconds", str(seconds), "--json", "--no-log",
                               home=tmp_path, env_extra=env))
    filed = _json_lines(_screen(str(clip), "--json", "--no-log", home=tmp_path))
    assert live[0]["file"] == "microphone"
    for key in ("decision", "probability_abnormal", "windows", "classes", "seconds"):
        assert live[0][key] == filed[0][key]


def _write_wav(path: Path, pcm: np.ndarray, rate: int) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def test_usage_errors(tmp_path):
    assert _screen(home=tmp_path).returncode == 2
    assert _screen(str(EXAMPLES[0]), "--mic", home=tmp_path).returncode == 2


def test_mic_shorter_than_a_window_names_the_shortest_that_works(tmp_path):
    """Refused before any microphone is opened, with the minimum the user can type."""
    result = _screen("--mic", "--seconds", "2", home=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "--seconds 3 or more" in result.stderr and "at least 20 s" not in result.stderr


def test_a_folder_of_folders_says_how_to_reach_them(tmp_path):
    """A folder's own files are screened, not its sub-folders: the error says how to."""
    import shutil

    archive = tmp_path / "archive"
    (archive / "ward3").mkdir(parents=True)
    shutil.copy(EXAMPLES[0], archive / "ward3" / EXAMPLES[0].name)
    result = _screen(str(archive), "--no-log", home=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"'{archive}/**/*.wav'" in result.stderr
    again = _screen(f"{archive}/**/*.wav", "--no-log", "--json", home=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [row["file"] for row in _json_lines(again)] == [
        str(archive / "ward3" / EXAMPLES[0].name)]


def test_report_without_matplotlib_keeps_the_screening(tmp_path):
    """Printed and logged first; then one line naming the extra; exit 2 (usage)."""
    import sqlite3

    db = tmp_path / "log.db"
    code = ("import sys; sys.modules['matplotlib'] = None  # as if not installed\n"
            "from edge.cli import main; sys.exit(main(['screen', "
            f"{str(EXAMPLES[1])!r}, '--report', {str(tmp_path / 'r.png')!r}, '--db', "
            f"{str(db)!r}, '--json']))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HEARTSOUND_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "heartsound[report]" in out.stderr
    row = json.loads(out.stdout.splitlines()[-1])
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT decision FROM screenings").fetchall() == [(row["decision"],)]
    assert not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_many_files_print_and_log_each_result_as_it_is_made(data_root, tmp_path, sig):
    """`screen A.wav B.wav ...` (no --workers) killed or stopped part-way: results were
    printed before the last file was screened, and every printed one is in the log.
    SIGTERM ends it with one line and exit 143."""
    import signal
    import sqlite3

    files = [str(p) for p in sorted((data_root / "physionet2016/training-a").glob("*.wav"))]
    db = tmp_path / "log.db"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HEARTSOUND_HOME": str(tmp_path)}
    job = subprocess.Popen([sys.executable, "-m", "edge.cli", "screen", *files, "--json",
                            "--db", str(db)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        first = job.stdout.readline()
        os.kill(job.pid, getattr(signal, sig))
        rest, stderr = job.communicate(timeout=60)
    finally:
        job.kill()
    if sig == "SIGKILL":
        assert job.returncode == -signal.SIGKILL  # still running when its first row came
    else:
        assert job.returncode == 143 and stderr.count("\n") == 1, stderr
        assert stderr.startswith("heartsound: stopped by SIGTERM")
    printed = [json.loads(line) for line in [first, *rest.splitlines(keepends=True)]
               if line.endswith("\n")]
    assert 0 < len(printed) < len(files)
    with sqlite3.connect(db) as con:  # no table yet: nothing was logged
        has_table = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'screenings'")
        logged = [f for (f,) in con.execute("SELECT file FROM screenings ORDER BY id")] \
            if has_table.fetchone() else []
    assert [row["file"] for row in printed] == logged[: len(printed)]
    assert logged == files[: len(logged)]

def _write_8bit(path: Path, pcm: np.ndarray, rate: int, gain: float = 1.0) -> None:
    """An 8-bit unsigned WAV of ``pcm * gain`` (rounded to the 8-bit grid, as sox does)."""
    import wave

    q = np.clip(np.rint(pcm.astype(np.float64) * gain / 256), -128, 127).astype(np.int64)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(rate)
        w.writeframes((q + 128).astype(np.uint8).tobytes())


def test_coarse_audio_is_unsure_and_says_what_it_measured(data_root, tmp_path):
    """Issue 19 item 11: the PASCAL A murmur stored as 8-bit (about 2 steps rms) flipped
    normal 0.04 to abnormal 0.29; it and a PhysioNet recording at 2 steps are refused,
    also when 8-bit data sit in a 16-bit file; the originals and a loud 8-bit copy pass."""
    from edge.audio import load_audio
    from edge.quality import assess

    murmur = data_root / "pascal/set_a/murmur__201101051104.wav"
    loud = data_root / "pascal/set_a/murmur__201108222243.wav"
    physio = data_root / "physionet2016/training-a/a0001.wav"
    x, info = load_audio(murmur)
    _write_8bit(tmp_path / "murmur8.wav", x, info.sample_rate)
    _write_wav(tmp_path / "murmur8in16.wav", read_wav(tmp_path / "murmur8.wav"),
               info.sample_rate)
    y, yinfo = load_audio(physio)
    gain = 2 * 256 / assess(y).figures["rms"]  # 2 steps rms of the 8-bit grid
    _write_8bit(tmp_path / "physio8.wav", y, yinfo.sample_rate, gain)
    z, zinfo = load_audio(loud)
    _write_8bit(tmp_path / "loud8.wav", z, zinfo.sample_rate)
    files = [murmur, tmp_path / "murmur8.wav", tmp_path / "murmur8in16.wav", physio,
             tmp_path / "physio8.wav", loud, tmp_path / "loud8.wav"]
    rows = _json_lines(_screen(*map(str, files), "--json", "--no-log", home=tmp_path))
    by = {Path(r["file"]).name: r for r in rows}
    for name in ("murmur8.wav", "murmur8in16.wav", "physio8.wav"):
        q = by[name]["quality"]
        assert (by[name]["decision"], q["reason"]) == ("unsure", "too coarse"), name
        assert q["figures"]["quantisation_step"] == 256
        assert 1.5 < q["figures"]["resolution_bits"] < 3.5
        assert "effective resolution" in q["hint"] and "record at 16 bits" in q["hint"]
    for name in (murmur.name, physio.name, loud.name):
        assert by[name]["quality"]["ok"] and by[name]["quality"]["figures"][
            "quantisation_step"] == 1, name
    assert by[murmur.name]["decision"] == "normal"
    assert by["loud8.wav"]["quality"]["ok"]  # a healthy 8-bit signal (22 steps) is screened
    assert by["loud8.wav"]["decision"] == by[loud.name]["decision"]
    text = _screen(str(tmp_path / "murmur8.wav"), "--no-log", home=tmp_path)
    assert text.returncode == 0 and len(text.stdout.splitlines()) == 1
    assert "UNSURE - too coarse. effective resolution 2.6 bits (signal 2.2 steps rms, " \
           "8-bit samples" in text.stdout


def test_json_row_carries_the_patient_and_time_the_log_stores(tmp_path):
    """--json says what the log's record says: patient id and screening time (UTC); the
    log names the file by its absolute path, whatever folder the command ran in."""
    from edge.screening_log import ScreeningLog

    db = tmp_path / "log.db"
    relative = os.path.relpath(EXAMPLES[0], REPO)
    row = _json_lines(_screen(relative, "--json", "--patient", "P-7", "--db", str(db),
                              home=tmp_path))[0]
    assert row["patient_id"] == "P-7" and row["file"] == relative
    with ScreeningLog(db) as log:
        (stored,) = log.recent()
    assert stored.time_utc == row["time_utc"] and stored.patient_id == "P-7"
    assert stored.file == str(EXAMPLES[0])


def _readme_answers() -> dict[str, str]:
    """file -> the decision the recordings' README says the shipped model gives."""
    rows = [line.split("|") for line in (SHIPPED / "README.md").read_text().splitlines()
            if line.startswith("| `")]
    return {cells[1].strip().strip("`"): cells[4].split()[0] for cells in rows}


def test_the_shipped_recordings_say_what_the_readme_says(tmp_path):
    """examples/ and the package's recordings are one set (links, not copies), named by
    their label, covering normal, abnormal and murmur; the README's table gives what the
    shipped model answers on each, wrong answers included."""
    shipped = sorted(p.name for p in SHIPPED.glob("*.wav"))
    examples = sorted((REPO / "examples").glob("*.wav"))
    assert [p.name for p in examples] == shipped
    assert all(p.is_symlink() and p.resolve() == SHIPPED / p.name for p in examples)
    labels = {name.removesuffix(".wav").split("_", 2)[-1] for name in shipped}
    assert {"normal", "abnormal", "murmur"} <= {lab.split("_")[-1] for lab in labels}
    answers = _readme_answers()
    assert sorted(answers) == shipped
    rows = _json_lines(_screen(*(str(SHIPPED / n) for n in shipped), "--json", "--no-log",
                               home=tmp_path))
    assert {Path(r["file"]).name: r["decision"] for r in rows} == {
        n: {"NORMAL": "normal", "ABNORMAL": "abnormal", "UNSURE": "unsure"}[a]
        for n, a in answers.items()}

