"""`heartsound history` through the real CLI in a subprocess, on a real SQLite log."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.errors import DeviceError
from edge.screening_log import DB_NAME, Screening, ScreeningLog
from edge.spec import DEFAULT_SPEC

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HEARTSOUND_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "edge.cli", "history", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=60)


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    """A HEARTSOUND_HOME whose default log holds 5 screenings of 2 patients + 1 anonymous."""
    home = tmp_path / "hs"
    with ScreeningLog(home / DB_NAME) as log:
        for i in range(6):
            log.add(Screening(
                decision=("normal", "abnormal", "unsure")[i % 3],
                probability=None if i % 3 == 2 else 0.1 * i, window_scores=[0.1] * (i + 1),
                model_sha256="cd" * 32, spec_json=DEFAULT_SPEC.to_json(),
                file=None if i == 5 else f"rec{i}.wav",
                patient_id=None if i == 4 else ("anna" if i % 2 else "ben"),
                quality_reason="no heart sound" if i % 3 == 2 else None,
                device_id="pi-ward-3"))
    return home


def test_table_newest_first(home):
    res = _cli(home=home)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "time", "(UTC)"]
    body = [ln.split() for ln in lines[2:-1]]
    assert [r[0] for r in body] == ["6", "5", "4", "3", "2", "1"]
    assert "(mic)" in lines[2] and "no heart sound" in lines[5]
    assert lines[-1].startswith("6 shown, 6 in ")


def test_patient_and_limit(home):
    res = _cli("--patient", "anna", "--limit", "2", home=home)
    assert res.returncode == 0, res.stderr
    body = [ln.split() for ln in res.stdout.splitlines()[2:-1]]
    assert [r[0] for r in body] == ["6", "4"]
    assert all("anna" in r for r in body)
    none = _cli("--patient", "zoe", home=home)
    assert none.returncode == 0 and none.stdout.startswith("no screenings for patient zoe")


def test_csv_export_to_file_and_stdout(home, tmp_path):
    out = tmp_path / "export.csv"
    res = _cli("--csv", str(out), home=home)
    assert res.returncode == 0, res.stderr
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert rows[0]["device_id"] == "pi-ward-3" and rows[2]["decision"] == "unsure"
    assert "6 screening(s) written" in res.stderr
    piped = _cli("--csv", "-", "--patient", "ben", "--db", str(home / DB_NAME),
                 home=tmp_path / "elsewhere")
    assert piped.returncode == 0, piped.stderr
    rows = list(csv.DictReader(io.StringIO(piped.stdout)))
    assert [r["id"] for r in rows] == ["1", "3"]


def test_missing_log_and_bad_arguments(tmp_path, home):
    res = _cli(home=tmp_path / "nobody")
    assert res.returncode == DeviceError.exit_code
    assert res.stderr.count("\n") == 1 and "does not exist" in res.stderr
    assert not (tmp_path / "nobody" / DB_NAME).exists()  # looking never creates a log
    bad = _cli("--limit", "0", home=home)
    assert bad.returncode == 2 and "whole number above 0" in bad.stderr
    unwritable = _cli("--csv", str(tmp_path / "no" / "such" / "dir.csv"), home=home)
    assert unwritable.returncode == DeviceError.exit_code
    assert "cannot write the CSV export" in unwritable.stderr


def test_history_reads_without_heavy_imports(home):
    code = ("import sys; from edge.cli import main; rc = main(['history']); "
            "print([m for m in ('tensorflow', 'keras', 'scipy') if m in sys.modules], rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HEARTSOUND_HOME": str(home)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=60)
    assert res.stdout.strip().splitlines()[-1] == "[] 0", res.stdout + res.stderr
