"""`heartsound image flash` against real loop devices.

A small real disk image is made in the test (sfdisk MBR, a FAT boot partition filled with
mtools, an ext4 root made with mkfs.ext4 -d: no mounting needed), then written by the
real command, in a child process, to loop devices (``losetup``) over sparse files. Loop
devices are not removable in sysfs, so every write passes ``--allow-non-removable``,
and one test proves that without it the command refuses. Every loop device, mount and
dm table a test makes is released in a finalizer, even when the test fails.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.image.loopdev import add_partitions

REPO = Path(__file__).resolve().parents[2]
MB = 1 << 20
TOOLS = ("losetup", "partx", "sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4")


def _loop_usable() -> str | None:
    """Why loop devices cannot be used here, or None."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (scripts/setup.sh installs them)"
    if os.geteuid() != 0:
        return "loop devices need root"
    probe = subprocess.run(["losetup", "-f"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"losetup -f failed: {probe.stderr.strip()}"


pytestmark = pytest.mark.skipif(_loop_usable() is not None,
                                reason=f"no loop devices: {_loop_usable()}")


def run(cmd: list[str], **kw) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


@pytest.fixture
def release():
    """Register clean-ups (detach a loop, unmount, remove a dm table); all run at the end,
    newest first, each even if another fails."""
    undo: list[list[str]] = []
    yield undo.append
    for cmd in reversed(undo):
        for _ in range(20):  # udev may hold a fresh device for a moment
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


@pytest.fixture
def loop(release):
    """attach(backing, *losetup flags) -> /dev/loopN, detached at the end of the test."""
    def attach(backing: Path, *flags: str) -> str:
        device = run(["losetup", "-f", "--show", *flags, str(backing)]).strip()
        release(["losetup", "-d", device])
        if "-P" in flags:
            add_partitions(device)  # a kernel without the MBR parser scans nothing
        return device
    return attach


def make_image(folder: Path, size_mb: int = 24) -> Path:
    """A real card image: MBR, FAT32 'HSBOOT' (1-9 MiB) with a config file, ext4 'rootfs'
    (9-17 MiB) with a file in /etc; sparse beyond."""
    img = folder / "station.img"
    with open(img, "wb") as f:
        f.truncate(size_mb * MB)
    run(["sfdisk", "--quiet", str(img)], input="label: dos\n"
        "start=2048, size=16384, type=c, bootable\nstart=18432, size=16384, type=83\n")
    boot, root, tree = folder / "boot.fat", folder / "root.ext4", folder / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("bedside-1\n")
    (folder / "heartsound.toml").write_text('hostname = "bedside-1"\n')
    run(["mkfs.vfat", "-n", "HSBOOT", "-C", str(boot), str(8 * 1024)])
    run(["mcopy", "-i", str(boot), str(folder / "heartsound.toml"), "::heartsound.toml"])
    run(["mkfs.ext4", "-q", "-L", "rootfs", "-d", str(tree), str(root), "8M"])
    with open(img, "r+b") as f:
        for part, offset in ((boot, 1 * MB), (root, 9 * MB)):
            f.seek(offset)
            f.write(part.read_bytes())
    return img


def sparse(path: Path, size_mb: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size_mb * MB)
    return path


def flash(*args: str, stdin: str = "", prefix: tuple[str, ...] = ()
          ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*prefix, sys.executable, "-m", "edge.cli", "image", "flash", *args],
                          capture_output=True, text=True, input=stdin, env=env, timeout=300)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("compress", [False, True], ids=["img", "img.xz"])
def test_flash_writes_the_image_and_reads_it_back(tmp_path, loop, compress):
    image = make_image(tmp_path)
    data = image.read_bytes()
    if compress:
        given = image.with_name("station.img.xz")
        given.write_bytes(lzma.compress(data, preset=0))
    else:
        given = image
    backing = sparse(tmp_path / "card", 64)
    device = loop(backing)
    out = flash(str(given), "--device", device, "--yes", "--allow-non-removable")
    assert out.returncode == 0, out.stderr
    assert f"image sha256 {sha256(data)} ({len(data)} bytes)" in out.stdout
    assert f"card  sha256 {sha256(data)} (read back from {device})" in out.stdout
    assert f"flashed {device} in " in out.stdout
    assert backing.read_bytes()[:len(data)] == data
    assert "heartsound.toml" in run(["mdir", "-i", f"{backing}@@{MB}", "::"])


def test_shows_what_it_overwrites_and_asks(tmp_path, loop):
    image = make_image(tmp_path)
    backing = tmp_path / "card"
    shutil.copyfile(image, backing)
    with open(backing, "r+b") as f:
        f.truncate(32 * MB)
    before = backing.read_bytes()
    device = loop(backing, "-P")
    other = tmp_path / "other.img"
    shutil.copyfile(image, other)
    with open(other, "r+b") as f:  # another image: the same with a mark past the partitions
        f.seek(20 * MB)
        f.write(b"another image")

    refused = flash(str(other), "--device", device, "--allow-non-removable", stdin="no\n")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"heartsound: not confirmed, nothing written to {device}; "
                                      "answer 'yes', or pass --yes")
    name = Path(device).name
    assert f"{name}p1 HSBOOT (vfat, 8.4 MB)" in refused.stdout
    assert f"{name}p2 rootfs (ext4, 8.4 MB)" in refused.stdout
    assert f"will overwrite {device}: loop device backed by {backing}, 33.6 MB" in refused.stdout
    assert backing.read_bytes() == before

    accepted = flash(str(other), "--device", device, "--allow-non-removable", stdin="yes\n")
    assert accepted.returncode == 0, accepted.stderr
    assert backing.read_bytes()[:24 * MB] == other.read_bytes()


