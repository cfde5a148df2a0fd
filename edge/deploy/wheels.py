"""Dependency wheels for another machine: which target, pip download, and the check.

Host side only (deploy bundles). A device without a network installs numpy and LiteRT
from wheels carried in the bundle, so those wheels must be built for the device's
platform and CPython, not for the machine that builds the bundle. pip does both jobs
here, never a home-made resolver: ``pip download --only-binary=:all:`` with the target's
tags fetches them, and ``pip install --dry-run --no-index --find-links WHEELS`` for the
same tags proves that the install the device will run resolves from those files alone.
"""

from __future__ import annotations

import json
import os
import platform as host_platform
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from edge.deploy.install import sha256_file
from edge.errors import DownloadError, UsageError

OLDEST_GLIBC_MINOR = 17  # manylinux2014 = glibc 2.17: the oldest tag current wheels carry
NATIVE = "native"
# Raspberry Pi OS 64-bit (Debian bookworm): aarch64, glibc 2.36, CPython 3.11.
PI_MACHINE, PI_GLIBC, PI_PYTHON = "aarch64", "2.36", "3.11"
MANYLINUX_TAG = re.compile(r"^manylinux_(?P<major>\d+)_(?P<minor>\d+)_(?P<machine>\w+)$")
MANYLINUX2014_TAG = re.compile(r"^manylinux2014_(?P<machine>\w+)$")
PYTHON_VERSION = re.compile(r"^3\.\d{1,2}$")
NOT_FOUND = re.compile(r"No matching distribution found for (?P<req>[^\s;]+)")
UNREACHABLE = ("NewConnectionError", "Failed to establish", "ProxyError", "Retrying (",
               "Temporary failure in name resolution", "Network is unreachable")


def manylinux_platforms(machine: str, glibc: str) -> list[str]:
    """pip platform tags a device can run: every manylinux glibc level up to its own.

    pip takes ``--platform manylinux_2_36_aarch64`` literally (it widens only the old
    manylinux2014 names), so each level is listed; newest first, like pip's own order.
    """
    major, minor = (int(x) for x in (glibc.split(".") + ["0"])[:2])
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, OLDEST_GLIBC_MINOR - 1, -1)]
    return tags + [f"manylinux2014_{machine}", f"linux_{machine}"]


@dataclass(frozen=True)
class WheelTarget:
    """The machine a set of wheels is for: pip platform tags and CPython version.

    No platforms means this machine's own tags (pip's default); no python_version means
    this interpreter's.
    """

    platforms: tuple[str, ...] = ()
    python_version: str | None = None

    @property
    def python(self) -> str:
        return self.python_version or f"{sys.version_info[0]}.{sys.version_info[1]}"

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    def pip_args(self) -> list[str]:
        """The options that make pip download or resolve for this target, not this host."""
        args = [a for tag in self.platforms for a in ("--platform", tag)]
        if self.platforms or self.python_version:
            args += ["--implementation", "cp", "--python-version", self.python, "--abi",
                     self.abi]
        return args

    def describe(self) -> str:
        where = (f"{self.platforms[0]} and older" if len(self.platforms) > 1 else
                 self.platforms[0] if self.platforms else
                 f"this machine's platform ({host_platform.machine()})")
        return f"CPython {self.python} on {where}"

    def to_manifest(self) -> dict:
        return {"platforms": list(self.platforms) or NATIVE, "implementation": "cp",
                "python_version": self.python, "abi": self.abi}

    @classmethod
    def from_manifest(cls, entry: dict) -> WheelTarget:
        platforms = entry["platforms"]
        return cls(() if platforms == NATIVE else tuple(platforms), entry["python_version"])


def raspberry_pi_os() -> WheelTarget:
    """The default device: Raspberry Pi OS 64-bit bookworm (aarch64, glibc 2.36, 3.11)."""
    return WheelTarget(tuple(manylinux_platforms(PI_MACHINE, PI_GLIBC)), PI_PYTHON)


def parse_target(platform: str | None, python_version: str | None) -> WheelTarget:
    """The target named by ``--platform`` / ``--python-version`` (both optional).

    ``native`` is this machine; ``manylinux_2_36_aarch64`` (or ``aarch64:2.36``) a device
    with that glibc, accepting every older manylinux level too; any other pip tag
    (``musllinux_1_2_aarch64``, ``win_amd64``) is taken as it is. Default: Raspberry Pi OS.
    """
    if python_version is not None and not PYTHON_VERSION.match(python_version):
        raise UsageError(f"--python-version {python_version!r}: give it as X.Y, e.g. 3.11")
    if not platform:
        return WheelTarget(raspberry_pi_os().platforms, python_version or PI_PYTHON)
    if platform == NATIVE:
        return WheelTarget((), python_version)
    machine, sep, glibc = platform.partition(":")
    if sep and re.fullmatch(r"\w+", machine) and re.fullmatch(r"2\.\d+", glibc):
        return WheelTarget(tuple(manylinux_platforms(machine, glibc)), python_version or PI_PYTHON)
    m = MANYLINUX_TAG.match(platform) or MANYLINUX2014_TAG.match(platform)
    if m:
        glibc = f"{m['major']}.{m['minor']}" if "major" in m.groupdict() else "2.17"
        tags = tuple(manylinux_platforms(m["machine"], glibc))
        return WheelTarget(tags, python_version or PI_PYTHON)
    if re.fullmatch(r"[a-z0-9_]+", platform) and "_" in platform:
        return WheelTarget((platform,), python_version or PI_PYTHON)
    raise UsageError(f"--platform {platform!r}: give 'native', a pip platform tag such as "
                     "manylinux_2_36_aarch64, or MACHINE:GLIBC such as aarch64:2.36")


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]


