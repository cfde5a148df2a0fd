"""Deploy a bundle to a device over SSH: upload, verify, install, smoke-test, switch.

Host side only (Fabric); the device needs nothing but sshd, a POSIX shell, coreutils and
Python 3.11+. Layout on the device, under ROOT::

    releases/<version>-<UTC time>/   one release = one venv (bin/, lib/) + bundle/ (as uploaded,
                                     hashes checked) + etc/ (config and systemd unit, filled in)
    current -> releases/<...>        the release in use, switched by renaming a new symlink
                                     over the old one (rename(2) is atomic: never half-switched)
    data/                            HEARTSOUND_HOME: the screening log (patient data), mode 700,
                                     outside the releases so that rollback keeps the history

A release carries ``.incomplete`` from its first byte until it passed the smoke screening;
``current`` only ever points at a release without it. Any failure removes the half-made
release (over a fresh connection if the first one died) and leaves ``current`` alone; a
release whose removal could not be done is removed by the next deploy.

Every value from the user that reaches the remote shell goes through `shlex.quote`
(see `_sh`); host keys are checked against known_hosts and an unknown key is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from edge.deploy.bundle import CONFIG_TEMPLATE as _CONFIG_TEMPLATE
from edge.deploy.bundle import (
    MIN_PYTHON,
    SERVICE_NAME,
    UNIT_TEMPLATE,
    Bundle,
    manylinux_platforms,
)
from edge.deploy.bundle import ROOT_PLACEHOLDER as _ROOT
from edge.deploy.bundle import USER_PLACEHOLDER as _USER
from edge.deploy.install import (
    DATA_MODE,
    HISTORY,
    HISTORY_KEEP,
    INCOMPLETE,
    RELEASE_NAME,
    release_name,
    sees_system_site,
)
from edge.deploy.link import LINK_TIMEOUT_S
from edge.errors import DeviceError, UsageError

DEFAULT_ROOT = "heartsound"  # relative: under the login user's home on the device
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_PYTHON = "python3"
DEFAULT_PORT = 22
COMMAND_TIMEOUT_S = 600  # a pip install on a Pi Zero from wheels takes minutes
SMOKE_TIMEOUT_S = 300
MIN_UPLOAD_BYTES_S = 10_000  # a transfer slower than this on a live link still gets done
DEFAULT_KEEP = 3
DEFAULT_MIN_FREE_MB = 40.0  # venv + pip + installed project beyond the bundle itself
MB = 1 << 20
LOCK = ".deploy.lock"
LOCK_OWNER = "owner"  # in LOCK: "token host pid device-session-pid epoch", one line
STALE_LOCK_MIN = 60  # longer than any deploy's steps together
NO_SPACE = ("No space left on device", "ENOSPC", "Errno 28", "Disk quota exceeded")
# Where the device's files go must be expressible in a systemd unit and a shell word.
SAFE_ROOT = re.compile(r"^[A-Za-z0-9._/+-]+$")
ALLOWED_DECISIONS = ("normal", "abnormal", "unsure")

Progress = Callable[[str, int, int], None]
Note = Callable[[str], None]  # one line for the person deploying, beside the result


@dataclass(frozen=True)
class Target:
    """Where to deploy: ``user@host:port`` (user and port optional, IPv6 in brackets)."""

    host: str
    user: str | None = None
    port: int = DEFAULT_PORT

    @classmethod
    def parse(cls, text: str) -> Target:
        m = re.fullmatch(r"(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:@\s]+))"
                         r"(?::(?P<port>\d{1,5}))?", text.strip())
        if not m or (m["port"] and not 0 < int(m["port"]) < 65536):
            raise UsageError(f"--host {text!r}: expected user@host or user@host:port")
        return cls(m["v6"] or m["host"], m["user"], int(m["port"] or DEFAULT_PORT))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{host}:{self.port}"


@dataclass(frozen=True)
class DeployOptions:
    """How to reach the device and install there (each field is a `heartsound deploy` flag)."""

    root: str = DEFAULT_ROOT
    key: Path | None = None
    known_hosts: Path | None = None
    python: str = DEFAULT_PYTHON
    # Raspberry Pi OS ships numpy as an apt package (python3-numpy), the flashed image
    # PyAudio (python3-pyaudio): a venv that sees the system's site-packages uses them.
    # None: as the release the deploy replaces (its pyvenv.cfg), else no.
    system_site_packages: bool | None = None
    offline: bool = False  # pip --no-index: only the bundle's wheels (and system packages)
    keep: int = DEFAULT_KEEP
    min_free_mb: float = DEFAULT_MIN_FREE_MB
    link_timeout: float = LINK_TIMEOUT_S  # see `edge.deploy.link`; --link-timeout


class StepFailed(Exception):
    """One deploy step failed; `reason` is one line for the person deploying."""

    def __init__(self, step: str, reason: str, *, connection_lost: bool = False) -> None:
        super().__init__(f"{step}: {reason}")
        self.step, self.reason, self.connection_lost = step, reason, connection_lost


def _sh(*words: str) -> str:
    """One shell command from words, each quoted: nothing reaches the shell unquoted."""
    return " ".join(shlex.quote(str(w)) for w in words)


# ---------------------------------------------------------------------------------------------
# connection


class _RefuseUnknownHost:
    """Missing-host-key policy: refuse, naming the key and how to trust it (never auto-add)."""

    def __init__(self, target: Target, known_hosts: Path) -> None:
        self.target, self.known_hosts = target, known_hosts

    def missing_host_key(self, client, hostname: str, key) -> None:
        client.close()
        port = f"-p {self.target.port} " if self.target.port != DEFAULT_PORT else ""
        raise DeviceError(
            f"{self.target}: host key not in {self.known_hosts} ({key.get_name()} "
            f"{key.fingerprint}); check that fingerprint on the device (ssh-keygen -lf "
            f"/etc/ssh/ssh_host_*_key.pub), then add it: ssh-keyscan {port}{self.target.host} "
            f">> {self.known_hosts}")


def connect(target: Target, options: DeployOptions = DeployOptions()):
    """An open Fabric Connection whose host key was verified against known_hosts."""
    import paramiko
    from fabric import Connection

    kwargs: dict = {"look_for_keys": options.key is None, "allow_agent": options.key is None}
    if options.key is not None:
        key = Path(options.key).expanduser()
        if not key.is_file():
            raise UsageError(f"--key {key}: no such private key file")
        kwargs["key_filename"] = str(key)
    # every phase of the connection has a deadline (paramiko waits an hour to open a channel)
    limit = options.link_timeout
    kwargs.update(banner_timeout=limit, auth_timeout=limit, channel_timeout=limit)
    conn = Connection(target.host, user=target.user, port=target.port, connect_kwargs=kwargs,
                      connect_timeout=limit)
    known = Path(options.known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
    if known.is_file():
        conn.client.load_system_host_keys(str(known))
    # Fabric's own default is AutoAddPolicy: a first connection would trust anyone.
    conn.client.set_missing_host_key_policy(_RefuseUnknownHost(target, known))
    try:
        conn.open()
    except DeviceError:
        raise
    except paramiko.BadHostKeyException as exc:
        raise DeviceError(
            f"{target}: host key CHANGED ({exc.key.get_name()} {exc.key.fingerprint} is not "
            f"the one in {known}); someone may be in the middle, or the device was "
            f"reinstalled: check, then remove the old line with ssh-keygen -f {known} -R "
            f"'{target.host if target.port == DEFAULT_PORT else f'[{target.host}]:{target.port}'}'"
        ) from None
    except paramiko.AuthenticationException:
        which = f"key {options.key}" if options.key else "your SSH keys/agent"
        raise DeviceError(
            f"{target}: login refused with {which}; add the public key to the device's "
            "~/.ssh/authorized_keys (ssh-copy-id) or pass --key with the right private key"
        ) from None
    except (TimeoutError, paramiko.SSHException, OSError, EOFError) as exc:
        raise DeviceError(f"{target}: cannot connect ({_one_line(exc)}); check the address, "
                          "the port, and that the device is on and runs sshd") from None
    return conn


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(owner: str) -> str:
    words = owner.split()
    if len(words) == 5:
        return f"held by process {words[2]} on {words[1]}"
    return "held by an older heartsound" if not owner else "holder unknown"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(":").splitlines()
    return text[-1] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# the device, through one connection


def open_device(target: Target, options: DeployOptions = DeployOptions()) -> Device:
    """A verified connection with its link watch (`edge.deploy.link`), as a Device."""
    return Device(connect(target, options), target, options.link_timeout)


class Device:
    """Remote commands for one deploy; each failure becomes a `StepFailed` with one line.

    Every step runs under a deadline kept by a `LinkWatch`: a silent link or an overrun
    step closes the connection under it, so no step can wait for ever.
    """

    def __init__(self, conn, target: Target, link_timeout: float = LINK_TIMEOUT_S) -> None:
        from edge.deploy.link import LinkWatch

        self.conn, self.target, self.link_timeout = conn, target, link_timeout
        self.watch = LinkWatch(conn.client.get_transport(), link_timeout)

    def close(self) -> None:
        self.watch.stop()
        self.conn.close()

    def run(self, step: str, command: str, *, timeout: float = COMMAND_TIMEOUT_S,
            check: bool = True):
        import paramiko
        from invoke.exceptions import CommandTimedOut

        try:
            with self.watch.step(timeout + self.link_timeout):
                result = self.conn.run(command, hide=True, warn=True, in_stream=False,
                                       timeout=timeout)
        except CommandTimedOut:
            raise self._lost(step, f"no answer after {timeout:.0f} s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost(step, f"connection lost ({_one_line(exc)})") from None
        if self.watch.reason or (result.exited == -1 and not self.alive()):
            raise self._lost(step, "connection lost")  # the channel closed under the command
        if check and result.exited != 0:
            raise StepFailed(step, _failure_text(result))
        return result

    def _lost(self, step: str, reason: str) -> StepFailed:
        """The step's failure, naming the watch's reason when the watch ended the link."""
        if self.watch.reason:
            return StepFailed(step, f"connection lost: {self.watch.reason}",
                              connection_lost=True)
        return StepFailed(step, reason, connection_lost=not self.alive())

    def alive(self) -> bool:
        transport = self.conn.client.get_transport()
        return bool(transport and transport.is_active())

    # -- checks before anything is written -------------------------------------------------

    def python_version(self, python: str) -> str:
        """The device's Python version, refusing one older than the project needs."""
        res = self.run("checking Python", _sh(python, "-c", "import sys; print('%d.%d.%d' % "
                                              "sys.version_info[:3])"), check=False)
        need = ".".join(map(str, MIN_PYTHON))
        if res.exited == 127:
            raise StepFailed("checking Python", f"no '{python}' on the device; install "
                             f"Python {need}+ (apt install python3 python3-venv) or pass "
                             "--remote-python PATH")
        m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", res.stdout)
        if res.exited != 0 or not m:
            raise StepFailed("checking Python", f"'{python}' did not report a version "
                             f"({_failure_text(res)})")
        if (int(m[1]), int(m[2])) < MIN_PYTHON:
            raise StepFailed("checking Python", f"'{python}' is Python {m[0]}, heartsound "
                             f"needs {need}+; install a newer Python (Raspberry Pi OS Bookworm "
                             "has 3.11) or pass --remote-python PATH to one")
        return m[0]

    def platform(self, python: str) -> tuple[list[str], str]:
        """(pip platform tags, 'X.Y' Python version) of the device, to download wheels for."""
        res = self.run("asking the device's platform", _sh(
            python, "-c", "import platform, sys; print(platform.machine(), "
            "platform.libc_ver()[1] or '2.17', '%d.%d' % sys.version_info[:2])"))
        machine, glibc, version = res.stdout.split()
        return manylinux_platforms(machine, glibc), version

    def prepare_root(self, root: str) -> str:
        """Create ROOT's layout; return ROOT as an absolute path on the device."""
        rel = root[2:] if root.startswith("~/") else root
        if not SAFE_ROOT.match(rel):  # refuse before anything is created on the device
            raise StepFailed("checking --root", f"{root!r} holds characters a systemd unit "
                             "cannot take; use a --root of letters, digits and ._-/ only")
        res = self.run("preparing the device folder", " && ".join([
            _sh("mkdir", "-p", "--", f"{rel}/releases", f"{rel}/data"),
            _sh("chmod", f"{DATA_MODE:o}", "--", f"{rel}/data"),
            _sh("cd", "--", rel) + " && pwd -P"]))
        absolute = res.stdout.strip().splitlines()[-1]
        if not SAFE_ROOT.match(absolute):
            raise StepFailed("preparing the device folder", f"{absolute!r} holds characters a "
                             "systemd unit cannot take; use a --root of letters, digits and "
                             "._-/ only")
        return absolute

    def free_bytes(self, root: str) -> int:
        res = self.run("measuring free space", _sh("df", "-Pk", "--", root))
        return int(res.stdout.strip().splitlines()[-1].split()[3]) * 1024

    def releases(self, root: str) -> tuple[list[str], str | None, set[str]]:
        """(release names oldest first, the current one, the incomplete ones)."""
        listing = self.run("listing releases", " ; ".join([
            _sh("readlink", "--", f"{root}/current") + " | sed 's/^/current /'",
            "for d in " + _sh(f"{root}/releases") + "/*/; do [ -d \"$d\" ] || continue; "
            "n=$(basename \"$d\"); if [ -e \"$d\"" + _sh(INCOMPLETE) + " ]; "
            "then echo \"incomplete $n\"; else echo \"release $n\"; fi; done"]),
            check=False).stdout
        names, incomplete, current = [], set(), None
        for line in listing.splitlines():
            kind, _, value = line.partition(" ")
            if kind == "current":
                current = PurePosixPath(value).name
            elif RELEASE_NAME.match(value):
                (incomplete.add if kind == "incomplete" else names.append)(value)
        names.sort(key=lambda n: RELEASE_NAME.match(n)["stamp"])
        return names, current, incomplete

    def remove_release(self, root: str, name: str) -> None:
        if not RELEASE_NAME.match(name):  # never rm -rf anything but a release folder
            raise ValueError(name)
        self.run("removing a release", _sh("rm", "-rf", "--", f"{root}/releases/{name}"))

    def lock(self, root: str, note: Note | None = None) -> str:
        """One deploy or rollback at a time per ROOT (mkdir is atomic); return its token.

        The lock's `owner` file says who holds it: a token, this host, this process and
        the device's sshd session of the connection. A lock whose holder is gone (that
        process ended on this host, or that session ended on the device, or older than
        STALE_LOCK_MIN) is broken, and `note` is told so in one line.
        """
        path = f"{root}/{LOCK}"
        token = uuid.uuid4().hex
        take = (_sh("mkdir", "--", path) + " && printf '%s %s %s\\n' " +
                _sh(f"{token} {socket.gethostname()} {os.getpid()}") +
                f' "$PPID" "$(date +%s)" > {shlex.quote(path + "/" + LOCK_OWNER)}')
        if self.run("taking the deploy lock", take, check=False).exited == 0:
            return token
        seen, why = self._stale_lock(path)
        if why:
            self.run("breaking a stale deploy lock", " && ".join([
                f'[ "$(cat -- {shlex.quote(path + "/" + LOCK_OWNER)} 2>/dev/null)" = '
                f"{shlex.quote(seen)} ]",
                _sh("mv", "--", path, f"{path}.broken-{token}"),
                _sh("rm", "-rf", "--", f"{path}.broken-{token}")]), check=False)
            if self.run("taking the deploy lock", take, check=False).exited == 0:
                if note:
                    note(f"{self.target}: broke the deploy lock of a run that is gone ({why})")
                return token
        raise StepFailed("taking the deploy lock", f"another deploy or rollback to {root} "
                         f"is running ({_holder(seen)}); wait for it, or remove {path} if "
                         "none is")

    def _stale_lock(self, path: str) -> tuple[str, str | None]:
        """(owner line as read, why its holder is gone, or None while it may be alive)."""
        res = self.run("reading the deploy lock", " ; ".join([
            _sh("find", path, "-maxdepth", "0", "-mmin", f"+{STALE_LOCK_MIN}", "-printf",
                "old\\n"),
            _sh("cat", "--", f"{path}/{LOCK_OWNER}")]), check=False)
        lines = res.stdout.splitlines()
        old = bool(lines) and lines[0] == "old"
        seen = "\n".join(lines[1:] if old else lines)
        if old:
            return seen, f"taken over {STALE_LOCK_MIN} min ago"
        words = seen.split()
        if len(words) != 5 or not all(w.isdigit() for w in words[2:]):
            return seen, None
        _, host, pid, session, _ = words
        if host == socket.gethostname() and not _process_exists(int(pid)):
            return seen, f"process {pid} on this host has ended"
        gone = self.run("reading the deploy lock", f"[ -d /proc/self ] && ! [ -d /proc/{session} ]",
                        check=False)
        if gone.exited == 0:
            return seen, f"its SSH session {session} on the device has ended"
        return seen, None

    def unlock(self, root: str, token: str) -> None:
        """Remove the lock if `token` still holds it (a broken-and-retaken one is not ours)."""
        path = f"{root}/{LOCK}"
        self.run("releasing the deploy lock",
                 f"read -r t rest < {shlex.quote(path + '/' + LOCK_OWNER)} && "
                 f"[ \"$t\" = {shlex.quote(token)} ] && " + _sh("rm", "-rf", "--", path),
                 check=False)

    def holds_lock(self, root: str, token: str) -> bool:
        """True when the lock on the device is still `token`'s (checked over any connection)."""
        res = self.run("reading the deploy lock", _sh("cat", "--", f"{root}/{LOCK}/{LOCK_OWNER}"),
                       check=False)
        return res.exited == 0 and res.stdout.split()[:1] == [token]

    def switch(self, root: str, name: str, history: list[str]) -> None:
        """Point `current` at releases/NAME (a new symlink renamed over the old one) and
        write ROOT/history as `history`, in one remote command."""
        tmp, hist = f"{root}/.current-{name}", f"{root}/{HISTORY}"
        self.run("switching current", " && ".join([
            _sh("rm", "-f", "--", tmp),
            _sh("ln", "-s", "--", f"releases/{name}", tmp),
            _sh("printf", "%s\\n", *history[-HISTORY_KEEP:]) + " > " + _sh(f"{hist}.tmp"),
            _sh("mv", "-T", "--", tmp, f"{root}/current"),
            _sh("mv", "--", f"{hist}.tmp", hist)]))

    def history(self, root: str, current: str | None) -> list[str]:
        """The release stack, oldest first, ending with `current` (added if missing: a
        device deployed before the history existed, or by the offline installer)."""
        res = self.run("reading the release history", _sh("cat", "--", f"{root}/{HISTORY}"),
                       check=False)
        names = [n for n in res.stdout.split() if RELEASE_NAME.match(n)] if res.exited == 0 else []
        return names + [current] if current and names[-1:] != [current] else names

    def read_text(self, path: str) -> str:
        return self.run("reading " + path, _sh("cat", "--", path)).stdout

    def current_sees_system_site(self, root: str) -> bool:
        """Whether the current release's venv sees the system's packages (False if none)."""
        res = self.run("reading the current venv", _sh("cat", "--", f"{root}/current/"
                                                       "pyvenv.cfg"), check=False)
        return res.exited == 0 and sees_system_site(res.stdout)