def one_line_refusal(out: subprocess.CompletedProcess, *expected: str) -> str:
    """The refusal is one line naming the problem, exit non-zero, no traceback."""
    assert out.returncode != 0, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("heartsound: "), out.stderr
    for text in expected:
        assert text in lines[0]
    return lines[0]


def test_refuses_a_partition(tmp_path, loop):
    backing = tmp_path / "card"
    shutil.copyfile(make_image(tmp_path), backing)
    device = loop(backing, "-P")
    out = flash(str(tmp_path / "station.img"), "--device", f"{device}p1", "--yes",
                "--allow-non-removable")
    one_line_refusal(out, f"{device}p1 is a partition of {device}; give the whole disk: "
                     f"--device {device}")


def test_refuses_a_disk_with_a_mounted_partition(tmp_path, loop, release):
    image = make_image(tmp_path)
    backing = tmp_path / "card"
    shutil.copyfile(image, backing)
    before = backing.read_bytes()
    device = loop(backing, "-P")
    where = tmp_path / "mnt with space"
    where.mkdir()
    run(["mount", "-o", "ro", f"{device}p2", str(where)])
    release(["umount", str(where)])
    out = flash(str(image), "--device", device, "--yes", "--allow-non-removable")
    one_line_refusal(out, f"{device}p2 on {device} is mounted on {where}; unmount it")
    assert backing.read_bytes() == before


def test_refuses_a_disk_with_swap_on_it(tmp_path, loop, release):
    """A 8 MiB swap area on the card's second partition, low priority, removed at the end."""
    image = make_image(tmp_path)
    backing = tmp_path / "card"
    shutil.copyfile(image, backing)
    device = loop(backing, "-P")
    run(["mkswap", f"{device}p2"])
    run(["swapon", "-p", "0", f"{device}p2"])
    release(["swapoff", f"{device}p2"])
    out = flash(str(image), "--device", device, "--yes", "--allow-non-removable")
    one_line_refusal(out, f"{device}p2 on {device} is in use as swap; run sudo swapoff")


