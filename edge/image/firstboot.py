"""First boot of a flashed station: make it this station, once, then step aside.

Copied into the image as ``/usr/local/lib/heartsound/firstboot.py`` and run by
``heartsound-firstboot.service`` before sshd, with the device's own Python: standard
library only. Steps, each taking the root directory it works on (``/`` on the device, a
temporary tree in the tests):

1. SSH host keys made here (``ssh-keygen -A``), never baked into the image: every card
   flashed from one image would otherwise share them.
2. The root partition and file system grown to the card (``growpart`` + ``resize2fs``,
   online).
3. ``heartsound.toml`` from the FAT boot partition (written on any laptop): hostname, SSH
   authorized keys for the ``heartsound`` user, device id, time zone, optional Wi-Fi.
   A missing or bad file costs one clear line on the console; the station still boots.
4. The unit disabled and a marker written, so that it never runs again.

Everything it does goes to stdout (the unit sends it to the journal and the serial
console) and to ``/var/log/heartsound-firstboot.log``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

USER = "heartsound"
BOOT_DIR = "boot/firmware"
CONFIG = "heartsound.toml"
LOG = "var/log/heartsound-firstboot.log"
DONE = "var/lib/heartsound/firstboot.done"
UNIT = "heartsound-firstboot.service"
WANTS = "etc/systemd/system/multi-user.target.wants"
# Read by the service at each start (the image's drop-in names it), so the id written here
# applies without a daemon-reload: the service's unit was loaded before first boot ran.
DEVICE_ENV = "etc/heartsound/device.env"
WPA_CONF = "etc/wpa_supplicant/wpa_supplicant-wlan0.conf"
WPA_UNIT = "wpa_supplicant@wlan0.service"
HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DEVICE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
TIMEZONE = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")
KEY_LINE = re.compile(r"^(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+ [A-Za-z0-9+/=]+( .*)?$")
KNOWN_KEYS = {"hostname", "ssh_authorized_keys", "device_id", "timezone", "wifi"}


class ConfigError(Exception):
    """heartsound.toml is unreadable or holds a value that cannot be applied."""


def log(root: Path, line: str) -> None:
    """One line to stdout (journal + console through the unit) and to the log file."""
    print(f"heartsound-firstboot: {line}", flush=True)
    path = root / LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(line + "\n")


def host_keys(root: Path) -> list[str]:
    """Generate the missing SSH host keys under root/etc/ssh; return their file names."""
    (root / "etc/ssh").mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-A", "-f", str(root)], check=True, capture_output=True)
    return sorted(p.name for p in (root / "etc/ssh").glob("ssh_host_*_key"))


def _disk_and_number(partition: str) -> tuple[str, int]:
    """/dev/mmcblk0p2 -> (/dev/mmcblk0, 2), through sysfs (works for sdX, loopNpM, vdX)."""
    name = Path(os.path.realpath(partition)).name
    sys_part = Path("/sys/class/block") / name
    number = int((sys_part / "partition").read_text())
    disk = Path(os.path.realpath(sys_part)).parent.name
    return f"/dev/{disk}", number


def _mounted(partition: str) -> bool:
    real = os.path.realpath(partition)
    return any(os.path.realpath(line.split()[0]) == real for line in
               Path("/proc/self/mounts").read_text().splitlines() if line.startswith("/"))


def grow(partition: str) -> str:
    """Grow `partition` to the end of its disk and its ext4 to the partition.

    Online when mounted (the device's root at first boot); an unmounted one is checked
    first, as resize2fs demands. A partition already filling the disk is no error.
    """
    disk, number = _disk_and_number(partition)
    proc = subprocess.run(["growpart", disk, str(number)], capture_output=True, text=True)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and "NOCHANGE" not in
                                         proc.stdout):
        raise OSError(f"growpart {disk} {number}: {(proc.stderr or proc.stdout).strip()}")
    if not _mounted(partition):
        subprocess.run(["e2fsck", "-f", "-p", partition], check=True, capture_output=True)
    subprocess.run(["resize2fs", partition], check=True, capture_output=True, text=True)
    size = int(Path(f"/sys/class/block/{Path(os.path.realpath(partition)).name}/size")
               .read_text()) * 512
    return f"{partition} is {size / 2**30:.2f} GiB" + (
        " (already filled the card)" if proc.returncode == 1 else "")


def root_partition() -> str:
    """The block device mounted at / (from /proc/self/mountinfo)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[fields.index("-") + 2]
    raise OSError("no file system mounted at /")


def read_config(root: Path) -> dict | None:
    """heartsound.toml from the boot partition; None when there is none."""
    path = root / BOOT_DIR / CONFIG
    if not path.is_file():
        return None
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} is not valid TOML ({exc})") from None
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{path.name}: unknown key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(KNOWN_KEYS))}")
    return config


def _string(config: dict, key: str, pattern: re.Pattern, what: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise ConfigError(f"{CONFIG}: {key} = {value!r} is not {what}")
    return value


def set_hostname(root: Path, config: dict) -> str | None:
    name = _string(config, "hostname", HOSTNAME, "a host name (a-z, 0-9, '-')")
    if name is None:
        return None
    (root / "etc/hostname").write_text(name + "\n")
    hosts = root / "etc/hosts"
    lines = [ln for ln in (hosts.read_text().splitlines() if hosts.is_file() else [])
             if not ln.startswith("127.0.1.1")]
    hosts.write_text("\n".join([*lines, f"127.0.1.1\t{name}"]) + "\n")
    if root == Path("/"):
        subprocess.run(["hostname", name], check=False)
    return f"hostname {name}"


def _user_ids(root: Path, user: str) -> tuple[int, int, Path]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3]), Path(fields[5].lstrip("/"))
    raise ConfigError(f"no user {user!r} in the image")


