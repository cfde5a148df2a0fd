"""Batch screening on one machine: `heartsound screen --workers/--csv/--resume`.

Real recordings from every source (PASCAL A and B, PhysioNet a, b, d) plus broken files,
run through the command in subprocesses. The reference is the single-process command
(`heartsound screen FILES --json`), and batch rows must carry the same bits.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.batch.output import read_rows
from tests.mfcc_recordings import pick

REPO = Path(__file__).resolve().parents[2]
VOLATILE = ("latency_ms", "interpreter", "time_utc")
PER_SOURCE = {"pascal/set_a": 6, "pascal/set_b": 6, "physionet2016/training-a": 6,
              "physionet2016/training-b": 6, "physionet2016/training-d": 6}
BAD_CODE = 3  # AudioError: every broken file below is one
INTERPRETER_LIB = "litert"  # in the path of ai_edge_litert's shared libraries
ORPHAN_GRACE_S = 30  # a worker or the resource tracker alive this long after its job: orphaned
STALL_S = 3.0  # no new row for this long: every recording not held by the stopped worker is done


def run_screen(*args: str, home: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", "screen", *args],
                          capture_output=True, text=True, env=_env(home), cwd=REPO,
                          timeout=180, **kw)


def _env(home: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HEARTSOUND_HOME": str(home)}
    env.pop("HEARTSOUND_MODEL", None)
    return env


def stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in VOLATILE}


def by_file(rows: list[dict]) -> dict[str, dict]:
    out = {r["file"]: stable(r) for r in rows}
    assert len(out) == len(rows), "a recording has more than one row"
    return out


@pytest.fixture(scope="module")
def good(data_root) -> list[str]:
    """30 real recordings, 6 per source (one PASCAL A artifact among them: 'unsure')."""
    files = [str(p) for folder, n in PER_SOURCE.items() for p in pick(data_root, folder, n)]
    artifact = str(sorted((data_root / "pascal/set_a").glob("artifact__*.wav"))[0])
    return files if artifact in files else [artifact, *files[1:]]


@pytest.fixture(scope="module")
def bad(tmp_path_factory, good) -> list[str]:
    """An empty file, a truncated WAV (a real recording cut short) and a text file."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "empty.wav").write_bytes(b"")
    data = Path(good[-1]).read_bytes()
    (folder / "truncated.wav").write_bytes(data[: len(data) // 3])
    (folder / "notes.wav").write_text("not audio, a note somebody saved as .wav\n")
    return [str(folder / name) for name in ("empty.wav", "truncated.wav", "notes.wav")]


@pytest.fixture(scope="module")
def single(good, bad, tmp_path_factory) -> dict[str, dict]:
    """What the single-process command says: result rows, and each bad file's error row
    (the same error on stderr, one line: with or without --workers, one behaviour)."""
    home = tmp_path_factory.mktemp("home")
    done = run_screen(*good, "--json", "--no-log", home=home)
    assert done.returncode == 0, done.stderr
    rows = by_file([json.loads(line) for line in done.stdout.splitlines()])
    for path in bad:
        alone = run_screen(path, "--json", "--no-log", home=home)
        assert alone.returncode == BAD_CODE, alone.stderr
        row = json.loads(alone.stdout)
        assert row == {"file": path, "error": row["error"], "exit_code": BAD_CODE}
        assert alone.stderr.strip() == f"heartsound: {row['error']}"
        rows[path] = row
    return rows


@pytest.fixture(scope="module")
def two_workers(good, bad, tmp_path_factory) -> subprocess.CompletedProcess:
    home = tmp_path_factory.mktemp("home")
    return run_screen(*good, *bad, "--workers", "2", "--json", "--no-log", home=home)


def test_two_workers_give_the_single_process_bits(two_workers, single, good, bad, tmp_path):
    assert two_workers.returncode == BAD_CODE, two_workers.stderr
    rows = [json.loads(line) for line in two_workers.stdout.splitlines()]
    assert by_file(rows) == single
    assert {r["decision"] for r in rows if "error" not in r} >= {"normal", "abnormal", "unsure"}
    alone = run_screen(good[7], "--json", "--no-log", home=tmp_path)
    assert by_file([json.loads(alone.stdout)])[good[7]] == single[good[7]]
    assert all(f"heartsound: {single[p]['error']}" in two_workers.stderr for p in bad)
    assert "Traceback" not in two_workers.stderr


def test_csv_and_quoted_globs_give_the_same_rows(single, good, bad, data_root, tmp_path):
    out = tmp_path / "rows.csv"
    pattern = str(data_root / "physionet2016/training-d/d00[0-9]*.wav")  # quoted: we expand
    done = run_screen(*good, *bad, pattern, "--csv", str(out), "--no-log", home=tmp_path)
    assert done.returncode == BAD_CODE, done.stderr
    rows = by_file(read_rows(out, "csv"))
    globbed = sorted(str(p) for p in (data_root / "physionet2016/training-d").glob("d00[0-9]*.wav"))
    assert set(rows) == set(single) | set(globbed)  # duplicates of the glob screened once
    assert {f: rows[f] for f in single} == single


def test_resume_completes_a_partial_run_without_duplicates(single, good, bad, tmp_path):
    out = tmp_path / "rows.jsonl"
    first = run_screen(*good[:12], "--resume", str(out), "--no-log", home=tmp_path)
    assert first.returncode == 0, first.stderr
    before = out.read_text().splitlines()
    assert len(before) == 12
    with out.open("a") as fh:
        fh.write('{"file": "half a row from a killed run')  # no newline: cut off
    rest = run_screen(*good, *bad, "--resume", str(out), "--workers", "2", "--no-log",
                      home=tmp_path)
    assert rest.returncode == BAD_CODE, rest.stderr
    assert "already has 12 of these 33" in rest.stderr and "half-written" in rest.stderr
    lines = out.read_text().splitlines()
    assert lines[:12] == before
    assert by_file([json.loads(line) for line in lines]) == single
    again = run_screen(*good, *bad, "--resume", str(out), "--no-log", home=tmp_path)
    assert again.returncode == 0 and out.read_text().splitlines() == lines


def test_resume_appends_to_a_csv_without_a_second_header(single, good, bad, tmp_path):
    out = tmp_path / "rows.csv"
    args = ("--csv", str(out), "--resume", str(out), "--no-log")
    assert run_screen(*good[:5], *args, home=tmp_path).returncode == 0
    assert run_screen(*good, *bad, *args, home=tmp_path).returncode == BAD_CODE
    assert out.read_text().count("file,decision,") == 1
    assert by_file(read_rows(out, "csv")) == single


def test_a_csv_job_ends_with_a_one_line_summary(single, good, bad, tmp_path):
    out = tmp_path / "rows.csv"
    done = run_screen(*good, *bad, "--csv", str(out), "--no-log", home=tmp_path)
    assert done.returncode == BAD_CODE and not done.stdout
    rows = read_rows(out, "csv")
    counts = {d: sum(r.get("decision") == d for r in rows) for d in ("abnormal", "normal",
                                                                      "unsure")}
    assert done.stderr.splitlines()[-1] == (
        f"heartsound: screened {len(good)} recordings: {counts['abnormal']} refer, "
        f"{counts['normal']} no referral, {counts['unsure']} retake; {len(bad)} errors; "
        f"rows in {out}")
    assert counts["unsure"] >= 1  # the PASCAL artifact among the good files


def test_resume_continues_a_csv_an_older_version_wrote(single, good, tmp_path):
    """A CSV without the patient and time columns (written before rows carried them):
    --resume appends rows with its columns, so the file stays one table."""
    from edge.batch.output import OLD_CSV_FIELDS

    out = tmp_path / "old.csv"
    assert run_screen(*good[:3], "--csv", str(out), "--no-log", home=tmp_path).returncode == 0
    lines = out.read_text().splitlines()
    header = lines[0].split(",")
    keep = [header.index(c) for c in OLD_CSV_FIELDS]
    old = io.StringIO()
    writer = csv.writer(old, lineterminator="\n")
    for cells in csv.reader(lines):
        writer.writerow([cells[i] for i in keep])
    out.write_text(old.getvalue())
    args = ("--csv", str(out), "--resume", str(out), "--no-log")
    assert run_screen(*good[:6], *args, home=tmp_path).returncode == 0
    rows = read_rows(out, "csv")
    assert [r["file"] for r in rows] == good[:6]
    assert not any("time_utc" in r or "patient_id" in r for r in rows)  # the old columns

    def result(row: dict) -> dict:
        return {k: v for k, v in stable(row).items() if k != "patient_id"}

    assert [result(r) for r in rows] == [result(single[f]) for f in good[:6]]


def kill_drill(command: list[str], env: dict, victim_of, total: int,
               attempts: int = 3) -> tuple[list[dict], int, str]:
    """Run a batch job; once ``victim_of(job_pid)`` names a worker holding work, stop it,
    let the others finish all they can (rows stall), kill it, read the rest.

    Returns (rows, exit code, stderr). Under heavy load the victim may start so late that
    the others finish the whole job first; that run proves nothing and is repeated.
    """
    for _ in range(attempts):
        rows, code, stderr, stalled_at = _drill_once(command, env, victim_of)
        if stalled_at < total:
            return rows, code, stderr
    pytest.fail(f"no worker held a recording when stopped, {attempts} times", pytrace=False)


def _drill_once(command: list[str], env: dict, victim_of):
    job = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in job.stdout] + [lines.put(None)],
                     daemon=True).start()
    try:
        rows = [lines.get(timeout=120)]
        victim = victim_of(job.pid)
        os.kill(victim, signal.SIGSTOP)
        while rows[-1] is not None:
            try:
                rows.append(lines.get(timeout=STALL_S))
            except queue.Empty:
                break
        stalled_at = len([r for r in rows if r is not None])
        os.kill(victim, signal.SIGKILL)
        while rows[-1] is not None:
            rows.append(lines.get(timeout=120))
        code = job.wait(timeout=60)
    finally:
        job.kill()
    return [json.loads(r) for r in rows[:-1]], code, job.stderr.read(), stalled_at


