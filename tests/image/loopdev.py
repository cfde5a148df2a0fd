"""A disk image as a loop device with its partitions, for the image tests (root only).

``losetup --partscan`` asks the kernel to read the partition table; where the kernel leaves
that to user space (no udev in a container), ``partx --add`` registers them, and devtmpfs
makes their /dev nodes.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WAIT_S = 10


def add_partitions(dev: str) -> None:
    """``partx --add`` when the kernel's scan registered no partition of ``dev``."""
    if not Path(f"/sys/class/block/{Path(dev).name}p1").exists():
        subprocess.run(["partx", "--add", dev], check=True, capture_output=True)


@contextmanager
def attached(image: Path, parts: int, read_only: bool = False) -> Iterator[str]:
    """Yield /dev/loopN for `image` once /dev/loopNp1../dev/loopNp<parts> exist."""
    dev = subprocess.run(["losetup", "--find", "--show", "--partscan",
                          *(["--read-only"] if read_only else []), str(image)],
                         check=True, capture_output=True, text=True).stdout.strip()
    try:
        nodes = [Path(f"{dev}p{n}") for n in range(1, parts + 1)]
        add_partitions(dev)
        deadline = time.monotonic() + WAIT_S
        while not all(n.exists() for n in nodes) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(n.exists() for n in nodes), f"{dev}: partitions never appeared"
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)
