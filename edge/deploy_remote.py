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

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edge.deploy_bundle import CONFIG_TEMPLATE as _CONFIG_TEMPLATE
from edge.deploy_bundle import (
    MIN_PYTHON,
    SERVICE_NAME,
    UNIT_TEMPLATE,
    Bundle,
    manylinux_platforms,
)
from edge.deploy_bundle import ROOT_PLACEHOLDER as _ROOT
from edge.deploy_bundle import USER_PLACEHOLDER as _USER
from edge.errors import DeviceError, UsageError
from edge.offline_install import DATA_MODE, INCOMPLETE, RELEASE_NAME, release_name

DEFAULT_ROOT = "heartsound"  # relative: under the login user's home on the device
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_PYTHON = "python3"
DEFAULT_PORT = 22
CONNECT_TIMEOUT_S = 15
COMMAND_TIMEOUT_S = 600  # a pip install on a Pi Zero from wheels takes minutes
SMOKE_TIMEOUT_S = 300
CHANNEL_TIMEOUT_S = 60  # an SFTP write that gets no answer for this long is a dead link
DEFAULT_KEEP = 3
DEFAULT_MIN_FREE_MB = 40.0  # venv + pip + installed project beyond the bundle itself
MB = 1 << 20
LOCK = ".deploy.lock"
STALE_LOCK_MIN = 60  # longer than any deploy step's timeout
NO_SPACE = ("No space left on device", "ENOSPC", "Errno 28", "Disk quota exceeded")
# Where the device's files go must be expressible in a systemd unit and a shell word.
SAFE_ROOT = re.compile(r"^[A-Za-z0-9._/+-]+$")
ALLOWED_DECISIONS = ("normal", "abnormal", "unsure")

Progress = Callable[[str, int, int], None]


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
    # Raspberry Pi OS ships numpy as an apt package (python3-numpy): a venv that sees the
    # system's site-packages reuses it instead of downloading or compiling its own.
    system_site_packages: bool = False
    offline: bool = False  # pip --no-index: only the bundle's wheels (and system packages)
    keep: int = DEFAULT_KEEP
    min_free_mb: float = DEFAULT_MIN_FREE_MB
    connect_timeout: float = CONNECT_TIMEOUT_S


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
    conn = Connection(target.host, user=target.user, port=target.port, connect_kwargs=kwargs,
                      connect_timeout=int(options.connect_timeout))
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# the device, through one connection


class Device:
    """Remote commands for one deploy; each failure becomes a `StepFailed` with one line."""

    def __init__(self, conn, target: Target) -> None:
        self.conn, self.target = conn, target

    def run(self, step: str, command: str, *, timeout: float = COMMAND_TIMEOUT_S,
            check: bool = True):
        import paramiko
        from invoke.exceptions import CommandTimedOut

        try:
            result = self.conn.run(command, hide=True, warn=True, in_stream=False,
                                   timeout=timeout)
        except CommandTimedOut:
            raise StepFailed(step, f"no answer after {timeout:.0f} s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise StepFailed(step, f"connection lost ({_one_line(exc)})",
                             connection_lost=True) from None
        if check and result.exited != 0:
            raise StepFailed(step, _failure_text(result))
        return result

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

    def lock(self, root: str) -> None:
        """One deploy or rollback at a time per ROOT (mkdir is atomic); a lock older than
        STALE_LOCK_MIN belongs to a run whose connection died and is taken over."""
        path = f"{root}/{LOCK}"
        res = self.run("taking the deploy lock", " ; ".join([
            _sh("find", path, "-maxdepth", "0", "-mmin", f"+{STALE_LOCK_MIN}", "-exec", "rm",
                "-rf", "--", "{}", ";") + " 2>/dev/null",
            _sh("mkdir", "--", path)]), check=False)
        if res.exited != 0:
            raise StepFailed("taking the deploy lock", f"another deploy or rollback to {root} "
                             f"is running; wait for it, or remove {path} if none is")

    def unlock(self, root: str) -> None:
        self.run("releasing the deploy lock", _sh("rm", "-rf", "--", f"{root}/{LOCK}"))

    def switch(self, root: str, name: str) -> None:
        """Point `current` at releases/NAME: a new symlink renamed over the old one."""
        tmp = f"{root}/.current-{name}"
        self.run("switching current", " && ".join([
            _sh("rm", "-f", "--", tmp),
            _sh("ln", "-s", "--", f"releases/{name}", tmp),
            _sh("mv", "-T", "--", tmp, f"{root}/current")]))

    def read_text(self, path: str) -> str:
        return self.run("reading " + path, _sh("cat", "--", path)).stdout


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
           progress: Progress | None = None) -> str:
    """Install `bundle` as a new release and make it current; return the release name.

    Raises DeviceError with one line naming the failed step and the release the device
    stays on. `progress(file, bytes_sent, bytes_total)` is called during the upload.
    """
    conn = connect(target, options)
    try:
        dev = Device(conn, target)
        try:
            dev.python_version(options.python)
            root = dev.prepare_root(options.root)
            dev.lock(root)
        except StepFailed as exc:
            raise DeviceError(f"deploy to {target} stopped at {exc}; nothing was changed on "
                              "the device") from None
        name = release_name(bundle.version)
        current = None
        try:
            names, current, incomplete = dev.releases(root)
            for stale in incomplete:  # left by a deploy whose connection died
                dev.remove_release(root, stale)
            _check_space(dev, root, bundle, options)
            _install(dev, conn, bundle, root, name, options, progress)
            _prune(dev, root, name, options.keep)
            dev.unlock(root)
        except StepFailed as exc:
            left = _clean_up(dev, target, options, root, name)
            raise DeviceError(f"deploy to {target} failed at {exc}; {_stays_on(current)}"
                              f"{left}") from None
        return name
    finally:
        conn.close()


