"""The loader on the real PASCAL, PhysioNet and CirCor recordings, and on broken copies."""

from __future__ import annotations

import csv
import os
import re
import wave
from collections import Counter
from pathlib import Path

import pytest

from edge.errors import DataError
from tests.data_sources import DATA_FOLDERS, SOURCES
from train.datasets import (
    CONDITION,
    LABEL_SETS,
    SCREENING,
    Recording,
    condition_label,
    default_data_paths,
    get_label_set,
    load_records,
    pascal_a_sessions,
    repo_root,
    screening_label,
    summarize,
)

WAV_CHECKS_PER_SOURCE = 8


@pytest.fixture(scope="module")
def records(data_root: Path) -> list[Recording]:
    return load_records([data_root / name for name in DATA_FOLDERS])


def _by_source(records: list[Recording]) -> dict[str, list[Recording]]:
    out: dict[str, list[Recording]] = {}
    for r in records:
        out.setdefault(r.source, []).append(r)
    return out


def test_every_source_is_loaded_with_its_rate(records: list[Recording]) -> None:
    by_source = _by_source(records)
    assert sorted(by_source) == sorted(SOURCES)
    rates = {s: {r.sample_rate for r in rs} for s, rs in by_source.items()}
    assert rates == {
        "pascal-a": {4000, 44100},  # 130 files resampled to 4 kHz, 11 kept at 44.1 kHz
        "pascal-b": {4000},
        **{source: {2000} for source in SOURCES if source.startswith("physionet-")},
        "circor": {2000},  # resampled from 4 kHz for the shared folder
    }
    set_a = by_source["pascal-a"]
    assert sum(r.sample_rate == 44100 for r in set_a) == 11


def test_pascal_labels_agree_with_file_names(records: list[Recording]) -> None:
    """labels.csv and the challenge's own file-name prefixes tell the same labels."""
    prefix_label = {"Aunlabelledtest": None, "Bunlabelledtest": None}
    for r in records:
        if r.dataset != "pascal":
            continue
        prefix = r.path.name.split("_")[0]
        assert prefix_label.get(prefix, prefix) == r.label, r.path.name
        assert r.noisy == ("noisy" in r.path.name)


def test_physionet_labels_agree_with_headers(records: list[Recording]) -> None:
    """REFERENCE.csv and the '# Normal' / '# Abnormal' comment of each .hea agree."""
    for r in records:
        if r.dataset != "physionet2016":
            continue
        comment = r.path.with_suffix(".hea").read_text().split("#")[-1].strip().lower()
        assert comment == r.label, r.path.name


def test_counts_match_independent_listing(records: list[Recording], data_root: Path) -> None:
    by_source = _by_source(records)
    for folder in sorted((data_root / "physionet2016").glob("training-*")):
        codes = Counter(
            line.split(",")[1].strip()
            for line in (folder / "REFERENCE.csv").read_text().splitlines()
            if line.strip()
        )
        got = Counter(r.label for r in by_source[f"physionet-{folder.name[-1]}"])
        assert got == {"abnormal": codes["1"], "normal": codes["-1"]}
    for set_name in ("a", "b"):
        wavs = sorted((data_root / "pascal" / f"set_{set_name}").glob("*.wav"))
        assert sorted(r.path.name for r in by_source[f"pascal-{set_name}"]) == [
            w.name for w in wavs
        ]


