"""The offline screening log: one SQLite file, every screening a row, nothing ever lost.

Why SQLite in WAL mode with one transaction per screening: a bedside device loses power
or gets its process killed; a committed screening must survive that, and a half-written
one must vanish whole. WAL keeps readers (``heartsound history``) from blocking the
writer; ``synchronous=FULL`` makes each commit durable against power loss too (one fsync
per screening: nothing next to a 30-second recording).

Why mode 0600: the log holds patient ids and may hold heart-sound audio. The file is
created by ``os.open(O_CREAT | O_EXCL, 0o600)`` *before* SQLite opens it, so it is never
readable by others, not even for an instant; SQLite gives its ``-wal`` and ``-shm``
files the database file's permissions.

Failures a person can cause or meet (read-only file or file system, full disk, a file
that is not a log) raise :class:`edge.errors.DeviceError` with one line; the rows already
committed stay intact because a failed transaction is rolled back by SQLite.

Schema changes: ``schema_version`` holds one integer; :data:`MIGRATIONS` maps each
version to the statements that reach it from the previous one, applied in one
transaction on open. A read-only open never migrates, so it reads every version since
the first (the columns it lists exist in all of them).

Why every row carries a ``uuid`` and a ``log_id`` (schema 2): logs of many devices are
merged into one database on a host (``heartsound history --pull``). The row uuid makes
that merge idempotent (pulling twice adds nothing); the ``log_id``, drawn once at random
when a log is created and kept in its ``meta`` table, tells devices apart even when
their ``device_id`` (``$HEARTSOUND_DEVICE_ID``, else the host name) is the same, as on
Raspberry Pis cloned from one SD card image.

Why a batch screening's uuid is derived, not drawn (:func:`screening_uuid`): a batch job
logs a screening, then writes its output row; a kill between the two makes ``--resume``
screen that recording again. Its uuid comes from the job's id (kept in ``meta``, see
:meth:`ScreeningLog.batch_job`), the file name and the file's bytes, so the second
screening is the same row and :meth:`ScreeningLog.add` stores it once. No schema change:
``meta`` and the unique uuid index exist since schema 2, which older logs migrate to.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import os
import platform
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import DeviceError
from edge.release import release_setting

__all__ = [
    "DB_NAME",
    "CSV_COLUMNS",
    "HOME_ENV",
    "SCHEMA_VERSION",
    "MergeResult",
    "Screening",
    "ScreeningLog",
    "default_db_path",
    "device_id",
    "heartsound_home",
    "screening_uuid",
]

HOME_ENV = "HEARTSOUND_HOME"
DEVICE_ENV = "HEARTSOUND_DEVICE_ID"
DEFAULT_HOME = "~/.heartsound"
DB_NAME = "screenings.db"
FILE_MODE = 0o600  # owner read/write only: patient data
DIR_MODE = 0o700
BUSY_TIMEOUT_MS = 5000  # a reader holding a lock briefly must not fail a screening
SCHEMA_VERSION = 2
FIRST_READABLE_VERSION = 1  # the first schema with a screenings table
LOW_SPACE_BYTES = 64 * 1024  # an I/O error with less free space than this is a full disk
BATCH_JOB_KEY = "batch_job:"  # meta key prefix: + resolved output path -> the job's id

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        "INSERT INTO schema_version (version) VALUES (0)",
        """CREATE TABLE screenings (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time_utc TEXT NOT NULL,            -- ISO 8601, UTC, seconds: 2026-11-25T09:30:00Z
            patient_id TEXT,                   -- optional, as typed by the clinician
            file TEXT,                         -- recording file name, NULL for the microphone
            decision TEXT NOT NULL,            -- normal / abnormal / unsure
            probability REAL,                  -- P(abnormal) of the recording, NULL if unsure
            window_scores TEXT NOT NULL,       -- JSON list, one score per analysis window
            quality_reason TEXT,               -- why the quality gate said unsure, else NULL
            model_sha256 TEXT NOT NULL,
            spec_json TEXT NOT NULL,           -- FeatureSpec.to_json() the model was run with
            device_id TEXT NOT NULL,
            latency_ms REAL,
            audio BLOB,                        -- optional int16 little-endian mono PCM
            audio_rate INTEGER                 -- Hz of audio, NULL without audio
        )""",
        "CREATE INDEX screenings_patient ON screenings (patient_id, id)",
    ),
    2: (  # rows that existed before get a fresh uuid and this log's id, once
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('log_id', lower(hex(randomblob(16))))",
        "ALTER TABLE screenings ADD COLUMN uuid TEXT",  # unique id of the screening
        "ALTER TABLE screenings ADD COLUMN log_id TEXT",  # meta.log_id of the log it was made in
        "UPDATE screenings SET uuid = lower(hex(randomblob(16))), "
        "log_id = (SELECT value FROM meta WHERE key = 'log_id')",
        "CREATE UNIQUE INDEX screenings_uuid ON screenings (uuid)",
    ),
}
# every column but the local id: what a merge copies from another log
_MERGE_COLUMNS = ("uuid, log_id, time_utc, patient_id, file, decision, probability, "
                  "window_scores, quality_reason, model_sha256, spec_json, device_id, "
                  "latency_ms, audio, audio_rate")

CSV_COLUMNS = ("id", "time_utc", "patient_id", "file", "decision", "probability",
               "window_scores", "quality_reason", "model_sha256", "device_id", "latency_ms",
               "audio_seconds", "spec_json")
_SELECT = ("SELECT id, time_utc, patient_id, file, decision, probability, window_scores, "
           "quality_reason, model_sha256, spec_json, device_id, latency_ms, audio_rate, "
           "length(audio) FROM screenings")


def heartsound_home() -> Path:
    """``$HEARTSOUND_HOME``, else the deployed release's (``ROOT/data``, the folder the
    service logs to: `edge.release`), else ``~/.heartsound``: where the device keeps its
    state."""
    return Path(os.environ.get(HOME_ENV) or release_setting(HOME_ENV)
                or DEFAULT_HOME).expanduser()


def default_db_path() -> Path:
    """The screening log used when no ``--db`` is given."""
    return heartsound_home() / DB_NAME


def device_id() -> str:
    """``$HEARTSOUND_DEVICE_ID`` or the host name: which device made a screening."""
    return os.environ.get(DEVICE_ENV) or platform.node() or "unknown"


def screening_uuid(job_id: str, file: str, content_sha256: str) -> str:
    """The uuid of a batch job's screening: one per (job, file name, file bytes), so the
    same recording screened again by a resumed job is the same row; a file changed in
    between is a new screening."""
    key = "\0".join((job_id, file, content_sha256)).encode("utf-8", "surrogateescape")
    return hashlib.sha256(key).hexdigest()[:32]


def utc_now() -> str:
    """Current time as ISO 8601 UTC with a Z, to the second (sorts as text)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class Screening:
    """One screening as stored; ``id`` is set once it is in the log."""

    decision: str
    probability: float | None
    window_scores: list[float]
    model_sha256: str
    spec_json: str
    file: str | None = None
    patient_id: str | None = None
    quality_reason: str | None = None
    latency_ms: float | None = None
    device_id: str = field(default_factory=device_id)
    time_utc: str = field(default_factory=utc_now)
    audio: np.ndarray | None = None  # int16 mono; only stored when given
    audio_rate: int | None = None
    audio_bytes: int = 0  # size of the stored audio (reading the log does not load it)
    id: int | None = None
    uuid: str | None = None  # drawn when stored; the same in every log the row is merged into