def _failure_text(result) -> str:
    lines = [ln.strip() for ln in (result.stderr + "\n" + result.stdout).splitlines()
             if ln.strip()]
    for ln in reversed(lines):  # the last error line says more than pip's summary
        if any(s in ln for s in NO_SPACE) or "rror" in ln:
            return ln[:300]
    return (lines[-1][:300] if lines else f"exit status {result.exited}")


# ---------------------------------------------------------------------------------------------
# deploy


def deploy(bundle: Bundle, target: Target, options: DeployOptions = DeployOptions(), *,
           progress: Progress | None = None, note: Note | None = None) -> str:
    """Install `bundle` as a new release and make it current; return the release name.

    Raises DeviceError with one line naming the failed step and what the device runs
    now, as read back from it (or that it is unknown when the link allows no reading).
    `progress(file, bytes_sent, bytes_total)` is called during the upload; `note` gets
    one line when a stale lock is broken.
    """
    dev = open_device(target, options)
    try:
        try:
            dev.python_version(options.python)
            root = dev.prepare_root(options.root)
            token = dev.lock(root, note)
            options = _venv_as_current(dev, root, options, note)
        except StepFailed as exc:
            raise DeviceError(f"deploy to {target} stopped at {exc}; nothing was changed on "
                              "the device") from None
        name = release_name(bundle.version)
        before, switch_sent = None, False
        try:
            names, before, incomplete = dev.releases(root)
            history = dev.history(root, before) + [name]
            for stale in incomplete:  # left by a deploy whose connection died
                dev.remove_release(root, stale)
            _check_space(dev, root, bundle, options)
            _install(dev, bundle, root, name, options, progress)
            switch_sent = True
            dev.switch(root, name, history)
            _prune(dev, root, history, options.keep)
            dev.unlock(root, token)
        except StepFailed as exc:
            after = _clean_up(dev, target, options, root, name, token)
            raise DeviceError(f"deploy to {target} failed at {exc}; "
                              f"{_runs_now(after, before, name, switch_sent)}") from None
        return name
    finally:
        dev.close()


