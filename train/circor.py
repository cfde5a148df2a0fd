"""CirCor DigiScope 2022 (PhysioNet Challenge 2022) as :class:`~train.records.Recording`s.

The folder holds ``training_data.csv`` (one row per patient id: murmur, its locations,
grade and timing, outcome, campaign, ``Additional ID``) and ``training_data/`` with one
``PATIENT.txt`` per id naming its recordings (``AV 13918_AV.hea 13918_AV.wav
13918_AV.tsv``), each with a WFDB header and, for most, an expert S1/S2 segmentation.

Why groups are *children*, not ids: 42 children of this folder were recorded in both
campaigns (CC2014 and CC2015) under two ids that name each other in ``Additional ID``.
Their recordings are the same heart on the same stethoscope, so both ids form one group
(``circor/<smaller id>``) and go to the same side of every split and fold.

The fine label of a recording is the patient's murmur finding (``murmur``,
``no_murmur``, ``murmur_unknown``): the challenge labels patients, and a murmur heard
at one location is absent at others (:attr:`Auscultation.murmur_here` says where).
Only numpy-free standard library, like the other loaders (``heartsound data list``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edge.errors import DataError
from train.data_files import check_present, read_csv_rows, wfdb_rate_and_seconds
from train.records import Auscultation, Recording

CIRCOR_INDEX = "training_data.csv"
CIRCOR_FOLDER = "training_data"
CIRCOR_SOURCE = "circor"
CIRCOR_DATASET = "circor2022"
LOCATIONS = ("AV", "PV", "TV", "MV", "Phc")
MURMUR_LABELS = {"Present": "murmur", "Absent": "no_murmur", "Unknown": "murmur_unknown"}
OUTCOMES = ("Abnormal", "Normal")
CAMPAIGNS = ("CC2014", "CC2015")
REQUIRED_COLUMNS = ("Patient ID", "Locations", "Murmur", "Murmur locations",
                    "Systolic murmur grading", "Systolic murmur timing",
                    "Diastolic murmur grading", "Diastolic murmur timing",
                    "Outcome", "Campaign", "Additional ID")
MISSING = ("", "nan", "NaN")


STATES = {0: "unannotated", 1: "S1", 2: "systole", 3: "S2", 4: "diastole"}
"""The state codes of CirCor's segmentation files."""


@dataclass(frozen=True)
class Segment:
    """One annotated stretch of a recording: ``start``-``end`` seconds in ``state``."""

    start: float
    end: float
    state: int  # a key of STATES

    @property
    def name(self) -> str:
        return STATES[self.state]


def read_segmentation(path: Path) -> list[Segment]:
    """The expert S1/S2 segmentation of one recording, sorted by time (``.tsv``: start,
    end, state per line); a malformed line is one DataError naming it."""
    segments = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            start, end, state = float(fields[0]), float(fields[1]), int(fields[2])
        except (IndexError, ValueError):
            raise DataError(f"{path} line {number}: expected 'start<TAB>end<TAB>state', "
                            f"got '{line.strip()}'") from None
        if state not in STATES or not 0 <= start <= end:
            raise DataError(f"{path} line {number}: state {state} from {start} to {end} s "
                            f"is not a segment (states {min(STATES)}-{max(STATES)})")
        segments.append(Segment(start, end, state))
    # Some files list a stretch again after the end (50690_TV.tsv returns to 1.59 s at
    # line 35): the expert's order is not time order.
    return sorted(segments, key=lambda s: (s.start, s.end))


@dataclass(frozen=True)
class _Patient:
    pid: str
    row: Mapping[str, str]
    where: str


def load_circor(folder: Path) -> list[Recording]:
    """Every recording of every patient in ``training_data.csv``, grouped by child."""
    index = folder / CIRCOR_INDEX
    rows = read_csv_rows(index)
    header = [c.strip() for c in rows[0][1]] if rows else []
    missing = sorted(set(REQUIRED_COLUMNS) - set(header))
    if missing:
        raise DataError(f"{index} line 1: the header lacks {', '.join(missing)}; "
                        "is this CirCor's training_data.csv?")
    patients = [_patient(index, line, header, row) for line, row in rows[1:]]
    child = children(patients)
    listed = [(p, *rec) for p in patients for rec in _recordings_of(folder, p)]
    check_present(index, [wav for _, _, wav, _ in listed])
    return [_record(p, child[p.pid], location, wav, tsv) for p, location, wav, tsv in listed]


def children(patients: list[_Patient]) -> dict[str, str]:
    """Patient id -> the child's group id: the smaller of two linked ids, else its own.

    A link counts when its partner is in the folder: an ``Additional ID`` pointing
    outside it (the challenge's other patients) leaves the child alone here.
    """
    ids = {p.pid for p in patients}
    child = {p.pid: p.pid for p in patients}
    for p in patients:
        other = _field(p.row, "Additional ID")
        if other and other in ids:
            first = min(p.pid, other, key=int)
            child[p.pid] = child[other] = first
    return child