def _busy_pool_worker(pid: int) -> int:
    """A pool worker of job ``pid`` that has loaded the model (then it takes work at once):
    a child running multiprocessing's spawn_main with the interpreter library mapped."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(OSError):
                if (b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
                        and INTERPRETER_LIB in Path(f"/proc/{child}/maps").read_text()):
                    return int(child)
        time.sleep(0.01)
    pytest.fail("no pool worker loaded the model within 120 s", pytrace=False)


@pytest.mark.slow
def test_a_killed_worker_loses_no_result(single, good, bad, tmp_path):
    """A worker killed mid-job breaks the pool; its unfinished recordings are screened in
    a fresh pool, and every row arrives once with the single-process bits."""
    command = [sys.executable, "-m", "edge.cli", "screen", *good, *bad, "--workers", "2",
               "--json", "--no-log"]
    rows, code, stderr = kill_drill(command, _env(tmp_path), _busy_pool_worker, len(single))
    assert code == BAD_CODE, stderr
    assert by_file(rows) == single
    assert "a worker process died" in stderr


def test_the_parent_writes_each_screening_to_the_log_once(good, bad, tmp_path):
    db = tmp_path / "log.db"
    done = run_screen(*good[:8], *bad[:1], "--workers", "2", "--csv", "-", "--db", str(db),
                      "--patient", "P-9", home=tmp_path)
    assert done.returncode == BAD_CODE, done.stderr
    with sqlite3.connect(db) as con:
        logged = con.execute("SELECT file, patient_id FROM screenings").fetchall()
    assert sorted(logged) == sorted((f, "P-9") for f in good[:8])


def test_local_batch_imports_no_ray_or_heavy_packages(good, tmp_path):
    code = ("import sys; from edge.cli import main; rc = main(['screen', *sys.argv[1:], "
            "'--workers', '2', '--no-log', '--json']); print('HEAVY', [m for m in ('ray', "
            "'tensorflow', 'keras', 'scipy') if m in sys.modules]); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, *good[:3]], capture_output=True,
                          text=True, env=_env(tmp_path), cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "HEAVY []"


@pytest.mark.parametrize("extra, words", [
    (["--workers", "0"], "--workers 0"),
    (["--json", "--csv", "-"], "--json or --csv"),
    (["--workers", "2", "--report", "x.png"], "--report"),
    (["--resume", "out.csv", "--json"], "CSV"),
    (["--csv", "a.csv", "--resume", "b.csv"], "--resume b.csv"),
])
def test_batch_usage_errors_are_one_line(good, tmp_path, extra, words):
    done = run_screen(good[0], *extra, "--no-log", home=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr


def test_a_glob_that_matches_nothing_is_a_usage_error(tmp_path):
    done = run_screen(str(tmp_path / "*.wav"), "--workers", "2", home=tmp_path)
    assert done.returncode == 2 and "matches" in done.stderr


def test_resume_refuses_a_file_it_did_not_write(good, tmp_path):
    other = tmp_path / "notes.jsonl"
    other.write_text("shopping list\n")
    done = run_screen(good[0], "--resume", str(other), "--no-log", home=tmp_path)
    assert done.returncode == 2 and "notes.jsonl" in done.stderr
    assert other.read_text() == "shopping list\n"


# ---------------------------------------------------------------------------------------------
# a job that is killed or told to stop leaves no process behind


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a live process (tells a reused pid apart), else None;
    a zombie is dead: it only waits for its new parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, *rest = stat[stat.rindex(")") + 2:].split()
    return None if state in ("Z", "X") else rest[18]  # field 22 of proc(5): starttime


def _family(pid: int) -> dict[int, str]:
    """Every descendant of ``pid`` (children's children too), with its start time."""
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                for child in map(int, (task / "children").read_text().split()):
                    start = _start_time(child)
                    if start is not None and child not in found:
                        found[child] = start
                        todo.append(child)
    return found


def _survivors(family: dict[int, str], within_s: float) -> dict[int, str]:
    deadline = time.monotonic() + within_s
    while True:
        alive = {p: s for p, s in family.items() if _start_time(p) == s}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "kill-TERM"])
