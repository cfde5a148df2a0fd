"""`heartsound screen --report`: the page a nurse reads, on real recordings.

The command runs in a subprocess as on a device; what the page says is checked twice:
the texts drawn on the figure (builder called directly) and the PNG's Description
metadata written by the real command, against the screening log's own row.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="the 'report' extra is not installed")
from matplotlib.text import Text  # noqa: E402
from PIL import Image  # noqa: E402  (a matplotlib dependency)

from edge.audio import read_wav  # noqa: E402
from edge.report import build_pages, detail_path_for  # noqa: E402
from edge.screening import Screener  # noqa: E402
from edge.screening_log import Screening  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "physionet_b0001_normal.wav"
DEVICE = "ward-3-pi"


def _screen(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HEARTSOUND_HOME": str(home),
           "HEARTSOUND_DEVICE_ID": DEVICE, "TZ": "UTC"}
    env.pop("HEARTSOUND_MODEL", None)
    return subprocess.run([sys.executable, "-m", "edge.cli", "screen", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def _artifact(data_root: Path) -> Path:
    return sorted((data_root / "pascal/set_a").glob("artifact__*.wav"))[0]


def _murmur(data_root: Path) -> Path:
    """A PASCAL set B murmur the shipped model refers (P(abnormal) 0.81)."""
    return data_root / "pascal/set_b/murmur__116_1306258689913_C.wav"


def _flat(text: str) -> str:
    return " ".join(text.split())


def _drawn(figure) -> str:
    """Every text drawn on a figure (titles, labels, annotations), whitespace-normalised."""
    return _flat(" ".join(t.get_text() for t in figure.findobj(Text) if t.get_visible()))


def _report_from_cli(wav: Path, tmp_path: Path) -> tuple[dict, tuple, str, Path]:
    """(JSON row, the log's (time_utc, patient_id, device_id), page-1 Description, PNG)."""
    png, db = tmp_path / "report.png", tmp_path / "log.db"
    out = _screen(str(wav), "--report", str(png), "--patient", "P-17", "--db", str(db),
                  "--json", home=tmp_path)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    with sqlite3.connect(db) as con:
        logged = con.execute("SELECT time_utc, patient_id, device_id FROM screenings").fetchone()
    with Image.open(png) as img:
        assert img.format == "PNG"
        width, height = img.size
        description = img.text["Description"]
    assert 1000 <= width <= 2500 and 700 <= height <= 1800 and width > height  # A4 landscape
    with Image.open(detail_path_for(png)) as detail:
        assert detail.size == (width, height)
    return row, logged, description, png


def _page_time(time_utc: str) -> str:
    """The log's UTC time as the page shows it with TZ=UTC."""
    return dt.datetime.fromisoformat(time_utc.replace("Z", "+00:00")).strftime(
        "%Y-%m-%d %H:%M UTC")


def test_report_names_decision_action_threshold_model_time_and_disclaimer(tmp_path):
    row, (time_utc, patient, device), text, _ = _report_from_cli(EXAMPLE, tmp_path)
    version = Screener().meta.version
    assert row["decision"] == "normal" and (patient, device) == ("P-17", DEVICE)
    assert text.splitlines()[0] == "NO REFERRAL"
    assert f"below the referral threshold {row['threshold']:.2f}" in text
    assert f"score {row['probability_abnormal']:.2f}" in text
    assert "Patient: P-17" in text and f"Device: {DEVICE}" in text
    assert f"Screened: {_page_time(time_utc)}" in text
    assert f"Model: {version} (sha256 {row['model_sha256'][:12]})" in text
    assert "Screening aid, not a diagnosis" in text
    assert "int16" not in text


def test_report_for_an_unsure_recording_says_retake_and_why(data_root, tmp_path):
    row, _, text, _ = _report_from_cli(_artifact(data_root), tmp_path)
    assert row["decision"] == "unsure"
    assert text.splitlines()[0] == "RETAKE THE RECORDING"
    assert f"quality gate found {row['quality']['reason']}" in text
    assert _flat(row["quality"]["hint"]) in _flat(text)
    assert _flat(text).count(row["quality"]["reason"]) == 1  # the hint does not repeat it
    assert "not a diagnosis" in text


def _pages(wav: Path, patient: str | None = "P-17", model: Path | None = None):
    screener = Screener(model)
    pcm = read_wav(wav, screener.spec.sample_rate_hz)
    result = screener.screen_pcm(pcm, screener.spec.sample_rate_hz, str(wav))
    record = Screening(decision=result.decision, probability=result.probability_abnormal,
                       window_scores=[w["probability_abnormal"] for w in result.windows],
                       model_sha256=result.model_sha256, spec_json=screener.spec.to_json(),
                       file=str(wav), patient_id=patient, device_id=DEVICE,
                       time_utc="2026-12-05T09:30:00Z")
    return result, build_pages(pcm, screener.spec, result, record, screener.meta.version)


def test_what_the_page_draws_is_what_it_says(data_root):
    """Every header line (also the PNG metadata) is drawn; the recording is in seconds,
    scaled, not int16; each window's score is written on the murmur's page."""
    result, (page, detail) = _pages(_murmur(data_root))
    assert result.decision == "abnormal"
    drawn = _drawn(page.figure)
    for line in page.lines:
        assert _flat(line) in drawn
    assert page.lines[0] == "REFER FOR A CLOSER LOOK"
    assert f"at or above the referral threshold {result.threshold:.2f}" in drawn
    assert "time (seconds)" in drawn and "scaled to fit" in drawn and "int16" not in drawn
    window_labels = re.findall(r"(?<![\w.])0\.\d\d(?![\d])", drawn)
    for w in result.windows:
        assert f"{w['probability_abnormal']:.2f}" in window_labels
    assert "cepstrum" not in drawn and "cepstrum" in _drawn(detail.figure)
    for line in detail.lines:
        assert _flat(line) in _drawn(detail.figure)


def test_page_without_a_patient_id_says_so(data_root):
    _, (page, _) = _pages(_artifact(data_root), patient=None)
    assert "Patient: not given" in _drawn(page.figure)
    assert "no result: not scored (no heart sound)" in _drawn(page.figure)
    assert page.lines[1].startswith("No result. Why: the quality gate found no heart sound")


def test_unwritable_report_path_is_one_line_after_the_screening(tmp_path):
    out = _screen(str(EXAMPLE), "--report", str(tmp_path / "no-such-dir" / "r.png"),
                  "--db", str(tmp_path / "log.db"), home=tmp_path)
    assert out.returncode == 7, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "cannot write the report" in out.stderr
    assert out.stdout.startswith(f"{EXAMPLE}: NORMAL")
    with sqlite3.connect(tmp_path / "log.db") as con:
        assert con.execute("SELECT count(*) FROM screenings").fetchone() == (1,)


def _unfamiliar(data_root: Path, folder: Path) -> tuple[Path, Path]:
    """(recording, model): a real PhysioNet b recording through another stethoscope's
    response, and the shipped model with a familiarity reference of four databases (as
    tests/test_familiarity.py builds them), which calls it unfamiliar."""
    from tests.test_familiarity import (
        N_TRAIN,
        N_VAL,
        _files,
        _model_with,
        _pcm,
        _treble,
        reference_of,
    )
    from tests.test_screen import _write_wav

    model = folder / "gate.tflite"
    model.write_bytes(_model_with(reference_of(data_root).to_dict()))
    wav = folder / "other_stethoscope.wav"
    _write_wav(wav, _treble(_pcm(_files(data_root, "b")[N_TRAIN + N_VAL + 2])), 2000)
    return wav, model


def _inside(inner, outer) -> bool:
    return (inner.x0 >= outer.x0 - 1 and inner.y0 >= outer.y0 - 1 and inner.x1 <= outer.x1 + 1
            and inner.y1 <= outer.y1 + 1)


def test_every_report_kind_fits_its_page(data_root, tmp_path):
    """Refer, no referral, retake and an unfamiliar stethoscope, each drawn: no text runs
    off the page, and the reason block (up to eight lines) stays clear of the plots and
    their titles. The pages are written as PNGs beside the test's files, to look at."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    odd, gate_model = _unfamiliar(data_root, tmp_path)
    kinds = {"refer": _pages(_murmur(data_root)), "no referral": _pages(EXAMPLE),
             "retake": _pages(_artifact(data_root)),
             "unfamiliar": _pages(odd, model=gate_model)}
    assert [r.decision for r, _ in kinds.values()] == ["abnormal", "normal", "unsure", "unsure"]
    assert kinds["unfamiliar"][0].quality["reason"].startswith("unfamiliar stethoscope")
    for name, (_result, (page, _detail)) in kinds.items():
        fig = page.figure
        canvas = FigureCanvasAgg(fig)
        canvas.draw()  # labels take their places when drawn
        renderer = canvas.get_renderer()
        for text in fig.findobj(Text):
            if text.get_visible() and text.get_text().strip():
                box = text.get_window_extent(renderer)
                assert _inside(box, fig.bbox), (name, text.get_text()[:60])
        (why,) = [t for t in fig.texts if "Why: " in t.get_text()]
        why_box = why.get_window_extent(renderer)
        for ax in fig.axes:
            for other in (ax.title, ax):
                box = other.get_window_extent(renderer)
                assert why_box.y0 > box.y1, (name, "the reason overlaps a plot")
        fig.savefig(tmp_path / f"{name.replace(' ', '_')}.png")
    unfamiliar, refer = kinds["unfamiliar"][1][0].lines[1], kinds["refer"][1][0].lines
    assert unfamiliar.startswith("No result. Why: unfamiliar stethoscope")
    assert "physionet-a, physionet-b, physionet-d, physionet-e" in unfamiliar
    assert "not a calibrated probability" in refer[1] and "chance" not in " ".join(refer)

