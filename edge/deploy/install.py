"""Install an offline bundle on a device that never sees a network (bedside, USB stick).

This file is copied into the offline archive as ``install.py`` and run there by
``install.sh`` with the device's own Python, before heartsound exists on the device: so it
imports nothing but the standard library. Inside heartsound it is also the home of
`safe_extract` and of the release naming that `edge.deploy.remote` shares.

Steps mirror the SSH deploy: check the payload's sha256, extract it safely into a new
``ROOT/releases/<version>-<time>/bundle``, copy the wheels that lie beside the payload
(``wheels/``, open so that a venv made by hand can use them too) into it, check every
file against SHA256SUMS, make a venv and install with ``pip --no-index`` from the
bundle's wheels, screen the bundled recording, then switch ``ROOT/current`` with an
atomic rename. Any failure removes the new release and leaves ``current`` as it was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

try:  # inside heartsound: a HeartsoundError (one line, exit code); on a bare device: plain
    from edge.errors import DataError as _ArchiveBase
    from edge.errors import DeviceError as _InstallBase
except ImportError:  # pragma: no cover - the standalone install.py path
    _ArchiveBase = _InstallBase = Exception

INCOMPLETE = ".incomplete"
DATA_MODE = 0o700
RELEASE_NAME = re.compile(r"^(?P<version>[0-9A-Za-z.+!]+)-(?P<stamp>\d{8}T\d{6}\.\d{3}Z)$")
PAYLOAD = "payload.tar.gz"
HISTORY = "history"  # in ROOT: the releases made current, oldest first (what rollback reads)
HISTORY_KEEP = 50
WHEEL_FILE = re.compile(r"^wheels/[A-Za-z0-9_.+!-]+\.whl$")  # no '/', so never outside
HASH_CHUNK = 1 << 20
FILE_MODE_MASK = 0o755  # no setuid/setgid/sticky, no group/other write from an archive
SMOKE_TIMEOUT_S = 300
MIN_PYTHON = (3, 11)


class UnsafeArchiveError(_ArchiveBase):
    """An archive member that would land outside the destination, or is not a plain file."""


class InstallError(_InstallBase):
    """An offline install step failed; the message says which and what the device is on."""


def release_name(version: str, now: datetime | None = None) -> str:
    """``<version>-<UTC time to the millisecond>``: sortable, unique per deploy."""
    now = now or datetime.now(timezone.utc)  # noqa: UP017 - runs on the device's Python
    return f"{version}-{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z"


def _inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def _check_member(m: tarfile.TarInfo, dest: Path) -> Path:
    """The member's real target path, or UnsafeArchiveError saying why not."""
    name = PurePosixPath(m.name)
    if name.is_absolute() or ".." in name.parts or "\\" in m.name or not m.name.strip("/."):
        raise UnsafeArchiveError(f"{m.name!r}: absolute or '..' path in the archive; refusing "
                                 "to extract (the archive is damaged or malicious)")
    target = Path(os.path.realpath(dest / name))  # follows links already on disk
    if not _inside(dest, target):
        raise UnsafeArchiveError(f"{m.name!r}: would be written outside {dest} (through a "
                                 "link); refusing to extract")
    if m.issym():
        link = Path(os.path.realpath(target.parent / m.linkname))
        if os.path.isabs(m.linkname) or not _inside(dest, link):
            raise UnsafeArchiveError(f"{m.name!r}: symbolic link to {m.linkname!r} points "
                                     f"outside {dest}; refusing to extract")
    elif m.islnk():
        link = Path(os.path.realpath(dest / m.linkname))
        if os.path.isabs(m.linkname) or ".." in PurePosixPath(m.linkname).parts \
                or not _inside(dest, link):
            raise UnsafeArchiveError(f"{m.name!r}: hard link to {m.linkname!r} points outside "
                                     f"{dest}; refusing to extract")
    elif not (m.isfile() or m.isdir()):
        raise UnsafeArchiveError(f"{m.name!r}: device, FIFO or other special file in the "
                                 "archive; refusing to extract")
    return target


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Extract a tar(.gz) into `dest`, refusing anything that could escape it.

    Refused: absolute names, '..', symbolic or hard links pointing outside `dest`, writes
    through a link (already on disk or made earlier by the archive) that leads outside,
    device files and FIFOs. Modes are masked to 0o755 and ownership is not restored. Each
    member is checked against the disk as it is at that moment, so a link the archive
    created a moment before is followed by the check. Returns the extracted names.
    """
    dest = Path(os.path.realpath(dest))
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                if m.isdir() and PurePosixPath(m.name) == PurePosixPath("."):
                    continue  # "./" entries of archives made with tar -C DIR .
                target = _check_member(m, dest)
                _extract_one(tar, m, dest, target)
                names.append(m.name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeArchiveError(f"{archive}: not a readable tar archive ({exc}); copy it "
                                 "again") from None
    return names


def _extract_one(tar: tarfile.TarFile, m: tarfile.TarInfo, dest: Path, target: Path) -> None:
    if m.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    if m.issym():
        os.symlink(m.linkname, target)
    elif m.islnk():
        os.link(os.path.realpath(dest / m.linkname), target)
    else:
        src = tar.extractfile(m)
        with src, open(target, "xb") as out:
            shutil.copyfileobj(src, out)
        os.chmod(target, m.mode & FILE_MODE_MASK | 0o600)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# the offline install, step by step


def _run(step: str, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{step}: {exc}") from None
    if proc.returncode != 0:
        raise InstallError(f"{step}: {_failure_line(proc.stderr + proc.stdout)}")
    return proc


def _failure_line(output: str) -> str:
    """pip's last ERROR line (its INFO/notice lines come after it), else the last line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1]


