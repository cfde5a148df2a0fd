"""The card an image is written to: which whole disk a path names, and whether it is safe.

Everything is read from the kernel, never guessed from a name: ``/sys/dev/block`` says
whether a device is a whole disk or a partition, how big it is, whether it is removable
or read-only and what holds it (LVM, RAID, dm-crypt); ``/proc/self/mountinfo``,
``/proc/mounts`` and ``/proc/swaps`` say whether any part of it is in use. Every refusal
is a :class:`DeviceError` of one line that says what is wrong and what to do.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edge.errors import DeviceError

SYS_DEV_BLOCK = Path("/sys/dev/block")
SECTOR = 512  # sysfs sizes are in 512-byte sectors whatever the disk's own sector size
PICK = "give the SD card's whole-disk device (see lsblk), e.g. --device /dev/sdb"


@dataclass(frozen=True)
class Disk:
    """A whole block device as the kernel describes it."""

    path: str  # as given, e.g. /dev/sdb
    name: str  # kernel name, e.g. sdb
    sysfs: Path  # /sys/devices/.../block/sdb
    size: int  # bytes

    @property
    def partitions(self) -> list[Path]:
        """sysfs folders of the disk's partitions (sdb1, mmcblk0p1, loop0p1)."""
        return sorted(p for p in self.sysfs.iterdir() if (p / "partition").exists())

    @property
    def devnums(self) -> set[int]:
        """Device numbers of the disk and each of its partitions."""
        return {_devnum(p) for p in [self.sysfs, *self.partitions]}

    def read(self, name: str) -> str:
        """One sysfs attribute of the disk ('' when it has none)."""
        try:
            return (self.sysfs / name).read_text().strip()
        except OSError:
            return ""

    @property
    def removable(self) -> bool:
        """The kernel's removable flag; a card in a built-in SD slot (mmcblk, type SD) counts
        too, since those slots report removable 0. A loop device never counts."""
        return self.read("removable") == "1" or self.read("device/type") == "SD"

    @property
    def description(self) -> str:
        """What a person recognises the disk by: vendor and model, or a loop's backing file."""
        backing = self.read("loop/backing_file")
        if backing:
            return f"loop device backed by {backing}"
        model = " ".join(filter(None, (self.read("device/vendor"), self.read("device/model"))))
        return model or self.read("device/name") or "unknown model"


def find_disk(path: str) -> Disk:
    """The whole disk ``path`` names; refuses a missing path, a file or a partition."""
    try:
        mode = os.stat(path)
    except FileNotFoundError:
        raise DeviceError(f"{path} does not exist; {PICK}") from None
    if not stat.S_ISBLK(mode.st_mode):
        raise DeviceError(f"{path} is not a block device; {PICK}")
    sysfs = (SYS_DEV_BLOCK / f"{os.major(mode.st_rdev)}:{os.minor(mode.st_rdev)}").resolve()
    if (sysfs / "partition").exists():
        raise DeviceError(f"{path} is a partition of /dev/{sysfs.parent.name}; give the whole "
                          f"disk: --device /dev/{sysfs.parent.name}")
    size = int((sysfs / "size").read_text()) * SECTOR
    return Disk(path=path, name=sysfs.name, sysfs=sysfs, size=size)


def refuse_unsafe(disk: Disk, image_size: int, allow_non_removable: bool) -> None:
    """Raise DeviceError unless ``disk`` can take an image of ``image_size`` bytes now."""
    if not disk.removable and not allow_non_removable:
        raise DeviceError(f"{disk.path} ({disk.description}) is not a removable disk and may "
                          "hold a system; check with lsblk that it is the SD card, then pass "
                          "--allow-non-removable")
    if disk.read("ro") == "1":
        raise DeviceError(f"{disk.path} is read-only (an SD card's lock switch?); unlock it and "
                          "run again")
    _refuse_in_use(disk)
    if disk.size < image_size:
        raise DeviceError(f"{disk.path} holds {human(disk.size)}, the image needs "
                          f"{human(image_size)}; use a larger card")