def _check_space(dev: Device, root: str, bundle: Bundle, options: DeployOptions) -> None:
    need = bundle.total_bytes + int(options.min_free_mb * MB)
    free = dev.free_bytes(root)
    if free < need:
        raise StepFailed("checking free space", _disk_full(root, free, need))


def _disk_full(root: str, free: int, need: int | None = None) -> str:
    want = f", need about {need / MB:.0f} MB" if need else ""
    return (f"device disk full at {root} ({free / MB:.1f} MB free{want}); free some space "
            "or deploy to a --root on a bigger disk")


def _install(dev: Device, conn, bundle: Bundle, root: str, name: str,
             options: DeployOptions, progress: Progress | None) -> None:
    rel = f"{root}/releases/{name}"
    dev.run("creating the release folder", " && ".join([
        _sh("mkdir", "--", rel), _sh("touch", "--", f"{rel}/{INCOMPLETE}")]))
    try:
        _upload(conn, bundle, f"{rel}/bundle", progress)
    except StepFailed as exc:
        if not exc.connection_lost and dev.alive():
            free = dev.free_bytes(root)
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
    _write_config(conn, dev, bundle, root, rel)
    _smoke(dev, bundle, root, rel)
    dev.run("marking the release complete", _sh("rm", "-f", "--", f"{rel}/{INCOMPLETE}"))
    dev.switch(root, name)


def _upload(conn, bundle: Bundle, remote: str, progress: Progress | None) -> None:
    """SFTP every bundle file, creating its folders; a dead link is a StepFailed."""
    import paramiko

    current = "opening SFTP"
    try:
        sftp = conn.sftp()
        sftp.get_channel().settimeout(CHANNEL_TIMEOUT_S)
        made = set()
        for rel in bundle.files:
            current = f"uploading {rel}"
            parts = PurePosixPath(remote, rel).parent
            for depth in range(len(PurePosixPath(remote).parts), len(parts.parts) + 1):
                folder = str(PurePosixPath(*parts.parts[:depth]))
                if folder not in made:
                    try:
                        sftp.stat(folder)
                    except FileNotFoundError:
                        sftp.mkdir(folder)
                    made.add(folder)
            callback = (lambda sent, total, f=rel: progress(f, sent, total)) if progress else None
            sftp.put(str(bundle.path / rel), f"{remote}/{rel}", callback=callback)
    except (TimeoutError, paramiko.SSHException, EOFError) as exc:
        raise StepFailed(current, f"connection lost ({_one_line(exc)})",
                         connection_lost=True) from None
    except OSError as exc:
        lost = not (conn.client.get_transport() and conn.client.get_transport().is_active())
        raise StepFailed(current, ("connection lost" if lost else "SFTP write failed") +
                         f" ({_one_line(exc)})", connection_lost=lost) from None


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


def _write_config(conn, dev: Device, bundle: Bundle, root: str, rel: str) -> None:
    """Fill ROOT and the login user into the config and unit, written to rel/etc/."""
    dev.run("writing the configuration", _sh("mkdir", "-p", "--", f"{rel}/etc"))
    sftp = conn.sftp()
    for template in (_CONFIG_TEMPLATE, UNIT_TEMPLATE):
        text = (bundle.path / template).read_text()
        text = text.replace(_ROOT, root).replace(_USER, conn.user or "root")
        with sftp.open(f"{rel}/etc/{template.removesuffix('.in')}", "w") as f:
            f.write(text)


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


