"""`heartsound screen`: offline screening of WAV files or the microphone, with a log.

Output is for a person by default and JSON (one object per recording) with ``--json``.
Exit code 0 means every recording got a result (``unsure`` is a result: it tells the
clinician to retake); bad input gets its own code (see ``heartsound --help``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge.errors import HeartsoundError, UsageError

MIC_DEFAULT_SECONDS = 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", type=Path, metavar="WAV",
                        help="recordings to screen: WAV files or folders of them (any rate, "
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
                        "$HEARTSOUND_MODEL, else the model shipped with heartsound)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per recording instead of text")
    parser.add_argument("--patient", help="patient id to store with the screening")
    parser.add_argument("--db", type=Path, help="screening log (default: "
                        "$HEARTSOUND_HOME/screenings.db, HEARTSOUND_HOME=~/.heartsound)")
    parser.add_argument("--no-log", action="store_true", help="do not store the screening")
    parser.add_argument("--keep-audio", action="store_true",
                        help="also store the audio (at the model's rate) in the log")
    parser.add_argument("--report", type=Path, metavar="PNG",
                        help="write a picture: waveform, MFCC image and per-window scores "
                        "(needs matplotlib; one recording only)")


def run(args: argparse.Namespace) -> int:
    from edge.screening import Screener

    _check(args)
    screener = Screener(args.model)
    if args.mic:
        return _finish(args, screener, [_screen_mic(args, screener)])
    results, first_error = [], 0
    for path in _wav_files(args.paths):
        try:
            results.append(_screen_file(args, screener, path))
        except HeartsoundError as exc:
            if len(args.paths) == 1 and path == args.paths[0]:
                raise
            print(f"heartsound: {exc}", file=sys.stderr)
            first_error = first_error or exc.exit_code
    return _finish(args, screener, results) or first_error


def _check(args: argparse.Namespace) -> None:
    if args.mic == bool(args.paths):
        raise UsageError("give WAV files or folders to screen, or --mic (not both)")
    if args.report and (args.mic is False and len(args.paths) != 1):
        raise UsageError("--report draws one recording: give exactly one WAV file")


def _wav_files(paths: list[Path]) -> list[Path]:
    """Files as given; folders expand to their .wav files in name order."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() == ".wav")
            if not found:
                raise UsageError(f"{p}: folder holds no .wav files")
            out.extend(found)
        else:
            out.append(p)
    return out


def _screen_file(args, screener, path: Path):
    import time

    from edge.audio import read_wav

    start = time.perf_counter()
    pcm = read_wav(path, screener.spec.sample_rate_hz)
    return _screen(args, screener, pcm, str(path), start)


def _screen_mic(args, screener):
    from edge import mic

    if args.seconds < screener.spec.window_s:
        raise UsageError(f"--seconds {args.seconds:g} is shorter than one analysis window "
                         f"({screener.spec.window_s:g} s); record at least 20 s")
    device = int(args.device) if args.device and args.device.isdigit() else args.device
    pcm, rate = mic.record(args.seconds, args.rate, device)
    from edge.resample import resample

    pcm = resample(pcm, rate, screener.spec.sample_rate_hz)
    return _screen(args, screener, pcm, "microphone")


def _screen(args, screener, pcm, name: str, start: float | None = None):
    result = screener.screen_pcm(pcm, screener.spec.sample_rate_hz, name, start=start)
    if args.report:
        from edge.report import write_report

        write_report(args.report, pcm, screener, result)
    return result, pcm


def _finish(args, screener, results) -> int:
    """Print every result, then store them; a log that cannot be written is an error."""
    for result, _ in results:
        print(json.dumps(result.to_dict()) if args.json else _describe(result), flush=True)
    if not args.no_log and results:
        _log(args, screener, results)
    return 0


def _log(args, screener, results) -> None:
    from edge.screening_log import Screening, ScreeningLog

    with ScreeningLog(args.db) as log:
        for result, pcm in results:
            log.add(Screening(
                decision=result.decision, probability=result.probability_abnormal,
                window_scores=[w["probability_abnormal"] for w in result.windows],
                model_sha256=result.model_sha256, spec_json=screener.spec.to_json(),
                file=result.file, patient_id=args.patient,
                quality_reason=result.quality.get("reason"), latency_ms=result.latency_ms,
                audio=pcm if args.keep_audio else None,
                audio_rate=screener.spec.sample_rate_hz if args.keep_audio else None,
            ))


def _describe(result) -> str:
    """One line a clinician can read at a glance, then the detail."""
    if result.decision == "unsure":
        q = result.quality
        return (f"{result.file}: UNSURE - {q['reason']}. {q['hint']} "
                f"({result.seconds:g} s, {result.latency_ms:.0f} ms)")
    advice = "refer for a closer look" if result.decision == "abnormal" else "no referral"
    return (f"{result.file}: {result.decision.upper()} - {advice} "
            f"(P(abnormal) {result.probability_abnormal:.2f}, threshold "
            f"{result.threshold:.2f}; {len(result.windows)} windows of {result.seconds:g} s; "
            f"{result.latency_ms:.0f} ms)")
