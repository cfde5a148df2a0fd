"""The README's two commands are what CI runs, in the project's venv from Debian's Python."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETUP = "bash scripts/setup.sh && . .venv/bin/activate && "


def _readme_commands() -> list[str]:
    block = re.search(r"## Two commands on a fresh Debian machine.*?```bash\n(.*?)```",
                      (REPO / "README.md").read_text(), re.S)
    assert block, "the README lost its 'Two commands' section"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readmes_test_command_verbatim():
    main_job, tests = _readme_commands()
    assert main_job == SETUP + "invoke pipeline"
    assert tests == SETUP + "python -m pytest"
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci


def test_setup_makes_the_venv_from_debians_python():
    """PEP 668: Debian's /usr/bin/python3 refuses pip installs, so setup.sh makes .venv
    from it; when the tests run in that venv, its base is Debian's interpreter."""
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "PYTHON=${PYTHON:-/usr/bin/python3}" in setup
    assert '$PYTHON -m venv "$VENV"' in setup and "python3-venv" in setup
    if Path(sys.prefix) == REPO / ".venv":
        cfg = (REPO / ".venv" / "pyvenv.cfg").read_text()
        assert re.search(r"^home = /usr/bin$", cfg, re.M), cfg