def _venv_as_current(dev: Device, root: str, options: DeployOptions,
                     note: Note | None) -> DeployOptions:
    """Options whose venv mode is set: when not given, the current release's."""
    if options.system_site_packages is not None:
        return options
    keep = dev.current_sees_system_site(root)
    if keep and note:
        note("the new venv sees the system's packages, as the current release's does "
             "(--no-system-site-packages to stop that)")
    return replace(options, system_site_packages=keep)


def _check_space(dev: Device, root: str, bundle: Bundle, options: DeployOptions) -> None:
    need = bundle.total_bytes + int(options.min_free_mb * MB)
    free = dev.free_bytes(root)
    if free < need:
        raise StepFailed("checking free space", _disk_full(root, free, need))


def _disk_full(root: str, free: int, need: int | None = None) -> str:
    want = f", need about {need / MB:.0f} MB" if need else ""
    return (f"device disk full at {root} ({free / MB:.1f} MB free{want}); free some space "
            "or deploy to a --root on a bigger disk")


def _install(dev: Device, bundle: Bundle, root: str, name: str,
             options: DeployOptions, progress: Progress | None) -> None:
    """The release, complete and smoke-tested, beside `current` (not yet switched to)."""
    rel = f"{root}/releases/{name}"
    dev.run("creating the release folder", " && ".join([
        _sh("mkdir", "--", rel), _sh("touch", "--", f"{rel}/{INCOMPLETE}")]))
    try:
        _upload(dev, bundle, f"{rel}/bundle", progress)
    except StepFailed as exc:
        if not exc.connection_lost and dev.alive():
            try:
                free = dev.free_bytes(root)
            except StepFailed as probe:  # the write failed because the link was going
                raise StepFailed(exc.step, probe.reason, connection_lost=True) from None
            if free < MB:
                raise StepFailed(exc.step, _disk_full(root, free)) from None
        raise
    _verify(dev, bundle, f"{rel}/bundle")
    for step, command in _install_commands(bundle, rel, options):
        try:
            dev.run(step, command)
        except StepFailed as exc:
            if any(s in exc.reason for s in NO_SPACE):
                raise StepFailed(step, _disk_full(root, dev.free_bytes(root))) from None
            raise
    _write_config(dev, bundle, root, rel)
    _smoke(dev, bundle, root, rel)
    dev.run("marking the release complete", _sh("rm", "-f", "--", f"{rel}/{INCOMPLETE}"))


