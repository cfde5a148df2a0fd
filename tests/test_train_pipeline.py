"""`heartsound train` end to end on a small real subset, and its refusals of bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from tests.data_sources import PHYSIONET
from tests.data_sources import SCREENING_SOURCES as SOURCES
from train.datasets import load_records

RUN_FILES = ("model.keras", "spec.json", "model.json", "representative.npy", "splits.json",
             "metrics.json", "training_curves.png", "confusion_matrix.png", "MODEL_CARD.md")


def _data_args(data_root: Path) -> list[str]:
    return ["--data", str(data_root / "pascal"), "--data", str(data_root / "physionet2016")]


@pytest.fixture(scope="module")
def small_run(data_root, tmp_path_factory):
    """One real run: ~14 recordings per source, 1 epoch, one augmented copy, LODO on."""
    base = tmp_path_factory.mktemp("train")
    out = base / "run"
    args = ["train", *_data_args(data_root), "--out", str(out), "--cache", str(base / "cache"),
            "--limit", "14", "--epochs", "1", "--copies", "1", "--lodo", "--quiet"]
    assert main(args) == 0
    return out, args


@pytest.mark.slow
def test_run_folder_holds_what_conversion_needs(small_run):
    out, _ = small_run
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    model = json.loads((out / "model.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert model["class_names"] == ["normal", "abnormal"] == metrics["class_names"]
    assert 0.0 <= model["threshold"] <= 1.0 and model["threshold"] == metrics["threshold"]
    rep = np.load(out / "representative.npy")
    assert rep.dtype == np.int16 and rep.shape[1:] == tuple(model["input_shape"])
    assert {*SOURCES, "overall"} <= set(metrics["test"]["recording"])
    assert set(metrics["lodo"]) == set(PHYSIONET)
    card = (out / "MODEL_CARD.md").read_text()
    assert f"{metrics['threshold']:.4f}" in card and "Leave-one-database-out" in card


@pytest.mark.slow
def test_no_group_in_two_splits(small_run, data_root):
    out, _ = small_run
    splits = json.loads((out / "splits.json").read_text())
    group_of = {r.name: r.group for r in load_records([data_root / "pascal",
                                                       data_root / "physionet2016"])}
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for name in splits[split]:
            group = group_of[name]
            assert seen.setdefault(group, split) == split, f"{group} in {seen[group]}, {split}"
    assert {n.split("/")[0] for n in splits["test"]} >= set(SOURCES)


@pytest.mark.slow
def test_existing_run_folder_is_refused(small_run, capsys):
    out, args = small_run
    before = (out / "metrics.json").stat().st_mtime_ns
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "--force" in err and "\n" not in err
    assert (out / "metrics.json").stat().st_mtime_ns == before


def test_folder_without_labels_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["train", "--data", str(empty), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 5 and "no labelled recordings" in err and "\n" not in err


def _fake_physionet(data_root: Path, dest: Path, names: list[str], label: str) -> Path:
    """A training-x folder of real recordings (linked, not copied) with our own labels."""
    src = data_root / "physionet2016" / "training-b"
    folder = dest / "training-b"
    folder.mkdir(parents=True)
    for name in names:
        for ext in (".wav", ".hea"):
            os.symlink(src / f"{name}{ext}", folder / f"{name}{ext}")
    (folder / "REFERENCE.csv").write_text("".join(f"{n},{label}\n" for n in names))
    return folder


def test_class_absent_from_a_split_is_refused(data_root, tmp_path, capsys):
    names = [f"b{i:04d}" for i in range(1, 13)]
    folder = _fake_physionet(data_root, tmp_path, names, "-1")  # all normal
    code = main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 5 and "no 'abnormal' recordings" in err and "\n" not in err
    assert not any((tmp_path / "run").glob("*"))


def test_label_file_naming_missing_files_is_refused(data_root, tmp_path, capsys):
    folder = _fake_physionet(data_root, tmp_path, ["b0001", "b0002"], "1")
    with (folder / "REFERENCE.csv").open("a") as handle:
        handle.write("b9999,-1\n")
    code = main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 5 and "b9999" in err and "missing" in err


def test_force_refuses_to_delete_a_folder_that_is_not_a_run(tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    code = main(["train", "--out", str(precious), "--force", "--quiet"])
    assert code == 2 and "holds no heartsound run" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"
    shutil.rmtree(precious)


@pytest.mark.slow
def test_test_figures_carry_patient_bootstrap_intervals(small_run):
    out, _ = small_run
    metrics = json.loads((out / "metrics.json").read_text())
    results = list(metrics["test"]["recording"].values())
    results += [res["test"][name] for name, res in metrics["lodo"].items()]
    for m in results:
        ci = m["ci95"]
        for key in ("se", "sp", "macc", "auc"):
            if m[key] is None:
                assert ci[key] is None
            else:
                assert ci[key][0] - 1e-9 <= m[key] <= ci[key][1] + 1e-9, (key, m, ci)
    assert "ci95" not in metrics["test"]["window"]["overall"]  # windows are not independent
    figures = metrics["targets"]["figures"]
    assert set(figures) == set(metrics["targets"]["checks"])
    for f in figures.values():  # the ceiling of any threshold is at least the MAcc reached
        assert f["macc"] is None or f["macc_best"] >= f["macc"] - 1e-12, f
    card = (out / "MODEL_CARD.md").read_text()
    assert "patient-level bootstrap" in card and "95 % CI" in card
    assert "any threshold <= " in card


@pytest.mark.slow
def test_same_command_trains_the_same_model(data_root, tmp_path):
    """The issue's "reproducible from one command": weights, history and test figures
    repeat exactly (seeded augmentation and windows, deterministic kernels, fixed pools)."""
    outs = []
    for name in ("first", "second"):
        out = tmp_path / name
        args = ["train", *_data_args(data_root), "--out", str(out), "--cache",
                str(tmp_path / "cache"), "--limit", "10", "--epochs", "2", "--copies", "1",
                "--threads", "2", "--quiet"]
        assert main(args) == 0
        outs.append(out)
    import tf_keras

    a, b = (tf_keras.models.load_model(o / "model.keras", compile=False) for o in outs)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    ma, mb = (json.loads((o / "metrics.json").read_text()) for o in outs)
    assert ma["history"] == mb["history"] and ma["test"] == mb["test"]
    assert "tf_threads" in ma["environment"]  # 0: TensorFlow's own choice (pools set earlier)


def test_threads_below_one_is_refused(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--threads", "0", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--threads 0" in err and "\n" not in err
