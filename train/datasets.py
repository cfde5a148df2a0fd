"""Real heart-sound recordings from PASCAL, PhysioNet/CinC 2016 and CirCor 2022 as one type.

Training, evaluation and the data tools all see a recording as a :class:`Recording`:
where it is, its fine label, the *group* that must never be split across train and test,
the *source* (database) it came from, and its rate and length read from the data set's
own index (``labels.csv`` or the WFDB ``.hea`` headers), so listing thousands of files
never opens the audio.

Only numpy-free standard library here: the loader also serves ``heartsound data list``,
which must answer instantly on any machine.

Groups, decided from what the data shows (see :func:`pascal_a_sessions` and
:func:`load_physionet_folder` for the evidence):

- PASCAL set B: the patient id in the file name (``pascal-b/<patient>``), not the
  ``patient`` column of labels.csv, which holds the recording timestamp instead for all
  130 noisy files (150 patients by name, 201 "patients" by that column). The unlabelled
  ``Bunlabelledtest`` files carry patient ids too, and 92 of the 150 patients have both
  labelled and unlabelled files: same patient, same group, same split.
- PASCAL set A: a *recording session* (files whose timestamps chain within 30 minutes).
- PhysioNet: one group per recording; the database (``source``) is the honest unit.
- CirCor: the child (two linked ids of one child are one group; see ``train.circor``).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from edge.errors import DataError
from train.circor import CIRCOR_INDEX, load_circor
from train.data_files import check_present, read_csv_rows, wfdb_rate_and_seconds
from train.records import Recording

PASCAL_LABELS_FILE = "labels.csv"
PASCAL_COLUMNS = ("file", "set", "label", "noisy", "patient", "sample_rate", "seconds")
PASCAL_FINE_LABELS = ("normal", "murmur", "extrahls", "extrastole", "artifact")
PHYSIONET_REFERENCE = "REFERENCE.csv"
# Some challenge releases ship the signal-quality flag in a sibling file.
PHYSIONET_SQI_REFERENCES = ("REFERENCE-SQI.csv", "REFERENCE_withSQI.csv")
PHYSIONET_FOLDER_PREFIX = "training-"
# The challenge's convention: 1 = abnormal, -1 = normal, 0 = unsure (no label).
PHYSIONET_LABELS = {"1": "abnormal", "-1": "normal", "0": None}
# Signal quality index column: 1 = good, 0 = poor.
PHYSIONET_POOR_QUALITY = "0"

PASCAL_A_SESSION_GAP = dt.timedelta(minutes=30)
PASCAL_A_TIMESTAMP = re.compile(r"__(\d+)")
PASCAL_B_PATIENT = re.compile(r"_(\d+)_\d{9,}")  # patient, then a ms timestamp
DATA_ENV = "HEARTSOUND_DATA"
DEFAULT_DATA_FOLDERS = ("pascal", "physionet2016", "circor2022")
FORMATS_LOOKED_FOR = (
    f"{PASCAL_LABELS_FILE} (PASCAL folder), {PHYSIONET_REFERENCE} (PhysioNet training-x "
    f"folder), {PHYSIONET_FOLDER_PREFIX}*/{PHYSIONET_REFERENCE} (PhysioNet root), "
    f"{CIRCOR_INDEX} (CirCor 2022 folder)"
)


# ---------------------------------------------------------------------------- label sets


@dataclass(frozen=True)
class LabelSet:
    """The classes one model learns and how fine labels map onto them.

    A fine label missing from ``mapping`` (``artifact``, unlabelled) is *excluded*: such
    recordings belong to other jobs (the quality gate) or to no supervised job at all.
    ``datasets`` restricts the set to data sets whose fine labels mean the same thing.
    """

    name: str
    classes: tuple[str, ...]
    mapping: Mapping[str, str]
    datasets: tuple[str, ...] | None = None

    def target(self, record: Recording) -> str | None:
        """The class of a recording, or None when this label set excludes it."""
        if record.label is None:
            return None
        if self.datasets is not None and record.dataset not in self.datasets:
            return None
        return self.mapping.get(record.label)

    def index(self, record: Recording) -> int | None:
        """Class index for one-hot targets, or None when excluded."""
        target = self.target(record)
        return None if target is None else self.classes.index(target)

    def select(self, records: Iterable[Recording]) -> list[Recording]:
        """Only the recordings this label set can train or evaluate on."""
        return [r for r in records if self.target(r) is not None]


SCREENING = LabelSet(
    name="screening",
    classes=("normal", "abnormal"),
    mapping={
        "normal": "normal",
        "murmur": "abnormal",
        "extrastole": "abnormal",
        "extrahls": "abnormal",
        "abnormal": "abnormal",
    },
    # CirCor's labels are murmur findings, not normal/abnormal recordings: its own job.
    datasets=("pascal", "physionet2016"),
)
CONDITION = LabelSet(
    name="condition",
    classes=("normal", "murmur", "extrahls", "extrastole"),
    mapping={c: c for c in ("normal", "murmur", "extrahls", "extrastole")},
    # PhysioNet's "abnormal" mixes valve and coronary disease: no condition to learn.
    datasets=("pascal",),
)
LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (SCREENING, CONDITION)}


def get_label_set(label_set: str | LabelSet) -> LabelSet:
    """Resolve a label set given by name (as the CLI does) or pass one through."""
    if isinstance(label_set, LabelSet):
        return label_set
    try:
        return LABEL_SETS[label_set]
    except KeyError:
        names = ", ".join(LABEL_SETS)
        raise DataError(f"unknown label set '{label_set}': choose one of {names}") from None


def screening_label(label: str | None) -> str | None:
    """normal -> normal; murmur/extrastole/extrahls/abnormal -> abnormal; else None."""
    return None if label is None else SCREENING.mapping.get(label)


def condition_label(label: str | None) -> str | None:
    """The PASCAL condition (normal, murmur, extrahls, extrastole), else None."""
    return None if label is None else CONDITION.mapping.get(label)


# ------------------------------------------------------------------------------ paths


def repo_root() -> Path:
    """The folder holding the ``train`` package (a checkout or an installed tree)."""
    return Path(__file__).resolve().parent.parent


def is_checkout(root: Path) -> bool:
    """A source checkout (it has the project file), not an installed ``site-packages``."""
    return (root / "pyproject.toml").is_file()


def default_data_paths() -> list[Path]:
    """``$HEARTSOUND_DATA`` (os.pathsep-separated), else, in a checkout, the shared folder
    beside it. An installed copy has no such neighbour: ``site-packages/../shared/data``
    would be a guess about someone else's disk, so it says what to pass instead."""
    env = os.environ.get(DATA_ENV, "")
    entries = [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    if entries:
        return entries
    root = repo_root()
    if not is_checkout(root):
        raise DataError(
            f"no data folder given: pass --data DIR (repeatable) or set {DATA_ENV}=dir1:dir2; "
            f"only a checkout finds ../shared/data on its own (this is an installed copy in "
            f"{root})"
        )
    shared = root.parent / "shared" / "data"
    folders = [shared / name for name in DEFAULT_DATA_FOLDERS]
    # A checkout with part of the shared data trains on that part; with none of it the
    # loader's error names every folder it looked for.
    return [f for f in folders if f.is_dir()] or folders


def load_records(paths: Sequence[Path] | None = None) -> list[Recording]:
    """Load every recording under each folder, recognising its format by content.

    A folder may be the PASCAL folder (``labels.csv``), a PhysioNet root (holding
    ``training-x/`` folders) or one ``training-x`` folder. A recording reached twice
    (a root and one of its folders) is listed once.
    """
    folders = default_data_paths() if not paths else [Path(p) for p in paths]
    records: list[Recording] = []
    seen: set[Path] = set()
    for folder in folders:
        for record in _load_folder(folder):
            key = record.path.resolve()
            if key not in seen:
                seen.add(key)
                records.append(record)
    if not any(r.label is not None for r in records):
        shown = ", ".join(str(f) for f in folders)
        raise DataError(f"no labelled recordings in {shown}: looked for {FORMATS_LOOKED_FOR}")
    return records


def detect_format(folder: Path) -> str | None:
    """'pascal', 'physionet-root', 'physionet-folder', 'circor', or None."""
    if (folder / PASCAL_LABELS_FILE).is_file():
        return "pascal"
    if (folder / PHYSIONET_REFERENCE).is_file():
        return "physionet-folder"
    if _physionet_subfolders(folder):
        return "physionet-root"
    if (folder / CIRCOR_INDEX).is_file():
        return "circor"
    return None


def _load_folder(folder: Path) -> list[Recording]:
    if not folder.exists():
        raise DataError(
            f"data folder {folder} does not exist: pass --data DIR, set {DATA_ENV}, "
            "or fetch PhysioNet with 'heartsound data download DIR'"
        )
    if not folder.is_dir():
        raise DataError(f"data path {folder} is not a folder: pass the folder that holds it")
    kind = detect_format(folder)
    if kind == "pascal":
        return load_pascal(folder)
    if kind == "physionet-folder":
        return load_physionet_folder(folder)
    if kind == "physionet-root":
        return [r for sub in _physionet_subfolders(folder) for r in load_physionet_folder(sub)]
    if kind == "circor":
        return load_circor(folder)
    raise DataError(f"no labelled recordings in {folder}: looked for {FORMATS_LOOKED_FOR}")


# ----------------------------------------------------------------------------- PASCAL


def load_pascal(folder: Path) -> list[Recording]:
    """Read the PASCAL folder through its ``labels.csv`` (set A and set B)."""
    index = folder / PASCAL_LABELS_FILE
    rows = read_csv_rows(index)
    if not rows or tuple(c.strip() for c in rows[0][1]) != PASCAL_COLUMNS:
        raise DataError(
            f"{index} line 1: expected the header {','.join(PASCAL_COLUMNS)}; "
            "is this the PASCAL labels file?"
        )
    records = [_pascal_row(folder, index, line, row) for line, row in rows[1:]]
    check_present(index, [r.path for r in records])
    sessions = pascal_a_sessions([r.path.name for r in records if r.source == "pascal-a"])
    return [
        _with_group(r, f"pascal-a/{sessions[r.path.name]}") if r.source == "pascal-a" else r
        for r in records
    ]


def _pascal_row(folder: Path, index: Path, line: int, row: list[str]) -> Recording:
    where = f"{index} line {line}"
    if len(row) != len(PASCAL_COLUMNS):
        raise DataError(f"{where}: {len(row)} fields, expected {len(PASCAL_COLUMNS)}")
    file, set_name, label, noisy, patient, rate, seconds = (f.strip() for f in row)
    if set_name not in ("A", "B"):
        raise DataError(f"{where}: set '{set_name}' is not A or B")
    if label and label not in PASCAL_FINE_LABELS:
        known = ", ".join(PASCAL_FINE_LABELS)
        raise DataError(f"{where}: unknown label '{label}' (known: {known})")
    if noisy not in ("0", "1"):
        raise DataError(f"{where}: noisy must be 0 or 1, not '{noisy}'")
    sample_rate = _parse_number(int, rate, f"{where}: sample_rate")
    length = _parse_number(float, seconds, f"{where}: seconds")
    source = f"pascal-{set_name.lower()}"
    if set_name == "B":
        # The name wins over the column: labels.csv holds the recording timestamp, not
        # the patient, in the patient column of all 130 noisy files.
        patient = _pascal_b_patient(file) or patient
        group = f"pascal-b/{patient or Path(file).stem}"
    else:
        group = ""  # set A groups are sessions, known only once all files are read
    return Recording(
        path=folder / file,
        label=label or None,
        group=group,
        source=source,
        noisy=noisy == "1",
        sample_rate=sample_rate,
        seconds=length,
        patient=patient or None,
        dataset="pascal",
    )


def _pascal_b_patient(file: str) -> str | None:
    match = PASCAL_B_PATIENT.search(Path(file).name)
    return match.group(1) if match else None


def pascal_a_sessions(names: Iterable[str]) -> dict[str, str]:
    """Group PASCAL set A files into recording sessions: timestamps chained <= 30 min.

    Why sessions and not files: set A names carry the iStethoscope upload time
    (``YYYYMMDDhhmm``) and nothing about the person. In the 141 files here the gaps
    between consecutive timestamps are bimodal: 47 of 138 are under 20 minutes, none
    is 20-30 minutes, one 30-60, and the rest are hours to weeks. Recordings close in
    time are alike: the cosine similarity of their log spectra (20-1000 Hz) has a
    median of 0.97 for pairs within 30 minutes (0.99 inside the two long bursts below)
    against 0.51 for pairs 30 minutes to 4 hours apart and 0.59 for pairs days apart.
    Two bursts are clearly one person at one sitting: 7 files on 2011-08-01 11:11-11:17
    and 26 on 2011-08-22 22:21-22:58, every one exactly 7.936 s long, the labelled ones
    in each burst sharing one label. The challenge's unlabelled test files were drawn
    from the same sittings (9 of the 15 multi-file sessions mix labelled and unlabelled
    files), so a per-file split would put one sitting on both sides. With a 30-minute
    chain the 141 files form 94 groups (79 single files); 10 and 60 minutes give 97 and
    93, so the choice is not fragile. 4 sessions hold two different labels (e.g.
    ``extrahls`` and ``murmur`` at 2011-04-02 13:55): a sitting may cover several
    people, and keeping it whole errs on the safe side. Names whose timestamp does not
    parse (two here: ``2011040239``, ``20110501548``, both unlabelled) get a group of
    their own.
    """
    stamped: list[tuple[dt.datetime, str]] = []
    groups: dict[str, str] = {}
    for name in names:
        stamp = _pascal_a_timestamp(name)
        if stamp is None:
            groups[name] = f"file-{Path(name).stem}"
        else:
            stamped.append((stamp, name))
    stamped.sort()
    session = ""
    previous: dt.datetime | None = None
    for stamp, name in stamped:
        if previous is None or stamp - previous > PASCAL_A_SESSION_GAP:
            session = f"session-{stamp:%Y%m%d-%H%M}"
        groups[name] = session
        previous = stamp
    return groups


def _pascal_a_timestamp(name: str) -> dt.datetime | None:
    match = PASCAL_A_TIMESTAMP.search(name)
    if match is None or len(match.group(1)) != len("YYYYMMDDhhmm"):
        return None
    try:
        return dt.datetime.strptime(match.group(1), "%Y%m%d%H%M")
    except ValueError:
        return None


# -------------------------------------------------------------------------- PhysioNet


def load_physionet_folder(folder: Path) -> list[Recording]:
    """Read one challenge folder (``training-x``): REFERENCE.csv plus WFDB headers.

    Groups: one per recording (``physionet-x/<name>``). The public files carry no
    subject id although the databases hold several recordings per subject. The file
    order does not reveal subjects either: consecutive files change label 159 times in
    training-a (random orders of the same labels: 150-183, 95 % range), 172 in
    training-b (150-178) and 24 in training-d (21-35), where subjects stored
    contiguously would show long runs of one label; equal lengths of neighbours only
    reflect the devices' fixed durations (477 of 490 training-b files are 16000
    samples). Inventing groups from order would be noise, so splits *inside* one
    database may put recordings of one subject on both sides and are optimistic. The
    honest evaluation is by database (``source``): see ``leave_one_database_out``.
    """
    reference = folder / PHYSIONET_REFERENCE
    source = physionet_source(folder)
    labels, quality = _read_reference(reference)
    quality.update(_sibling_quality(folder, labels))
    paths = [folder / f"{name}.wav" for name in labels]
    check_present(reference, paths)
    records = []
    for name, label in labels.items():
        rate, seconds = wfdb_rate_and_seconds(folder / f"{name}.hea", folder / f"{name}.wav")
        records.append(
            Recording(
                path=folder / f"{name}.wav",
                label=label,
                group=f"{source}/{name}",
                source=source,
                noisy=quality.get(name) == PHYSIONET_POOR_QUALITY,
                sample_rate=rate,
                seconds=seconds,
                patient=None,
                dataset="physionet2016",
            )
        )
    return records


def physionet_source(folder: Path) -> str:
    """``training-a`` -> ``physionet-a``; any other folder name is kept as is."""
    name = folder.resolve().name
    suffix = name.removeprefix(PHYSIONET_FOLDER_PREFIX)
    return f"physionet-{suffix}"


def _physionet_subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        sub
        for sub in folder.glob(f"{PHYSIONET_FOLDER_PREFIX}*")
        if sub.is_dir() and (sub / PHYSIONET_REFERENCE).is_file()
    )