def _upload(dev: Device, bundle: Bundle, remote: str, progress: Progress | None) -> None:
    """SFTP every bundle file, creating its folders; a dead link is a StepFailed.

    Each file has its own deadline (the link timeout plus its size at MIN_UPLOAD_BYTES_S);
    a silent link is caught sooner by the keepalives of the link watch.
    """
    import paramiko

    current = "opening SFTP"
    try:
        with dev.watch.step(dev.link_timeout):
            sftp = dev.conn.sftp()
        sftp.get_channel().settimeout(dev.link_timeout)
        made = set()
        for rel in bundle.files:
            current = f"uploading {rel}"
            size = (bundle.path / rel).stat().st_size
            with dev.watch.step(dev.link_timeout + size / MIN_UPLOAD_BYTES_S):
                _put(sftp, bundle.path / rel, remote, rel, made, progress)
    except (TimeoutError, paramiko.SSHException, EOFError) as exc:
        raise dev._lost(current, f"connection lost ({_one_line(exc)})") from None
    except OSError as exc:
        if dev.watch.reason or not dev.alive():
            raise dev._lost(current, f"connection lost ({_one_line(exc)})") from None
        raise StepFailed(current, f"SFTP write failed ({_one_line(exc)})") from None


def _put(sftp, local: Path, remote: str, rel: str, made: set[str],
         progress: Progress | None) -> None:
    """One file to remote/rel, creating the folders it needs (remembered in `made`)."""
    parts = PurePosixPath(remote, rel).parent
    for depth in range(len(PurePosixPath(remote).parts), len(parts.parts) + 1):
        folder = str(PurePosixPath(*parts.parts[:depth]))
        if folder not in made:
            try:
                sftp.stat(folder)
            except FileNotFoundError:
                sftp.mkdir(folder)
            made.add(folder)
    callback = (lambda sent, total: progress(rel, sent, total)) if progress else None
    sftp.put(str(local), f"{remote}/{rel}", callback=callback)