def _isolated_env() -> dict[str, str]:
    """No pip configuration of this machine (extra indexes, find-links): the wheels only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def download_dependency_wheels(out_dir: Path, requirements: Sequence[str],
                               target: WheelTarget) -> list[Path]:
    """Binary wheels of `requirements` and their dependencies for `target`, into `out_dir`.

    Uses this machine's pip configuration (index, proxy) and pip's cache, so a second
    build downloads nothing new. A requirement with no wheel for the target is a
    DownloadError naming it and the pip command that shows it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    before = set(out_dir.glob("*.whl"))
    cmd = _pip("download", "--only-binary=:all:", *target.pip_args(), "-d", str(out_dir))
    proc = subprocess.run(cmd + list(requirements), capture_output=True, text=True)
    if proc.returncode != 0:
        raise _download_error(proc.stderr + proc.stdout, requirements, target)
    return sorted(set(out_dir.glob("*.whl")) - before) or sorted(out_dir.glob("*.whl"))


def _download_error(output: str, requirements: Sequence[str], target: WheelTarget,
                    among: Path | None = None) -> DownloadError:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    unreachable = next((ln for ln in lines if any(s in ln for s in UNREACHABLE)), None)
    missing = NOT_FOUND.search(output)
    if unreachable:
        return DownloadError(f"pip could not reach the package index ({unreachable[:160]}); "
                             "check the network or pip's index/proxy settings, then build "
                             "the bundle again")
    if missing:
        return missing_wheel_error(missing["req"], target, among)
    tail = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines
                else "no output")
    return DownloadError(f"pip download of {', '.join(requirements)} for "
                         f"{target.describe()} failed ({tail[:200]})")


def missing_wheel_error(requirement: str, target: WheelTarget,
                        among: Path | None = None) -> DownloadError:
    """One line: which package has no wheel for the target, and the pip line that shows it.

    `among`: the folder that lacked it (a bundle's wheels), else the package index did.
    """
    cmd = shlex.join(["pip", "download", "--only-binary=:all:", *target.pip_args(), "-d",
                      "wheels", requirement])
    if among:
        return DownloadError(f"{among}: no wheel of {requirement} for {target.describe()} "
                             f"there; build the bundle again (it runs {cmd})")
    return DownloadError(f"no wheel of {requirement} for {target.describe()} ({cmd} finds "
                         "none); choose a target it has wheels for (--platform, "
                         "--python-version)")


def _foreign_python(target: WheelTarget) -> list[str]:
    """`pip install` checks Requires-Python against the Python running pip, even with
    --python-version (seen with pip 23.2: numpy 2.4 "requires a different Python: 3.11.7
    not in '>=3.12'" for a 3.13 target). For another Python that check is skipped: `pip
    download` chose the wheels for the target's Python, and the tags still bind them."""
    same = target.python == f"{sys.version_info[0]}.{sys.version_info[1]}"
    return [] if same else ["--ignore-requires-python"]


def resolve_wheels(wheels: Path, requirement: str, target: WheelTarget) -> dict[str, dict]:
    """What ``pip install --no-index --find-links WHEELS REQUIREMENT`` installs on `target`.

    pip resolves it (a dry run for the target's tags, this machine's pip configuration
    left out) and reports every distribution it would install. Returns {name: {'version',
    'file', 'sha256'}} with `file` a wheel in `wheels`; a requirement no wheel there
    satisfies is a DownloadError naming it.
    """
    with tempfile.TemporaryDirectory(prefix="heartsound-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = _pip("install", "--dry-run", "--quiet", "--ignore-installed", "--no-index",
                   "--only-binary=:all:", "--find-links", str(wheels), *target.pip_args(),
                   *_foreign_python(target), "--target", str(Path(tmp) / "never-written"),
                   "--report", str(report), requirement)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_isolated_env())
        if proc.returncode != 0:
            raise _download_error(proc.stderr + proc.stdout, [requirement], target, wheels)
        items = json.loads(report.read_text())["install"]
    resolved = {}
    for item in items:
        path = Path(unquote(urlparse(item["download_info"]["url"]).path))
        if path.parent.resolve() != wheels.resolve() or path.suffix != ".whl":
            raise DownloadError(f"{path}: pip resolved {item['metadata']['name']} outside "
                                f"{wheels}; build the bundle again")
        resolved[item["metadata"]["name"]] = {"version": item["metadata"]["version"],
                                              "file": path.name, "sha256": sha256_file(path)}
    return resolved
