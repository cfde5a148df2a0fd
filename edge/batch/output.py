"""Batch screening rows on disk: JSON Lines or CSV, streamed, and read back to resume.

Why one row per line, flushed at once: a job over an archive runs for hours and may be
killed; every row written is a recording that ``--resume`` will not screen again. A
kill can leave half a line at the end; :func:`done_files` cuts it off (that recording
is screened again) so appending never glues two rows together.

Why CSV holds the nested fields (quality, windows, classes) as JSON text and numbers in
Python's shortest round-trip form: a CSV row then converts back to the exact JSON row
(:func:`read_rows`), so both formats carry the same bits.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import IO

from edge.errors import DeviceError, UsageError
from edge.screening import ScreeningResult

__all__ = ["CSV_FIELDS", "RowWriter", "done_files", "error_row", "open_writer", "read_rows"]

ERROR_FIELDS = ("error", "exit_code")


def error_row(file: str, error: str, exit_code: int) -> dict:
    """The row of a recording that failed, as every screening path prints and writes it."""
    return {"file": file, "error": error, "exit_code": exit_code}

#: What a row says beside the result: the patient and the time (UTC), as the log does.
CONTEXT_FIELDS = ("patient_id", "time_utc")
RESULT_FIELDS = tuple(f.name for f in fields(ScreeningResult))
#: Columns of a batch CSV: the JSON row's fields, then the error and its exit code.
CSV_FIELDS = RESULT_FIELDS + CONTEXT_FIELDS + ERROR_FIELDS
#: The columns of CSVs written before rows carried CONTEXT_FIELDS: --resume continues them.
OLD_CSV_FIELDS = RESULT_FIELDS + ERROR_FIELDS
#: CSV columns kept as text; every other column holds a JSON value (number, object, list).
TEXT_FIELDS = frozenset({"file", "decision", "model_sha256", "interpreter", "error",
                         *CONTEXT_FIELDS})
STDOUT = "-"


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)  # str(float) is repr: the shortest text that reads back to the same bits


def _csv_value(name: str, cell: str):
    if cell == "":
        return None
    return cell if name in TEXT_FIELDS else json.loads(cell)


class RowWriter:
    """Writes one row per recording, in JSON Lines or CSV, flushed row by row."""

    def __init__(self, stream: IO[str], fmt: str, *, header: bool, owned: bool = True,
                 columns: tuple[str, ...] = CSV_FIELDS) -> None:
        self.stream, self.fmt, self.owned, self.columns = stream, fmt, owned, columns
        self._csv = csv.DictWriter(stream, columns, lineterminator="\n") if fmt == "csv" \
            else None
        if self._csv is not None and header:
            self._csv.writeheader()

    def write(self, row: dict) -> None:
        if self._csv is None:
            self.stream.write(json.dumps(row) + "\n")
        else:
            full = {"exit_code": 0, **row}
            self._csv.writerow({k: _csv_cell(full.get(k)) for k in self.columns})
        self.stream.flush()

    def close(self) -> None:
        if self.owned:
            self.stream.close()


def open_writer(dest: str, fmt: str, *, append: bool = False,
                stdout: IO[str] | None = None) -> RowWriter:
    """A writer to ``dest`` (a path, or ``-`` for ``stdout``, by default sys.stdout); a
    CSV header only when the file is new."""
    if dest == STDOUT:
        return RowWriter(stdout or sys.stdout, fmt, header=True, owned=False)
    path = Path(dest)
    fresh = not append or not path.exists() or path.stat().st_size == 0
    try:
        stream = open(path, "a" if append else "w", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise DeviceError(f"{dest}: cannot write the output ({exc.strerror}); choose a "
                          "writable path") from None
    columns = CSV_FIELDS if fresh or fmt != "csv" else _existing_columns(path)
    return RowWriter(stream, fmt, header=fresh, columns=columns)


def _existing_columns(path: Path) -> tuple[str, ...]:
    """The columns of the CSV being continued: rows appended to a file an older version
    wrote keep its columns (read_rows has checked the header)."""
    with open(path, encoding="utf-8", newline="") as fh:
        header = tuple(next(csv.reader(fh), ()))
    return OLD_CSV_FIELDS if header == OLD_CSV_FIELDS else CSV_FIELDS


def _drop_partial_line(path: Path) -> bool:
    """Cut a last line that has no newline (a killed run's half row); True if cut."""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with open(path, "r+b") as fh:
        fh.truncate(data.rfind(b"\n") + 1)
    return True


def read_rows(path: str | Path, fmt: str) -> list[dict]:
    """The rows of a batch output, as dicts equal to the JSON rows that were written."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if fmt == "csv":
        return _read_csv(path, text)
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or "file" not in row:
            raise UsageError(f"{path}: line {number} is not a heartsound screening row; give "
                             "--resume the JSON Lines file an earlier run wrote")
        rows.append(row)
    return rows


def _read_csv(path: Path, text: str) -> list[dict]:
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) not in (CSV_FIELDS, OLD_CSV_FIELDS):
        raise UsageError(f"{path}: its header is not a heartsound batch CSV's; give --resume "
                         "the CSV file an earlier run wrote")
    rows = []
    for cells in reader:
        row = {k: _csv_value(k, v) for k, v in cells.items()}
        if row["error"] is None:
            del row["error"], row["exit_code"]
        else:  # an error row has no result fields, as in JSON Lines
            row = {k: row[k] for k in ("file", *ERROR_FIELDS)}
        rows.append(row)
    return rows


def done_files(path: str | Path, fmt: str) -> tuple[set[str], bool]:
    """Files an earlier output already has a row for (error rows too), and whether a
    half-written last row was dropped. A missing or empty file holds none."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return set(), False
    if path.is_dir():
        raise UsageError(f"{path}: is a folder; give --resume the output file to continue")
    cut = _drop_partial_line(path)
    return {row["file"] for row in read_rows(path, fmt)}, cut