def _copy_wheels(bundle_dir: Path, bundle: Path) -> None:
    """The wheels beside the payload into the release's bundle (checked by SHA256SUMS next)."""
    try:
        files = json.loads((bundle / "manifest.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InstallError(f"reading the manifest: {exc}; copy the archive again") from None
    for rel in sorted(files):
        if not rel.startswith("wheels/"):
            continue
        if not WHEEL_FILE.match(rel):
            raise InstallError(f"reading the manifest: {rel!r} is no wheel file name; copy the "
                               "archive again")
        if not (bundle_dir / rel).is_file():
            raise InstallError(f"copying wheels: {bundle_dir / rel} is missing; copy the "
                               "archive again")
        shutil.copyfile(bundle_dir / rel, bundle / rel)


def _verify_bundle(bundle: Path) -> dict:
    for line in (bundle / "SHA256SUMS").read_text().splitlines():
        digest, _, rel = line.partition("  ")
        f = bundle / rel
        if not f.is_file() or sha256_file(f) != digest:
            raise InstallError(f"verifying sha256: {rel} differs from the bundle; copy the "
                               "archive again")
    return json.loads((bundle / "manifest.json").read_text())


def sees_system_site(pyvenv_cfg: str) -> bool:
    """Whether a venv's pyvenv.cfg lets it see the system's packages.

    Why deploys ask: a station made with them (the flashed image takes PyAudio from
    Debian's python3-pyaudio) must keep them in every later release, or its microphone
    service stops at the next deploy.
    """
    for line in pyvenv_cfg.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "include-system-site-packages":
            return value.strip().lower() == "true"
    return False


def current_sees_system_site(root: Path) -> bool:
    """`sees_system_site` of ROOT/current's venv (False when there is none)."""
    try:
        return sees_system_site((root / "current" / "pyvenv.cfg").read_text())
    except OSError:
        return False


def _install_release(rel: Path, manifest: dict, root: Path, python: str,
                     system_site: bool) -> None:
    bundle = rel / "bundle"
    venv = [python, "-m", "venv"] + (["--system-site-packages", "--without-pip"]
                                     if system_site else [])
    _run("creating the virtual environment", venv + [str(rel)])
    vpython = str(rel / "bin" / "python")
    if subprocess.run([vpython, "-m", "pip", "--version"], capture_output=True).returncode:
        _run("making pip available", [vpython, "-m", "ensurepip", "--default-pip"])
    pip = [vpython, "-m", "pip", "install", "--disable-pip-version-check",
           "--no-input", "--no-cache-dir", "--no-index"]
    _run("installing heartsound", pip + ["--no-deps", "--ignore-installed",
                                         str(bundle / manifest["wheel"])])
    _run("installing dependencies", pip + [
        "--find-links", str(bundle / "wheels"),
        f"heartsound[{','.join(manifest['extras'])}]=={manifest['version']}"])
    etc = rel / "etc"
    etc.mkdir()
    user = os.environ.get("USER") or "root"
    for template in ("heartsound.env.in", "heartsound-screen.service.in"):
        text = (bundle / template).read_text().replace("@ROOT@", str(root))
        (etc / template[:-3]).write_text(text.replace("@USER@", user))
    env = dict(os.environ, HEARTSOUND_HOME=str(root / "data"))
    out = _run("smoke screening", [str(rel / "bin" / "heartsound"), "screen", "--json",
                                   "--no-log", "--model", str(bundle / manifest["model"]),
                                   str(bundle / manifest["smoke"])],
               env=env, timeout=SMOKE_TIMEOUT_S).stdout
    try:
        result = json.loads(out[out.index("{"):].splitlines()[0])
    except ValueError:
        raise InstallError("smoke screening: heartsound screen printed no JSON") from None
    if result.get("model_sha256") != manifest["files"][manifest["model"]]["sha256"]:
        raise InstallError("smoke screening: the release did not screen with its own model")


def switch_current(root: Path, name: str) -> None:
    """Point ROOT/current at releases/NAME by renaming a new link over it (atomic)."""
    tmp = root / f".current-{name}"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(f"releases/{name}", tmp)
    os.replace(tmp, root / "current")


def stage_history(root: Path, previous: str | None, name: str) -> Path:
    """ROOT/history with `name` appended, written beside it (renamed over it once `current`
    points at `name`), as a deploy over SSH keeps it: so a station installed from a stick
    rolls back to what ran before, like any other. `previous`, the release `current`
    pointed at, goes in first when the history lacks it."""
    path = root / HISTORY
    names = [n for n in path.read_text().split() if RELEASE_NAME.match(n)] \
        if path.is_file() else []
    if previous and names[-1:] != [previous]:
        names.append(previous)
    tmp = root / f".{HISTORY}.tmp"
    tmp.write_text("".join(f"{n}\n" for n in [*names, name][-HISTORY_KEEP:]))
    return tmp


def install(bundle_dir: Path, root: Path, *, python: str | None = None,
            system_site_packages: bool | None = None) -> str:
    """Install the offline bundle in `bundle_dir` under `root`; return the release name.

    `system_site_packages` None: as the current release's venv (see `sees_system_site`).
    """
    python = python or sys.executable
    payload = bundle_dir / PAYLOAD
    expected = (bundle_dir / (PAYLOAD + ".sha256")).read_text().split()[0]
    if sha256_file(payload) != expected:
        raise InstallError(f"{payload}: sha256 differs from {PAYLOAD}.sha256; copy the archive "
                           "again")
    root = root.expanduser().resolve()
    (root / "releases").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    os.chmod(root / "data", DATA_MODE)  # the screening log holds patient data
    current = os.readlink(root / "current") if (root / "current").is_symlink() else None
    if system_site_packages is None:
        system_site_packages = current_sees_system_site(root)
    version = json.loads((bundle_dir / "version.json").read_text())["version"]
    name = release_name(version)
    rel = root / "releases" / name
    rel.mkdir()
    (rel / INCOMPLETE).touch()
    try:
        safe_extract(payload, rel / "bundle")
        (rel / "bundle" / "wheels").mkdir(exist_ok=True)
        _copy_wheels(bundle_dir, rel / "bundle")
        manifest = _verify_bundle(rel / "bundle")
        _install_release(rel, manifest, root, python, system_site_packages)
        (rel / INCOMPLETE).unlink()
        history = stage_history(root, current.removeprefix("releases/") if current else None,
                                name)
        switch_current(root, name)
    except (InstallError, UnsafeArchiveError, OSError) as exc:
        shutil.rmtree(rel, ignore_errors=True)
        stays = f"stays on {current}" if current else "has no release installed"
        raise InstallError(f"offline install failed at {exc}; the device {stays}") from None
    os.replace(history, root / HISTORY)
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="install.sh", description="Install heartsound from "
                                     "this offline bundle (no network needed).")
    parser.add_argument("--bundle-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--root", type=Path, default=Path("~/heartsound"),
                        help="install folder (default %(default)s)")
    parser.add_argument("--python", help="Python 3.11+ for the venv (default: this one)")
    parser.add_argument("--system-site-packages", action=argparse.BooleanOptionalAction,
                        help="let the venv also see system packages (PyAudio or numpy from "
                        "apt); default: as the release installed now, else no")
    args = parser.parse_args(argv)
    if sys.version_info < MIN_PYTHON:
        print(f"install.sh: Python {sys.version.split()[0]} is too old, heartsound needs "
              "3.11+", file=sys.stderr)
        return 1
    try:
        name = install(args.bundle_dir, args.root, python=args.python,
                       system_site_packages=args.system_site_packages)
    except (InstallError, UnsafeArchiveError, OSError) as exc:
        print(f"install.sh: {exc}", file=sys.stderr)
        return 1
    root = args.root.expanduser().resolve()
    print(f"installed {name}; run {root}/current/bin/heartsound screen FILE.wav")
    return 0


if __name__ == "__main__":
    sys.exit(main())