def test_refuses_a_zstd_image_saying_how_to_decompress_it(tmp_path, loop):
    device = loop(sparse(tmp_path / "card", 32))
    given = tmp_path / "station.img.zst"
    given.write_bytes(b"\x28\xb5\x2f\xfd")
    out = flash(str(given), "--device", device, "--yes", "--allow-non-removable")
    one_line_refusal(out, f"run zstd -d {given}")


def test_refuses_a_disk_smaller_than_the_image(tmp_path, loop):
    device = loop(sparse(tmp_path / "card", 16))
    out = flash(str(make_image(tmp_path)), "--device", device, "--yes", "--allow-non-removable")
    one_line_refusal(out, f"{device} holds 16.8 MB, the image needs 25.2 MB; use a larger card")


def test_refuses_a_file_that_is_not_a_disk_image(tmp_path, loop):
    """A bare FAT file system has the 55 AA signature too, but no partition table."""
    device = loop(sparse(tmp_path / "card", 16))
    fat = tmp_path / "bare.fat"
    run(["mkfs.vfat", "-C", str(fat), "1024"])
    text = tmp_path / "notes.img"
    text.write_text("not an image\n")
    for given in (fat, text):
        out = flash(str(given), "--device", device, "--yes", "--allow-non-removable")
        one_line_refusal(out, f"{given} is not a disk image (no MBR partition table")


