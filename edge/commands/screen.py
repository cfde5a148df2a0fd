"""`heartsound screen`: offline screening of WAV files or the microphone, with a log.

Output is for a person by default and JSON (one object per recording) with ``--json``.
Exit code 0 means every recording got a result (``unsure`` is a result: it tells the
clinician to retake); bad input gets its own code (see ``heartsound --help``).

Each recording's result is stored in the log and then printed as soon as it is made, so
a job stopped or killed part-way keeps every result it printed, and memory does not grow
with the number of files. SIGTERM ends any screening cleanly: results so far are kept, one
line says it was stopped, exit code 143.

Batch screening (``--workers``, ``--ray``, ``--csv``, ``--resume``; see
:mod:`edge.commands.screen_batch`) streams one row per recording as results arrive,
turns a recording that fails into a row with its error, and exits with 0 when every
recording got a result row, else with the exit code of the first failed recording in
input order.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from edge.commands.screen_shared import log_record, stamped, wav_files
from edge.errors import HeartsoundError, Stopped, UsageError

MIC_DEFAULT_SECONDS = 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", type=Path, metavar="WAV",
                        help="recordings to screen: WAV files, folders of them (the "
                        "folder's own files, not its sub-folders') or glob patterns such as "
                        "'archive/**/*.wav', which also reaches sub-folders (any rate, "
                        "8/16/24/32-bit or float, mono or multichannel)")
    parser.add_argument("--mic", action="store_true",
                        help="record from the microphone instead of reading files")
    parser.add_argument("--seconds", type=float, default=MIC_DEFAULT_SECONDS,
                        help="with --mic: how long to record (default %(default)s s; at least "
                        "the model's analysis window)")
    parser.add_argument("--device", help="with --mic: input device index or name "
                        "(default: the system's default input)")
    parser.add_argument("--rate", type=int, help="with --mic: capture rate in Hz (default: "
                        "the device's native rate; resampled in fixed point to the model's)")
    parser.add_argument("--model", type=Path, help="int8 .tflite model (default: "
                        "$HEARTSOUND_MODEL, else the deployed release's model, else the model "
                        "shipped with heartsound)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per recording instead of text")
    parser.add_argument("--patient", help="patient id to store with the screening")
    parser.add_argument("--db", type=Path, help="screening log (default: "
                        "$HEARTSOUND_HOME/screenings.db; HEARTSOUND_HOME defaults to the "
                        "deployed release's data folder, else ~/.heartsound)")
    parser.add_argument("--no-log", action="store_true", help="do not store the screening")
    parser.add_argument("--keep-audio", action="store_true",
                        help="also store the audio (at the model's rate) in the log")
    parser.add_argument("--report", type=Path, metavar="PNG",
                        help="write a one-page report for the clinician: what to do next "
                        "(refer, no referral, retake) and why, patient, time, device, "
                        "model, the recording and each window's score; cepstra for "
                        "specialists go to PNG's -detail.png beside it (needs the 'report' "
                        "extra; one recording only)")
    batch = parser.add_argument_group(
        "batch screening", "many recordings in parallel; one row per recording, streamed as "
        "results arrive; a recording that fails is a row with its error and exit code; exit "
        "code 0 when every recording got a result row, else that of the first failed "
        "recording in input order")
    batch.add_argument("--workers", type=int, metavar="N",
                       help="screen in N processes on this machine (default 1); with --ray, "
                       "N actors (default: one per CPU of the cluster)")
    batch.add_argument("--ray", metavar="ADDRESS",
                       help="screen on a Ray cluster: the head's HOST:PORT, 'auto' on a "
                       "cluster node, or ray://HOST:10001 (needs the 'cluster' extra; the "
                       "recordings must be at the same paths on every node)")
    batch.add_argument("--csv", metavar="FILE|-",
                       help="write one CSV row per recording to FILE or stdout ('-')")
    batch.add_argument("--resume", metavar="OUT",
                       help="append rows to OUT (JSON Lines, or CSV with --csv OUT or a .csv "
                       "name), skipping recordings OUT already has a row for (error rows "
                       "too: delete them to retry); a job that wrote OUT itself logs each "
                       "recording once, even when it was killed and resumed")


def run(args: argparse.Namespace) -> int:
    from edge.screening import Screener

    _check(args)
    with _stop_on_sigterm(args):
        screener = Screener(args.model)
        if is_batch(args):
            from edge.commands.screen_batch import run_batch

            return run_batch(args, screener)
        first_error = 0
        with _Results(args, screener) as results:
            if args.mic:
                results.put(_screen_mic(args, screener))
            else:
                first_error = _screen_files(args, screener, results)
        results.report()
        return first_error


def _screen_files(args, screener, results: _Results) -> int:
    """Screen file after file, each result kept at once; the first failure's exit code."""
    first_error = 0
    for path in wav_files(args.paths):
        try:
            result = _screen_file(args, screener, path)
        except HeartsoundError as exc:
            _report_failure(args, path, exc)
            first_error = first_error or exc.exit_code
            continue
        results.put(result)
    return first_error