def _clean_up(dev: Device, target: Target, options: DeployOptions, root: str,
              name: str) -> str:
    """Remove the half-made release, reconnecting once if the link died; say what is left."""
    for attempt in range(2):
        try:
            if attempt or not dev.alive():
                dev = Device(connect(target, options), target)
            names, current, incomplete = dev.releases(root)
            # a switch that happened just before the link died stands: it passed its smoke
            half_made = (name in names or name in incomplete) and name != current
            if half_made:
                dev.remove_release(root, name)
            dev.unlock(root)
            return "; the half-made release was removed" if half_made else ""
        except (StepFailed, DeviceError):
            continue
    return (f"; the half-made releases/{name} will be removed by the next deploy (after "
            f"{STALE_LOCK_MIN} min, or at once if you remove {root}/{LOCK})")


def _stays_on(current: str | None) -> str:
    return (f"the device stays on {current}" if current
            else "no release was installed before, so none is current")


def _prune(dev: Device, root: str, name: str, keep: int) -> None:
    """Keep the newest `keep` releases (always the new one and the one before it)."""
    names, current, _ = dev.releases(root)
    for old in names[:-max(keep, 2)]:
        if old not in (name, current):
            dev.remove_release(root, old)


# ---------------------------------------------------------------------------------------------
# rollback, listing, remote bench


def _session(target: Target, options: DeployOptions):
    conn = connect(target, options)
    dev = Device(conn, target)
    try:
        root = dev.prepare_root(options.root)
    except StepFailed as exc:
        conn.close()
        raise DeviceError(f"{target}: {exc}") from None
    return conn, dev, root


def list_releases(target: Target, options: DeployOptions = DeployOptions()) -> dict:
    """{'releases': [...oldest first], 'current': name or None, 'incomplete': [...]}."""
    conn, dev, root = _session(target, options)
    try:
        names, current, incomplete = dev.releases(root)
        return {"root": root, "releases": names, "current": current,
                "incomplete": sorted(incomplete)}
    finally:
        conn.close()


def rollback(target: Target, options: DeployOptions = DeployOptions()) -> tuple[str, str]:
    """Switch `current` to the newest complete release older than it; (from, to)."""
    conn, dev, root = _session(target, options)
    try:
        names, current, _ = dev.releases(root)
        if current not in names:
            raise DeviceError(f"{target}: no current release under {root}; deploy first")
        older = names[:names.index(current)]
        if not older:
            raise DeviceError(f"{target}: {current} is the oldest release under {root}; "
                              "there is nothing to roll back to")
        back = older[-1]
        try:
            dev.lock(root)
            try:
                # the older release must still screen: rolling back onto a broken one
                # (a damaged SD card, a removed system package) would be worse than staying
                rel = f"{root}/releases/{back}"
                manifest = json.loads(dev.read_text(f"{rel}/bundle/manifest.json"))
                _smoke(dev, Bundle(Path(rel), manifest), root, rel)
                dev.switch(root, back)
            finally:
                dev.unlock(root)
        except StepFailed as exc:
            raise DeviceError(f"rollback on {target} to {back} failed at {exc}; the device "
                              f"stays on {current}") from None
        except ValueError:
            raise DeviceError(f"rollback on {target}: {back} has no readable manifest; the "
                              f"device stays on {current}") from None
        return current, back
    finally:
        conn.close()


def preflight(target: Target, options: DeployOptions = DeployOptions()) -> dict:
    """Connect and check the device's Python before anything is built or sent.

    Returns {'python': 'X.Y.Z', 'platforms': pip platform tags, 'python_version': 'X.Y'}
    (the last two for `download_dependency_wheels`).
    """
    conn = connect(target, options)
    try:
        dev = Device(conn, target)
        version = dev.python_version(options.python)
        platforms, python_xy = dev.platform(options.python)
        return {"python": version, "platforms": platforms, "python_version": python_xy}
    except StepFailed as exc:
        raise DeviceError(f"{target}: {exc}; nothing was changed on the device") from None
    finally:
        conn.close()


def remote_bench(target: Target, options: DeployOptions = DeployOptions(), *,
                 runs: int = 100) -> dict:
    """`heartsound bench --json` of the current release, on the device, parsed."""
    conn, dev, root = _session(target, options)
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
        figures["release"] = dev.run("reading current", _sh("readlink", "--", cur)).stdout.strip()
        return figures
    finally:
        conn.close()


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
    return "\n".join(rows)


SERVICE_HINT = (f"optional always-on screening: sudo ln -sf ROOT/current/etc/{SERVICE_NAME}"
                f".service /etc/systemd/system/ && sudo systemctl enable --now {SERVICE_NAME}")