def test_refuses_a_missing_or_damaged_image_before_writing(tmp_path, loop):
    """A truncated .xz decompresses well past its first sector: the damage is found by the
    reading that precedes the write, so the card is untouched."""
    backing = sparse(tmp_path / "card", 32)
    device = loop(backing)
    packed = lzma.compress(make_image(tmp_path).read_bytes(), preset=0)
    damaged = tmp_path / "damaged.img.xz"
    damaged.write_bytes(packed[:len(packed) // 2])
    for given, why in ((tmp_path / "none.img", "No such file or directory"),
                       (damaged, "download it again")):
        out = flash(str(given), "--device", device, "--yes", "--allow-non-removable")
        one_line_refusal(out, f"cannot read the image {given}", why)
    assert not backing.read_bytes().strip(b"\0")


def test_refuses_a_disk_that_is_not_removable_unless_told(tmp_path, loop):
    backing = sparse(tmp_path / "card", 32)
    device = loop(backing)
    out = flash(str(make_image(tmp_path)), "--device", device, "--yes")
    one_line_refusal(out, f"{device} (loop device backed by {backing}) is not a removable disk",
                     "pass --allow-non-removable")
    assert not backing.read_bytes().strip(b"\0")


def test_refuses_a_read_only_card(tmp_path, loop):
    device = loop(sparse(tmp_path / "card", 32), "-r")
    out = flash(str(make_image(tmp_path)), "--device", device, "--yes", "--allow-non-removable")
    one_line_refusal(out, f"{device} is read-only")


def test_refuses_a_regular_file_or_a_missing_path(tmp_path):
    image = make_image(tmp_path)
    file = sparse(tmp_path / "card.bin", 32)
    for device, why in ((file, "is not a block device"), (tmp_path / "none", "does not exist")):
        out = flash(str(image), "--device", str(device), "--yes", "--allow-non-removable")
        one_line_refusal(out, f"{device} {why}; give the SD card's whole-disk device")
    assert not file.read_bytes().strip(b"\0")


def test_a_user_who_cannot_write_the_card_is_told_to_use_sudo(tmp_path, loop):
    """Root without its capabilities (setpriv drops them all) and a node of the card it may
    only read: the refusal an ordinary user meets on /dev/sdb, given before any question."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing")
    backing = sparse(tmp_path / "card", 32)
    node = tmp_path / "card-node"
    os.mknod(node, 0o400 | stat.S_IFBLK, os.stat(loop(backing)).st_rdev)
    out = flash(str(make_image(tmp_path)), "--device", str(node), "--allow-non-removable",
                prefix=("setpriv", "--inh-caps=-all", "--bounding-set=-all"))
    one_line_refusal(out, f"cannot open {node} for writing (permission denied); run with sudo")
    assert "Type 'yes'" not in out.stdout
    assert not backing.read_bytes().strip(b"\0")


def test_a_write_error_says_the_card_is_incomplete(tmp_path, loop, release):
    """The card's backing file lives on a 4 MiB tmpfs: the loop device reports 64 MiB, and
    writes past the fourth MiB fail in the kernel (EIO), like a dying card."""
    small = tmp_path / "small"
    small.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(small)])
    release(["umount", str(small)])
    device = loop(sparse(small / "card", 64))
    out = flash(str(make_image(tmp_path)), "--device", device, "--yes", "--allow-non-removable")
    assert out.returncode == 7
    one_line_refusal(out, "write error (Input/output error): ", f"{device} is incomplete",
                     "flash it again")


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "stopped by SIGTERM")],
                         ids=["ctrl-c", "sigterm"])
def test_interrupted_write_says_incomplete_and_releases_the_card(tmp_path, loop, sig, code,
                                                                 said):
    """A 1 GiB image (sparse beyond its partitions) to a loop device: the signal is sent
    once the card's backing file holds data, i.e. in the middle of the write."""
    image = make_image(tmp_path, size_mb=1024)
    backing = sparse(tmp_path / "card", 1024)
    device = loop(backing)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "edge.cli", "image", "flash", str(image),
                              "--device", device, "--yes", "--allow-non-removable"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while os.stat(backing).st_blocks == 0 and child.poll() is None:
        assert time.monotonic() < deadline, "the write never started"
        time.sleep(0.005)
    child.send_signal(sig)
    out, err = child.communicate(timeout=120)
    assert child.returncode == code, err
    assert err.strip().splitlines() == [err.strip()], err
    assert err.startswith(f"heartsound: {said}: {device} is incomplete (")
    assert err.strip().endswith("written) and will not boot: flash it again")
    fd = os.open(device, os.O_WRONLY | os.O_EXCL)  # nothing holds the card any more
    os.close(fd)


def test_the_read_back_reads_the_card_not_the_cache(tmp_path, loop):
    """Data written through the device stays in its page cache after fsync while anyone
    holds the device open (the kernel drops it at the last close; a desktop's disk
    monitor often holds cards open). The card's content then changes behind the cache (its
    backing file is rewritten, as a fake card that drops writes would leave it): the
    read-back must see the card's content."""
    from edge.image.disk import find_disk
    from edge.image.flash import read_back

    backing = sparse(tmp_path / "card", 16)
    device = loop(backing)
    written = os.urandom(4 * MB)
    holder = os.open(device, os.O_RDWR)
    try:
        os.write(holder, written)
        os.fsync(holder)
        on_card = bytes(len(written))
        with open(backing, "r+b") as f:
            f.write(on_card)
        assert os.pread(holder, len(written), 0) == written  # the cache, not the card
        assert read_back(find_disk(device), len(written)) == sha256(on_card)
    finally:
        os.close(holder)


def test_progress_is_shown_on_a_terminal(tmp_path, loop):
    """stderr on a pseudo-terminal, as when a person runs it: a bar for the write and one
    for the read-back, each reaching 100%."""
    pytest.importorskip("tqdm", reason="progress bars come from tqdm (the 'train' extra)")
    import fcntl
    import pty
    import struct
    import termios

    device = loop(sparse(tmp_path / "card", 32))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        out = subprocess.run([sys.executable, "-m", "edge.cli", "image", "flash",
                              str(make_image(tmp_path)), "--device", device, "--yes",
                              "--allow-non-removable"], stdout=subprocess.PIPE, stderr=slave,
                             env=env, timeout=300)
        os.close(slave)
        shown = b""
        while chunk := _read_pty(master):
            shown += chunk
    finally:
        os.close(master)
    assert out.returncode == 0
    text = shown.decode(errors="replace")
    for bar in (f"writing {device}: 100%", f"verifying {device}: 100%"):
        assert bar in text, text


def _read_pty(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the terminal's other side is closed and drained
        return b""
