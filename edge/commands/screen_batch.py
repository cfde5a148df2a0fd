"""`heartsound screen --workers/--ray/--csv/--resume`: many recordings, one row each.

The engines (:mod:`edge.batch.pool` on this machine, :mod:`edge.batch.cluster` on a cluster)
return outcomes; this process alone writes them: first to the screening log, then to
the output. Why that order: the output is what ``--resume`` trusts, so a row is
written only once its screening is stored; a log that fails stops the job (exit 7) and
a rerun with ``--resume`` continues where it stopped. No screening is ever missing from
the log, and none is there twice: a kill between the two writes makes ``--resume``
screen that recording again, but when the job writes its rows to a file its log rows
carry ids derived from the job, the file name and its bytes
(:func:`edge.screening_log.screening_uuid`), so the second screening is the same row.

Why the first error's code is taken in input order, not completion order: the exit code
of a rerun must not depend on which worker happened to finish first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from edge import decision
from edge.batch.output import STDOUT, RowWriter, done_files, open_writer
from edge.batch.pool import Job, Outcome, jobs_for, screen_local
from edge.commands.screen_shared import log_record, stamped, wav_files
from edge.errors import UsageError
from edge.screening import ScreeningResult, describe

__all__ = ["run_batch"]


def run_batch(args: argparse.Namespace, screener) -> int:
    """Screen every recording of ``args.paths``; 0 or the first failed one's exit code."""
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: give at least 1")
    fmt, dest = _output(args)
    names = list(dict.fromkeys(str(p) for p in wav_files(args.paths)))
    names = _skip_done(args, names, fmt)
    jobs = jobs_for(names, absolute=bool(args.ray))
    if not jobs:
        return 0
    try:
        return _run_jobs(args, screener, jobs, fmt, dest)
    except BrokenPipeError:
        # The reader of stdout left (`| head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _run_jobs(args, screener, jobs: list[Job], fmt: str | None, dest: str | None) -> int:
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(_rows_only_stdout()) if args.ray else sys.stdout
        bar = stack.enter_context(_progress(len(jobs)))
        notify = _notifier(bar)
        outcomes = _engine(args, jobs, notify)  # first: an unreachable cluster fails here
        stack.callback(outcomes.close)
        log = None if args.no_log else stack.enter_context(_open_log(args))
        store = None if log is None else _storer(args, screener, log, _job_id(args, log, dest))
        writer = open_writer(dest, fmt, append=bool(args.resume), stdout=out) if fmt else None
        if writer is not None:
            stack.callback(writer.close)
        tally = _Tally()
        try:
            return _drain(args, outcomes, writer, store, (bar, notify, tally), out)
        finally:
            print(tally.summary(dest), file=sys.stderr, flush=True)