def _read_reference(reference: Path) -> tuple[dict[str, str | None], dict[str, str]]:
    """Labels by record name, and the optional third column (signal quality)."""
    labels: dict[str, str | None] = {}
    quality: dict[str, str] = {}
    for line, row in read_csv_rows(reference):
        fields = [f.strip() for f in row]
        if not any(fields):
            continue
        where = f"{reference} line {line}"
        if len(fields) not in (2, 3):
            raise DataError(f"{where}: {len(fields)} fields, expected name,label[,quality]")
        name, code = fields[0], fields[1]
        if code not in PHYSIONET_LABELS:
            raise DataError(f"{where}: label '{code}' is not 1 (abnormal), -1 (normal) or 0")
        if not name or "/" in name or "\\" in name:
            raise DataError(f"{where}: '{name}' is not a record name")
        labels[name] = PHYSIONET_LABELS[code]
        if len(fields) == 3:
            quality[name] = _quality_code(fields[2], where)
    return labels, quality


def _sibling_quality(folder: Path, labels: Mapping[str, str | None]) -> dict[str, str]:
    """Quality flags from a REFERENCE-SQI file beside REFERENCE.csv, if one exists."""
    quality: dict[str, str] = {}
    for file_name in PHYSIONET_SQI_REFERENCES:
        path = folder / file_name
        if not path.is_file():
            continue
        for line, row in read_csv_rows(path):
            fields = [f.strip() for f in row]
            if len(fields) >= 3 and fields[0] in labels:
                quality[fields[0]] = _quality_code(fields[-1], f"{path} line {line}")
    return quality


