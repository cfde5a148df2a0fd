"""Pack a deploy bundle into one ``.tar.gz`` for devices that never see a network.

Copy the archive by USB stick, then on the device run one command::

    tar -xzf heartsound-<version>-offline.tar.gz && sh heartsound-<version>-offline/install.sh

The archive (top folder ``heartsound-<version>-offline/``) holds ``install.sh`` (checks
for Python 3.11+ in plain sh, so an old Python gets a clear message instead of a syntax
error), ``install.py`` (this package's `edge.deploy.install`, standard library only),
``wheels/`` with every wheel the device installs (heartsound and, for the bundle's
target platform and CPython, each of its dependencies), and the rest of the bundle as
``payload.tar.gz`` with its sha256; the payload's manifest lists every wheel's sha256.
The installer unpacks the payload with `safe_extract`, so a damaged or tampered payload
cannot write outside the new release folder, and checks each wheel against the manifest.
Because the wheels lie in the open, a venv made by hand installs with
``pip install --no-index --find-links heartsound-<version>-offline/wheels 'heartsound[edge]'``
(`install_line`). Only a bundle built with its dependency wheels can be packed.
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import tarfile
import time
from pathlib import Path

from edge.deploy import install
from edge.deploy.bundle import DEVICE_EXTRA, WHEELS_DIR, Bundle, sha256_file
from edge.deploy.install import PAYLOAD, UnsafeArchiveError, safe_extract
from edge.deploy.wheels import WheelTarget
from edge.errors import UsageError

__all__ = ["INSTALL_SH", "UnsafeArchiveError", "archive_sha256", "build_offline_bundle",
           "install_line", "safe_extract", "top_folder"]

EXEC_MODE = 0o755
FILE_MODE = 0o644

INSTALL_SH = """\
#!/bin/sh
# heartsound offline install. Usage:
#   sh install.sh [--root DIR] [--python PYTHON] [--[no-]system-site-packages]
# Installs into DIR/releases/<version>-<time> and switches DIR/current to it only after a
# smoke screening passed; the previous release stays current on any failure.
set -eu
here=$(cd "$(dirname "$0")" && pwd -P)
python=python3
prev=
for arg in "$@"; do
  if [ "$prev" = "--python" ]; then python=$arg; fi
  prev=$arg
done
if ! command -v "$python" >/dev/null 2>&1; then
  echo "install.sh: no '$python' on this device; install Python 3.11+" \\
       "(apt install python3 python3-venv) or pass --python PATH" >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "install.sh: $("$python" -V 2>&1) is too old, heartsound needs Python 3.11+;" \\
       "install a newer one or pass --python PATH" >&2
  exit 1
fi
exec "$python" "$here/install.py" --bundle-dir "$here" "$@"
"""

README = """\
heartsound {version}, offline install (no network needed)

  sh install.sh [--root DIR] [--python PYTHON] [--[no-]system-site-packages]

DIR defaults to ~/heartsound. Screen with DIR/current/bin/heartsound screen FILE.wav.
The screening log (patient data) is kept in DIR/data, readable by its owner only.
The wheels are for {target}.

By hand, into a venv of your own (from the folder holding {top}/):

  {install_line}
"""


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = FILE_MODE) -> None:
    """A member with fixed owner and time: the archive says nothing about the build host."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def top_folder(bundle: Bundle) -> str:
    """The archive's one top-level folder: what ``tar -xzf`` makes in the current folder."""
    return f"heartsound-{bundle.version}-offline"


def install_line(bundle: Bundle) -> str:
    """The pip line that installs the extracted archive into an existing venv, no network."""
    return shlex.join(["pip", "install", "--no-index", "--find-links",
                       f"{top_folder(bundle)}/{WHEELS_DIR}", f"heartsound[{DEVICE_EXTRA}]"])


def build_offline_bundle(bundle: Bundle, out: Path) -> Path:
    """Write ``out`` (a .tar.gz) holding the installer and `bundle`; return its path.

    The bundle must carry its dependency wheels (built with a target): a stick whose
    install needs a network or the device's own packages is no offline bundle.
    """
    out = Path(out)
    if not out.name.endswith(".tar.gz"):
        raise UsageError(f"{out}: the offline bundle is a .tar.gz; give a name ending so")
    if not bundle.manifest.get("dependency_wheels") or "target" not in bundle.manifest:
        raise UsageError(f"{bundle.path}: this bundle carries no dependency wheels, so it "
                         "cannot install offline; build the offline bundle without --bundle "
                         "(or with --bundle NEW_FOLDER)")
    out.parent.mkdir(parents=True, exist_ok=True)
    wheels = [rel for rel in bundle.files if rel.startswith(WHEELS_DIR + "/")]
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as tar:
        for rel in bundle.files:
            if rel not in wheels:
                _add(tar, rel, (bundle.path / rel).read_bytes())
    payload_bytes = payload.getvalue()
    top = top_folder(bundle)
    readme = README.format(version=bundle.version, top=top, install_line=install_line(bundle),
                           target=WheelTarget.from_manifest(bundle.manifest["target"]).describe())
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        _add(tar, f"{top}/install.sh", INSTALL_SH.encode(), EXEC_MODE)
        _add(tar, f"{top}/install.py", Path(install.__file__).read_bytes(), EXEC_MODE)
        for rel in wheels:
            _add(tar, f"{top}/{rel}", (bundle.path / rel).read_bytes())
        _add(tar, f"{top}/{PAYLOAD}", payload_bytes)
        _add(tar, f"{top}/{PAYLOAD}.sha256", f"{_sha256(payload_bytes)}  {PAYLOAD}\n".encode())
        _add(tar, f"{top}/version.json", json.dumps({"version": bundle.version}).encode())
        _add(tar, f"{top}/README.txt", readme.encode())
    tmp.replace(out)
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def archive_sha256(path: Path) -> str:
    """sha256 of the whole archive, to publish beside it (the stick may be copied again)."""
    return sha256_file(Path(path))