def _output(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(format, destination): ("jsonl"|"csv", path or "-"), or (None, None) for text."""
    if args.json and args.csv:
        raise UsageError("choose one output: --json or --csv")
    if args.resume:
        if args.csv not in (None, args.resume):
            raise UsageError(f"--resume {args.resume} appends to its own file; give --csv "
                             f"{args.resume} or leave --csv out")
        is_csv = bool(args.csv) or Path(args.resume).suffix.lower() == ".csv"
        if is_csv and args.json:
            raise UsageError(f"--resume {args.resume} is a CSV name but --json was given")
        return ("csv" if is_csv else "jsonl"), args.resume
    if args.csv:
        return "csv", args.csv
    return ("jsonl", STDOUT) if args.json else (None, None)


def _skip_done(args: argparse.Namespace, names: list[str], fmt: str | None) -> list[str]:
    if not args.resume:
        return names
    done, cut = done_files(args.resume, fmt)
    if cut:
        print(f"heartsound: {args.resume}: dropped a half-written last row from an "
              "interrupted run; that recording is screened again", file=sys.stderr)
    todo = [n for n in names if n not in done]
    if len(todo) < len(names):
        print(f"heartsound: {args.resume} already has {len(names) - len(todo)} of these "
              f"{len(names)} recordings; screening the other {len(todo)}", file=sys.stderr)
    return todo


def _engine(args: argparse.Namespace, jobs: list[Job], notify) -> Iterator[Outcome]:
    keep = bool(args.keep_audio)
    if args.ray:
        from edge.batch.cluster import screen_ray  # imported only here: the Pi never loads Ray

        return screen_ray(jobs, args.model, args.ray, actors=args.workers, keep_audio=keep,
                          notify=notify)
    return screen_local(jobs, args.model, workers=args.workers or 1, keep_audio=keep,
                        notify=notify)


def _open_log(args: argparse.Namespace):
    """Opened before the first recording: a log that cannot be written fails at once."""
    from edge.screening_log import ScreeningLog

    return ScreeningLog(args.db)


def _job_id(args: argparse.Namespace, log, dest: str | None) -> str | None:
    """The job's id in the log when its rows go to a file that ``--resume`` can continue
    (asked before the file is opened: a file that does not exist yet starts a new job);
    None for rows on stdout, whose screenings get random ids."""
    if dest in (None, STDOUT):
        return None
    path = Path(dest)
    return log.batch_job(str(path.resolve()), fresh=not (args.resume and path.exists()))


def _storer(args: argparse.Namespace, screener, log, job_id: str | None):
    """A function that stores one outcome's screening in the log."""
    from edge.screening_log import screening_uuid

    def store(outcome: Outcome, row: dict) -> None:
        uid = screening_uuid(job_id, outcome.name, outcome.sha256) \
            if job_id and outcome.sha256 else None
        log.add(log_record(args, screener, row, outcome.pcm, uuid=uid))

    return store


#: The summary's word for each decision (what the clinician does next).
SUMMARY_WORDS = {decision.ABNORMAL: "refer", decision.NORMAL: "no referral",
                 decision.UNSURE: "retake"}


class _Tally:
    """Counts per decision and errors, for the one-line summary a batch ends with."""

    def __init__(self) -> None:
        self.decisions: dict[str, int] = dict.fromkeys(SUMMARY_WORDS, 0)
        self.errors = 0

    def add(self, outcome: Outcome) -> None:
        if outcome.ok:
            self.decisions[outcome.result["decision"]] += 1
        else:
            self.errors += 1

    def summary(self, dest: str | None) -> str:
        done = sum(self.decisions.values())
        parts = [f"{n} {SUMMARY_WORDS[d]}" for d, n in self.decisions.items()]
        where = f"; rows in {dest}" if dest not in (None, STDOUT) else ""
        return (f"heartsound: screened {done} recording{'s' * (done != 1)}: "
                f"{', '.join(parts)}; {self.errors} error{'s' * (self.errors != 1)}{where}")


def _drain(args, outcomes, writer: RowWriter | None, store, progress, out) -> int:
    bar, notify, tally = progress
    first_error: tuple[int, int] | None = None  # (input index, exit code)
    for outcome in outcomes:
        row = stamped(args, outcome.result) if outcome.ok else outcome.row()
        if outcome.ok and store is not None:
            store(outcome, row)
        _emit(outcome, row, writer, notify, out)
        tally.add(outcome)
        if not outcome.ok and (first_error is None or outcome.index < first_error[0]):
            first_error = (outcome.index, outcome.exit_code)
        if bar is not None:
            bar.update(1)
    return first_error[1] if first_error else 0


def _emit(outcome: Outcome, row: dict, writer: RowWriter | None, notify, out) -> None:
    if not outcome.ok:
        notify(f"heartsound: {outcome.error}")
    if writer is not None:
        writer.write(row)
    elif outcome.ok:
        print(describe(ScreeningResult(**outcome.result)), file=out, flush=True)


@contextlib.contextmanager
def _rows_only_stdout():
    """A stream on the real stdout for our rows, while file descriptor 1 and sys.stdout
    point at stderr: Ray's driver prints cluster messages ("(raylet) A worker died...")
    on stdout, from Python and from C++, and they must not land among the rows."""
    sys.stdout.flush()
    rows = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    saved = sys.stdout
    os.dup2(sys.stderr.fileno(), saved.fileno())
    sys.stdout = sys.stderr
    try:
        yield rows
    finally:
        rows.flush()
        sys.stdout = saved
        os.dup2(rows.fileno(), saved.fileno())
        rows.close()


class _Counter:
    """Progress on a terminal without tqdm (a Raspberry Pi's plain install): "i/N" on one
    line, rewritten in place."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def update(self, n: int) -> None:
        self.done += n
        print(f"\rscreening {self.done}/{self.total}", end="", file=sys.stderr, flush=True)

    def write(self, message: str, file=None) -> None:
        print(f"\r{message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.done:
            print(file=sys.stderr, flush=True)


@contextlib.contextmanager
def _progress(total: int):
    """Progress on stderr when it is a terminal (tqdm's bar, or a counter without
    tqdm), else None: a log file or a pipe gets the summary line alone."""
    try:
        from tqdm import tqdm
    except ImportError:
        counter = _Counter(total) if sys.stderr.isatty() else None
        try:
            yield counter
        finally:
            if counter is not None:
                counter.close()
        return
    bar = tqdm(total=total, unit="rec", file=sys.stderr, disable=None, dynamic_ncols=True,
               desc="screening")
    try:
        yield None if bar.disable else bar
    finally:
        bar.close()


def _notifier(bar):
    """One-line notes on stderr that do not tear the progress bar."""
    if bar is None:
        return lambda message: print(message, file=sys.stderr, flush=True)
    return lambda message: bar.write(message, file=sys.stderr)
