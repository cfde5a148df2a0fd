"""The `heartsound` console command as a user meets it: help, exit codes, light imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge.cli import COMMANDS, build_parser
from tests.data_sources import DATA_FOLDERS, SOURCES

HEAVY = ("tensorflow", "keras", "tf_keras", "scipy")


def _heartsound(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_subcommand():
    result = _heartsound("--help")
    assert result.returncode == 0
    for name in ("screen", "bench", "train", "convert", "verify", "firmware", "deploy",
                 "history"):
        assert name in COMMANDS
        assert f"    {name}" in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_has_help(name):
    result = _heartsound(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: heartsound " + name)
    assert COMMANDS[name][2].split()[0] in result.stdout


def test_unknown_command_is_a_usage_error():
    result = _heartsound("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_building_the_parser_imports_nothing_heavy():
    code = (
        "import sys; from edge.cli import build_parser; build_parser(); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_parser_is_buildable_in_process():
    assert build_parser().prog == "heartsound"


def test_data_list_counts_every_source(data_root):
    folders = [arg for name in DATA_FOLDERS for arg in ("--data", str(data_root / name))]
    result = _heartsound("data", "list", *folders)
    assert result.returncode == 0, result.stderr
    for source in SOURCES:
        assert source in result.stdout


def test_missing_data_folder_is_one_line_with_data_exit_code(tmp_path):
    result = _heartsound("data", "list", "--data", str(tmp_path / "nowhere"))
    assert result.returncode == 5
    assert result.stderr.count("\n") == 1 and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_names_the_installed_distribution():
    from importlib.metadata import version

    result = _heartsound("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"heartsound {version('heartsound')}"


def _without(modules: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    """The command in a child whose import of ``modules`` fails as it does where the
    extra is not installed (``sys.modules[name] = None``: ModuleNotFoundError)."""
    code = ("import sys\n"
            f"for name in {modules!r}: sys.modules[name] = None\n"
            "from edge.cli import main\n"
            f"sys.exit(main({list(args)!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize(("modules", "args", "extra"), [
    (("serial",), ("firmware", "identify", "--port", "/dev/null"), "serial"),
    (("tensorflow", "keras", "tf_keras"), ("train", "--out", "unused-run"), "train"),
])
def test_a_missing_extra_is_one_line_naming_it(modules, args, extra, tmp_path):
    result = _without(modules, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"pip install 'heartsound[{extra}]'" in lines[0]
    assert not (tmp_path / "unused-run").exists()