def set_keys(root: Path, config: dict) -> str | None:
    keys = config.get("ssh_authorized_keys")
    if keys is None:
        return None
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not all(isinstance(k, str) and KEY_LINE.match(k.strip())
                                             for k in keys):
        raise ConfigError(f"{CONFIG}: ssh_authorized_keys must be a list of public key lines "
                          "('ssh-ed25519 AAAA... comment')")
    uid, gid, home = _user_ids(root, USER)
    ssh = root / home / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    path = ssh / "authorized_keys"
    path.write_text("".join(k.strip() + "\n" for k in keys))
    os.chmod(path, 0o600)
    for p in (ssh, path):
        os.chown(p, uid, gid)
    return f"{len(keys)} SSH key(s) for {USER}"


def set_device_id(root: Path, config: dict) -> str | None:
    """HEARTSOUND_DEVICE_ID for the service (DEVICE_ENV, outside the releases, so that a
    deploy keeps it) and for SSH sessions (/etc/environment)."""
    device = _string(config, "device_id", DEVICE_ID, "a device id (A-Z, a-z, 0-9, '._-')")
    if device is None:
        return None
    service_env = root / DEVICE_ENV
    service_env.parent.mkdir(parents=True, exist_ok=True)
    service_env.write_text(f"HEARTSOUND_DEVICE_ID={device}\n")
    env = root / "etc/environment"
    lines = [ln for ln in (env.read_text().splitlines() if env.is_file() else [])
             if not ln.startswith("HEARTSOUND_DEVICE_ID=")]
    env.write_text("\n".join([*lines, f"HEARTSOUND_DEVICE_ID={device}"]) + "\n")
    return f"device id {device}"


def set_timezone(root: Path, config: dict) -> str | None:
    zone = _string(config, "timezone", TIMEZONE, "a time zone name such as Europe/Berlin")
    if zone is None:
        return None
    if not (root / "usr/share/zoneinfo" / zone).is_file():
        raise ConfigError(f"{CONFIG}: timezone {zone!r} is unknown (no "
                          f"/usr/share/zoneinfo/{zone})")
    localtime = root / "etc/localtime"
    if localtime.is_symlink() or localtime.exists():
        localtime.unlink()
    localtime.symlink_to(f"/usr/share/zoneinfo/{zone}")
    (root / "etc/timezone").write_text(zone + "\n")
    return f"time zone {zone}"


def set_wifi(root: Path, config: dict) -> str | None:
    wifi = config.get("wifi")
    if wifi is None:
        return None
    if not (isinstance(wifi, dict) and isinstance(wifi.get("ssid"), str)
            and isinstance(wifi.get("psk"), str) and 0 < len(wifi["ssid"]) <= 32
            and 8 <= len(wifi["psk"]) <= 63 and '"' not in wifi["ssid"] + wifi["psk"]):
        raise ConfigError(f"{CONFIG}: [wifi] needs ssid (1-32 characters) and psk (8-63), "
                          "without '\"'")
    country = wifi.get("country", "")
    conf = root / WPA_CONF
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text((f"country={country}\n" if country else "") +
                    f'network={{\n\tssid="{wifi["ssid"]}"\n\tpsk="{wifi["psk"]}"\n}}\n')
    os.chmod(conf, 0o600)
    wants = root / WANTS / WPA_UNIT
    if not wants.is_symlink():
        wants.symlink_to("/lib/systemd/system/wpa_supplicant@.service")
    return f"Wi-Fi {wifi['ssid']}"


STEPS = (set_hostname, set_keys, set_device_id, set_timezone, set_wifi)


def apply_config(root: Path) -> list[str]:
    """Read heartsound.toml and apply it; return what was done (ConfigError if bad)."""
    config = read_config(root)
    if config is None:
        return []
    return [done for step in STEPS if (done := step(root, config))]


def disable(root: Path) -> None:
    """Never again: the unit's wants link goes and the marker (its condition) appears."""
    (root / WANTS / UNIT).unlink(missing_ok=True)
    marker = root / DONE
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def main(root: Path = Path("/")) -> int:
    """Each step logs its own line; a failing step does not stop the ones after it."""
    try:
        log(root, f"SSH host keys: {', '.join(host_keys(root))}")
    except (OSError, subprocess.CalledProcessError) as exc:
        log(root, f"SSH host keys FAILED ({exc}); sshd will not start")
    try:
        log(root, f"root file system: {grow(root_partition())}")
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        log(root, f"growing the root file system FAILED ({exc}); the card's free space "
                  "stays unused")
    try:
        done = apply_config(root)
        log(root, f"{CONFIG}: " + ("; ".join(done) if done else "nothing to apply")
            if done or (root / BOOT_DIR / CONFIG).is_file() else
            f"no {CONFIG} on the boot partition; SSH takes no logins until "
            f"ssh_authorized_keys is set (see {CONFIG}.example)")
    except (ConfigError, OSError) as exc:
        log(root, f"{CONFIG} IGNORED: {exc}; fix it on the boot partition and remove "
                  f"/{DONE} to apply it at the next boot")
    disable(root)
    log(root, "done; this runs once")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/")))
