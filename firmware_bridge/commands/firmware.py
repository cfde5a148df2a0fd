"""`heartsound firmware ACTION`: talk to a microcontroller and export C for one.

Each action lives in its own module with ``add_arguments(parser)`` and ``run(args)``, like
the top-level commands (see :mod:`edge.cli`), and is listed in :data:`ACTIONS`. Nothing
heavy is imported here, so ``heartsound --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib

# action -> (module holding add_arguments/run, one-line help)
ACTIONS: dict[str, tuple[str, str]] = {
    "identify": ("firmware_bridge.commands.firmware_identify",
                 "ask a device on a serial port who it is and which model it runs"),
    "screen": ("firmware_bridge.commands.firmware_screen",
               "screen a WAV recording on a device over the serial protocol"),
    "export": ("firmware_bridge.commands.firmware_export",
               "write a model as firmware sources (C array, header, app, PlatformIO)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="firmware_action", metavar="ACTION", required=True)
    for name, (module_name, short) in ACTIONS.items():
        module = importlib.import_module(module_name)
        action = sub.add_parser(name, help=short, description=module.__doc__.splitlines()[0])
        module.add_arguments(action)
        action.set_defaults(_firmware_run=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args._firmware_run(args) or 0)


def add_link_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every action that opens a serial link shares."""
    from firmware_bridge.link_settings import DEFAULT_BAUD, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S

    parser.add_argument("--port", required=True,
                        help="serial device node, e.g. /dev/ttyACM0 or /dev/pts/3")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help="seconds to wait for each answer before sending the request "
                        "again (default %(default)s)")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                        help="times a request is sent again before giving up (default "
                        "%(default)s); a request takes at most (retries + 1) x timeout")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                        help="baud rate of a real UART (default %(default)s; a pty ignores it)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def open_client(args: argparse.Namespace):
    """A connected DeviceClient from the link options (UsageError for impossible ones)."""
    from edge.errors import UsageError
    from firmware_bridge.client import DeviceClient

    if not args.timeout > 0 or args.retries < 0:
        raise UsageError("--timeout must be > 0 and --retries >= 0")
    return DeviceClient(args.port, timeout=args.timeout, retries=args.retries,
                        baudrate=args.baud).open()
