"""`heartsound image flash`: write a station image to an SD card, then prove it is there.

Order of work, so that nothing is written unless all of it can succeed: read the image
(a raw ``.img``, or ``.img.xz`` decompressed as a stream with the standard library's
lzma; an ``.xz`` is read once beforehand for its length, which the size check needs),
check that it is a disk image (MBR boot signature and a partition table), check the card
(`edge.image.disk`), show what will be overwritten and ask. Then write in 4 MiB blocks,
held exclusively, with an fsync every 64 MiB (so the progress bar follows the card, not
the page cache, and a failing card fails near where it fails) and at the end; drop the
device's cache (BLKFLSBUF, then posix_fadvise DONTNEED) so that the read-back reads the
card and not memory; read back exactly the image's length and compare sha256.

A write error, Ctrl-C or SIGTERM after the first byte ends with one line saying the card
is incomplete and must be flashed again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import lzma
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edge.errors import DeviceError, Stopped, UsageError
from edge.image.disk import (
    Disk,
    find_disk,
    human,
    open_for_writing,
    partition_labels,
    refuse_unsafe,
)

BLOCK = 4 << 20  # bytes per write and read: large enough for a card's erase blocks
SYNC_EVERY = 16  # blocks between fsyncs (64 MiB)
BLKFLSBUF = 0x1261  # linux/fs.h: flush and drop a block device's buffer cache
BLKRRPART = 0x125F  # linux/fs.h: re-read the partition table
MBR_SIGNATURE = b"\x55\xaa"


class Incomplete(DeviceError):
    """The card was partly written: it must be flashed again. Exit code by cause."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Image:
    """The image as it will be written: its path, uncompressed length and sha256 (known
    before writing only for a compressed image, which is read once to learn its length)."""

    path: Path
    length: int
    sha256: str | None


def open_image(path: Path) -> BinaryIO:
    """The image's bytes, decompressed as a stream when it ends in .xz."""
    if path.name.endswith(".zst"):
        raise UsageError(f"{path}: .zst images are not read directly; run zstd -d {path}, or "
                         "give the .img or an .img.xz")
    try:
        return lzma.open(path) if path.name.endswith(".xz") else open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read the image {path}: {exc.strerror}") from None


def inspect_image(path: Path) -> Image:
    """Check that ``path`` is a disk image; learn its length (and, when compressed, its
    sha256, with a progress bar: the whole stream is decompressed once)."""
    with open_image(path) as src:
        first = _read(src, path, 512)
        if not looks_like_disk_image(first):
            raise UsageError(f"{path} is not a disk image (no MBR partition table in its first "
                             "sector); give the .img (or .img.xz) that heartsound image build "
                             "writes")
        if not path.name.endswith(".xz"):
            return Image(path, path.stat().st_size, None)
        digest, length = hashlib.sha256(first), len(first)
        with _progress(f"reading {path.name}", 0) as bar:
            while chunk := _read(src, path, BLOCK):
                digest.update(chunk)
                length += len(chunk)
                bar.update(len(chunk))
    return Image(path, length, digest.hexdigest())


def _read(src: BinaryIO, path: Path, size: int) -> bytes:
    try:
        return src.read(size)
    except (OSError, lzma.LZMAError, EOFError) as exc:
        raise UsageError(f"cannot read the image {path}: {exc}; download it again") from None


def looks_like_disk_image(sector: bytes) -> bool:
    """An MBR: boot signature, four entries with a valid boot flag, at least one partition
    (a GPT disk's protective MBR counts). A file system's own boot sector (a bare FAT
    partition) has the signature but boot code where the entries would be."""
    if len(sector) < 512 or sector[510:512] != MBR_SIGNATURE:
        return False
    entries = [sector[446 + 16 * i: 462 + 16 * i] for i in range(4)]
    if any(e[0] not in (0x00, 0x80) for e in entries):
        return False
    return any(e[4] != 0 and int.from_bytes(e[12:16], "little") > 0 for e in entries)


def flash(image_path: Path, device: str, *, yes: bool, allow_non_removable: bool) -> int:
    """Write ``image_path`` to ``device``, read it back and compare; 0 when they match."""
    disk = find_disk(device)
    image = inspect_image(image_path)
    refuse_unsafe(disk, image.length, allow_non_removable)
    # opened before asking: 'run with sudo' comes before the question, and nothing can
    # mount the card between the answer and the write
    fd = open_for_writing(disk)
    with _sigterm_stops():
        try:
            _confirm(disk, image, yes)
            started = time.monotonic()
            written = _write(fd, image, disk)
        finally:
            os.close(fd)
        wrote = time.monotonic()
        read = read_back(disk, image.length)
    if read != written:
        raise DeviceError(f"{disk.path} does not hold what was written (read-back sha256 "
                          f"{read}, image {written}): the card is faulty or fake; use another")
    _reread_partitions(disk)
    done = time.monotonic()
    print(f"image sha256 {written} ({image.length} bytes)")
    print(f"card  sha256 {read} (read back from {disk.path})")
    print(f"flashed {disk.path} in {done - started:.1f} s (write {wrote - started:.1f} s, "
          f"read-back {done - wrote:.1f} s); the card can be removed")
    return 0


