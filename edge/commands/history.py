"""`heartsound history`: list recent screenings from the offline log, or export them as CSV.

Opens the log read-only, so looking at the history can never change or lock it, and works
even from a write-protected card. Only the standard library at the top: the log module
(numpy, sqlite3) is imported in :func:`run`.

Two more jobs for a fleet: ``--backup FILE`` writes a consistent copy of the log (run on
a device by ``--pull``), and ``--pull --hosts FILE`` gathers every device's log into the
local one, without duplicates (`edge.deploy.fleet.pull_logs`; needs Fabric on the host).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from edge.deploy.hosts import add_ssh_arguments
from edge.errors import DeviceError, UsageError

DEFAULT_LIMIT = 20
PROB_WIDTH = 6
TABLE_COLUMNS = ("id", "time (UTC)", "patient", "file", "decision", "P(abn)", "windows",
                 "quality")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `heartsound history`."""
    parser.add_argument("--db", metavar="PATH", default=None,
                        help="screening log (default: $HEARTSOUND_HOME/screenings.db, "
                             "HEARTSOUND_HOME defaulting to the deployed release's "
                             "data folder, else ~/.heartsound)")
    parser.add_argument("--patient", metavar="ID", default=None,
                        help="only the screenings of this patient id")
    parser.add_argument("--limit", metavar="N", type=_positive, default=None,
                        help=f"at most N screenings, newest first (default: {DEFAULT_LIMIT} "
                             "in the table, all with --csv)")
    parser.add_argument("--csv", metavar="FILE", default=None,
                        help="export as CSV to FILE ('-' for standard output), oldest first")
    fleet = parser.add_argument_group("fleet", "gather the screening logs of many devices")
    fleet.add_argument("--pull", action="store_true", help="copy the log of every device in "
                       "--hosts over SSH and merge it into --db; rows already there are "
                       "skipped, each row keeps its device id")
    fleet.add_argument("--backup", metavar="FILE", type=Path, help="write a consistent copy "
                       "of the log to the new FILE (SQLite backup API; safe while screening)")
    add_ssh_arguments(fleet, single_host=False)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """List or export; 0 on success (also for an empty selection)."""
    from edge.screening_log import ScreeningLog, default_db_path

    path = args.db if args.db is not None else default_db_path()
    if args.pull or args.hosts:
        return _pull(args, Path(path))
    if args.backup is not None:
        return _backup(Path(path), args.backup)
    with ScreeningLog(path, create=False, read_only=True) as log:
        if args.csv is not None:
            return _export(log, args)
        rows = log.recent(args.limit or DEFAULT_LIMIT, args.patient)
        total = log.count()
    if not rows:
        who = f" for patient {args.patient}" if args.patient else ""
        print(f"no screenings{who} in {path}")
        return 0
    print(format_table(rows))
    print(f"{len(rows)} shown, {total} in {path}")
    return 0


def _backup(path: Path, dest: Path) -> int:
    from edge.screening_log import ScreeningLog

    try:  # read-write first: an older log gets its row ids (schema 2) before it is copied
        log = ScreeningLog(path, create=False)
    except DeviceError:
        log = ScreeningLog(path, create=False, read_only=True)  # write-protected: as it is
    with log:
        n = log.backup(dest)
    print(f"{n} screening(s) copied to {dest}")
    return 0


def _pull(args: argparse.Namespace, path: Path) -> int:
    """Copy the devices' logs in parallel, merge them here one by one; table, exit code."""
    if not (args.pull and args.hosts):
        raise UsageError("--pull needs --hosts FILE (and --hosts goes with --pull only)")
    try:
        from edge.deploy import fleet
    except ImportError:
        raise UsageError("--pull needs Fabric on this host: pip install 'heartsound[deploy]'"
                         ) from None
    from edge.deploy.hosts import read_hosts
    from edge.deploy.remote import DeployOptions
    from edge.screening_log import ScreeningLog

    entries = read_hosts(args.hosts)  # a bad line stops everything before any connection
    options = DeployOptions(root=args.root, key=args.key, known_hosts=args.known_hosts,
                            link_timeout=args.link_timeout)
    with ScreeningLog(path) as log, tempfile.TemporaryDirectory(prefix="hs-pull-") as tmp:
        rows = fleet.pull_logs(entries, options, log, Path(tmp))
    print(fleet.pull_table(rows, path))
    error = fleet.failed_error(rows, "pull")
    if error:
        raise error
    return 0


def _export(log, args: argparse.Namespace) -> int:
    if args.csv == "-":
        log.export_csv(sys.stdout, args.patient, args.limit)
        return 0
    n = log.export_csv(args.csv, args.patient, args.limit)
    print(f"{n} screening(s) written to {args.csv}", file=sys.stderr)
    return 0


def _cells(s) -> tuple[str, ...]:
    prob = "" if s.probability is None else f"{s.probability:.{PROB_WIDTH - 2}f}"
    return (str(s.id), s.time_utc.replace("T", " ").rstrip("Z"), s.patient_id or "-",
            s.file or "(mic)", s.decision, prob, str(len(s.window_scores)),
            s.quality_reason or "ok")


def format_table(rows: list) -> str:
    """Plain-text table, newest first, one screening per line."""
    cells = [TABLE_COLUMNS, *(_cells(s) for s in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