def test_no_worker_outlives_a_killed_or_stopped_job(data_root, tmp_path, sig):
    """The parent of `screen --workers 2` dies or is told to stop while its workers are
    busy: the workers and multiprocessing's resource tracker end too. SIGTERM ends the job
    cleanly: exit 143, one line saying so, every printed row in the log."""
    folder = data_root / "physionet2016/training-e"  # 2141 recordings: minutes of work
    db = tmp_path / "log.db"
    job = subprocess.Popen([sys.executable, "-m", "edge.cli", "screen", str(folder),
                            "--workers", "2", "--json", "--db", str(db)], cwd=REPO,
                           env=_env(tmp_path), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    out = {name: [] for name in ("stdout", "stderr")}
    readers = [threading.Thread(target=lambda n=name: out[n].extend(getattr(job, n)),
                                daemon=True) for name in out]
    family: dict[int, str] = {}
    try:
        readers[0].start()
        readers[1].start()
        _busy_pool_worker(job.pid)
        deadline = time.monotonic() + 120
        while not out["stdout"]:  # a worker has screened a recording: the job is busy
            assert job.poll() is None and time.monotonic() < deadline, "".join(out["stderr"])
            time.sleep(0.05)
        family = _family(job.pid)
        os.kill(job.pid, sig)
        job.wait(timeout=120)
    finally:
        job.kill()
        left = _survivors(family, within_s=ORPHAN_GRACE_S)
        for pid in left:  # do not leave them running on the test machine
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    for reader in readers:  # ends when no process holds the pipes any more
        reader.join(timeout=30)
    stderr = "".join(out["stderr"])
    assert len(family) >= 3, family  # two workers and the resource tracker
    assert not left, f"still running {ORPHAN_GRACE_S} s after the job ended: {sorted(left)}"
    if sig == signal.SIGKILL:
        assert job.returncode == -signal.SIGKILL
        return
    assert job.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1].startswith("heartsound: stopped by SIGTERM")
    rows = [json.loads(line) for line in out["stdout"] if line.endswith("\n")]
    assert 0 < len(rows) < len(list(folder.glob("*.wav")))
    with sqlite3.connect(db) as con:
        logged = {f for (f,) in con.execute("SELECT file FROM screenings")}
    assert {r["file"] for r in rows} <= logged


