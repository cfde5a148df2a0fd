"""Pack a deploy bundle into one ``.tar.gz`` for devices that never see a network.

Copy the archive by USB stick, then on the device run one command::

    tar -xzf heartsound-<version>-offline.tar.gz && sh heartsound-<version>-offline/install.sh

The archive holds ``install.sh`` (checks for Python 3.11+ in plain sh, so an old Python
gets a clear message instead of a syntax error), ``install.py`` (this package's
`edge.offline_install`, standard library only), and the bundle itself as
``payload.tar.gz`` with its sha256. The installer unpacks the payload with `safe_extract`,
so a damaged or tampered payload cannot write outside the new release folder. Built with
dependency wheels for the device's platform it installs with no network at all; without
them, pass ``--system-site-packages`` on a device whose numpy and LiteRT come from apt/pip.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

from edge import offline_install
from edge.deploy_bundle import Bundle, sha256_file
from edge.errors import UsageError
from edge.offline_install import PAYLOAD, UnsafeArchiveError, safe_extract

__all__ = ["INSTALL_SH", "UnsafeArchiveError", "archive_sha256", "build_offline_bundle",
           "safe_extract"]

EXEC_MODE = 0o755
FILE_MODE = 0o644

INSTALL_SH = """\
#!/bin/sh
# heartsound offline install. Usage:
#   sh install.sh [--root DIR] [--python PYTHON] [--system-site-packages]
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

  sh install.sh [--root DIR] [--python PYTHON] [--system-site-packages]

DIR defaults to ~/heartsound. Screen with DIR/current/bin/heartsound screen FILE.wav.
The screening log (patient data) is kept in DIR/data, readable by its owner only.
"""


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = FILE_MODE) -> None:
    """A member with fixed owner and time: the archive says nothing about the build host."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def build_offline_bundle(bundle: Bundle, out: Path) -> Path:
    """Write ``out`` (a .tar.gz) holding the installer and `bundle`; return its path."""
    out = Path(out)
    if not out.name.endswith(".tar.gz"):
        raise UsageError(f"{out}: the offline bundle is a .tar.gz; give a name ending so")
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as tar:
        for rel in bundle.files:
            _add(tar, rel, (bundle.path / rel).read_bytes())
    payload_bytes = payload.getvalue()
    top = f"heartsound-{bundle.version}-offline"
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        _add(tar, f"{top}/install.sh", INSTALL_SH.encode(), EXEC_MODE)
        _add(tar, f"{top}/install.py", Path(offline_install.__file__).read_bytes(), EXEC_MODE)
        _add(tar, f"{top}/{PAYLOAD}", payload_bytes)
        _add(tar, f"{top}/{PAYLOAD}.sha256", f"{_sha256(payload_bytes)}  {PAYLOAD}\n".encode())
        _add(tar, f"{top}/version.json", json.dumps({"version": bundle.version}).encode())
        _add(tar, f"{top}/README.txt", README.format(version=bundle.version).encode())
    tmp.replace(out)
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def archive_sha256(path: Path) -> str:
    """sha256 of the whole archive, to publish beside it (the stick may be copied again)."""
    return sha256_file(Path(path))
