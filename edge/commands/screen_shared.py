"""What the single and the batch paths of `heartsound screen` share: the recordings a
command line names, and the log record of one result.

Why a module of its own: :mod:`edge.commands.screen` hands many recordings to
:mod:`edge.commands.screen_batch`, and both need these; each imports them from here, so
the batch path does not import the command that calls it.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

from edge.errors import UsageError

GLOB_CHARS = "*?["


def expand_globs(paths: list[Path]) -> list[Path]:
    """Glob patterns the shell left alone (quoted, or from a script) expand here, sorted;
    ``**`` matches any depth. A path that exists is never taken for a pattern."""
    out: list[Path] = []
    for p in paths:
        if p.exists() or not any(c in str(p) for c in GLOB_CHARS):
            out.append(p)
            continue
        found = sorted(glob.glob(str(p), recursive=True))
        if not found:
            raise UsageError(f"{p}: no file or folder matches this pattern; check it")
        out.extend(Path(f) for f in found)
    return out


def wav_files(paths: list[Path]) -> list[Path]:
    """Files as given; folders expand to their .wav files in name order."""
    out: list[Path] = []
    for p in expand_globs(paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() == ".wav")
            if not found:
                raise UsageError(f"{p}: folder holds no .wav files (sub-folders are not "
                                 f"searched: pass '{p}/**/*.wav' to screen them)")
            out.extend(found)
        else:
            out.append(p)
    return out


def stamped(args: argparse.Namespace, row: dict) -> dict:
    """A result's JSON row as printed and written: the result, the patient it was screened
    for and when (UTC), so that a row says what the log's record of it says."""
    from edge.screening_log import utc_now

    return {**row, "patient_id": args.patient, "time_utc": utc_now()}


def log_record(args: argparse.Namespace, screener, row: dict, pcm, uuid: str | None = None):
    """The log's record of one screening, from its :func:`stamped` JSON row (single or
    batch path); the file's path is stored absolute, so the history names it from any
    folder. ``uuid`` None draws a fresh one when it is stored."""
    from edge.screening_log import Screening

    mic = getattr(args, "mic", False)
    return Screening(
        decision=row["decision"], probability=row["probability_abnormal"],
        window_scores=[w["probability_abnormal"] for w in row["windows"]],
        model_sha256=row["model_sha256"], spec_json=screener.spec.to_json(),
        file=None if mic else str(Path(row["file"]).absolute()),  # schema: NULL for the mic
        patient_id=args.patient, time_utc=row["time_utc"],
        quality_reason=row["quality"].get("reason"), latency_ms=row["latency_ms"],
        audio=pcm if args.keep_audio else None,
        audio_rate=screener.spec.sample_rate_hz if args.keep_audio else None, uuid=uuid,
    )