def _verify(dev: Device, bundle: Bundle, remote: str) -> None:
    """Hash every file on the device: SHA256SUMS itself first, then every line of it."""
    sums = dev.run("verifying sha256", f"cd -- {shlex.quote(remote)} && sha256sum SHA256SUMS")
    if sums.stdout.split()[:1] != [bundle.sums_sha256]:
        raise StepFailed("verifying sha256", "SHA256SUMS arrived changed; deploy again")
    res = dev.run("verifying sha256", f"cd -- {shlex.quote(remote)} && "
                  "sha256sum --check --strict --quiet SHA256SUMS", check=False)
    if res.exited != 0:
        bad = [ln.split(":")[0] for ln in res.stdout.splitlines() if "FAILED" in ln]
        raise StepFailed("verifying sha256", f"{', '.join(bad) or _failure_text(res)} "
                         "differ from the bundle (damaged in transit or on the device's "
                         "storage); deploy again, and check the SD card if it repeats")


def _install_commands(bundle: Bundle, rel: str, options: DeployOptions) -> list[tuple[str, str]]:
    """venv, then the project wheel into it, then the `edge` extra's requirements.

    The project wheel goes in alone first (--no-deps, --ignore-installed) so that a copy
    of heartsound visible through --system-site-packages never stands in for this release.
    """
    # With the system's packages visible, the system's pip (apt's python3-pip) serves the
    # venv too: seeding a private pip is most of a venv's creation time on an SD card.
    venv = [options.python, "-m", "venv"] + (
        ["--system-site-packages", "--without-pip"] if options.system_site_packages else [])
    python = f"{rel}/bin/python"
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
           "--no-cache-dir"]
    wheels = f"{rel}/bundle/wheels"
    index = ["--no-index"] if options.offline else []
    return [
        ("creating the virtual environment", _sh(*venv, rel)),
        ("making pip available", _sh(python, "-m", "pip", "--version") + " >/dev/null 2>&1 || "
         + _sh(python, "-m", "ensurepip", "--default-pip")),
        ("installing heartsound", _sh(*pip, "--no-deps", "--no-index", "--ignore-installed",
                                      f"{rel}/bundle/{bundle.role('wheel')}")),
        ("installing dependencies", _sh(*pip, *index, "--find-links", wheels,
                                        f"heartsound[{','.join(bundle.manifest['extras'])}]=="
                                        f"{bundle.version}")),
    ]