@dataclass(frozen=True)
class MergeResult:
    """What :meth:`ScreeningLog.merge` found in another log and how much of it was new."""

    rows: int  # screenings in the other log
    added: int  # of those, new to this log
    device_ids: tuple[str, ...]  # the device ids its rows carry
    log_ids: tuple[str, ...]  # the logs its rows were made in (a pulled log may hold merges)


# ----------------------------------------------------------------------------- errors


def _is_read_only(path: Path) -> bool:
    """True when the file or its file system cannot be written (as this user)."""
    try:
        on_ro_fs = bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        on_ro_fs = False
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)
    return on_ro_fs or not writable


def _free_bytes(path: Path) -> int:
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return LOW_SPACE_BYTES
    return st.f_bavail * st.f_frsize


def _wal_size(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def _device_error(path: Path, exc: sqlite3.Error, doing: str) -> DeviceError:
    """One line for a SQLite failure, saying what to do; the log stays as it was."""
    msg = str(exc)
    low = msg.lower()
    if "readonly" in low or "read-only" in low or _is_read_only(path):
        what = "is read-only (file or file system)"
        fix = "make the file and its folder writable, or pass --db with a writable path"
    elif "full" in low or _free_bytes(path) < LOW_SPACE_BYTES:
        what = "disk is full"
        fix = "free some space (earlier screenings are intact)"
    elif "not a database" in low or "malformed" in low:
        what = "is not a usable SQLite database"
        fix = "move the file away (it is not a heartsound screening log) or pass another --db"
    elif "unable to open" in low:
        what = "cannot be opened"
        fix = "check that the folder exists and is writable, or pass another --db"
    else:
        what = "failed"
        fix = "check the disk and the file (earlier screenings are intact)"
    return DeviceError(f"screening log {path}: {what} ({doing}: {msg}); {fix}")


def _os_error(path: Path, exc: OSError, doing: str) -> DeviceError:
    return DeviceError(f"screening log {path}: cannot {doing} ({exc.strerror}); make the "
                       "folder writable or pass --db with another path")


# ------------------------------------------------------------------------------- the log


def _create_private(path: Path) -> None:
    """Create an empty database file readable by its owner only (if it does not exist)."""
    try:
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    except FileExistsError:
        return
    except OSError as exc:
        raise _os_error(path, exc, "create the database file") from None
    os.close(fd)  # an empty file is a valid empty SQLite database


class ScreeningLog:
    """The SQLite screening log; use as a context manager or call :meth:`close`.

    ``create=False`` refuses to make a new file (``heartsound history`` on a device that
    never screened says so instead of leaving an empty log behind).
    """

    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = True,
                 read_only: bool = False) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.read_only = read_only
        self.log_id: str | None = None  # meta.log_id; None in a schema-1 log opened read-only
        if self.path.is_dir():
            raise DeviceError(f"screening log {self.path} is a directory; pass the path of "
                              f"a file such as {self.path / DB_NAME}")
        if not self.path.exists():
            if not create or read_only:
                raise DeviceError(f"screening log {self.path} does not exist: no screening "
                                  "was stored yet, or pass --db with the right path")
            _create_private(self.path)
        try:
            self._db = self._connect()
            self._setup()
        except sqlite3.Error as exc:
            self._close_quietly()
            raise _device_error(self.path, exc, "opening it") from None
        except DeviceError:
            self._close_quietly()
            raise

    def _connect(self) -> sqlite3.Connection:
        """Read-write; or read-only, falling back to ``immutable`` on a read-only medium.

        SQLite cannot open a WAL database read-only when it may not create the ``-shm``
        file (a read-only file system, a write-protected SD card). If no ``-wal`` file
        holds uncheckpointed commits, the main file is complete and ``immutable=1``
        reads it safely.
        """
        timeout = BUSY_TIMEOUT_MS / 1000
        if not self.read_only:
            return sqlite3.connect(self.path, isolation_level=None, timeout=timeout)
        uri = self.path.resolve().as_uri()
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None,
                                 timeout=timeout)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            if not _is_read_only(self.path) or _wal_size(self.path) > 0:
                raise
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)

    def _close_quietly(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    # ---- setup -------------------------------------------------------------------
    def _setup(self) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = self._version()
        if version > SCHEMA_VERSION:
            raise DeviceError(f"screening log {self.path} has schema version {version}, "
                              f"newer than this heartsound's {SCHEMA_VERSION}; upgrade "
                              "heartsound")
        if self.read_only:
            if version < FIRST_READABLE_VERSION:
                raise DeviceError(f"screening log {self.path} holds no screenings yet "
                                  f"(schema version {version}); screen a recording first")
            self.log_id = self._meta("log_id")
            return
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        if version < SCHEMA_VERSION or mode != "wal":
            db.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file
        db.execute("PRAGMA synchronous = FULL")
        if version < SCHEMA_VERSION:
            self._migrate(version)
        self.log_id = self._meta("log_id")

    def _version(self) -> int:
        has = self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND "
                               "name = 'schema_version'").fetchone()
        if not has:
            return 0
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def _meta(self, key: str) -> str | None:
        if self._version() < 2:  # the meta table came with schema 2
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _migrate(self, version: int) -> None:
        with self._transaction():
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    self._db.execute(statement)
                self._db.execute("UPDATE schema_version SET version = ?", (target,))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back whole on any error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- writing -----------------------------------------------------------------
    def _writable(self, doing: str) -> None:
        if self.read_only:
            raise DeviceError(f"screening log {self.path} was opened read-only; open it "
                              f"without read_only to {doing}")

    def batch_job(self, output: str, *, fresh: bool) -> str:
        """The id of the batch job that writes ``output`` (a resolved path): a new one when
        the job starts that output afresh, else the one stored when it did (``--resume``).
        """
        self._writable("store screenings")
        key = BATCH_JOB_KEY + output
        job_id = None if fresh else self._meta(key)
        if job_id is None:
            job_id = uuid.uuid4().hex
            try:
                with self._transaction():
                    self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                     (key, job_id))
            except sqlite3.Error as exc:
                raise _device_error(self.path, exc, "storing a batch job") from None
        return job_id

    def add(self, s: Screening) -> int:
        """Store one screening in one transaction; returns its id once committed.

        A screening whose ``uuid`` is stored already (a resumed batch job that screened a
        recording again, see :func:`screening_uuid`) is not stored twice: the id of the
        row that holds it is returned.
        """
        self._writable("store screenings")
        audio, rate = None, None
        if s.audio is not None:
            pcm = np.asarray(s.audio)
            if pcm.dtype != np.int16 or pcm.ndim != 1 or not s.audio_rate:
                raise ValueError("audio must be int16 mono with audio_rate set")
            audio, rate = pcm.astype("<i2").tobytes(), int(s.audio_rate)
        row_uuid = s.uuid or uuid.uuid4().hex
        row = (row_uuid, self.log_id, s.time_utc, s.patient_id, s.file, s.decision,
               None if s.probability is None else float(s.probability),
               json.dumps([round(float(x), 6) for x in s.window_scores]),
               s.quality_reason, s.model_sha256, s.spec_json, s.device_id,
               None if s.latency_ms is None else float(s.latency_ms), audio, rate)
        try:
            with self._transaction():
                cur = self._db.execute(
                    "INSERT INTO screenings (uuid, log_id, time_utc, patient_id, file, "
                    "decision, probability, window_scores, quality_reason, model_sha256, "
                    "spec_json, device_id, latency_ms, audio, audio_rate) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (uuid) DO NOTHING", row)
                new_id = int(cur.lastrowid) if cur.rowcount else int(self._db.execute(
                    "SELECT id FROM screenings WHERE uuid = ?", (row_uuid,)).fetchone()[0])
        except sqlite3.Error as exc:
            raise _device_error(self.path, exc, "storing a screening") from None
        s.id, s.uuid = new_id, row_uuid
        s.audio_bytes = len(audio) if audio else 0
        return new_id

    def merge(self, source: str | os.PathLike) -> MergeResult:
        """Add the screenings of another log (a pulled device copy) that this one lacks.

        Rows are matched by their uuid, so merging the same copy twice adds nothing; each
        row keeps its device id, its log id and its time, and gets a new local ``id``.
        The whole merge is one transaction: a failure adds nothing.
        """
        self._writable("merge into it")
        with ScreeningLog(source, create=False, read_only=True) as other:
            if other.schema_version() < 2:
                raise DeviceError(f"screening log {other.path} has schema version "
                                  f"{other.schema_version()}, without row ids; open it once "
                                  "with this heartsound (any screening does) and merge again")
            count = int(other._db.execute("SELECT count(*) FROM screenings").fetchone()[0])
            devices, logs = (tuple(r[0] for r in other._db.execute(
                f"SELECT DISTINCT {c} FROM screenings WHERE {c} IS NOT NULL ORDER BY {c}"))
                for c in ("device_id", "log_id"))
            rows = other._db.execute(f"SELECT {_MERGE_COLUMNS} FROM screenings ORDER BY id")
            before = self._db.total_changes
            marks = ", ".join("?" * len(_MERGE_COLUMNS.split(",")))
            try:
                with self._transaction():
                    self._db.executemany(f"INSERT OR IGNORE INTO screenings ({_MERGE_COLUMNS}) "
                                         f"VALUES ({marks})", rows)
            except sqlite3.Error as exc:
                raise _device_error(self.path, exc, f"merging {other.path}") from None
        added = self._db.total_changes - before
        return MergeResult(count, added, devices, logs)

    def backup(self, dest: str | os.PathLike) -> int:
        """Copy the log, consistent at one instant, into the new file ``dest``; rows copied.

        Why SQLite's backup API and not a file copy: in WAL mode recent commits live in
        the ``-wal`` file and a writer may be mid-transaction; a raw copy of the main file
        can miss rows or catch half-written pages. The copy is switched to a rollback
        journal, so that it is one self-contained file, and is owner-only like the log.
        """
        dest = Path(dest)
        if dest.exists():
            raise DeviceError(f"{dest}: exists already; a backup is written to a new file "
                              "only, choose another path")
        _create_private(dest)
        try:
            with contextlib.closing(sqlite3.connect(dest, isolation_level=None)) as out:
                self._db.backup(out)
                out.execute("PRAGMA journal_mode = DELETE")
                return int(out.execute("SELECT count(*) FROM screenings").fetchone()[0])
        except sqlite3.Error as exc:
            dest.unlink(missing_ok=True)
            raise _device_error(dest, exc, "writing a backup") from None

    # ---- reading -----------------------------------------------------------------
    def _query(self, where: str, args: tuple, limit: int | None) -> list[Screening]:
        sql = _SELECT + where + " ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        try:
            rows = self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise _device_error(self.path, exc, "reading it") from None
        return [_from_row(r) for r in rows]

    def recent(self, limit: int | None = 20, patient_id: str | None = None) -> list[Screening]:
        """Newest first, at most ``limit`` (None: all), optionally of one patient."""
        if patient_id is None:
            return self._query("", (), limit)
        return self._query(" WHERE patient_id = ?", (patient_id,), limit)

    def count(self) -> int:
        """Screenings stored."""
        return int(self._db.execute("SELECT count(*) FROM screenings").fetchone()[0])

    def audio(self, screening_id: int) -> tuple[np.ndarray, int] | None:
        """(int16 samples, rate) stored with a screening, or None."""
        row = self._db.execute("SELECT audio, audio_rate FROM screenings WHERE id = ?",
                               (screening_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        return np.frombuffer(row[0], dtype="<i2").astype(np.int16), int(row[1])

    def integrity(self) -> str:
        """``PRAGMA integrity_check``: "ok" for a sound file."""
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def schema_version(self) -> int:
        """Schema version stored in the file."""
        return self._version()

    # ---- export ------------------------------------------------------------------
    def export_csv(self, dest: str | os.PathLike | io.TextIOBase,
                   patient_id: str | None = None, limit: int | None = None) -> int:
        """Write screenings (oldest first) as CSV to a path or text stream; rows written.

        Audio is not exported (CSV is for spreadsheets); ``audio_seconds`` says whether
        it is in the log.
        """
        rows = list(reversed(self.recent(limit, patient_id)))
        if isinstance(dest, io.TextIOBase):
            _write_csv(dest, rows)
            return len(rows)
        path = Path(dest)
        try:
            with open(path, "w", newline="", encoding="utf-8") as fh:
                _write_csv(fh, rows)
        except OSError as exc:
            raise DeviceError(f"{path}: cannot write the CSV export ({exc.strerror}); "
                              "choose a writable path") from None
        return len(rows)

    # ---- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        self._db.close()

    def __enter__(self) -> ScreeningLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _from_row(r: tuple) -> Screening:
    (sid, time_utc, patient, file, decision, prob, scores, reason, sha, spec, dev,
     latency, rate, n_audio) = r
    return Screening(decision=decision, probability=prob, window_scores=json.loads(scores),
                     model_sha256=sha, spec_json=spec, file=file, patient_id=patient,
                     quality_reason=reason, latency_ms=latency, device_id=dev,
                     time_utc=time_utc, audio_rate=rate, audio_bytes=int(n_audio or 0),
                     id=sid)


def audio_seconds(s: Screening) -> float | None:
    """Seconds of stored audio, None when none was stored."""
    if not s.audio_bytes or not s.audio_rate:
        return None
    return s.audio_bytes / 2 / s.audio_rate


def _write_csv(fh, rows: list[Screening]) -> None:
    out = csv.writer(fh)
    out.writerow(CSV_COLUMNS)
    for s in rows:
        seconds = audio_seconds(s)
        out.writerow([s.id, s.time_utc, s.patient_id or "", s.file or "", s.decision,
                      "" if s.probability is None else f"{s.probability:.6f}",
                      json.dumps(s.window_scores), s.quality_reason or "", s.model_sha256,
                      s.device_id, "" if s.latency_ms is None else f"{s.latency_ms:.1f}",
                      "" if seconds is None else f"{seconds:.2f}", s.spec_json])
