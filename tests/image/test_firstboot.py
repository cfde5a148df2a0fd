"""First boot's steps on real trees and a real disk, without building an image.

Each step of ``edge.image.firstboot`` takes the root it works on, so it runs here on a
temporary folder laid out like the image's root (the real ``ssh-keygen``), and the grow
step on a real loop-device disk with a mounted ext4 partition (real growpart, resize2fs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.image import firstboot
from tests.image.loopdev import attached

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "edge/image/overlay/boot/firmware/heartsound.toml.example"
KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBd1mV6bZ4tq2d0hZV5c7ZbJwZr2C4Y0nq1m4m9ZJ1s3 "
       "nurse@laptop")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root tree as the image has it: the heartsound user, /etc, the unit's wants link."""
    r = tmp_path / "root"
    (r / "etc/ssh").mkdir(parents=True)
    (r / firstboot.BOOT_DIR).mkdir(parents=True)
    (r / "home/heartsound").mkdir(parents=True)
    uid, gid = os.getuid(), os.getgid()
    (r / "etc/passwd").write_text(f"root:x:0:0:root:/root:/bin/bash\n"
                                  f"heartsound:x:{uid}:{gid}::/home/heartsound:/bin/bash\n")
    (r / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\theartsound\n")
    zone = r / "usr/share/zoneinfo/Europe/Berlin"
    zone.parent.mkdir(parents=True)
    zone.write_bytes(Path("/usr/share/zoneinfo/Europe/Berlin").read_bytes())
    wants = r / firstboot.WANTS
    wants.mkdir(parents=True)
    (wants / firstboot.UNIT).symlink_to("/etc/systemd/system/" + firstboot.UNIT)
    return r


def write_toml(root: Path, text: str) -> None:
    (root / firstboot.BOOT_DIR / firstboot.CONFIG).write_text(text)


def test_host_keys_are_made_under_the_given_root(root):
    names = firstboot.host_keys(root)
    assert {"ssh_host_ed25519_key", "ssh_host_rsa_key", "ssh_host_ecdsa_key"} <= set(names)
    assert (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().startswith("ssh-ed25519 ")


def test_toml_applies_hostname_keys_device_id_timezone_wifi(root):
    write_toml(root, f'hostname = "bed-3"\nssh_authorized_keys = ["{KEY}"]\n'
                     'device_id = "clinic-a-bed-3"\ntimezone = "Europe/Berlin"\n'
                     '[wifi]\nssid = "clinic"\npsk = "secret-psk-1"\ncountry = "DE"\n')
    done = firstboot.apply_config(root)
    assert len(done) == 5
    assert (root / "etc/hostname").read_text() == "bed-3\n"
    assert "127.0.1.1\tbed-3" in (root / "etc/hosts").read_text()
    keys = root / "home/heartsound/.ssh/authorized_keys"
    assert keys.read_text() == KEY + "\n" and keys.stat().st_mode & 0o777 == 0o600
    assert (root / firstboot.DEVICE_ENV).read_text() == "HEARTSOUND_DEVICE_ID=clinic-a-bed-3\n"
    assert "HEARTSOUND_DEVICE_ID=clinic-a-bed-3" in (root / "etc/environment").read_text()
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/Europe/Berlin"
    wpa = (root / firstboot.WPA_CONF).read_text()
    assert 'ssid="clinic"' in wpa and "country=DE" in wpa
    assert (root / firstboot.WANTS / firstboot.WPA_UNIT).is_symlink()


def test_the_shipped_example_is_valid_and_applies(root):
    shutil.copy(EXAMPLE, root / firstboot.BOOT_DIR / firstboot.CONFIG)
    done = firstboot.apply_config(root)
    assert done == ["hostname heartsound-01", "0 SSH key(s) for heartsound",
                    "device id clinic-a-bed-3", "time zone Europe/Berlin"]


@pytest.mark.parametrize("text, says", [
    ("hostname = [", "not valid TOML"),
    ('hostname = "Bed_3"', "is not a host name"),
    ('ssh_authorized_keys = ["not a key"]', "public key lines"),
    ('timezone = "Mars/Olympus"', "is unknown"),
    ('colour = "red"', "unknown key(s) colour"),
    ('[wifi]\nssid = "x"\npsk = "short"', "psk (8-63)"),
])
def test_bad_toml_is_one_line_and_boot_goes_on(root, text, says, capsys):
    write_toml(root, text)
    with pytest.raises(firstboot.ConfigError, match=None) as exc:
        firstboot.apply_config(root)
    assert says in str(exc.value) and "\n" not in str(exc.value)


def run_main(root: Path) -> subprocess.CompletedProcess:
    """firstboot as the unit runs it, as its own process (stdlib only), on `root`."""
    script = REPO / "edge/image/firstboot.py"
    return subprocess.run([sys.executable, "-I", str(script), str(root)], capture_output=True,
                          text=True, timeout=120)


def test_main_with_a_bad_toml_logs_one_line_and_disables_itself(root):
    write_toml(root, "hostname = [")
    proc = run_main(root)
    assert proc.returncode == 0, proc.stderr
    ignored = [ln for ln in proc.stdout.splitlines() if "IGNORED" in ln]
    assert len(ignored) == 1 and "not valid TOML" in ignored[0]
    assert (root / "etc/ssh/ssh_host_ed25519_key").is_file()
    assert not (root / firstboot.WANTS / firstboot.UNIT).is_symlink()
    assert (root / firstboot.DONE).is_file()
    log = (root / firstboot.LOG).read_text()
    assert "SSH host keys:" in log and "IGNORED" in log and "done" in log


def test_main_without_toml_says_so(root):
    proc = run_main(root)
    assert proc.returncode == 0
    assert f"no {firstboot.CONFIG} on the boot partition" in proc.stdout


@pytest.fixture
def loop_disk(tmp_path: Path):
    """A 64 MiB disk image whose second partition (ext4, 16 MiB) ends far before the disk."""
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["sfdisk", "--quiet", str(disk)], check=True, text=True,
                   input="label: dos\nstart=2048, size=8192, type=c\n"
                         "start=10240, size=32768, type=83\n")
    with attached(disk, parts=2) as dev:
        subprocess.run(["mkfs.ext4", "-q", f"{dev}p2"], check=True)
        yield dev


def ext4_bytes(partition: str) -> int:
    out = subprocess.run(["dumpe2fs", "-h", partition], check=True, capture_output=True,
                         text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


# The online resize (the device's mounted root) needs CAP_SYS_RESOURCE, which this
# machine's containers lack: the test grows the unmounted partition, the same growpart
# and resize2fs; the boot test sees the online one.
@pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")
def test_grow_fills_the_disk(loop_disk):
    dev = loop_disk
    before = ext4_bytes(f"{dev}p2")
    said = firstboot.grow(f"{dev}p2")
    size = int(Path(f"/sys/class/block/{Path(dev).name}p2/size").read_text()) * 512
    assert size == (131072 - 10240 - 33) * 512  # to the disk's end (growpart leaves 33)
    assert ext4_bytes(f"{dev}p2") > 3 * before
    assert said.startswith(f"{dev}p2 is ")
    assert "already" in firstboot.grow(f"{dev}p2")  # a second boot changes nothing