def _report_failure(args: argparse.Namespace, path: Path, exc: HeartsoundError) -> None:
    """A recording that fails: one line on stderr and, with --json, the error row that
    batch screening writes too (one behaviour, with or without --workers)."""
    print(f"heartsound: {exc}", file=sys.stderr, flush=True)
    if args.json:
        from edge.batch.output import error_row

        print(json.dumps(error_row(str(path), str(exc), exc.exit_code)), flush=True)


@contextlib.contextmanager
def _stop_on_sigterm(args: argparse.Namespace) -> Iterator[None]:
    """SIGTERM (``kill``, systemd, a job scheduler) raises :class:`Stopped` in the main
    thread, so clean-up runs: worker pools shut down, the log closes, no traceback. A
    second SIGTERM during clean-up kills at once."""
    kept = "printed above are complete" + ("" if args.no_log else " and logged")
    more = f"; rerun with --resume {args.resume} to finish" if args.resume else ""

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Stopped(f"stopped by SIGTERM; the results {kept}, recordings without one "
                      f"were not screened{more}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def is_batch(args: argparse.Namespace) -> bool:
    """True when an option asks for batch screening (rows streamed, errors as rows)."""
    return bool(args.workers is not None or args.ray or args.csv or args.resume)


def _check(args: argparse.Namespace) -> None:
    if args.mic == bool(args.paths):
        raise UsageError("give WAV files or folders to screen, or --mic (not both)")
    if args.report and (args.mic is False and len(args.paths) != 1):
        raise UsageError("--report draws one recording: give exactly one WAV file")
    if is_batch(args) and (args.mic or args.report):
        raise UsageError("--workers, --ray, --csv and --resume screen files; drop --mic and "
                         "--report")


def _screen_file(args, screener, path: Path):
    import time

    from edge.audio import read_wav_for_screening

    start = time.perf_counter()
    pcm, step = read_wav_for_screening(path, screener.spec.sample_rate_hz)
    return _screen(args, screener, pcm, str(path), start, step)


def _screen_mic(args, screener):
    from edge import mic

    if args.seconds < screener.spec.window_s:
        raise UsageError(f"--seconds {args.seconds:g} is shorter than one analysis window "
                         f"({screener.spec.window_s:g} s); pass --seconds "
                         f"{screener.spec.window_s:g} or more (20-30 s screens best)")
    device = int(args.device) if args.device and args.device.isdigit() else args.device
    pcm, rate = mic.record(args.seconds, args.rate, device)
    from edge.quality import quantisation_step
    from edge.resample import resample

    step = quantisation_step(pcm)
    pcm = resample(pcm, rate, screener.spec.sample_rate_hz)
    return _screen(args, screener, pcm, "microphone", step=step)


def _screen(args, screener, pcm, name: str, start: float | None = None, step: int = 1):
    return screener.screen_pcm(pcm, screener.spec.sample_rate_hz, name, start=start,
                               step=step), pcm


class _Results:
    """Keeps each result as it is made: into the log first, then on stdout.

    Why that order: a result on the screen is then always in the log, even after a kill.
    Why a log that fails still prints the result (then exit 7): a screening is never lost
    to a log that cannot be written. The log opens at the first result, so input that
    yields none leaves no log behind. Only the result a ``--report`` draws is held.
    """

    def __init__(self, args: argparse.Namespace, screener) -> None:
        self.args, self.screener = args, screener
        self._log = None
        self._first = None  # (result, pcm, record) of the first recording, for --report

    def put(self, item) -> None:
        from edge.screening import describe

        result, pcm = item
        row = stamped(self.args, result.to_dict())
        record = log_record(self.args, self.screener, row, pcm)
        if self._first is None and self.args.report:
            self._first = (result, pcm, record)
        line = json.dumps(row) if self.args.json else describe(result)
        try:
            if not self.args.no_log:
                self._open_log().add(record)
        except HeartsoundError:
            print(line, flush=True)
            raise
        print(line, flush=True)

    def _open_log(self):
        if self._log is None:
            from edge.screening_log import ScreeningLog

            self._log = ScreeningLog(self.args.db)
        return self._log

    def report(self) -> None:
        """Draw the report last: a picture that cannot be drawn loses no screening."""
        if self._first is not None:
            from edge.report import write_report

            result, pcm, record = self._first
            write_report(self.args.report, pcm, self.screener, result, record)

    def __enter__(self) -> _Results:
        return self

    def __exit__(self, *exc) -> None:
        if self._log is not None:
            self._log.close()
