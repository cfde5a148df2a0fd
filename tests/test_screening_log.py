"""The SQLite screening log: atomic writes under a real SIGKILL, 0600, clear disk errors."""

from __future__ import annotations

import csv
import os
import resource
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.audio import read_wav
from edge.errors import DeviceError
from edge.screening_log import SCHEMA_VERSION, Screening, ScreeningLog
from edge.spec import DEFAULT_SPEC

REPO = Path(__file__).resolve().parent.parent
RATE = DEFAULT_SPEC.sample_rate_hz
SHA = "ab" * 32

# A child that stores screenings (with a real recording as audio) as fast as it can and
# prints each id only after add() returned, i.e. after COMMIT.
WRITER = r"""
import sys
import numpy as np
from edge.errors import HeartsoundError
from edge.screening_log import Screening, ScreeningLog
from edge.spec import DEFAULT_SPEC
db, raw, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
pcm = np.fromfile(raw, dtype="<i2").astype(np.int16)
try:
    log = ScreeningLog(db)
    i = 0
    while count < 0 or i < count:
        scores = [((i * 7 + k) % 100) / 100 for k in range(5)]
        sid = log.add(Screening(decision="abnormal" if i % 3 else "normal",
                                probability=scores[0], window_scores=scores,
                                model_sha256="ab" * 32, spec_json=DEFAULT_SPEC.to_json(),
                                file=f"rec{i}.wav", patient_id=f"p{i % 7}", latency_ms=12.5,
                                audio=pcm, audio_rate=2000))
        print(sid, flush=True)
        i += 1
except HeartsoundError as exc:
    print(f"heartsound: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


@pytest.fixture(scope="module")
def real_pcm(data_root: Path, tmp_path_factory) -> tuple[np.ndarray, Path]:
    """A real PhysioNet recording at 2 kHz, and the same samples as a raw int16 file."""
    pcm = read_wav(data_root / "physionet2016/training-a/a0001.wav", RATE)
    raw = tmp_path_factory.mktemp("pcm") / "a0001.raw"
    pcm.astype("<i2").tofile(raw)
    return pcm, raw


def _screening(i: int, pcm: np.ndarray | None = None, patient: str | None = None) -> Screening:
    return Screening(decision=("normal", "abnormal", "unsure")[i % 3],
                     probability=None if i % 3 == 2 else i / 100,
                     window_scores=[i / 100, 0.5], model_sha256=SHA,
                     spec_json=DEFAULT_SPEC.to_json(), file=f"r{i}.wav", patient_id=patient,
                     quality_reason="no heart sound" if i % 3 == 2 else None,
                     latency_ms=3.25, audio=pcm, audio_rate=RATE if pcm is not None else None)


def _child(db: Path, raw: Path, count: int, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(raw), str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO, **kw)


def test_round_trip_mode_wal_and_schema(tmp_path, real_pcm):
    pcm, _ = real_pcm
    db = tmp_path / "home" / "screenings.db"
    with ScreeningLog(db) as log:
        ids = [log.add(_screening(i, pcm if i == 1 else None, f"p{i % 2}")) for i in range(5)]
        assert ids == [1, 2, 3, 4, 5]
        back = log.recent(limit=10)
        assert [s.id for s in back] == [5, 4, 3, 2, 1]
        assert back[-1].window_scores == [0.0, 0.5] and back[-1].decision == "normal"
        assert back[2].probability is None and back[2].quality_reason == "no heart sound"
        assert [s.id for s in log.recent(patient_id="p1")] == [4, 2]
        audio, rate = log.audio(2)
        np.testing.assert_array_equal(audio, pcm)
        assert rate == RATE and log.audio(1) is None
        assert log.schema_version() == SCHEMA_VERSION
        files = sorted(p.name for p in db.parent.iterdir())
        assert files == ["screenings.db", "screenings.db-shm", "screenings.db-wal"], files
        for path in db.parent.iterdir():  # open: the db, its -wal and its -shm
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700  # a folder it created
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_csv_export(tmp_path):
    db = tmp_path / "s.db"
    with ScreeningLog(db) as log:
        for i in range(4):
            log.add(_screening(i, patient="anna" if i < 2 else None))
        n = log.export_csv(tmp_path / "out.csv")
        n_anna = log.export_csv(tmp_path / "anna.csv", patient_id="anna")
    with open(tmp_path / "out.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert n == 4 and [r["id"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[2]["decision"] == "unsure" and rows[2]["probability"] == ""
    assert rows[1]["window_scores"] == "[0.01, 0.5]" and rows[0]["model_sha256"] == SHA
    assert n_anna == 2


def test_sigkill_mid_write_loses_nothing_committed(tmp_path, real_pcm):
    """Three children in turn write into one log and are killed at different points."""
    _, raw = real_pcm
    db = tmp_path / "kill.db"
    reported: list[int] = []
    for stop_after in (7, 23, 41):
        child = _child(db, raw, -1)
        for seen, line in enumerate(child.stdout, start=1):
            reported.append(int(line))
            if seen == stop_after:
                os.kill(child.pid, signal.SIGKILL)  # while it is writing the next one
                break
        child.wait(timeout=20)
        assert child.returncode == -signal.SIGKILL, child.stderr.read()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {r[0]: r[1] for r in con.execute("SELECT id, length(audio) FROM screenings")}
    missing = set(reported) - set(stored)
    assert not missing, f"committed rows lost: {sorted(missing)}"
    n_bytes = raw.stat().st_size
    assert all(v == n_bytes for v in stored.values()), "a partial row survived"
    # the child may run ahead of what was read from its pipe, but never leaves a hole
    assert sorted(stored) == list(range(1, len(stored) + 1))
    with ScreeningLog(db) as log:  # and the log goes on working
        assert log.add(_screening(0)) == max(stored) + 1


def _assert_intact(db: Path, n: int) -> None:
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM screenings").fetchone()[0] == n


def _seed(db: Path, n: int) -> None:
    with ScreeningLog(db) as log:
        for i in range(n):
            log.add(_screening(i))


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG, not a signal death
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


READER = r"""
import sys
from edge.screening_log import ScreeningLog
with ScreeningLog(sys.argv[1], read_only=True) as log:
    print(len(log.recent(limit=None)), log.integrity())
