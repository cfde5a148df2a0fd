"""The deployed release this heartsound runs from, if any: its model and its log folder.

Why: a deploy installs each release as a venv, ``ROOT/releases/<name>/`` (``sys.prefix``
when its ``bin/heartsound`` runs), holding ``bundle/`` (with the model chosen at deploy
time, ``--model``) and ``etc/heartsound.env`` (the service's settings, ``HEARTSOUND_HOME=
ROOT/data``). The service reads that file through systemd; a screening typed by hand on the
device does not. Reading both here gives one model per release and one screening log per
installation, whatever the entry point. The environment still wins over both.

Outside a deployed release (a host checkout, a plain ``pip install``) every answer is
None and the usual defaults apply. Standard library only: the device imports it at start.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path

MANIFEST = "bundle/manifest.json"  # relative to the release (= the venv, sys.prefix)
CONFIG = "etc/heartsound.env"


def release_folder() -> Path:
    return Path(sys.prefix)


@cache
def release_model() -> Path | None:
    """The model of the bundle this release was installed from, if it runs from one."""
    try:
        manifest = json.loads((release_folder() / MANIFEST).read_text())
        return release_folder() / "bundle" / manifest["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@cache
def release_setting(name: str) -> str | None:
    """NAME's value in the release's etc/heartsound.env (systemd EnvironmentFile lines)."""
    try:
        lines = (release_folder() / CONFIG).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and key == name and not key.startswith("#"):
            return value.strip().strip('"') or None
    return None