def test_rates_and_lengths_match_the_audio(records: list[Recording]) -> None:
    """labels.csv / .hea say what the WAV holds (a spread of files from every source)."""
    for source, rs in _by_source(records).items():
        step = max(1, len(rs) // WAV_CHECKS_PER_SOURCE)
        for r in rs[::step]:
            with wave.open(str(r.path)) as w:
                assert w.getframerate() == r.sample_rate, r.path
                assert abs(w.getnframes() / w.getframerate() - r.seconds) < 2e-3, source


def test_pascal_b_groups_are_patients_shared_with_unlabelled(records: list[Recording]) -> None:
    set_b = [r for r in records if r.source == "pascal-b"]
    for r in set_b:
        patient = re.search(r"_(\d+)_\d{9,}", r.path.name).group(1)
        assert r.patient == patient
        assert r.group == f"pascal-b/{patient}"
    labelled = {r.group for r in set_b if r.label is not None}
    unlabelled = {r.group for r in set_b if r.label is None}
    assert len(labelled & unlabelled) > 0  # the leak training must avoid
    assert len({r.group for r in set_b}) < len(set_b)


def test_pascal_b_noisy_files_join_their_patient(records: list[Recording]) -> None:
    """labels.csv's patient column holds a timestamp for noisy files; the name wins."""
    set_b = [r for r in records if r.source == "pascal-b"]
    noisy_groups = {r.group for r in set_b if r.noisy}
    clean_groups = {r.group for r in set_b if not r.noisy}
    assert noisy_groups and noisy_groups & clean_groups
    assert all(len(r.patient) < 6 for r in set_b)  # ids, not 13-digit timestamps


def test_pascal_a_groups_are_sittings(records: list[Recording]) -> None:
    set_a = [r for r in records if r.source == "pascal-a"]
    assert all(r.patient is None for r in set_a)
    groups = Counter(r.group for r in set_a)
    burst = {r.group for r in set_a if "__20110822" in r.path.name}
    assert len(burst) == 1  # 26 recordings in 37 minutes, all 7.936 s
    assert groups[burst.pop()] == sum("__20110822" in r.path.name for r in set_a)
    assert max(groups.values()) < len(set_a) // 2
    assert sum(1 for n in groups.values() if n == 1) > len(groups) // 2


def test_session_chaining_rule() -> None:
    names = [
        "x__201101010000.wav",
        "y__201101010029.wav",  # 29 min after: same sitting
        "z__201101010058.wav",  # chained through y
        "w__201101010130.wav",  # 32 min after z: new sitting
        "v__2011010100.wav",  # unparseable stamp: own group
    ]
    groups = pascal_a_sessions(names)
    assert groups[names[0]] == groups[names[1]] == groups[names[2]]
    assert groups[names[3]] != groups[names[2]]
    assert groups[names[4]] not in {groups[n] for n in names[:4]}


def test_physionet_groups_are_recordings_and_unique(records: list[Recording]) -> None:
    phys = [r for r in records if r.dataset == "physionet2016"]
    assert len({r.group for r in phys}) == len(phys)
    assert all(r.group == f"{r.source}/{r.path.stem}" for r in phys)
    assert len({r.name for r in records}) == len(records)


def test_label_sets(records: list[Recording]) -> None:
    assert LABEL_SETS == {"screening": SCREENING, "condition": CONDITION}
    assert get_label_set("screening") is SCREENING
    with pytest.raises(DataError, match="unknown label set 'nope'"):
        get_label_set("nope")
    expected = {
        "normal": "normal",
        "murmur": "abnormal",
        "extrastole": "abnormal",
        "extrahls": "abnormal",
        "abnormal": "abnormal",
        "artifact": None,
        None: None,
    }
    for fine, coarse in expected.items():
        assert screening_label(fine) == coarse
    assert condition_label("artifact") is None and condition_label("murmur") == "murmur"
    by_source = _by_source(records)
    for r in records:
        # CirCor's "murmur" is a patient's finding; screening trains on the other sets.
        expected = None if r.dataset == "circor2022" else screening_label(r.label)
        assert SCREENING.target(r) == expected
        index = SCREENING.index(r)
        assert index is None or SCREENING.classes[index] == SCREENING.target(r)
    assert CONDITION.select(by_source["physionet-a"]) == []
    chosen = CONDITION.select(records)
    assert Counter(CONDITION.target(r) for r in chosen).keys() == set(CONDITION.classes)
    assert all(r.label not in (None, "artifact") for r in SCREENING.select(records))


def test_default_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HEARTSOUND_DATA", raising=False)
    shared = repo_root().parent / "shared" / "data"
    assert default_data_paths() == [shared / name for name in DATA_FOLDERS]
    joined = os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b"), ""])
    monkeypatch.setenv("HEARTSOUND_DATA", joined)
    assert default_data_paths() == [tmp_path / "a", tmp_path / "b"]


def test_one_training_folder_and_duplicates(data_root: Path, records: list[Recording]) -> None:
    folder = data_root / "physionet2016" / "training-d"
    alone = load_records([folder])
    assert {r.source for r in alone} == {"physionet-d"}
    assert alone == [r for r in records if r.source == "physionet-d"]
    twice = load_records([data_root / "physionet2016", folder])
    assert twice == [r for r in records if r.dataset == "physionet2016"]


def test_summary_table(records: list[Recording]) -> None:
    text = summarize(records)
    lines = text.splitlines()
    header = lines[0].split()
    assert header[:2] == ["source", "normal"] and header[-3:] == ["total", "groups", "hours"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {*SOURCES, "all"}
    total = header.index("total")
    assert int(rows["all"][total]) == len(records)
    for source, rs in _by_source(records).items():
        assert int(rows[source][total]) == len(rs)
        assert int(rows[source][total + 1]) == len({r.group for r in rs})
        assert float(rows[source][total + 2]) == pytest.approx(
            sum(r.seconds for r in rs) / 3600, abs=0.006
        )


# ----------------------------------------------------------------------- bad input


def _small_pascal(tmp_path: Path, data_root: Path, rows: list[list[str]]) -> Path:
    """A PASCAL-layout folder whose WAVs are links to a few real recordings."""
    folder = tmp_path / "pascal"
    for sub in ("set_a", "set_b"):
        (folder / sub).mkdir(parents=True)
    with (data_root / "pascal" / "labels.csv").open() as handle:
        real = list(csv.reader(handle))
    header = real[0]
    for row in rows:
        source = data_root / "pascal" / row[0]
        if source.exists():
            (folder / row[0]).symlink_to(source)
    with (folder / "labels.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    return folder


def _pascal_rows(data_root: Path, count: int) -> list[list[str]]:
    with (data_root / "pascal" / "labels.csv").open() as handle:
        rows = list(csv.reader(handle))[1:]
    return rows[:: len(rows) // count][:count]


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_records([tmp_path / "nowhere"])


def test_folder_without_recordings(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("not data")
    with pytest.raises(DataError, match="labels.csv .*REFERENCE.csv .*training-"):
        load_records([tmp_path])


def test_labels_naming_missing_files(tmp_path: Path, data_root: Path) -> None:
    rows = _pascal_rows(data_root, 4)
    ghosts = [[f"set_a/ghost{i}.wav", "A", "normal", "0", "", "44100", "1.0"] for i in range(7)]
    folder = _small_pascal(tmp_path, data_root, rows + ghosts)
    with pytest.raises(DataError) as info:
        load_records([folder])
    message = str(info.value)
    assert "7 missing" in message and "ghost0.wav" in message and "2 more" in message
    assert "\n" not in message


def test_malformed_pascal_row_names_its_line(tmp_path: Path, data_root: Path) -> None:
    rows = _pascal_rows(data_root, 3)
    rows[1] = [*rows[1][:2], "wobbly", *rows[1][3:]]
    with pytest.raises(DataError, match=r"labels.csv line 3: unknown label 'wobbly'"):
        load_records([_small_pascal(tmp_path, data_root, rows)])
    rows = _pascal_rows(data_root, 3)
    rows[2] = rows[2][:4]
    with pytest.raises(DataError, match=r"line 4: 4 fields, expected 7"):
        load_records([_small_pascal(tmp_path / "x", data_root, rows)])


def test_small_pascal_copy_loads(tmp_path: Path, data_root: Path) -> None:
    rows = _pascal_rows(data_root, 6)
    loaded = load_records([_small_pascal(tmp_path, data_root, rows)])
    assert [r.path.name for r in loaded] == [Path(row[0]).name for row in rows]


def _small_physionet(tmp_path: Path, data_root: Path, reference: str, names: list[str]) -> Path:
    folder = tmp_path / "training-q"
    folder.mkdir(parents=True)
    source = data_root / "physionet2016" / "training-d"
    for name in names:
        for suffix in (".wav", ".hea"):
            if (source / f"{name}{suffix}").exists():
                (folder / f"{name}{suffix}").symlink_to(source / f"{name}{suffix}")
    (folder / "REFERENCE.csv").write_text(reference)
    return folder


def test_reference_with_quality_column_and_other_folder_name(
    tmp_path: Path, data_root: Path
) -> None:
    reference = "d0001,-1,1\nd0002,1,0\r\n\nd0003,1,1\n"
    folder = _small_physionet(tmp_path, data_root, reference, ["d0001", "d0002", "d0003"])
    loaded = load_records([folder])
    assert [(r.path.stem, r.label, r.noisy) for r in loaded] == [
        ("d0001", "normal", False),
        ("d0002", "abnormal", True),
        ("d0003", "abnormal", False),
    ]
    assert {r.source for r in loaded} == {"physionet-q"}


def test_reference_errors(tmp_path: Path, data_root: Path) -> None:
    names = ["d0001", "d0002"]
    bad_label = _small_physionet(tmp_path / "1", data_root, "d0001,-1\nd0002,2\n", names)
    with pytest.raises(DataError, match=r"REFERENCE.csv line 2: label '2'"):
        load_records([bad_label])
    missing = "d0001,-1\nd0002,1\nzz001,1\nzz002,-1\n"
    absent = _small_physionet(tmp_path / "2", data_root, missing, names)
    with pytest.raises(DataError, match=r"names 2 missing recording\(s\): zz001.wav, zz002.wav"):
        load_records([absent])


def test_missing_header_falls_back_to_wav(tmp_path: Path, data_root: Path) -> None:
    folder = _small_physionet(tmp_path, data_root, "d0001,-1\n", ["d0001"])
    (folder / "d0001.hea").unlink()
    real = load_records([data_root / "physionet2016" / "training-d"])[0]
    (loaded,) = load_records([folder])
    assert (loaded.sample_rate, loaded.seconds) == (real.sample_rate, real.seconds)