def _patient(index: Path, line: int, header: list[str], row: list[str]) -> _Patient:
    where = f"{index} line {line}"
    if len(row) != len(header):
        raise DataError(f"{where}: {len(row)} fields, expected {len(header)}")
    fields = {name: value.strip() for name, value in zip(header, row, strict=True)}
    pid = fields["Patient ID"]
    if not pid.isdigit():
        raise DataError(f"{where}: patient id '{pid}' is not a number")
    checks = (("Murmur", tuple(MURMUR_LABELS)), ("Outcome", OUTCOMES), ("Campaign", CAMPAIGNS))
    for column, allowed in checks:
        if fields[column] not in allowed:
            raise DataError(f"{where}: {column} '{fields[column]}' is not one of "
                            f"{', '.join(allowed)}")
    other = _field(fields, "Additional ID")
    if other is not None and not other.isdigit():
        raise DataError(f"{where}: Additional ID '{other}' is not a number")
    return _Patient(pid, fields, where)


def _recordings_of(folder: Path, patient: _Patient) -> list[tuple[str, Path, Path | None]]:
    """(location, wav, tsv or None) from the patient's own ``PATIENT.txt``."""
    data = folder / CIRCOR_FOLDER
    text_file = data / f"{patient.pid}.txt"
    if not text_file.is_file():
        raise DataError(f"{patient.where}: patient {patient.pid} has no {text_file.name} in "
                        f"{data}: the folder is incomplete, copy it again")
    lines = text_file.read_text(encoding="utf-8", errors="replace").splitlines()
    try:
        count = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise DataError(f"{text_file} line 1: expected 'id recordings rate'") from None
    out = []
    for number, line in enumerate(lines[1 : 1 + count], start=2):
        fields = line.split()
        if len(fields) < 3 or fields[0] not in LOCATIONS or not fields[2].endswith(".wav"):
            raise DataError(f"{text_file} line {number}: expected 'LOCATION file.hea "
                            f"file.wav [file.tsv]', got '{line.strip()}'")
        tsv = data / fields[3] if len(fields) > 3 else None
        out.append((fields[0], data / fields[2], tsv if tsv and tsv.is_file() else None))
    if len(out) != count:
        raise DataError(f"{text_file}: line 1 announces {count} recordings, {len(out)} follow")
    return out


def _record(patient: _Patient, child: str, location: str, wav: Path,
            tsv: Path | None) -> Recording:
    row = patient.row
    murmur = row["Murmur"]
    heard_at = set((_field(row, "Murmur locations") or "").split("+"))
    here = None if murmur == "Unknown" else (murmur == "Present" and location in heard_at)
    rate, seconds = wfdb_rate_and_seconds(wav.with_suffix(".hea"), wav)
    return Recording(
        path=wav,
        label=MURMUR_LABELS[murmur],
        group=f"{CIRCOR_SOURCE}/{child}",
        source=CIRCOR_SOURCE,
        noisy=False,
        sample_rate=rate,
        seconds=seconds,
        patient=patient.pid,
        dataset=CIRCOR_DATASET,
        auscultation=Auscultation(
            location=location,
            murmur=murmur,
            murmur_here=here,
            outcome=row["Outcome"],
            campaign=row["Campaign"],
            systolic_grade=_field(row, "Systolic murmur grading"),
            systolic_timing=_field(row, "Systolic murmur timing"),
            diastolic_grade=_field(row, "Diastolic murmur grading"),
            diastolic_timing=_field(row, "Diastolic murmur timing"),
            segmentation=tsv,
        ),
    )


def _field(row: Mapping[str, str], column: str) -> str | None:
    value = row.get(column, "").strip()
    return None if value in MISSING else value


def patient_summary(records: list[Recording]) -> str:
    """Per-patient counts for CirCor, the unit its README and the challenge count in."""
    patients: dict[str, Auscultation] = {}
    children_seen = set()
    for r in records:
        if r.auscultation is not None:
            patients[r.patient] = r.auscultation
            children_seen.add(r.group)
    if not patients:
        return ""

    def count(attr: str, values) -> str:
        return ", ".join(f"{v} {sum(getattr(a, attr) == v for a in patients.values())}"
                         for v in values)

    return (f"circor: {len(patients)} patient ids ({len(children_seen)} children); murmur "
            f"{count('murmur', ('Absent', 'Present', 'Unknown'))}; outcome "
            f"{count('outcome', OUTCOMES)}; campaign {count('campaign', CAMPAIGNS)}")
