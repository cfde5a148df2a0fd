"""`heartsound data`: see what training will read, or fetch the PhysioNet archive.

Kept free of TensorFlow so that it answers instantly and works on any machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_data_option(parser: argparse.ArgumentParser) -> None:
    """The one way every command names its data folders."""
    parser.add_argument(
        "--data",
        action="append",
        type=Path,
        metavar="DIR",
        help="a data folder: the PASCAL folder (with labels.csv), a PhysioNet 2016 root, "
        "one training-x folder, or the CirCor 2022 folder (with training_data.csv); repeat "
        "for several. Default: $HEARTSOUND_DATA (':'-separated), else, in a checkout, "
        "../shared/data/pascal, physionet2016 and circor2022.",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list", help="count the labelled recordings per source and label",
        description="Load every data folder and print recordings, groups (patients, "
        "children, sittings or recordings: the units splits keep whole) and hours per "
        "source and label, as training will see them; CirCor's patients are counted below.",
    )
    add_data_option(listing)
    fetch = actions.add_parser(
        "download", help="download and unpack the PhysioNet/CinC 2016 training archive",
        description="Download the public PhysioNet/CinC 2016 training archive (all six "
        "databases), resuming a cut download, checking its sha256, and unpacking it "
        "safely into DEST, which then works as a --data folder.",
    )
    fetch.add_argument("dest", type=Path, help="folder to unpack into")
    fetch.add_argument("--url", help="archive URL (default: the PhysioNet 2016 training.zip)")
    fetch.add_argument("--sha256", help="expected sha256 of the archive (default: none checked)")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        from train.circor import patient_summary
        from train.datasets import load_records, summarize

        records = load_records(args.data)
        print(summarize(records))
        patients = patient_summary(records)
        if patients:
            print(patients)
        return 0
    from train.download import DEFAULT_URL, download, extract

    url = args.url or DEFAULT_URL
    args.dest.mkdir(parents=True, exist_ok=True)
    archive = download(url, args.dest / Path(url).name, args.sha256, progress=not args.quiet)
    root = extract(archive, args.dest)
    print(f"unpacked into {root}; use it with --data {root}")
    return 0