"""


def test_file_size_limit_gives_device_error_and_log_intact(tmp_path, real_pcm):
    _, raw = real_pcm
    db = tmp_path / "full.db"
    _seed(db, 3)
    child = _child(db, raw, 50, preexec_fn=_limit_file_size(db.stat().st_size + 200_000))
    out, err = child.communicate(timeout=30)
    assert child.returncode == DeviceError.exit_code, err
    stored = len(out.split())
    assert 0 < stored < 50
    line = err.strip()
    # The file-size limit is an I/O error (EFBIG), not a full disk: said as such.
    assert "\n" not in line and line.startswith(f"heartsound: screening log {db}: "), line
    assert "earlier screenings are intact" in line
    _assert_intact(db, 3 + stored)


def _unshare_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


def _run_in_mount_ns(setup: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = f'{setup} && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=60)


@pytest.mark.skipif(not _unshare_available(), reason="needs root and unshare -m for a tmpfs")
def test_real_full_disk(tmp_path, real_pcm):
    _, raw = real_pcm
    mnt = tmp_path / "small"
    mnt.mkdir()
    db = mnt / "full.db"
    setup = f"mount -t tmpfs -o size=512k tmpfs {mnt}"
    # Seed and fill inside the same namespace: the tmpfs vanishes with it.
    seed_and_fill = (
        "import sys; from tests.test_screening_log import _seed; _seed(__import__('pathlib')"
        f".Path({str(db)!r}), 3)\n" + WRITER
    )
    res = _run_in_mount_ns(setup, [sys.executable, "-c", seed_and_fill, str(db), str(raw),
                                   "100"])
    assert res.returncode == DeviceError.exit_code, res.stderr
    assert "disk is full" in res.stderr and res.stderr.count("\n") == 1, res.stderr
    check = _run_in_mount_ns(
        setup, [sys.executable, "-c", "print('fresh tmpfs is empty')"])
    assert check.returncode == 0


def test_read_only_log_gives_device_error_and_log_intact(tmp_path, real_pcm):
    _, raw = real_pcm
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "ro.db"
    _seed(db, 4)
    if _unshare_available():  # root ignores file modes: make the file system read-only
        setup = f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder}"
        res = _run_in_mount_ns(setup, [sys.executable, "-c", WRITER, str(db), str(raw), "5"])
        reader = _run_in_mount_ns(setup, [sys.executable, "-c", READER, str(db)])
        assert reader.stdout.split() == ["4", "ok"], reader.stderr  # history still reads it
    elif os.geteuid() != 0:
        db.chmod(0o400)
        folder.chmod(0o500)
        child = _child(db, raw, 5)
        out, err = child.communicate(timeout=30)
        res = subprocess.CompletedProcess([], child.returncode, out, err)
        folder.chmod(0o700)
        db.chmod(0o600)
    else:
        pytest.skip("root without unshare -m: cannot make the log read-only")
    assert res.returncode == DeviceError.exit_code, res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and str(db) in line and "writable" in line, line
    assert res.stdout == ""
    _assert_intact(db, 4)


def test_not_a_database_and_directory(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"hello, this is a text file, not SQLite" * 100)
    with pytest.raises(DeviceError, match="not a usable SQLite database"):
        ScreeningLog(junk)
    with pytest.raises(DeviceError, match="is a directory"):
        ScreeningLog(tmp_path)
    with pytest.raises(DeviceError, match="does not exist"):
        ScreeningLog(tmp_path / "none.db", create=False)
    assert not (tmp_path / "none.db").exists()


def test_newer_schema_refused(tmp_path):
    db = tmp_path / "new.db"
    _seed(db, 1)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(DeviceError, match="schema version 99"):
        ScreeningLog(db)
    _assert_intact(db, 1)


def test_a_screening_with_a_stored_uuid_is_one_row_also_in_an_old_log(tmp_path):
    """A schema-1 log (first release) opens, migrates and takes batch jobs; a screening
    stored again under its derived uuid (a resumed job) stays one row with one id."""
    from edge.screening_log import MIGRATIONS, screening_uuid

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as con:
        for statement in MIGRATIONS[1]:
            con.execute(statement)
        con.execute("UPDATE schema_version SET version = 1")
    out = str(tmp_path / "rows.jsonl")
    with ScreeningLog(db) as log:
        job = log.batch_job(out, fresh=True)
        assert log.batch_job(out, fresh=False) == job  # --resume of the same output
        assert log.batch_job(out, fresh=True) != job  # the output started again: a new job
        job = log.batch_job(out, fresh=False)
        first, again, changed = _screening(1), _screening(1), _screening(1)
        first.uuid = again.uuid = screening_uuid(job, "r1.wav", "aa" * 32)
        changed.uuid = screening_uuid(job, "r1.wav", "bb" * 32)  # the file was replaced
        assert log.add(first) == log.add(again) != log.add(changed)
        assert log.count() == 2 and log.schema_version() == SCHEMA_VERSION