def _write_config(dev: Device, bundle: Bundle, root: str, rel: str) -> None:
    """Fill ROOT and the login user into the config and unit, written to rel/etc/."""
    import paramiko

    dev.run("writing the configuration", _sh("mkdir", "-p", "--", f"{rel}/etc"))
    try:
        with dev.watch.step(2 * dev.link_timeout):
            sftp = dev.conn.sftp()
            sftp.get_channel().settimeout(dev.link_timeout)
            for template in (_CONFIG_TEMPLATE, UNIT_TEMPLATE):
                text = (bundle.path / template).read_text()
                text = text.replace(_ROOT, root).replace(_USER, dev.conn.user or "root")
                with sftp.open(f"{rel}/etc/{template.removesuffix('.in')}", "w") as f:
                    f.write(text)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise dev._lost("writing the configuration",
                        f"connection lost ({_one_line(exc)})") from None


def _smoke(dev: Device, bundle: Bundle, root: str, rel: str) -> None:
    """Screen the bundled real recording with the release's own runtime and model."""
    res = dev.run("smoke screening", _sh(
        "env", f"HEARTSOUND_HOME={root}/data", f"{rel}/bin/heartsound", "screen", "--json",
        "--no-log", "--model", f"{rel}/bundle/{bundle.role('model')}",
        f"{rel}/bundle/{bundle.role('smoke')}"), timeout=SMOKE_TIMEOUT_S)
    try:
        found = json.JSONDecoder().raw_decode(res.stdout[res.stdout.index("{"):])[0]
    except ValueError:
        raise StepFailed("smoke screening", "heartsound screen printed no JSON result") from None
    want = bundle.manifest["files"][bundle.role("model")]["sha256"]
    if found.get("decision") not in ALLOWED_DECISIONS or found.get("model_sha256") != want:
        raise StepFailed("smoke screening", f"unexpected result {found.get('decision')!r} "
                         f"from model {str(found.get('model_sha256'))[:12]}")