def _confirm(disk: Disk, image: Image, yes: bool) -> None:
    """Say what will be overwritten; unless --yes, go on only on an explicit 'yes'."""
    labels = partition_labels(disk)
    print(f"{image.path.name} ({human(image.length)}) will overwrite {disk.path}: "
          f"{disk.description}, {human(disk.size)}; partitions: "
          f"{'; '.join(labels) if labels else 'none seen'}")
    if yes:
        return
    try:
        answer = input(f"Everything on {disk.path} will be lost. Type 'yes' to write: ")
    except EOFError:
        answer = ""
    if answer.strip().lower() != "yes":
        raise UsageError(f"not confirmed, nothing written to {disk.path}; answer 'yes', or "
                         "pass --yes")


def _write(fd: int, image: Image, disk: Disk) -> str:
    """Write the image to the card open as ``fd``; its sha256. Any failure once writing
    began is :class:`Incomplete`."""
    digest, done = hashlib.sha256(), 0
    try:
        with open_image(image.path) as src, _progress(f"writing {disk.path}",
                                                      image.length) as bar:
            for count, chunk in enumerate(iter(lambda: _read(src, image.path, BLOCK), b""), 1):
                _write_all(fd, chunk)
                digest.update(chunk)
                done += len(chunk)
                bar.update(len(chunk))
                if count % SYNC_EVERY == 0:
                    os.fsync(fd)
        os.fsync(fd)
    except BaseException as exc:
        raise _incomplete(exc, disk, done, image.length) from None
    if done != image.length or (image.sha256 and digest.hexdigest() != image.sha256):
        raise Incomplete(f"{image.path} changed while it was written; {disk.path} is "
                         "incomplete: flash it again", 1)
    return digest.hexdigest()


def _incomplete(exc: BaseException, disk: Disk, done: int, total: int) -> BaseException:
    """The one line for a write that did not finish (or ``exc`` itself when it is a bug)."""
    state = f"{disk.path} is incomplete ({human(done)} of {human(total)} written) and will " \
            "not boot: flash it again"
    if isinstance(exc, KeyboardInterrupt):
        return Incomplete(f"interrupted: {state}", 130)
    if isinstance(exc, Stopped):
        return Incomplete(f"stopped by SIGTERM: {state}", exc.exit_code)
    if isinstance(exc, OSError):
        return Incomplete(f"write error ({exc.strerror}): {state}, or use another card", 7)
    if isinstance(exc, UsageError):
        return Incomplete(f"{exc} ({state})", 1)
    return exc


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view):]


def read_back(disk: Disk, length: int) -> str:
    """sha256 of the card's first ``length`` bytes, read from the card: the device's cache
    is dropped first, else the read-back would only prove that memory holds the image."""
    digest, left = hashlib.sha256(), length
    fd = os.open(disk.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # needs CAP_SYS_ADMIN; fadvise below still drops
            fcntl.ioctl(fd, BLKFLSBUF)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with _progress(f"verifying {disk.path}", length) as bar:
            while left:
                chunk = os.read(fd, min(BLOCK, left))
                if not chunk:
                    raise OSError(0, "the card ended early")
                digest.update(chunk)
                left -= len(chunk)
                bar.update(len(chunk))
    except (KeyboardInterrupt, Stopped, OSError) as exc:
        why = getattr(exc, "strerror", None) or "interrupted"
        code = 130 if isinstance(exc, KeyboardInterrupt) else getattr(exc, "exit_code", 7)
        raise Incomplete(f"{why} while reading back: {disk.path} is written but not verified: "
                         "flash it again", code) from None
    finally:
        os.close(fd)
    return digest.hexdigest()


def _reread_partitions(disk: Disk) -> None:
    """Let the kernel see the new partitions (refused on a loop without partition scan)."""
    with contextlib.suppress(OSError):
        fd = os.open(disk.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, BLKRRPART)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM raises :class:`Stopped` in the main thread, so a write ends with the
    'incomplete' line and the card is released, like Ctrl-C."""
    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Stopped("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Bar:
    """Progress in bytes: a tqdm bar on stderr when tqdm is installed and stderr is a
    terminal, else silent."""

    def __init__(self, desc: str, total: int) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
            return
        self.bar = tqdm(total=total or None, desc=desc, unit="B", unit_scale=True,
                        file=sys.stderr, disable=None, dynamic_ncols=True)

    def update(self, size: int) -> None:
        if self.bar is not None:
            self.bar.update(size)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def _progress(desc: str, total: int) -> Iterator[_Bar]:
    bar = _Bar(desc, total)
    try:
        yield bar
    finally:
        bar.close()
