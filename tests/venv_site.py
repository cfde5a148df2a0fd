"""The packages of the environment the tests run in, for the Pythons they start.

Why: CI runs the tests in the project's ``.venv`` (Debian's Python is externally managed,
PEP 668), and a venv made from a venv does not see its parent's packages, even with
``--system-site-packages`` (that flag means the *base* interpreter's, Debian's own). The
station venvs the tests make (a wheel installed as a user installs it, a device reached
over SSH) are meant to reuse this machine's numpy and LiteRT, as they did when the tests
ran in a plain interpreter; these helpers hand them this environment's site-packages.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path


def environment_site() -> Path | None:
    """This environment's site-packages when the tests run in a venv, else None (the
    interpreter's own site is then what ``--system-site-packages`` already gives)."""
    if sys.prefix == sys.base_prefix:
        return None
    return Path(sysconfig.get_paths()["purelib"])


def share_environment_site(venv: Path) -> None:
    """Let ``venv`` import this environment's packages after its own: a .pth line, which
    adds the folder without running the .pth files in it (so the checkout's editable
    install stays out, and the venv's own heartsound is the one imported)."""
    site = environment_site()
    if site is None:
        return
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (venv / "lib" / python / "site-packages" / "zz-test-environment.pth").write_text(f"{site}\n")