@dataclass(frozen=True)
class _ReadBack:
    """What the device runs after a failure, as read from it; known=False if unreadable."""

    known: bool
    current: str | None = None
    cleaned: bool = False  # the half-made release was removed
    note: str = ""


def _clean_up(dev: Device, target: Target, options: DeployOptions, root: str,
              name: str | None, token: str) -> _ReadBack:
    """Read back `current`, and if this run still holds the lock remove the lock and its
    half-made release `name` (a deploy's; None for a rollback); over the same connection
    if alive, else one fresh one."""
    fresh = not dev.alive()
    for _ in range(2):
        try:
            if fresh:
                dev = open_device(target, options)
            try:
                names, current, incomplete = dev.releases(root)
                half_made = name is not None and name != current and (
                    name in names or name in incomplete)
                if not dev.holds_lock(root, token):
                    return _ReadBack(True, current)  # broken by another run: theirs now
                if half_made:  # a switch just before the link died stands: it passed its smoke
                    dev.remove_release(root, name)
                dev.unlock(root, token)
                return _ReadBack(True, current, cleaned=half_made)
            finally:
                if fresh:
                    dev.close()
        except (StepFailed, DeviceError):
            if fresh:
                break
            fresh = True
    return _ReadBack(False, note="; the next deploy removes the lock" + (
        f" and releases/{name} if it is half-made" if name else ""))


def _runs_now(after: _ReadBack, before: str | None, name: str, switch_sent: bool) -> str:
    """What the device runs, never guessed: read back, or certain because the switch to
    `name` was never sent; otherwise said to be unknown."""
    removed = "; the half-made release was removed" if after.cleaned else ""
    if after.known:
        if after.current is None:
            return f"no release is current on the device (read back){removed}"
        if after.current == name:
            return f"the switch was done: the device runs {name} (read back){removed}"
        verb = "stays on" if after.current == before else "runs"
        return f"the device {verb} {after.current} (read back){removed}"
    if not switch_sent:
        was = (f"the device stays on {before}" if before
               else "no release was installed before, so none is current")
        return f"{was} (the switch to {name} was never sent){after.note}"
    return (f"what the device runs is unknown: the link failed while switching from "
            f"{before or 'no release'} to {name} and the device could not be reached to read "
            f"it back; check with heartsound deploy --list{after.note}")


def previous_release(history: list[str], names: list[str]) -> str | None:
    """The release that ran before the current one (history's last entry), if still there.

    Rollback goes there and pruning never removes it, so that rollback + deploy + rollback
    comes back to what ran before, not to the release rolled back from.
    """
    current = history[-1] if history else None
    for name in reversed(history[:-1]):
        if name != current and name in names:
            return name
    return None


def _prune(dev: Device, root: str, history: list[str], keep: int) -> None:
    """Keep the newest `keep` releases, and always the running one and the one before it."""
    names, current, _ = dev.releases(root)
    spare = {history[-1], current, previous_release(history, names)}
    for old in names[:-max(keep, 2)]:
        if old not in spare:
            dev.remove_release(root, old)


# ---------------------------------------------------------------------------------------------
# rollback, listing, remote bench


def _session(target: Target, options: DeployOptions) -> tuple[Device, str]:
    dev = open_device(target, options)
    try:
        root = dev.prepare_root(options.root)
    except StepFailed as exc:
        dev.close()
        raise DeviceError(f"{target}: {exc}") from None
    return dev, root


def list_releases(target: Target, options: DeployOptions = DeployOptions()) -> dict:
    """{'releases': [...oldest first], 'current': name or None, 'incomplete': [...],
    'previous': the release rollback goes to, or None}."""
    dev, root = _session(target, options)
    try:
        names, current, incomplete = dev.releases(root)
        history = dev.history(root, current)
        return {"root": root, "releases": names, "current": current,
                "incomplete": sorted(incomplete), "previous": previous_release(history, names)}
    except StepFailed as exc:
        raise DeviceError(f"{target}: {exc}") from None
    finally:
        dev.close()