def _quality_code(value: str, where: str) -> str:
    if value not in ("0", "1"):
        raise DataError(f"{where}: quality '{value}' is not 1 (good) or 0 (poor)")
    return value


def _parse_number(kind: Callable[[str], float], text: str, where: str):
    try:
        value = kind(text)
    except ValueError:
        raise DataError(f"{where} '{text}' is not a number") from None
    if value <= 0:
        raise DataError(f"{where} must be positive, not '{text}'")
    return value


def _with_group(record: Recording, group: str) -> Recording:
    return replace(record, group=group)


# ---------------------------------------------------------------------------- summary


def summarize(records: Sequence[Recording]) -> str:
    """A table of recordings per source and fine label, with groups and hours."""
    known = [*PASCAL_FINE_LABELS, "abnormal"]
    found = {r.label for r in records if r.label is not None}
    present = [lab for lab in known if lab in found] + sorted(found - set(known))
    columns = [*present, "unlabelled", "total", "groups", "hours"]
    by_source: dict[str, list[Recording]] = defaultdict(list)
    for record in records:
        by_source[record.source].append(record)
    lines = [
        [_cell(r) for r in _summary_row(src, by_source[src], present)] for src in sorted(by_source)
    ]
    lines.append([_cell(r) for r in _summary_row("all", list(records), present)])
    header = ["source", *columns]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    text = [_format_row(header, widths), _format_row(["-" * w for w in widths], widths)]
    text += [_format_row(row, widths) for row in lines]
    return "\n".join(text)


def _summary_row(source: str, records: Sequence[Recording], labels: Sequence[str]) -> list:
    counts = Counter(r.label for r in records)
    hours = sum(r.seconds for r in records) / 3600
    return [
        source,
        *(counts.get(lab, 0) for lab in labels),
        counts.get(None, 0),
        len(records),
        len({r.group for r in records}),
        f"{hours:.2f}",
    ]


def _cell(value: object) -> str:
    return str(value)


def _format_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    first = cells[0].ljust(widths[0])
    rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
    return "  ".join([first, *rest])
