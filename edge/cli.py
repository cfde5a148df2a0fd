"""The `heartsound` command: one entry point for the host and the device.

Each subcommand lives in the package that owns its work and exposes
``add_arguments(parser)`` and ``run(args) -> int``. Those modules import nothing heavy
at the top, so that ``heartsound --help`` and ``heartsound screen`` on a Raspberry Pi
never load TensorFlow; the heavy imports happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from edge.errors import HeartsoundError, Stopped

# name -> (module holding add_arguments/run, one-line help, longer description)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "screen": (
        "edge.commands.screen",
        "screen a recording (WAV file or microphone) on this device",
        "Classify a heart-sound recording as normal, abnormal or unsure with the int8 "
        "model, fully offline. Runs on a Raspberry Pi with numpy and one TFLite "
        "interpreter.",
    ),
    "bench": (
        "edge.commands.bench",
        "measure front-end and model latency on this device",
        "Time the fixed-point front end, the interpreter and a whole analysis window, "
        "like TFLite's benchmark_model, on a real recording shipped with heartsound. Beside "
        "the int8 model on the reference kernels (what screening runs, bit-exact with the "
        "microcontroller), the same process times it on LiteRT's optimised kernels and the "
        "model's float32 companion (MODEL.float32.tflite, written by `heartsound convert`) on "
        "the same LiteRT, prints the ratios (medians) and how often the two int8 kernel sets "
        "differ in output bits and decisions.",
    ),
    "history": (
        "edge.commands.history",
        "list or export the offline screening log",
        "Show past screenings stored in the local SQLite log, or export them as CSV.",
    ),
    "data": (
        "train.commands.data",
        "list the recordings found, or download the PhysioNet 2016 archive",
        "Inspect the data folders that training reads (--data or HEARTSOUND_DATA), or "
        "fetch the public PhysioNet/CinC 2016 training archive (resumable, checksummed).",
    ),
    "train": (
        "train.commands.train",
        "train a model on real recordings (host; needs the 'train' extra)",
        "Train a CNN, RNN or CNN+RNN model on the fixed-point features of real heart "
        "sounds and evaluate it by patient and by database.",
    ),
    "convert": (
        "convert.commands.convert",
        "convert a trained model to full-integer int8 TFLite (host)",
        "Quantise a Keras model to int8 and write the front-end spec, class names and "
        "threshold into the .tflite file's metadata.",
    ),
    "verify": (
        "convert.commands.verify",
        "check that the int8 model matches the float one and TFLite Micro (host)",
        "Compare the float Keras model, the int8 model under LiteRT and under the TFLite "
        "Micro interpreter on real validation and test recordings.",
    ),
    "firmware": (
        "firmware_bridge.commands.firmware",
        "export C sources for a microcontroller, or screen over a serial link",
        "Export the model and front end as C for TFLite Micro, or talk to a device that "
        "runs them over the framed serial protocol.",
    ),
    "deploy": (
        "edge.commands.deploy",
        "install the runtime and model on a Raspberry Pi over SSH",
        "Build a bundle, upload it, verify it, smoke-test it and switch to it atomically, "
        "keeping the previous version for rollback. Every SSH step has a deadline: a link "
        "that dies ends the command with exit 7 and one line saying what the device runs "
        "now, read back from it (see --link-timeout for the bound).",
    ),
    "image": (
        "edge.commands.image",
        "build a Raspberry Pi SD-card image with the station inside, or write one to a card "
        "(host, root)",
        "Debian trixie arm64 for Raspberry Pi 3, 4 and 5 with heartsound installed in the release "
        "layout `heartsound deploy` manages ('image build'); 'image flash' writes an image to "
        "a card safely and proves it by reading it back.",
    ),
}


# Optional modules -> the extra that installs them: a command that needs one the install
# lacks ends in one line naming the extra, not a traceback.
EXTRA_OF_MODULE: dict[str, str] = {
    "serial": "serial", "tensorflow": "train", "keras": "train", "tf_keras": "train",
    "scipy": "train", "tqdm": "train", "yaml": "train", "matplotlib": "report",
    "pyaudio": "mic", "fabric": "deploy", "invoke": "deploy", "paramiko": "deploy",
    "ray": "cluster", "tflite_micro": "firmware",
}


def missing_extra_line(command: str, exc: ModuleNotFoundError) -> str | None:
    """The one line for a command stopped by a missing optional module, or None when the
    module is not one an extra provides (a real bug: the traceback is then kept)."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return (f"'{command}' needs the Python module '{module}', which this install lacks: "
            f"pip install 'heartsound[{extra}]'")