def rollback(target: Target, options: DeployOptions = DeployOptions(), *,
             note: Note | None = None) -> tuple[str, str]:
    """Switch `current` to the release that ran before it (ROOT/history); (from, to).

    A failure says what the device runs, read back as after a failed deploy."""
    dev, root = _session(target, options)
    try:
        try:
            token = dev.lock(root, note)
        except StepFailed as exc:
            raise DeviceError(f"rollback on {target} stopped at {exc}; nothing was changed "
                              "on the device") from None
        try:
            current, back, history = _rollback_plan(dev, target, root)
        except (StepFailed, DeviceError) as exc:
            if dev.alive():  # nothing to do: let go of the lock
                with contextlib.suppress(StepFailed):
                    dev.unlock(root, token)
            if isinstance(exc, DeviceError):
                raise
            raise DeviceError(f"rollback on {target} stopped at {exc}; nothing was changed "
                              "on the device") from None
        switch_sent = False
        try:
            # the older release must still screen: rolling back onto a broken one
            # (a damaged SD card, a removed system package) would be worse than staying
            rel = f"{root}/releases/{back}"
            manifest = json.loads(dev.read_text(f"{rel}/bundle/manifest.json"))
            _smoke(dev, Bundle(Path(rel), manifest), root, rel)
            switch_sent = True
            dev.switch(root, back, history[:len(history) - history[::-1].index(back)])
            dev.unlock(root, token)
        except StepFailed as exc:
            after = _clean_up(dev, target, options, root, None, token)
            raise DeviceError(f"rollback on {target} to {back} failed at {exc}; "
                              f"{_runs_now(after, current, back, switch_sent)}") from None
        except ValueError:
            dev.unlock(root, token)
            raise DeviceError(f"rollback on {target}: {back} has no readable manifest; the "
                              f"device stays on {current}") from None
        return current, back
    finally:
        dev.close()


def _rollback_plan(dev: Device, target: Target, root: str) -> tuple[str, str, list[str]]:
    """(current, the release to go back to, the history) or a DeviceError saying why not."""
    names, current, _ = dev.releases(root)
    history = dev.history(root, current)
    if current not in names:
        raise DeviceError(f"{target}: no current release under {root}; deploy first")
    back = previous_release(history, names)
    if back is None:
        raise DeviceError(f"{target}: no release ran before {current} under {root}; "
                          "there is nothing to roll back to")
    return current, back, history


def preflight(target: Target, options: DeployOptions = DeployOptions()) -> dict:
    """Connect and check the device's Python before anything is built or sent.

    Returns {'python': 'X.Y.Z', 'platforms': pip platform tags, 'python_version': 'X.Y'}
    (the last two for `download_dependency_wheels`).
    """
    dev = open_device(target, options)
    try:
        version = dev.python_version(options.python)
        platforms, python_xy = dev.platform(options.python)
        return {"python": version, "platforms": platforms, "python_version": python_xy}
    except StepFailed as exc:
        raise DeviceError(f"{target}: {exc}; nothing was changed on the device") from None
    finally:
        dev.close()


def remote_bench(target: Target, options: DeployOptions = DeployOptions(), *,
                 runs: int = 100) -> dict:
    """`heartsound bench --json` of the current release, on the device, parsed."""
    dev, root = _session(target, options)
    try:
        cur = f"{root}/current"
        try:
            manifest = json.loads(dev.read_text(f"{cur}/bundle/manifest.json"))
            res = dev.run("benchmark", _sh(
                "env", f"HEARTSOUND_HOME={root}/data", f"{cur}/bin/heartsound", "bench",
                "--json", "--runs", str(runs), "--model", f"{cur}/bundle/{manifest['model']}",
                "--wav", f"{cur}/bundle/{manifest['smoke']}"), timeout=SMOKE_TIMEOUT_S)
            figures = json.loads(res.stdout[res.stdout.index("{"):])
        except StepFailed as exc:
            raise DeviceError(f"bench on {target} failed at {exc}; is a release deployed "
                              f"under {root}?") from None
        except ValueError:
            raise DeviceError(f"bench on {target}: heartsound bench printed no JSON") from None
        figures["host"] = str(target)
        try:
            figures["release"] = dev.run("reading current",
                                         _sh("readlink", "--", cur)).stdout.strip()
        except StepFailed as exc:
            raise DeviceError(f"bench on {target} failed at {exc}") from None
        return figures
    finally:
        dev.close()


BENCH_STAGES = (("front end", "front_end_ms"), ("interpreter", "interpreter_ms"),
                ("whole window", "window_ms"))


def bench_table(figures: dict) -> str:
    """The device's figures as a table on the host."""
    rows = [f"{figures['host']}  {figures['release']}  interpreter {figures['interpreter']}, "
            f"model {figures['model_sha256'][:12]}",
            f"init {figures['init_ms']:.1f} ms, first inference "
            f"{figures['first_inference_ms']:.2f} ms, peak RSS {figures['peak_rss_mb']:.1f} MB",
            f"{'stage (ms)':<16}" + "".join(f"{k:>9}" for k in ("mean", "p50", "p95", "p99",
                                                                 "max"))]
    for label, key in BENCH_STAGES:
        s = figures[key]
        rows.append(f"{label:<16}" + "".join(f"{s[k]:>9.3f}" for k in
                                             ("mean", "p50", "p95", "p99", "max")))
    if "alternatives" in figures:  # a release older than the fair baselines has none
        from edge.benchmark import fair_lines

        rows += fair_lines(figures)
    return "\n".join(rows)


SERVICE_HINT = (f"optional always-on screening: sudo ln -sf ROOT/current/etc/{SERVICE_NAME}"
                f".service /etc/systemd/system/ && sudo systemctl enable --now {SERVICE_NAME}")
