"""The unfamiliar-stethoscope gate (issue 18 item 6) on real recordings.

The reference is built here from real PhysioNet recordings as training builds it
(edge.familiarity.build_reference: per-source profiles, threshold from other recordings);
the "other stethoscope" is a real recording through a strong treble equaliser (its second
difference added three times: +20 dB at 800 Hz against 25 Hz), which keeps the heart sound
and passes the quality gate. The screening runs in child processes on a copy of the
shipped model whose metadata carries (or lacks) the block.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert.metadata import add_metadata, build_document
from edge import familiarity
from edge.audio import read_wav
from edge.errors import ModelError
from edge.mfcc import fill_window, mfcc
from edge.model_meta import read_model_meta
from edge.quality import assess
from edge.screening import PACKAGED_MODEL
from edge.spec import DEFAULT_SPEC
from tests.test_screen import REPO, _json_lines, _screen, _write_wav

DATABASES = ("a", "b", "d", "e")
N_TRAIN, N_VAL = 12, 6
SECONDS = 12
TREBLE = 3.0


def _pcm(path: Path) -> np.ndarray:
    return read_wav(path, DEFAULT_SPEC.sample_rate_hz)[: SECONDS * DEFAULT_SPEC.sample_rate_hz]


def _frames(pcm: np.ndarray) -> np.ndarray:
    return mfcc(fill_window(pcm, DEFAULT_SPEC), DEFAULT_SPEC)


def _files(data_root: Path, db: str) -> list[Path]:
    return sorted((data_root / f"physionet2016/training-{db}").glob("*.wav"))


def _treble(pcm: np.ndarray) -> np.ndarray:
    """Another stethoscope's response: x + 3 x'' at the same RMS."""
    x = pcm.astype(np.float64)
    y = x + TREBLE * np.convolve(x, [1.0, -2.0, 1.0], "same")
    y *= np.sqrt(np.mean(x * x) / np.mean(y * y))
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


def reference_of(data_root: Path) -> familiarity.Reference:
    """A reference of four PhysioNet databases (N_TRAIN recordings each, N_VAL more for
    its threshold): what tests that need a model with a familiarity gate build it from."""
    train, val = {}, []
    for db in DATABASES:
        files = _files(data_root, db)
        train[f"physionet-{db}"] = np.array([familiarity.profile(_frames(_pcm(f)))
                                             for f in files[:N_TRAIN]])
        val += [familiarity.profile(_frames(_pcm(f))) for f in files[N_TRAIN:N_TRAIN + N_VAL]]
    return familiarity.build_reference(train, np.array(val))


@pytest.fixture(scope="module")
def reference(data_root) -> familiarity.Reference:
    return reference_of(data_root)


@pytest.fixture(scope="module")
def unseen(data_root) -> list[Path]:
    """One recording per database that is in neither the reference nor its threshold."""
    return [_files(data_root, db)[N_TRAIN + N_VAL + 2] for db in DATABASES]


def _model_with(block: dict | None) -> bytes:
    """The shipped model with its metadata's familiarity block replaced (None: removed)."""
    model = PACKAGED_MODEL.read_bytes()
    doc = {k: v for k, v in read_model_meta(model).document.items() if k != "familiarity"}
    return add_metadata(model, doc | ({} if block is None else {"familiarity": block}))


def test_profile_is_the_exact_mean_of_c1_to_c12(unseen):
    frames = _frames(_pcm(unseen[0]))
    p = familiarity.profile(frames)
    assert p.shape == (12,)
    assert np.array_equal(p, frames[:, 1:13].astype(np.int64).sum(0) / len(frames))
    with pytest.raises(ValueError, match="int16"):
        familiarity.profile(frames.astype(np.float32))


def test_equalised_recording_is_far_and_ordinary_ones_are_near(reference, unseen):
    for path in unseen:
        pcm = _pcm(path)
        ordinary = familiarity.check(_frames(pcm), reference)
        assert ordinary.familiar, (path.name, ordinary)
        treble = _treble(pcm)
        assert assess(treble, DEFAULT_SPEC).ok  # a heart sound still, only unfamiliar
        verdict = familiarity.check(_frames(treble), reference)
        assert not verdict.familiar, (path.name, verdict)
        assert verdict.distance > ordinary.distance
    assert "unfamiliar stethoscope" in verdict.reason() and verdict.nearest in verdict.reason()


def test_convert_writes_the_block_and_the_reader_gives_it_back(reference):
    model = PACKAGED_MODEL.read_bytes()
    meta = read_model_meta(model)
    doc = build_document(model, spec=meta.spec, class_names=meta.class_names,
                         threshold=meta.threshold, familiarity=reference.to_dict())
    back = read_model_meta(add_metadata(model, doc))
    assert back.familiarity == reference
    older = {k: v for k, v in doc.items() if k != "familiarity"}
    assert read_model_meta(add_metadata(model, older)).familiarity is None
    assert "familiarity" not in build_document(model, spec=meta.spec,
                                               class_names=meta.class_names,
                                               threshold=meta.threshold)
    broken = doc | {"familiarity": {**reference.to_dict(), "features": "mean_c0_c5"}}
    with pytest.raises(ModelError, match="familiarity reference .* convert the model again"):
        read_model_meta(add_metadata(model, broken))