def _refuse_in_use(disk: Disk) -> None:
    """Refuse a disk any part of which is mounted, swapped on or held by another device."""
    numbers = disk.devnums
    for devnum, source, where in _mounts():
        if devnum in numbers:
            raise DeviceError(f"{source} on {disk.path} is mounted on {where}; unmount it "
                              f"(sudo umount {where}) and run again")
    for swap in _swaps():
        if _rdev(swap) in numbers:
            raise DeviceError(f"{swap} on {disk.path} is in use as swap; run sudo swapoff "
                              f"{swap}, then run again")
    for part in [disk.sysfs, *disk.partitions]:
        holders = sorted(h.name for h in (part / "holders").iterdir())
        if holders:
            raise DeviceError(f"/dev/{part.name} is held by {', '.join(holders)} (LVM, RAID or "
                              "encryption); release it and run again")


def _mounts() -> list[tuple[int | None, str, str]]:
    """(device number, source, mount point) of every mount: mountinfo's numbers, and the
    device paths /proc/mounts names (btrfs reports anonymous numbers in mountinfo)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        major, minor = fields[2].split(":")
        source = fields[fields.index("-") + 2]
        found.append((os.makedev(int(major), int(minor)), _unescape(source),
                      _unescape(fields[4])))
    for line in Path("/proc/mounts").read_text().splitlines():
        source, where = line.split()[:2]
        found.append((_rdev(_unescape(source)), _unescape(source), _unescape(where)))
    return found


def _swaps() -> list[str]:
    lines = Path("/proc/swaps").read_text().splitlines()[1:]
    return [_unescape(line.split()[0]) for line in lines if line.strip()]


def _rdev(path: str) -> int | None:
    """The device number of a block device path, None for anything else."""
    try:
        mode = os.stat(path)
    except OSError:
        return None
    return mode.st_rdev if stat.S_ISBLK(mode.st_mode) else None


def _devnum(sysfs: Path) -> int:
    major, minor = (sysfs / "dev").read_text().split(":")
    return os.makedev(int(major), int(minor))


def _unescape(field: str) -> str:
    r"""The kernel writes spaces, tabs and newlines in mount tables as octal (\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def partition_labels(disk: Disk) -> list[str]:
    """'sdb1 bootfs (vfat, 268.4 MB)' for each partition of the disk. blkid probes the
    partition itself (-p): lsblk's labels come from udev, which a container may lack."""
    found = []
    for part in disk.partitions:
        size = human(int((part / "size").read_text()) * SECTOR)
        tags = _probe(f"/dev/{part.name}")
        found.append(" ".join(filter(None, (part.name, tags.get("LABEL"),
                                            f"({tags.get('TYPE', 'no file system')}, {size})"))))
    return found


def _probe(device: str) -> dict[str, str]:
    """blkid's LABEL and TYPE of a partition ({} when blkid is missing or finds nothing)."""
    try:
        out = subprocess.run(["blkid", "-p", "-o", "export", "-s", "LABEL", "-s", "TYPE",
                              device], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def open_for_writing(disk: Disk) -> int:
    """A write descriptor held exclusively (O_EXCL on a block device: nothing can mount
    or claim the card while it is written)."""
    try:
        return os.open(disk.path, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
    except PermissionError:
        raise DeviceError(f"cannot open {disk.path} for writing (permission denied); run "
                          "with sudo") from None
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise DeviceError(f"{disk.path} is in use by another program; close it and run "
                              "again") from None
        raise DeviceError(f"cannot open {disk.path} for writing: {exc.strerror}") from None


def human(size: float) -> str:
    """Bytes as a person reads a card's size (decimal units, as printed on cards)."""
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("kB", "MB", "GB", "TB"):
        size /= 1000
        if size < 1000 or unit == "TB":
            break
    return f"{size:.1f} {unit}"
