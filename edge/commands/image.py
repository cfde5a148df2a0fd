"""`heartsound image`: the SD-card image of a screening station (host side).

One subcommand per job, each added by its own ``_add_<name>(sub)`` function and run by
the function it sets as ``_image_run``; the work lives in `edge.image`, imported inside
those functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="image_command", metavar="SUBCOMMAND", required=True)
    _add_flash(sub)


def run(args: argparse.Namespace) -> int:
    return args._image_run(args)


def _add_flash(sub) -> None:
    cmd = sub.add_parser(
        "flash", help="write a station image to an SD card, read it back and compare",
        description="Write IMAGE (.img, or .img.xz decompressed on the fly) to the SD card "
        "DEVICE, then read the card back and compare sha256. Refuses a partition, a disk "
        "that is not removable, mounted or in use, too small or read-only, and a file that "
        "is not a disk image. Interrupted or failed after the first byte: the card is "
        "incomplete and must be flashed again (exit 130 Ctrl-C, 143 SIGTERM, 7 write error).")
    cmd.add_argument("image", type=Path, metavar="IMAGE", help="station.img or station.img.xz")
    cmd.add_argument("--device", required=True, metavar="/dev/sdX",
                     help="the card's whole-disk device (see lsblk), never a partition")
    cmd.add_argument("--yes", action="store_true",
                     help="do not ask before overwriting (what is overwritten is still shown)")
    cmd.add_argument("--allow-non-removable", action="store_true",
                     help="also write to a disk the kernel does not call removable (some "
                     "USB card readers, loop devices); check lsblk first: it may be a system "
                     "disk")
    cmd.set_defaults(_image_run=_run_flash)


def _run_flash(args: argparse.Namespace) -> int:
    from edge.image.flash import flash

    return flash(args.image, args.device, yes=args.yes,
                 allow_non_removable=args.allow_non_removable)
