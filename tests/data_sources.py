"""The data sources the tests expect under the data root: one list, so a new database is
added once (PhysioNet c and f joined a, b, d and e; PASCAL has sets A and B; CirCor 2022
is one source whose labels are murmur findings, not screening classes)."""

PHYSIONET = ("physionet-a", "physionet-b", "physionet-c", "physionet-d", "physionet-e",
             "physionet-f")
SCREENING_SOURCES = ("pascal-a", "pascal-b", *PHYSIONET)
"""What the screening (normal/abnormal) label set trains and is measured on."""
SOURCES = (*SCREENING_SOURCES, "circor")
"""Everything the loader finds under the data root."""
DATA_FOLDERS = ("pascal", "physionet2016", "circor2022")


def pascal_a_at(data_root, rate: int) -> list:
    """PASCAL set A recordings stored at ``rate`` (labels.csv's ``sample_rate``), sorted:
    130 of its 141 files are at 4 kHz now, 11 keep the phone's 44.1 kHz."""
    import csv

    with (data_root / "pascal" / "labels.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle)
                if r["set"] == "A" and int(r["sample_rate"]) == rate]
    assert rows, f"no PASCAL set A recording at {rate} Hz in {data_root / 'pascal'}"
    return sorted(data_root / "pascal" / r["file"] for r in rows)
