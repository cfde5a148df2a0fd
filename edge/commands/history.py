"""`heartsound history`: list recent screenings from the offline log, or export them as CSV.

Opens the log read-only, so looking at the history can never change or lock it, and works
even from a write-protected card. Only the standard library at the top: the log module
(numpy, sqlite3) is imported in :func:`run`.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_LIMIT = 20
PROB_WIDTH = 6
TABLE_COLUMNS = ("id", "time (UTC)", "patient", "file", "decision", "P(abn)", "windows",
                 "quality")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `heartsound history`."""
    parser.add_argument("--db", metavar="PATH", default=None,
                        help="screening log (default: $HEARTSOUND_HOME/screenings.db, "
                             "HEARTSOUND_HOME defaulting to ~/.heartsound)")
    parser.add_argument("--patient", metavar="ID", default=None,
                        help="only the screenings of this patient id")
    parser.add_argument("--limit", metavar="N", type=_positive, default=None,
                        help=f"at most N screenings, newest first (default: {DEFAULT_LIMIT} "
                             "in the table, all with --csv)")
    parser.add_argument("--csv", metavar="FILE", default=None,
                        help="export as CSV to FILE ('-' for standard output), oldest first")


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