def test_screen_says_unsure_for_an_unfamiliar_stethoscope(reference, unseen, tmp_path):
    with_gate, without = tmp_path / "gate.tflite", tmp_path / "old.tflite"
    with_gate.write_bytes(_model_with(reference.to_dict()))
    without.write_bytes(_model_with(None))
    ordinary, odd = tmp_path / "ordinary.wav", tmp_path / "odd.wav"
    pcm = _pcm(unseen[1])
    _write_wav(ordinary, pcm, DEFAULT_SPEC.sample_rate_hz)
    _write_wav(odd, _treble(pcm), DEFAULT_SPEC.sample_rate_hz)

    gated = _json_lines(_screen(str(ordinary), str(odd), "--json", "--model", str(with_gate),
                                "--patient", "P-9", home=tmp_path))
    old = _json_lines(_screen(str(ordinary), str(odd), "--json", "--no-log", "--model",
                              str(without), home=tmp_path))
    # An ordinary recording: the model's answer, as without the block, with the distance.
    assert gated[0]["decision"] == old[0]["decision"] != "unsure"
    assert gated[0]["probability_abnormal"] == old[0]["probability_abnormal"]
    assert gated[0]["quality"]["figures"]["familiarity_distance"] <= reference.threshold
    # The equalised one: unsure with the reason and hint; the model's score kept as a figure.
    q = gated[1]["quality"]
    assert gated[1]["decision"] == "unsure" and gated[1]["probability_abnormal"] is None
    assert q["ok"] is False and q["reason"].startswith("unfamiliar stethoscope: ")
    assert "SD from the nearest training database (physionet-" in q["reason"]
    assert q["hint"] == familiarity.hint(reference)
    assert all(s.name in q["hint"] for s in reference.sources)
    assert q["figures"]["familiarity_distance"] > reference.threshold
    # Without the block (older models) the same recording is screened as before.
    assert old[1]["decision"] in ("normal", "abnormal") and "familiarity_distance" not in (
        old[1]["quality"]["figures"])
    assert q["figures"]["model_probability_abnormal"] == old[1]["probability_abnormal"]

    text = _screen(str(odd), "--no-log", "--model", str(with_gate), home=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "UNSURE - unfamiliar stethoscope" in text.stdout
    history = subprocess.run([sys.executable, "-m", "edge.cli", "history", "--db",
                              str(tmp_path / "screenings.db"), "--csv", "-"],
                             capture_output=True, text=True, cwd=REPO)
    assert history.returncode == 0, history.stderr
    assert "unfamiliar stethoscope" in history.stdout


def test_report_names_the_unfamiliar_stethoscope(reference, unseen, tmp_path):
    pytest.importorskip("matplotlib")
    model = tmp_path / "gate.tflite"
    model.write_bytes(_model_with(reference.to_dict()))
    odd = tmp_path / "odd.wav"
    _write_wav(odd, _treble(_pcm(unseen[2])), DEFAULT_SPEC.sample_rate_hz)
    out = tmp_path / "report.png"
    result = _screen(str(odd), "--report", str(out), "--no-log", "--model", str(model),
                     home=tmp_path)
    assert result.returncode == 0, result.stderr
    from PIL import Image

    lines = Image.open(out).info["Description"]
    assert lines.startswith(familiarity.ADVICE.upper())
    assert "Why: unfamiliar stethoscope: " in lines and familiarity.hint(reference) in lines
    assert lines.splitlines()[1].startswith("No result. Why: ")


def test_serial_host_refuses_an_unfamiliar_stethoscope_before_streaming(reference, unseen,
                                                                         tmp_path):
    """firmware_bridge: with the model's reference the host answers as heartsound screen
    (same decision, reason and distance) and sends nothing; the ordinary one is streamed."""
    from edge.screening import Screener
    from firmware_bridge.client import DeviceClient, screen_pcm
    from firmware_bridge.emulator import Emulator

    model = tmp_path / "gate.tflite"
    model.write_bytes(_model_with(reference.to_dict()))
    screener = Screener(model)
    pcm = _pcm(unseen[3])
    rate = DEFAULT_SPEC.sample_rate_hz
    with Emulator(model) as emu, DeviceClient(emu.port, timeout=2.0) as client:
        odd, odd_run = screen_pcm(client, _treble(pcm), "odd", familiarity=reference)
        ordinary, run = screen_pcm(client, pcm, "ordinary", familiarity=reference)
    local = screener.screen_pcm(_treble(pcm), rate, "odd")
    assert odd_run is None and odd.decision == local.decision == "unsure"
    assert odd.quality["reason"] == local.quality["reason"]
    assert odd.quality["reason"].startswith("unfamiliar stethoscope")
    assert run is not None and ordinary.decision == screener.screen_pcm(pcm, rate).decision
    assert ordinary.quality == screener.screen_pcm(pcm, rate).quality
