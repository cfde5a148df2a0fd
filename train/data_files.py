"""Reading a data set's index files: CSV rows with line numbers, WFDB headers, presence.

Shared by every loader so that a bad row or a missing recording reads the same whatever
the data set: one line naming the file (and line) and what to do.
"""

from __future__ import annotations

import csv
import re
import wave
from collections.abc import Sequence
from pathlib import Path

from edge.errors import DataError

MAX_MISSING_NAMED = 5


def read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Rows with their 1-based line numbers; blank lines skipped; CRLF tolerated."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            return [(reader.line_num, row) for row in reader if row]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text CSV file ({exc.reason})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None


def wfdb_rate_and_seconds(header: Path, wav: Path) -> tuple[int, float]:
    """Rate and length from the WFDB header, else from the WAV header."""
    if not header.is_file():
        return _wav_rate_and_seconds(wav)
    with header.open(encoding="ascii", errors="replace") as handle:
        fields = handle.readline().split()
    # WFDB record line: name n_signals fs[/counter][(base)] n_samples ...
    match = re.match(r"(\d+(?:\.\d+)?)", fields[2]) if len(fields) >= 4 else None
    if match is None or not fields[3].isdigit() or float(match.group(1)) <= 0:
        raise DataError(f"{header} line 1: expected 'name signals rate samples', got {fields}")
    rate = round(float(match.group(1)))
    return rate, int(fields[3]) / rate


def _wav_rate_and_seconds(path: Path) -> tuple[int, float]:
    try:
        with wave.open(str(path), "rb") as wav:
            return wav.getframerate(), wav.getnframes() / wav.getframerate()
    except (wave.Error, EOFError) as exc:
        raise DataError(f"{path}: not a readable WAV file ({exc}); re-download it") from None


def check_present(index: Path, paths: Sequence[Path]) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(p.name for p in missing[:MAX_MISSING_NAMED])
        more = (
            f" and {len(missing) - MAX_MISSING_NAMED} more"
            if len(missing) > MAX_MISSING_NAMED
            else ""
        )
        raise DataError(
            f"{index} names {len(missing)} missing recording(s): {shown}{more}; "
            "the folder is incomplete: copy or download it again"
        )
