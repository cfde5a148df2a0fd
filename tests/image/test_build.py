"""`heartsound image build`, for real: mmdebstrap, qemu-user, mkfs, sfdisk; built once.

The session's image (`station_image`) is attached read-only through a loop device and its
partitions mounted read-only: the partition table, the boot files a Pi 3/4/5 needs, the
release layout a deploy manages, the manifest, and what must NOT be inside (SSH host
keys, password hashes). The .deb files are cached in ~/.cache/heartsound/image between
runs (the first run downloads them).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edge.deploy.install import current_sees_system_site
from edge.image import build, firstboot
from tests.image.background_build import BUILD_KEY, TEST_IMAGE_ENV
from tests.image.loopdev import attached

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="image build needs root")]

ROOT = "home/heartsound/heartsound"  # the ROOT `heartsound deploy` uses for user heartsound
# The Pi 5's (bcm2712) comes with the kernel from trixie-backports (trixie's has none);
# the D0 stepping's goes by the name the Pi firmware asks for (overlay's z51 kernel hook).
PI_DTBS = ("bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb", "bcm2711-rpi-4-b.dtb",
           "bcm2712-rpi-5-b.dtb", "bcm2712d0-rpi-5-b.dtb")
# What a Pi 5 needs of the kernel beyond its device tree: the RP1 chip (USB, Ethernet,
# GPIO) and the bcm2712's SD card and interrupt controllers.
PI5_MODULES = ("rp1-pci.ko", "clk-rp1.ko", "pinctrl-rp1.ko", "irq-bcm2712-mip.ko",
               "sdhci-brcmstb.ko", "macb.ko")
BUILD_TIMEOUT_S = 3 * 3600  # "returns at all": a cold build on 2 shared cores


@pytest.fixture(scope="session")
def station_image(request) -> Path:
    """The image built by this session in the background (tests/image/conftest.py), or
    $HEARTSOUND_TEST_IMAGE (one built by `heartsound image build` before, to look at it
    again without the build's minutes)."""
    given = os.environ.get(TEST_IMAGE_ENV)
    if given:
        return Path(given)
    return request.config.stash[BUILD_KEY].wait(timeout=BUILD_TIMEOUT_S)


@contextmanager
def mounted(image: Path, tmp: Path) -> Iterator[tuple[str, Path, Path]]:
    """(loop device, boot files, root mount), read-only. The FAT partition is read with
    mtools from its loop device (this machine's kernel may have no vfat), the root mounted."""
    with attached(image, parts=2, read_only=True) as dev:
        boot, root = tmp / "boot", tmp / "root"
        boot.mkdir(exist_ok=True)
        root.mkdir(exist_ok=True)
        subprocess.run(["mcopy", "-s", "-n", "-i", f"{dev}p1", "::*", str(boot)], check=True,
                       env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
        subprocess.run(["mount", "-o", "ro,noload", f"{dev}p2", str(root)], check=True)
        try:
            yield dev, boot, root
        finally:
            subprocess.run(["umount", str(root)], check=False)


@pytest.fixture(scope="module")
def parts(station_image, tmp_path_factory):
    with mounted(station_image, tmp_path_factory.mktemp("mnt")) as found:
        yield found


def test_partition_table_is_mbr_fat_then_linux(station_image):
    table = json.loads(subprocess.run(["sfdisk", "--json", str(station_image)], check=True,
                                      capture_output=True, text=True).stdout)["partitiontable"]
    assert table["label"] == "dos" and table["id"] == build.DISK_ID
    boot, root = table["partitions"]
    assert (boot["type"], boot.get("bootable"), boot["start"]) == ("c", True, 8192)
    assert root["type"] == "83" and root["start"] == boot["start"] + boot["size"]


def test_boot_partition_boots_a_pi_3_4_and_5(parts):
    _, boot, _ = parts
    names = {p.name for p in boot.iterdir()}
    assert {"bootcode.bin", "start.elf", "start4.elf", "fixup.dat", "fixup4.dat",
            "config.txt", "cmdline.txt", "heartsound.toml.example"} <= names
    assert any(n.startswith("vmlinuz") for n in names)
    assert any(n.startswith("initrd.img") for n in names)
    assert set(PI_DTBS) <= names, sorted(names)
    assert "arm_64bit=1" in (boot / "config.txt").read_text()
    cmdline = (boot / "cmdline.txt").read_text()
    assert "root=LABEL=RASPIROOT" in cmdline
    assert "console=serial0,115200" in cmdline and "console=tty1" in cmdline


def test_station_has_the_release_layout_a_deploy_manages(parts):
    _, _, root = parts
    station = root / ROOT
    current = os.readlink(station / "current")
    assert current.startswith("releases/")
    release = station / current
    assert (release / "bin/heartsound").exists() and not (release / ".incomplete").exists()
    assert (release / "etc/heartsound-screen.service").is_file()
    assert (station / "history").read_text().split() == [current.removeprefix("releases/")]
    assert (station / "data").is_dir() and (station / "data").stat().st_mode & 0o777 == 0o700
    passwd = (root / "etc/passwd").read_text()
    uid = next(int(ln.split(":")[2]) for ln in passwd.splitlines()
               if ln.startswith("heartsound:"))
    assert (station / "data").stat().st_uid == uid and release.stat().st_uid == uid


def test_the_kernel_is_the_backported_one_with_the_pi_5_drivers(parts):
    _, _, root = parts
    kernels = [p.name for p in (root / "usr/lib/modules").iterdir()]
    assert len(kernels) == 1 and "+deb13" in kernels[0], kernels
    found = {p.name.split(".ko")[0].replace("_", "-") for p in
             (root / "usr/lib/modules" / kernels[0]).rglob("*.ko*")}
    wanted = {m.removesuffix(".ko").replace("_", "-") for m in PI5_MODULES}
    assert wanted <= found, sorted(wanted - found)
    assert f"n={build.KERNEL_SUITE}" in (root / build.KERNEL_PIN_IN_IMAGE).read_text()


def test_units_enabled_and_firstboot_installed(parts):
    _, _, root = parts
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in ("heartsound-firstboot.service", "systemd-networkd.service", "ssh.service",
                 "heartsound-screen.service"):
        assert (wants / unit).is_symlink(), unit
    assert (root / build.FIRSTBOOT_IN_IMAGE).is_file()
    unit = os.readlink(root / "etc/systemd/system/heartsound-screen.service")
    assert unit == f"/{ROOT}/current/etc/heartsound-screen.service"
    dropin = root / "etc/systemd/system/heartsound-screen.service.d/device.conf"
    assert f"EnvironmentFile=-/{firstboot.DEVICE_ENV}" in dropin.read_text()
    rule = (root / "etc/udev/rules.d/90-heartsound-microphone.rules").read_text()
    assert 'ENV{SYSTEMD_WANTS}+="heartsound-screen.service"' in rule


def test_the_station_takes_pyaudio_from_debian(parts):
    """PyPI has no aarch64 PyAudio: Debian's python3-pyaudio, seen by the release's venv."""
    _, _, root = parts
    assert list((root / "usr/lib/python3/dist-packages").glob("pyaudio*"))
    assert current_sees_system_site(root / ROOT)


def test_no_host_keys_no_password_hashes(parts):
    _, _, root = parts
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    for line in (root / "etc/shadow").read_text().splitlines():
        user, pw = line.split(":")[:2]
        assert pw in ("*", "!", "!*") or pw.startswith("!") and "$" not in pw, user
    assert (root / "etc/machine-id").read_text() == ""


def test_manifest_inside_equals_beside_and_lists_everything(parts, station_image):
    _, _, root = parts
    inside = (root / build.MANIFEST_IN_IMAGE).read_text()
    beside = station_image.with_name(station_image.name + ".manifest.json").read_text()
    assert inside == beside
    m = json.loads(inside)
    pkgs = m["debian_packages"]
    assert {"linux-image-arm64", "raspi-firmware", "python3", "openssh-server",
            "python3-pyaudio"} <= set(pkgs)
    assert "bpo13" in pkgs["linux-image-arm64"]["version"]  # from trixie-backports
    assert pkgs["python3"]["version"].startswith("3.13")
    assert all(len(p["deb_sha256"] or "") == 64 for p in pkgs.values()), \
        [n for n, p in pkgs.items() if not p["deb_sha256"]]
    assert any(w.startswith("numpy-") for w in m["wheels"])
    assert any(w.startswith("ai_edge_litert-") for w in m["wheels"])
    assert len(m["model"]["sha256"]) == 64
    assert m["release"] == os.readlink(root / ROOT / "current").removeprefix("releases/")