def _logged(db: Path) -> list[str]:
    """The files of the log's screenings (none before the log's tables exist)."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db)) as con:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'screenings'").fetchone():
            return []
        return [f for (f,) in con.execute("SELECT file FROM screenings ORDER BY id")]


def test_a_job_killed_between_log_and_row_logs_each_recording_once(data_root, tmp_path):
    """kill -9 while a row is being written, its screening already logged; --resume then
    screens that recording again, and the log still holds each recording once.

    The output is a FIFO that the test does not read, with the smallest pipe buffer: the
    job blocks inside a row's write, which is where a kill makes the duplicate."""
    import fcntl

    files = [str(p) for p in pick(data_root, "physionet2016/training-b", 24)]
    out, db = tmp_path / "rows.jsonl", tmp_path / "log.db"
    os.mkfifo(out)
    reader = os.open(out, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
    args = (*files, "--resume", str(out), "--workers", "2", "--db", str(db))
    job = subprocess.Popen([sys.executable, "-m", "edge.cli", "screen", *args], cwd=REPO,
                           env=_env(tmp_path), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        count, since = -1, time.monotonic()
        while time.monotonic() - since < STALL_S:  # rows stop: blocked in a write
            assert job.poll() is None, "the job ended before its output filled"
            if len(_logged(db)) != count:
                count, since = len(_logged(db)), time.monotonic()
            time.sleep(0.1)
        os.kill(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        job.kill()
    written = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(reader, 65536):
            written += chunk
    os.close(reader)
    out.unlink()
    out.write_bytes(written)  # what a regular file would hold after the kill
    assert 0 < written.count(b"\n") < count < len(files)
    rest = run_screen(*args, home=tmp_path)
    assert rest.returncode == 0, rest.stderr
    rows = read_rows(out, "jsonl")
    assert sorted(r["file"] for r in rows) == sorted(files)
    assert sorted(_logged(db)) == sorted(files)  # once each: no second row for the resumed
