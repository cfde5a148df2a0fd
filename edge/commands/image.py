"""`heartsound image`: the SD-card image of a screening station (host side).

One subcommand per job, each added by its own ``_add_<name>(sub)`` function and run by
the function it sets as ``_image_run``; the work lives in `edge.image`, imported inside
those functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

BUILD_HELP = (
    "Build a bootable 64-bit SD-card image for Raspberry Pi 3, 4 and 5 from Debian 13 "
    "(trixie) arm64 packages (mmdebstrap through qemu-user; the kernel from trixie-backports, "
    "Debian's first with the Pi 5's device tree and RP1 drivers), with the screening "
    "station installed inside at the ROOT `heartsound deploy` uses (~heartsound/heartsound), "
    "so later deploys update and roll it back over SSH, and its always-on microphone "
    "service started whenever a sound card with a capture device is there. SSH host "
    "keys are made and the root grows to the card at first boot, which also reads "
    "heartsound.toml from the FAT partition (see heartsound.toml.example there). Needs "
    "root, mmdebstrap and qemu-user-static (scripts/setup.sh). On 2 cores it takes 15-18 "
    "minutes with a warm package cache and an idle machine, 26-28 beside the test suite, 34 "
    "from a cold cache under load (most of it dpkg's scripts under emulation: the initrd, "
    "byte-compiling Python); the first run also downloads about 140 MB of packages "
    "(--mirror: from a mirror of your own). tail -f OUT.build.log follows it.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Subcommands of `heartsound image`."""
    sub = parser.add_subparsers(dest="image_command", required=True)
    _add_build(sub)
    _add_flash(sub)


def run(args: argparse.Namespace) -> int:
    return args._image_run(args)


def _add_build(sub) -> None:
    from edge.image.build import DEFAULT_CACHE, DEFAULT_MIRROR

    p = sub.add_parser("build", help="build station.img (Debian + the station, as root)",
                       description=BUILD_HELP)
    p.add_argument("--out", type=Path, required=True, metavar="station.img",
                   help="the raw disk image to write; the manifest goes beside it "
                   "(station.img.manifest.json)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, metavar="DIR",
                   help="keeps the downloaded .deb files in DIR/apt between runs (default "
                   "%(default)s)")
    p.add_argument("--rebuild", action="store_true",
                   help="build even when DIR/images holds an image built from the same "
                   "inputs (the station's wheels and model, the package list, the build's "
                   "code, the mirror), which is otherwise copied in seconds; a rebuild also "
                   "takes the mirror's packages of today")
    p.add_argument("--mirror", default=DEFAULT_MIRROR, metavar="URL",
                   help="the Debian mirror to take the packages from, trixie and "
                   "trixie-backports (default %(default)s; a clinic's own mirror, say)")
    p.add_argument("--model", type=Path, metavar="M",
                   help="the int8 model the station screens with (default: the shipped one)")
    p.add_argument("--compress", choices=("xz", "zst"),
                   help="also write station.img.xz or station.img.zst")
    p.set_defaults(_image_run=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from edge.image.build import BuildOptions, build

    result = build(BuildOptions(args.out, args.cache, args.model, args.compress, args.mirror,
                                args.rebuild))
    mib = result.image.stat().st_size / 2**20
    line = f"wrote {result.image} ({mib:.0f} MiB"
    if result.compressed:
        line += f"; {result.compressed.name} {result.compressed.stat().st_size / 2**20:.0f} MiB"
    how = f"copied from the cache of the build of {result.cached_from}" if result.cached_from \
        else f"{result.packages} Debian packages"
    print(f"{line}) in {result.seconds / 60:.1f} min, {how}; manifest {result.manifest}")
    return 0


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
