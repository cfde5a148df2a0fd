"""Shared fixtures: where the real recordings are.

The tests run on real heart sounds, never on stand-ins, so a missing data folder is a
failure with a message saying where it was looked for, not a skip: a green CI run
must mean the tests ran on the data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "HEARTSOUND_DATA"
EXPECTED_FOLDERS = ("pascal", "physionet2016")


def _data_root() -> tuple[Path, str]:
    """The shared data folder and how it was chosen (for the failure message)."""
    entries = [p for p in os.environ.get(DATA_ENV, "").split(os.pathsep) if p.strip()]
    if entries:
        return Path(entries[0]).expanduser().resolve().parent, f"${DATA_ENV}'s first entry"
    return (REPO_ROOT.parent / "shared" / "data").resolve(), "<repo>/../shared/data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Folder holding ``pascal/`` and ``physionet2016/`` (the real recordings)."""
    root, how = _data_root()
    missing = [name for name in EXPECTED_FOLDERS if not (root / name).is_dir()]
    if missing:
        pytest.fail(
            f"real data not found: {root} ({how}) lacks {', '.join(missing)}; set "
            f"{DATA_ENV} to the pascal and physionet2016 folders (':'-separated) or put "
            "them in ../shared/data beside the repository",
            pytrace=False,
        )
    return root


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