def package_version() -> str:
    """The installed distribution's version (a checkout without an install says so)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("heartsound")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


# Host-only modules a device command reaches by name, so that nothing under edge/ but this
# table names train, convert or firmware_bridge (tests/test_layout.py): `bench --baseline`
# times the float Keras model of a training run, on the host.
HOST_MODULES: dict[str, str] = {"bench --baseline": "train.baseline"}


def host_module(part: str):
    """The host-only module behind ``part`` of a command (see HOST_MODULES), imported now."""
    return importlib.import_module(HOST_MODULES[part])


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Build the parser; each command module adds its own options.

    Given the command line, only the named command's module is imported (the others are
    listed, without their options): ``heartsound screen`` on a Raspberry Pi then loads
    nothing of the host-side commands (deploy, history's fleet options). Without a command
    (``heartsound --help``, or ``argv`` None) every command module is imported.
    """
    chosen = _chosen_command(argv)
    parser = argparse.ArgumentParser(
        prog="heartsound",
        description="Heart-sound screening at the edge: train, convert, verify, and screen "
        "offline on a Raspberry Pi or a microcontroller.",
        epilog="Run 'heartsound COMMAND --help' for the options of one command. "
        "Exit codes: 0 result, 1 failure, 2 usage, 3 bad audio, 4 bad model, 5 bad data, "
        "6 bad feature spec, 7 device problem, 8 download problem, 130 Ctrl-C, 143 stopped by "
        "SIGTERM (screen: results printed so far are complete and logged).",
    )
    parser.add_argument("--version", action="version", version=f"heartsound {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, short, description) in COMMANDS.items():
        cmd = sub.add_parser(name, help=short, description=description)
        if chosen not in (None, name):
            continue
        module = _command_module(module_name)
        if module is None:
            cmd.set_defaults(_module=None, _module_name=module_name)
            continue
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def _chosen_command(argv: Sequence[str] | None) -> str | None:
    """The command named on the command line (its first word), if it is one of COMMANDS."""
    first = next(iter(argv), None) if argv is not None else None
    return first if first in COMMANDS else None


def _command_module(module_name: str):
    """Import a command module, or None when a later release still has to add it."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


# Libraries that log their own failures (paramiko's transport thread logs a "Mismatched
# MAC" or "Socket exception" traceback when a link fails): their failures reach the user
# as our one-line error instead; Python's last-resort handler would print them raw.
QUIET_LIBRARY_LOGGERS = ("paramiko", "invoke", "fabric")


def quiet_library_logging() -> None:
    """Keep the loggers of SSH libraries off the terminal (the entry point's choice)."""
    for name in QUIET_LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    quiet_library_logging()
    if args._module is None:
        print(
            f"heartsound: '{args.command}' is not part of this version yet; "
            "see the README for what it will do",
            file=sys.stderr,
        )
        return 1
    try:
        return int(args._module.run(args) or 0)
    except HeartsoundError as exc:
        print(f"heartsound: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        line = missing_extra_line(args.command, exc)
        if line is None:
            raise
        print(f"heartsound: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("heartsound: interrupted", file=sys.stderr)
        return 130
    except Stopped as exc:
        print(f"heartsound: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
