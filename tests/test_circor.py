"""The CirCor 2022 loader on the real folder: counts as its README gives them, children
kept whole across ids, and one clear line for broken copies."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from edge.errors import DataError
from train.circor import patient_summary
from train.datasets import Recording, load_records
from train.splits import split_groups

# ../shared/data/circor2022/README.md, "Counts here" and the pairs paragraph
README_IDS, README_RECORDINGS, README_CHILDREN = 564, 1886, 522
README_MURMUR = {"Absent": 418, "Present": 105, "Unknown": 41}
README_OUTCOME = {"Abnormal": 274, "Normal": 290}
README_CAMPAIGN = {"CC2014": 230, "CC2015": 334}


@pytest.fixture(scope="module")
def circor(data_root: Path) -> Path:
    return data_root / "circor2022"


@pytest.fixture(scope="module")
def records(circor: Path) -> list[Recording]:
    return load_records([circor])


def _rows(circor: Path) -> list[dict[str, str]]:
    with (circor / "training_data.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _patients(records: list[Recording]) -> dict[str, Recording]:
    return {r.patient: r for r in records}


def test_counts_are_the_readmes(records: list[Recording], circor: Path) -> None:
    assert len(records) == README_RECORDINGS
    assert len(list((circor / "training_data").glob("*.wav"))) == README_RECORDINGS
    patients = _patients(records)
    assert len(patients) == README_IDS
    assert len({r.group for r in records}) == README_CHILDREN
    for attr, expected in (("murmur", README_MURMUR), ("outcome", README_OUTCOME),
                           ("campaign", README_CAMPAIGN)):
        assert Counter(getattr(r.auscultation, attr) for r in patients.values()) == expected
    line = patient_summary(records)
    assert "564 patient ids (522 children)" in line
    assert "murmur Absent 418, Present 105, Unknown 41" in line


def test_every_recording_is_read_with_its_location_and_rate(records, circor) -> None:
    on_disk = sorted(p.name for p in (circor / "training_data").glob("*.wav"))
    assert sorted(r.path.name for r in records) == on_disk
    for r in records:
        stem = r.path.stem.split("_")
        assert (r.patient, r.auscultation.location) == (stem[0], stem[1])
        assert (r.sample_rate, r.source, r.dataset) == (2000, "circor", "circor2022")
        assert 0 < r.seconds <= 8.0  # the shared copy keeps each recording's first 8 s
    with_tsv = [r for r in records if r.auscultation.segmentation is not None]
    assert len(with_tsv) == len(list((circor / "training_data").glob("*.tsv")))
    assert all(r.auscultation.segmentation == r.path.with_suffix(".tsv") for r in with_tsv)


def test_labels_follow_the_patient_table(records: list[Recording], circor: Path) -> None:
    rows = {row["Patient ID"]: row for row in _rows(circor)}
    fine = {"Present": "murmur", "Absent": "no_murmur", "Unknown": "murmur_unknown"}
    for r in records:
        row, a = rows[r.patient], r.auscultation
        assert r.label == fine[row["Murmur"]] and a.outcome == row["Outcome"]
        heard = row["Murmur locations"].split("+")
        if row["Murmur"] == "Unknown":
            assert a.murmur_here is None
        else:
            assert a.murmur_here == (row["Murmur"] == "Present" and a.location in heard)
        grade = row["Systolic murmur grading"]
        assert a.systolic_grade == (None if grade == "nan" else grade)
    # a murmur is heard where it is heard: most Present patients have a quiet location
    present = [r for r in records if r.auscultation.murmur == "Present"]
    assert 0 < sum(not r.auscultation.murmur_here for r in present) < len(present)


def test_two_ids_of_one_child_are_one_group_on_one_side(records, circor) -> None:
    pairs = {(row["Patient ID"], row["Additional ID"]) for row in _rows(circor)
             if row["Additional ID"] != "nan"}
    assert len(pairs) == 2 * 42  # each pair names the other
    group = {r.patient: r.group for r in records}
    for one, other in pairs:
        assert group[one] == group[other] == f"circor/{min(one, other, key=int)}"
    for seed in range(3):
        splits = split_groups(records, seed=seed)
        side = {r.patient: name for name, part in splits.items() for r in part}
        assert all(side[one] == side[other] for one, other in pairs)
        assert {name for name, part in splits.items() if part} == {"train", "val", "test"}


# ----------------------------------------------------------------------- bad input


def _copy(circor: Path, tmp_path: Path, ids: list[str]) -> Path:
    """A CirCor-layout folder of a few real patients (recordings linked, not copied)."""
    folder = tmp_path / "circor"
    (folder / "training_data").mkdir(parents=True)
    rows = [row for row in _rows(circor) if row["Patient ID"] in ids]
    for pid in ids:
        for path in (circor / "training_data").glob(f"{pid}[._]*"):
            (folder / "training_data" / path.name).symlink_to(path)
    with (folder / "training_data.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def _some_ids(circor: Path, n: int = 3) -> list[str]:
    return [row["Patient ID"] for row in _rows(circor)[:n]]


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_a_small_copy_loads(circor: Path, tmp_path: Path) -> None:
    ids = _some_ids(circor)
    loaded = load_records([_copy(circor, tmp_path, ids)])
    assert {r.patient for r in loaded} == set(ids)


def test_a_bad_murmur_value_names_its_line(circor: Path, tmp_path: Path) -> None:
    folder = _copy(circor, tmp_path, _some_ids(circor))
    text = (folder / "training_data.csv").read_text().splitlines()
    text[2] = text[2].replace(",Absent,", ",Maybe,").replace(",Present,", ",Maybe,")
    (folder / "training_data.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError) as info:
        load_records([folder])
    assert "training_data.csv line 3: Murmur 'Maybe' is not one of" in _one_line(info)


def test_a_missing_recording_is_named(circor: Path, tmp_path: Path) -> None:
    ids = _some_ids(circor)
    folder = _copy(circor, tmp_path, ids)
    gone = sorted((folder / "training_data").glob(f"{ids[1]}_*.wav"))[0]
    gone.unlink()
    with pytest.raises(DataError) as info:
        load_records([folder])
    assert f"names 1 missing recording(s): {gone.name}" in _one_line(info)


def test_a_missing_patient_file_is_named(circor: Path, tmp_path: Path) -> None:
    ids = _some_ids(circor)
    folder = _copy(circor, tmp_path, ids)
    (folder / "training_data" / f"{ids[0]}.txt").unlink()
    with pytest.raises(DataError) as info:
        load_records([folder])
    assert f"line 2: patient {ids[0]} has no {ids[0]}.txt" in _one_line(info)


def test_a_table_that_is_not_circors_is_refused(circor: Path, tmp_path: Path) -> None:
    folder = _copy(circor, tmp_path, _some_ids(circor))
    (folder / "training_data.csv").write_text("Patient ID,Murmur\n1,Absent\n")
    with pytest.raises(DataError) as info:
        load_records([folder])
    assert "line 1: the header lacks" in _one_line(info) and "Outcome" in str(info.value)


def test_a_partner_id_outside_the_folder_leaves_the_child_alone(circor, tmp_path) -> None:
    row = next(r for r in _rows(circor) if r["Additional ID"] != "nan")
    folder = _copy(circor, tmp_path, [row["Patient ID"]])
    loaded = load_records([folder])
    assert {r.group for r in loaded} == {f"circor/{row['Patient ID']}"}
    shutil.rmtree(folder)


# ------------------------------------------------------------- where the data is found


def test_data_list_from_a_checkout_finds_every_source(data_root: Path) -> None:
    """No --data and no $HEARTSOUND_DATA: a checkout reads ../shared/data, all of it."""
    from tests.conftest import REPO_ROOT, outside_checkout_env
    from tests.data_sources import SOURCES

    if data_root != (REPO_ROOT.parent / "shared" / "data").resolve():
        pytest.skip(f"the data is not beside the checkout but in {data_root} ($HEARTSOUND_DATA)")
    result = subprocess.run([sys.executable, "-m", "edge.cli", "data", "list"],
                            capture_output=True, text=True, cwd=REPO_ROOT,
                            env=outside_checkout_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0] for line in result.stdout.splitlines()[2:]}
    assert set(SOURCES) <= rows
    assert "564 patient ids (522 children)" in result.stdout


@pytest.mark.slow
def test_data_list_from_an_installed_copy(installed_station: Path, data_root: Path,
                                          tmp_path: Path) -> None:
    """A pip-installed station is not a checkout: without --data it says what to pass in
    one line (it used to look in site-packages/../shared/data); with --data it lists."""
    from tests.conftest import outside_checkout_env

    command = [str(installed_station / "bin/heartsound"), "data", "list"]
    bare = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                          env=outside_checkout_env(), timeout=120)
    assert bare.returncode == 5 and "Traceback" not in bare.stderr
    (line,) = bare.stderr.strip().splitlines()
    assert "pass --data DIR" in line and "HEARTSOUND_DATA" in line and "installed copy" in line
    given = subprocess.run([*command, "--data", str(data_root / "circor2022")],
                           capture_output=True, text=True, cwd=tmp_path,
                           env=outside_checkout_env(), timeout=120)
    assert given.returncode == 0, given.stderr
    assert given.stdout.splitlines()[2].split()[:1] == ["circor"]


def test_cross_validation_folds_keep_each_child_in_one_fold(records, circor) -> None:
    from train.splits import group_folds

    folds = group_folds(records, k=5, seed=0)
    assert sorted(r.name for fold in folds for r in fold) == sorted(r.name for r in records)
    fold_of = {r.patient: i for i, fold in enumerate(folds) for r in fold}
    pairs = [(row["Patient ID"], row["Additional ID"]) for row in _rows(circor)
             if row["Additional ID"] != "nan"]
    assert all(fold_of[one] == fold_of[other] for one, other in pairs)
    groups = [{r.group for r in fold} for fold in folds]
    assert all(not a & b for i, a in enumerate(groups) for b in groups[i + 1:])
    # stratified: each fold holds about a fifth of the murmur patients (105 in all)
    present = [len({r.patient for r in fold if r.auscultation.murmur == "Present"})
               for fold in folds]
    assert sum(present) == README_MURMUR["Present"] and min(present) >= 15, present


def test_segmentations_are_heart_cycles_in_order(records: list[Recording]) -> None:
    """Every expert segmentation reads, within its recording; the annotated states run
    S1, systole, S2, diastole (measured: 54,937 of 55,026 transitions; the rest are the
    experts' own skips), and two thirds of the 8 s recordings mark six or more S1."""
    from train.circor import read_segmentation

    cycle = {1: 2, 2: 3, 3: 4, 4: 1}
    in_order = transitions = six_beats = 0
    segmented = [r for r in records if r.auscultation.segmentation is not None]
    for r in segmented:
        segments = read_segmentation(r.auscultation.segmentation)
        assert segments and segments[-1].end <= r.seconds + 1e-6, r.path.name
        assert [s.start for s in segments] == sorted(s.start for s in segments)
        states = [s.state for s in segments if s.state]
        in_order += sum(cycle[a] == b for a, b in zip(states, states[1:], strict=False))
        transitions += max(len(states) - 1, 0)
        six_beats += states.count(1) >= 6
    assert in_order >= 0.99 * transitions
    assert six_beats > 0.6 * len(segmented)


def test_a_malformed_segmentation_line_is_named(tmp_path: Path) -> None:
    from train.circor import read_segmentation

    bad = tmp_path / "x.tsv"
    bad.write_text("0\t0.2\t0\n0.2\tsoon\t1\n")
    with pytest.raises(DataError) as info:
        read_segmentation(bad)
    assert "x.tsv line 2: expected 'start<TAB>end<TAB>state'" in _one_line(info)
