"""Do one thing on every device of a fleet at once: Fabric's ThreadingGroup, nothing home-made.

Why a Connection subclass: a ThreadingGroup calls one named method of every member
Connection, each in its own thread, and hands back each member's return value *or* its
exception (a GroupResult). That is exactly "one failing device does not stop the others".
The methods of :class:`DeviceHandle` call the single-device code of `edge.deploy.remote`
unchanged (same host-key policy, same atomic release switch, same rollback on failure),
so a fleet deploy is N single deploys side by side, each atomic on its own device.

Host side only (Fabric); the devices need nothing beyond what a single deploy needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Connection, ThreadingGroup
from fabric.exceptions import GroupException

from edge.deploy import remote
from edge.deploy.bundle import Bundle
from edge.deploy.hosts import HostEntry
from edge.errors import DeviceError, HeartsoundError
from edge.screening_log import DB_NAME

SHA_SHOWN = 12  # hex digits of a sha256 in a table: enough to tell models apart
PULL_PREFIX = ".pull-"  # the device-side copy of a log, next to the log (owner-only folder)


class DeviceHandle(Connection):
    """One device of the fleet, as a ThreadingGroup member.

    The handle's own connection is never opened: each method goes through
    `remote.connect`, which refuses unknown host keys (Fabric's default would
    trust them), so that a fleet is reached exactly as a single device is.
    """

    # Class attributes, so that invoke's DataProxy keeps them as attributes, not config.
    fleet_entry: HostEntry | None = None
    fleet_options: remote.DeployOptions | None = None

    @classmethod
    def of(cls, entry: HostEntry, options: remote.DeployOptions) -> DeviceHandle:
        handle = cls(entry.target.host, user=entry.target.user, port=entry.target.port)
        handle.fleet_entry = entry
        handle.fleet_options = (options if entry.key is None else
                                dataclasses.replace(options, key=entry.key))
        return handle

    @property
    def target(self) -> remote.Target:
        return self.fleet_entry.target

    # ---- the work, one device ----------------------------------------------------
    def preflight(self) -> dict:
        return remote.preflight(self.target, self.fleet_options)

    def deploy_release(self, bundles: dict[HostEntry, Bundle]) -> str:
        return remote.deploy(bundles[self.fleet_entry], self.target, self.fleet_options)

    def bench(self, runs: int) -> dict:
        return remote.remote_bench(self.target, self.fleet_options, runs=runs)

    def running(self) -> tuple[str | None, str | None]:
        """(release name, model sha256) that `current` points at; (None, None) if none."""
        with _device(self.target, self.fleet_options) as dev:
            current = f"{_root(self.fleet_options)}/current"
            res = dev.run("reading current", shlex.join(["readlink", "--", current]),
                          check=False)
            if res.exited != 0:
                return None, None
            manifest = json.loads(dev.read_text(f"{current}/bundle/manifest.json"))
            return (Path(res.stdout.strip()).name,
                    manifest["files"][manifest["model"]]["sha256"])

    def fetch_log(self, into: Path) -> Path | None:
        """A consistent copy of the device's screening log in `into`; None if it has none.

        The copy is made on the device by the deployed heartsound (`history --backup`,
        SQLite's backup API), never by copying the live WAL database's file.
        """
        root = _root(self.fleet_options)
        log = f"{root}/data/{DB_NAME}"
        with _device(self.target, self.fleet_options) as dev:
            if dev.run("looking for the log", shlex.join(["test", "-e", log]),
                       check=False).exited != 0:
                return None
            copy = f"{root}/data/{PULL_PREFIX}{uuid.uuid4().hex}.db"
            local = into / f"line{self.fleet_entry.line}.db"
            try:
                try:
                    dev.run("copying the log", shlex.join([
                        f"{root}/current/bin/heartsound", "history", "--db", log,
                        "--backup", copy]), timeout=remote.SMOKE_TIMEOUT_S)
                except remote.StepFailed as exc:
                    raise remote.StepFailed(exc.step, f"{exc.reason} (the copy is made by "
                                            f"the heartsound deployed under {root}: deploy "
                                            "this version first)") from None
                try:
                    dev.conn.get(copy, local=str(local))
                except (OSError, EOFError, paramiko.SSHException) as exc:
                    raise remote.StepFailed("fetching the copy", str(exc).strip() or
                                            type(exc).__name__) from None
            finally:
                if dev.alive():
                    dev.run("removing the copy", shlex.join(["rm", "-f", "--", copy]),
                            check=False)
            return local


@contextlib.contextmanager
def _device(target: remote.Target, options: remote.DeployOptions) -> Iterator[remote.Device]:
    """A device over a verified connection, closed after; a failed step is one line."""
    dev = remote.open_device(target, options)
    try:
        yield dev
    except remote.StepFailed as exc:
        raise DeviceError(f"{target}: failed at {exc}") from None
    finally:
        dev.close()


def _root(options: remote.DeployOptions) -> str:
    """ROOT as the device's shell and SFTP see it (relative: under the login's home)."""
    return options.root[2:] if options.root.startswith("~/") else options.root


# ---------------------------------------------------------------------------------------------
# the group


class Fleet(ThreadingGroup):
    """The devices of a hosts file; :meth:`each` runs one DeviceHandle method on all."""

    @classmethod
    def of(cls, entries: Sequence[HostEntry], options: remote.DeployOptions) -> Fleet:
        return cls.from_connections([DeviceHandle.of(e, options) for e in entries])

    def only(self, entries: Sequence[HostEntry]) -> Fleet:
        keep = set(entries)
        return Fleet.from_connections([h for h in self if h.fleet_entry in keep])

    def each(self, method: str, *args) -> dict[HostEntry, object]:
        """{entry: return value or exception}, in hosts-file order.

        `_do` is the hook Fabric's own `run`/`put`/`get` go through (its docstring invites
        subclasses to use it); a failed device is a value here, never the end of the call.
        """
        if not self:
            return {}
        try:
            results = self._do(method, *args)
        except GroupException as exc:
            results = exc.result
        return {h.fleet_entry: results[h] for h in self}


def reason(error: BaseException) -> str:
    """One line for a failed device: our own message, else the exception's first line."""
    if isinstance(error, HeartsoundError):
        return str(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


@dataclass
class HostRow:
    """One device's line of a fleet summary."""

    entry: HostEntry
    error: str | None = None  # one line; None when the device did what was asked
    release: str | None = None  # what `current` points at now, as read from the device
    model_sha256: str | None = None
    value: object = None  # the step's own result: release name, bench figures, pulled copy

    @property
    def ok(self) -> bool:
        return self.error is None


def _rows(entries: Sequence[HostEntry], results: dict[HostEntry, object]) -> list[HostRow]:
    rows = []
    for e in entries:
        got = results[e]
        rows.append(HostRow(e, error=reason(got)) if isinstance(got, BaseException)
                    else HostRow(e, value=got))
    return rows


# ---------------------------------------------------------------------------------------------
# deploy, bench, pull


BundleMaker = Callable[[tuple[list[str], str] | None], Bundle]


def deploy_fleet(entries: Sequence[HostEntry], options: remote.DeployOptions,
                 make_bundle: BundleMaker, *, download_deps: bool = False) -> list[HostRow]:
    """Deploy to every device at once; each row says ok/failed and what the device now runs.

    A device that fails its preflight (unreachable, host key, Python) is not deployed to;
    the bundle is built once (once per device platform with `download_deps`) only if at
    least one device passed. `make_bundle(platform)` is the single-device bundle builder.
    """
    fleet = Fleet.of(entries, options)
    pre = fleet.each("preflight")
    ready = [e for e in entries if not isinstance(pre[e], BaseException)]
    bundles: dict[HostEntry, Bundle] = {}
    built: dict[tuple, Bundle] = {}
    for e in ready:
        key = ((tuple(pre[e]["platforms"]), pre[e]["python_version"]) if download_deps
               else None)
        if key not in built:
            built[key] = make_bundle((list(key[0]), key[1]) if key else None)
        bundles[e] = built[key]
    done = {**pre, **fleet.only(ready).each("deploy_release", bundles)}
    rows = _rows(entries, done)
    _read_running(fleet, rows)
    return rows


def _read_running(fleet: Fleet, rows: list[HostRow]) -> None:
    """Fill in what each device runs now, read back from the device itself."""
    running = fleet.each("running")
    for row in rows:
        got = running[row.entry]
        if not isinstance(got, BaseException):
            row.release, row.model_sha256 = got


def bench_fleet(entries: Sequence[HostEntry], options: remote.DeployOptions,
                runs: int) -> list[HostRow]:
    """`heartsound bench --json` on every device at once (each on its own CPU)."""
    rows = _rows(entries, Fleet.of(entries, options).each("bench", runs))
    for row in rows:
        if row.ok:
            row.release = Path(row.value["release"]).name  # readlink: releases/NAME
            row.model_sha256 = row.value["model_sha256"]
    return rows


def pull_logs(entries: Sequence[HostEntry], options: remote.DeployOptions, log,
              scratch: Path) -> list[HostRow]:
    """Copy every device's log at once, then merge them one by one into `log`.

    The copies travel in parallel; the merge runs here, in one thread, one transaction
    per device: the local log keeps a single writer. Row value: a MergeResult, or None
    for a device that has no log yet.
    """
    rows = _rows(entries, Fleet.of(entries, options).each("fetch_log", scratch))
    for row in rows:
        if row.ok and row.value is not None:
            try:
                row.value = log.merge(row.value)
            except HeartsoundError as exc:
                row.error = str(exc)
    return rows


# ---------------------------------------------------------------------------------------------
# summaries


def failed_error(rows: Sequence[HostRow], what: str) -> DeviceError | None:
    """The error to exit with when any device failed (after the table was printed)."""
    bad = [str(r.entry.target) for r in rows if not r.ok]
    if not bad:
        return None
    return DeviceError(f"{what} failed on {len(bad)} of {len(rows)} devices ({', '.join(bad)})"
                       "; the others are done, see the table above")


def table(header: Sequence[str], cells: Sequence[Sequence[str]],
          rows: Sequence[HostRow]) -> str:
    """Aligned columns, then under each failed device its one-line reason."""
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for c, row in zip(cells, rows, strict=True):
        lines.append("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip())
        if not row.ok:
            lines.append(f"    reason: {row.error}")
    return "\n".join(lines)


def _result(row: HostRow) -> str:
    return "ok" if row.ok else "FAILED"


def _short(sha: str | None) -> str:
    return sha[:SHA_SHOWN] if sha else "-"


def deploy_table(rows: Sequence[HostRow]) -> str:
    """host | result | release now current | model: which devices run which version."""
    cells = [(str(r.entry.target), _result(r), r.release or "(none or unknown)",
              _short(r.model_sha256)) for r in rows]
    ok = sum(r.ok for r in rows)
    return (table(("host", "result", "runs release", "model sha256"), cells, rows) +
            f"\n{ok} of {len(rows)} devices deployed")


BENCH_COLUMNS = (("init ms", "init_ms", None), ("1st ms", "first_inference_ms", None),
                 ("window mean", "window_ms", "mean"), ("p50", "window_ms", "p50"),
                 ("p95", "window_ms", "p95"), ("p99", "window_ms", "p99"),
                 ("interp mean", "interpreter_ms", "mean"), ("RSS MB", "peak_rss_mb", None))


def bench_cells(figures: dict) -> list[str]:
    return [f"{figures[key] if stat is None else figures[key][stat]:.2f}"
            for _, key, stat in BENCH_COLUMNS]


def bench_fleet_table(rows: Sequence[HostRow]) -> str:
    """Per device: release, model, and the latency figures of one analysis window (ms)."""
    cells = [[str(r.entry.target), _result(r), r.release or "-", _short(r.model_sha256),
              *(bench_cells(r.value) if r.ok else ["-"] * len(BENCH_COLUMNS))] for r in rows]
    header = ("host", "result", "release", "model", *(c[0] for c in BENCH_COLUMNS))
    return table(header, cells, rows)


def pull_table(rows: Sequence[HostRow], db: Path) -> str:
    """Per device: rows in its log, rows new to the local database, its device ids."""
    cells = []
    for r in rows:
        m = r.value if r.ok and r.value is not None else None
        cells.append((str(r.entry.target), _result(r),
                      "no log yet" if r.ok and m is None else str(m.rows) if m else "-",
                      str(m.added) if m else ("0" if r.ok else "-"),
                      ", ".join(m.device_ids) if m else "-"))
    added = sum(r.value.added for r in rows if r.ok and r.value is not None)
    return (table(("host", "result", "rows on device", "added", "device ids"), cells, rows) +
            f"\n{added} screening(s) added to {db}")
