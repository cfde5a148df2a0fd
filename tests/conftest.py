"""Shared fixtures: where the real recordings are.

The tests run on real heart sounds, never on stand-ins, so a missing data folder is a
failure with a message saying where it was looked for, not a skip: a green CI run
must mean the tests ran on the data.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.venv_site import share_environment_site

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "HEARTSOUND_DATA"
EXPECTED_FOLDERS = ("pascal", "physionet2016", "circor2022")


def _data_root() -> tuple[Path, str]:
    """The shared data folder and how it was chosen (for the failure message)."""
    entries = [p for p in os.environ.get(DATA_ENV, "").split(os.pathsep) if p.strip()]
    if entries:
        return Path(entries[0]).expanduser().resolve().parent, f"${DATA_ENV}'s first entry"
    return (REPO_ROOT.parent / "shared" / "data").resolve(), "<repo>/../shared/data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Folder holding ``pascal/``, ``physionet2016/`` and ``circor2022/`` (real recordings)."""
    root, how = _data_root()
    missing = [name for name in EXPECTED_FOLDERS if not (root / name).is_dir()]
    if missing:
        pytest.fail(
            f"real data not found: {root} ({how}) lacks {', '.join(missing)}; set "
            f"{DATA_ENV} to the pascal, physionet2016 and circor2022 folders (':'-separated) "
            "or put "
            "them in ../shared/data beside the repository",
            pytrace=False,
        )
    return root


@pytest.fixture(scope="session")
def installed_station(tmp_path_factory) -> Path:
    """A venv with the heartsound wheel installed as a user installs it, outside any
    checkout: the venv reuses this machine's numpy and LiteRT (``--system-site-packages``)
    and the wheel goes in with --no-index, so nothing is downloaded. Returns the venv."""
    from edge.deploy.bundle import build_wheel

    where = tmp_path_factory.mktemp("installed")
    wheel = build_wheel(where / "wheel")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    share_environment_site(venv)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--no-index",
                    "--no-deps", "--force-reinstall", "--disable-pip-version-check", str(wheel)],
                   check=True, timeout=300)
    return venv


def outside_checkout_env() -> dict[str, str]:
    """The environment of a user's shell: no checkout on the path, no model or data set."""
    drop = ("PYTHONPATH", "HEARTSOUND_MODEL", DATA_ENV)
    return {k: v for k, v in os.environ.items() if k not in drop}


# ---- the firmware app (tests/test_firmware_qemu.py, tests/test_firmware_faults.py) ----------
@pytest.fixture(scope="session")
def model() -> bytes:
    """The shipped int8 model, as the firmware builds embed it."""
    from edge.screening import PACKAGED_MODEL

    return PACKAGED_MODEL.read_bytes()


@pytest.fixture(scope="session")
def arena(model) -> int:
    """The arena the export measures with TFLite Micro (once for every build)."""
    from firmware_bridge.export import ARENA_MARGIN, measure_arena

    return measure_arena(model) + ARENA_MARGIN


@pytest.fixture(scope="session")
def host_build(model, arena, tmp_path_factory):
    """The host build of the serving app (built once per test session)."""
    from firmware_bridge import build

    return build.build_app(build.HOST, model, tmp_path_factory.mktemp("fw-host"),
                           arena_size=arena)


@pytest.fixture(scope="module")
def host_fw(host_build):
    """The host build serving the protocol on its own pty (one process per test module:
    a module's tests may freeze or confuse it, the next module starts clean)."""
    from firmware_bridge.serve import serve_host

    with serve_host(host_build.executable) as fw:
        yield fw
