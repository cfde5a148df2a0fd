"""Build the deploy bundle: everything a Raspberry Pi needs, in one folder, every file hashed.

Host side only (imported by ``heartsound deploy``, never on the device's screening path).
A bundle is a plain folder, so the same thing can be uploaded over SFTP or packed into
an offline ``.tar.gz``::

    wheels/heartsound-<version>-py3-none-any.whl   the project, built with pip wheel --no-deps
    wheels/<dependency>.whl                        only with dependency wheels: what
                                                   heartsound[edge] needs on the device's
                                                   platform, resolved by pip (manifest
                                                   'target' and 'dependencies')
    model/<name>.tflite                            the int8 model the device will screen with
    model/<name>.float32.tflite                    its float32 companion, when convert wrote one
                                                   (the baseline `deploy --bench` times)
    smoke/<name>.wav                               a real recording for the smoke screening
    heartsound.env.in                              config (EnvironmentFile) with @ROOT@ to fill
    heartsound-screen.service.in                   systemd unit for an optional always-on service
    manifest.json                                  version, roles and sha256 + size of each file
    SHA256SUMS                                     the same hashes, for sha256sum -c on the device

The templates carry ``@ROOT@`` / ``@USER@`` instead of real paths because the bundle is
built before anyone knows where it will be installed; the installer fills them in after
the hashes have been checked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edge.deploy.install import sha256_file  # the device-side installer's own hash
from edge.deploy.wheels import WheelTarget, manylinux_platforms, resolve_wheels
from edge.errors import DeviceError, ModelError, UsageError

__all__ = ["Bundle", "build_bundle", "build_wheel", "device_requirements", "load_bundle",
           "manylinux_platforms", "sha256_file"]

PROJECT_DIR = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = PROJECT_DIR / "examples"
BUNDLE_FORMAT = 1
DEVICE_EXTRA = "edge"
MIN_PYTHON = (3, 11)

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
WHEELS_DIR = "wheels"
MODEL_DIR = "model"
SMOKE_DIR = "smoke"
CONFIG_TEMPLATE = "heartsound.env.in"
UNIT_TEMPLATE = "heartsound-screen.service.in"
ROOT_PLACEHOLDER = "@ROOT@"
USER_PLACEHOLDER = "@USER@"
SERVICE_NAME = "heartsound-screen"
WHEEL_NAME = re.compile(r"^heartsound-(?P<version>[^-]+)-.*\.whl$")

# HEARTSOUND_HOME holds the screening log (patient data): it lives outside the releases so
# that a rollback keeps the history, and the service's UMask keeps new files owner-only.
CONFIG_TEXT = f"""\
# heartsound device configuration (systemd EnvironmentFile syntax).
# The screening log holds patient data: the folder is kept owner-only (mode 700).
HEARTSOUND_HOME={ROOT_PLACEHOLDER}/data
HEARTSOUND_MODEL={ROOT_PLACEHOLDER}/current/bundle/{MODEL_DIR}/{{model}}
"""

# Each run records from the default microphone, screens and logs, then exits; systemd
# starts the next one. A crash or a missing microphone therefore costs one cycle, not
# the service, and RestartSec keeps a broken device from spinning. Without any capture
# device (/dev/snd/pcmC*D*c) it does not start at all: a station whose microphone is
# unplugged stays quiet instead of failing every 5 s.
UNIT_TEXT = f"""\
[Unit]
Description=heartsound always-on heart-sound screening (microphone -> log)
After=sound.target
ConditionPathExistsGlob=/dev/snd/pcmC*D*c

[Service]
Type=simple
User={USER_PLACEHOLDER}
EnvironmentFile={ROOT_PLACEHOLDER}/current/etc/heartsound.env
ExecStart={ROOT_PLACEHOLDER}/current/bin/heartsound screen --mic --json
Restart=always
RestartSec=5
UMask=0077
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ReadWritePaths={ROOT_PLACEHOLDER}/data

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class Bundle:
    """A bundle folder on the host and its manifest."""

    path: Path
    manifest: dict

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def files(self) -> list[str]:
        """Every file to upload (relative, '/'-separated), SHA256SUMS last."""
        return sorted(self.manifest["files"]) + [MANIFEST, SUMS]

    @property
    def total_bytes(self) -> int:
        return sum((self.path / f).stat().st_size for f in self.files)

    @property
    def sums_sha256(self) -> str:
        """Hash of SHA256SUMS itself: checked on the device before trusting its lines."""
        return sha256_file(self.path / SUMS)

    def role(self, name: str) -> str:
        """Relative path of the file playing `name` ('wheel', 'model', 'smoke')."""
        return self.manifest[name]


def device_requirements(project_dir: Path = PROJECT_DIR) -> list[str]:
    """The project's base dependencies plus the `edge` extra: all a device installs."""
    meta = tomllib.loads((project_dir / "pyproject.toml").read_text())["project"]
    return list(meta.get("dependencies", [])) + list(
        meta.get("optional-dependencies", {}).get(DEVICE_EXTRA, []))


def build_wheel(out_dir: Path, project_dir: Path = PROJECT_DIR) -> Path:
    """The project as one pure-Python wheel (pip wheel --no-deps): what the device installs.

    setuptools copies the sources into ``build/lib`` and packs everything found there, so
    modules a checkout has since moved or deleted would ship too: that scratch folder is
    emptied first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(Path(project_dir) / "build" / "lib", ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "--quiet", "-w", str(out_dir), str(project_dir)],
        capture_output=True, text=True)
    found = sorted(p for p in out_dir.glob("heartsound-*.whl") if WHEEL_NAME.match(p.name))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeviceError(f"{project_dir}: pip wheel could not build the heartsound wheel "
                          f"({tail}); run 'pip wheel --no-deps {project_dir}' to see why")
    return found[-1]


def default_smoke_wav() -> Path:
    """The first example recording: real audio the device must be able to screen."""
    found = sorted(EXAMPLES_DIR.glob("*.wav")) if EXAMPLES_DIR.is_dir() else []
    if not found:
        raise UsageError(f"{EXAMPLES_DIR}: no example recording for the smoke screening; "
                         "pass a WAV file")
    return found[0]


def build_bundle(out_dir: Path, *, wheel: Path | None = None, model: Path | None = None,
                 smoke_wav: Path | None = None, dependency_wheels: Sequence[Path] = (),
                 target: WheelTarget | None = None, project_dir: Path = PROJECT_DIR) -> Bundle:
    """Write a bundle folder (see the module docstring) and return it.

    `wheel` reuses an already built project wheel (tests build it once); the model is not
    judged here: the device's smoke screening is the gate, on the device's own runtime.
    With `dependency_wheels` (for `target`), pip must resolve heartsound[edge] for the
    target from the bundle's wheels alone, else a DownloadError names what is missing.
    """
    from edge.model_meta import float_companion_path
    from edge.screening import default_model_path

    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise UsageError(f"{out_dir}: bundle folder is not empty; give a new folder")
    model = Path(model) if model else default_model_path()
    if not model.is_file():
        raise ModelError(f"{model}: no model file there; pass --model PATH")
    smoke_wav = Path(smoke_wav) if smoke_wav else default_smoke_wav()
    wheels = out_dir / WHEELS_DIR
    wheels.mkdir()
    wheel = build_wheel(wheels, project_dir) if wheel is None else _copy(Path(wheel), wheels)
    match = WHEEL_NAME.match(wheel.name)
    if not match:
        raise UsageError(f"{wheel}: not a heartsound wheel (heartsound-VERSION-...whl)")
    for dep in dependency_wheels:
        _copy(Path(dep), wheels)
    deps = _dependencies(wheels, match["version"], target) if dependency_wheels else None
    model_file = _copy(model, out_dir / MODEL_DIR)
    companion = float_companion_path(model)
    if companion.is_file():  # so `deploy --bench` times the float32 baseline on the device
        _copy(companion, out_dir / MODEL_DIR)
    smoke_file = _copy(smoke_wav, out_dir / SMOKE_DIR)
    (out_dir / CONFIG_TEMPLATE).write_text(CONFIG_TEXT.format(model=model_file.name))
    (out_dir / UNIT_TEMPLATE).write_text(UNIT_TEXT)
    return _write_manifest(out_dir, match["version"], {
        "wheel": wheel, "model": model_file, "smoke": smoke_file}, deps, project_dir)


def _dependencies(wheels: Path, version: str, target: WheelTarget | None) -> dict:
    """Manifest entries 'target' and 'dependencies': what pip installs from `wheels`."""
    target = target or WheelTarget()
    resolved = resolve_wheels(wheels, f"heartsound[{DEVICE_EXTRA}]=={version}", target)
    resolved.pop("heartsound", None)
    return {"target": target.to_manifest(), "dependencies": {
        name: {"version": r["version"], "wheel": f"{WHEELS_DIR}/{r['file']}",
               "sha256": r["sha256"]} for name, r in sorted(resolved.items())}}


def load_bundle(path: Path) -> Bundle:
    """Open a bundle folder and check every file against its manifest (bit rot, edits)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a heartsound bundle ({MANIFEST}: {exc}); build one "
                         "with 'heartsound deploy --bundle NEW_FOLDER ...'") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise UsageError(f"{path}: bundle format {manifest.get('format')}, this heartsound "
                         f"reads {BUNDLE_FORMAT}; build the bundle again")
    for rel, entry in manifest["files"].items():
        f = path / rel
        if not f.is_file() or sha256_file(f) != entry["sha256"]:
            raise UsageError(f"{f}: missing or changed since the bundle was built; build the "
                             "bundle again")
    return Bundle(path, manifest)


def _copy(src: Path, folder: Path) -> Path:
    if not src.is_file():
        raise UsageError(f"{src}: no such file to put in the bundle")
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / src.name
    dst.write_bytes(src.read_bytes())
    return dst


def _write_manifest(out_dir: Path, version: str, roles: dict[str, Path],
                    deps: dict | None, project_dir: Path) -> Bundle:
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    entries = {p.relative_to(out_dir).as_posix(): {"sha256": sha256_file(p),
                                                   "bytes": p.stat().st_size} for p in files}
    manifest = {
        "format": BUNDLE_FORMAT,
        "name": "heartsound",
        "version": version,
        "built_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python_requires": ">=" + ".".join(map(str, MIN_PYTHON)),
        "extras": [DEVICE_EXTRA],
        "requirements": device_requirements(project_dir),
        "dependency_wheels": deps is not None,
        **(deps or {}),
        **{role: p.relative_to(out_dir).as_posix() for role, p in roles.items()},
        "files": entries,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    sums = {**{rel: e["sha256"] for rel, e in entries.items()},
            MANIFEST: sha256_file(out_dir / MANIFEST)}
    (out_dir / SUMS).write_text("".join(f"{h}  {rel}\n" for rel, h in sorted(sums.items())))
    return Bundle(out_dir, manifest)
