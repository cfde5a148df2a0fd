"""Build ``station.img``: Debian trixie arm64 for Raspberry Pi 3/4/5 with the station inside.

Host side, as root, on any architecture (arm64 programs run through qemu-user and
binfmt_misc; ``scripts/setup.sh`` installs and registers what is needed):

1. the offline bundle (``heartsound deploy --offline-bundle``'s archive: heartsound, the
   dependency wheels for the image's Python, aarch64 / CPython 3.13, the model, a smoke
   recording);
2. ``mmdebstrap`` makes the root folder from Debian packages, with the ``.deb`` files kept
   in a cache between runs, lays ``overlay/`` over it and runs ``customize.sh`` inside it:
   the bundle's own ``install.py`` installs the station at the ROOT a deploy uses;
3. the partitions are built from folders, never mounted: ``mkfs.vfat`` + ``mcopy`` for the
   FAT boot partition (firmware, kernel, initrd, device trees, config.txt, cmdline.txt),
   ``mkfs.ext4 -d`` for the root, ``sfdisk`` for the MBR table (Pi 3, 4 and 5 boot it);
4. the manifest (every package and its ``.deb``'s sha256, every wheel, the model, the
   inputs) goes inside the image and beside it.

SOURCE_DATE_EPOCH, fixed UUIDs, a fixed hash seed and a fixed volume id make the same
inputs give the same package set and file contents; what still differs run to run is
listed in the README (the release's name carries the install time).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edge.deploy.bundle import build_bundle, device_requirements
from edge.deploy.install import safe_extract, sha256_file
from edge.deploy.offline import build_offline_bundle, top_folder
from edge.deploy.wheels import WheelTarget, download_dependency_wheels, manylinux_platforms
from edge.errors import DeviceError, UsageError

HERE = Path(__file__).resolve().parent
# Debian 13 (trixie), not 12 (bookworm): the Raspberry Pi 5 needs a kernel with its device
# tree and its RP1 chip's drivers (USB, Ethernet), which Debian has only in trixie-backports
# (bookworm's 6.1 and bookworm-backports' 6.12 have neither). Those kernels need trixie's
# linux-base and run-parts, and run-parts needs trixie's glibc: there is no bookworm image
# with a Pi 5 kernel made of Debian packages alone. The kernel alone comes from backports.
SUITE = "trixie"
ARCH = "arm64"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KERNEL_SUITE = f"{SUITE}-backports"
KERNEL_PIN = f"Package: linux-*\nPin: release n={KERNEL_SUITE}\nPin-Priority: 990\n"
KERNEL_PIN_IN_IMAGE = "etc/apt/preferences.d/heartsound-kernel"
IMAGE_PYTHON, IMAGE_GLIBC = "3.13", "2.41"  # trixie's: what the bundle's wheels are for
VARIANT = "apt"
PACKAGES = (
    "systemd", "systemd-sysv", "udev", "kmod", "initramfs-tools", "linux-image-arm64",
    "dbus",                                # systemctl, hostnamectl, ... for the heartsound login
    "raspi-firmware",                      # boot firmware, config.txt and cmdline.txt
    "firmware-brcm80211", "wpasupplicant",  # the Pi's Wi-Fi, when heartsound.toml asks
    "openssh-server", "sudo", "iproute2",
    "python3", "python3-venv",             # the station's venv (CPython 3.13)
    "alsa-utils",                          # the microphone (arecord -l to check it)
    "python3-pyaudio",                     # ... and PyAudio for it: PyPI has no aarch64 wheel
    "e2fsprogs", "cloud-guest-utils",      # growpart + resize2fs at first boot
    "tzdata", "fake-hwclock",              # heartsound.toml's time zone; no RTC on a Pi
)
NO_INITRD_UPDATES = "update_initramfs=no"
DPKG_OPTS = ("path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
             "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/locale/*",
             "path-exclude=/usr/share/info/*")
SOURCE_DATE_EPOCH = 1735689600  # 2025-01-01: file times inside the image
DEFAULT_CACHE = Path("~/.cache/heartsound/image")
MANIFEST_IN_IMAGE = "etc/heartsound/image-manifest.json"
FIRSTBOOT_IN_IMAGE = "usr/local/lib/heartsound/firstboot.py"
STAGE_IN_IMAGE = "/tmp/heartsound-image"
ROOT_LABEL, BOOT_LABEL = "RASPIROOT", "RASPIFIRM"
ROOT_UUID = "48534e44-0000-4000-8000-726f6f746673"   # fixed: reproducible file system
HASH_SEED = "48534e44-0000-4000-8000-686173687365"
BOOT_VOLUME_ID = "48534e44"
DISK_ID = "0x48534e44"
MIB = 1 << 20
SECTOR = 512
BOOT_START_MIB, BOOT_MIB = 4, 256
ROOT_SLACK = 1.15                # free space in the root before first boot grows it
ROOT_EXTRA_MIB = 256
COMPRESSORS = {"xz": ["xz", "-T0", "-6", "-k", "-f"], "zst": ["zstd", "-T0", "-19", "-k", "-f",
                                                              "-q"]}
HOST_TOOLS = {"mmdebstrap": "mmdebstrap", "mkfs.ext4": "e2fsprogs", "mkfs.vfat": "dosfstools",
              "mcopy": "mtools", "sfdisk": "fdisk"}
TAIL_LINES = 40
BINFMT = Path("/proc/sys/fs/binfmt_misc")


@dataclass(frozen=True)
class BuildOptions:
    out: Path
    cache: Path = DEFAULT_CACHE
    model: Path | None = None
    compress: str | None = None  # "xz" or "zst"
    mirror: str = DEFAULT_MIRROR  # a Debian mirror's base URL (a clinic's own, say)
    rebuild: bool = False  # build even when the cache holds an image of the same inputs


def apt_sources(mirror: str) -> tuple[str, str]:
    """The two sources lines: trixie (main, and the Pi's Wi-Fi firmware) and the
    backports the kernel comes from, both from ``mirror``."""
    base = mirror.rstrip("/")
    return (f"deb {base} {SUITE} main non-free-firmware", f"deb {base} {KERNEL_SUITE} main")


def check_mirror(mirror: str) -> None:
    if not mirror.startswith(("http://", "https://", "file:/")):
        raise UsageError(f"--mirror {mirror}: give a Debian mirror's base URL, such as "
                         f"{DEFAULT_MIRROR} (http://, https:// or file:/)")


@dataclass(frozen=True)
class BuildResult:
    image: Path
    manifest: Path
    compressed: Path | None
    seconds: float
    packages: int
    cached_from: str | None = None  # the cached build's time when the image was copied


#: Built images kept in CACHE/images, newest first; each is about 1.4 GB (sparse).
KEEP_IMAGES = 1
IMAGE_INPUTS = ("build.py", "customize.sh", "firstboot.py")


def inputs_key(bundle: dict, mirror: str) -> str:
    """A hash of what the image is made from: the station's files (the bundle's sha256s:
    heartsound's wheel, the dependency wheels, the model), the package list and options,
    the mirror, mmdebstrap's version, and this module, customize.sh, firstboot.py and
    overlay/. What it cannot see is the mirror's packages of the day: a cached image keeps
    those of the day it was built (--rebuild takes today's)."""
    digest = hashlib.sha256()
    overlay = sorted(p for p in (HERE / "overlay").rglob("*") if p.is_file())
    parts = {"bundle": {rel: f["sha256"] for rel, f in sorted(bundle["files"].items())},
             "target": bundle["target"], "packages": PACKAGES, "dpkg": DPKG_OPTS,
             "sources": apt_sources(mirror), "variant": VARIANT,
             "mmdebstrap": _tool_version(["mmdebstrap", "--version"]),
             "code": {name: sha256_file(HERE / name) for name in IMAGE_INPUTS},
             "overlay": {str(p.relative_to(HERE)): sha256_file(p) for p in overlay}}
    digest.update(json.dumps(parts, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def _sparse_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".part")
    run_step("copying the image", ["cp", "--sparse=always", "--reflink=auto", str(src),
                                   str(tmp)])
    tmp.replace(dst)


def from_cache(images: Path, key: str, out: Path) -> str | None:
    """Copy the cached image of ``key`` to ``out`` (and its manifest beside it); the
    cached build's time, or None when there is none."""
    image, manifest = images / f"{key}.img", images / f"{key}.img.manifest.json"
    if not (image.is_file() and manifest.is_file()):
        return None
    _sparse_copy(image, out)
    shutil.copyfile(manifest, out.with_name(out.name + ".manifest.json"))
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(image.stat().st_mtime))


def into_cache(images: Path, key: str, out: Path) -> None:
    """Keep the image just built under its key; only the newest KEEP_IMAGES stay."""
    images.mkdir(parents=True, exist_ok=True)
    _sparse_copy(out, images / f"{key}.img")
    shutil.copyfile(out.with_name(out.name + ".manifest.json"),
                    images / f"{key}.img.manifest.json")
    kept = sorted(images.glob("*.img"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in kept[KEEP_IMAGES:]:
        old.unlink()
        old.with_name(old.name + ".manifest.json").unlink(missing_ok=True)


def check_host(options: BuildOptions) -> None:
    """Refuse before anything is downloaded, with one line saying what to do."""
    if os.geteuid() != 0:
        raise UsageError("image build: run as root (mmdebstrap installs packages into a root "
                         "folder and mkfs.ext4 must keep their owners); e.g. sudo heartsound "
                         "image build ...")
    for tool, package in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            raise UsageError(f"image build: no {tool} on this machine; run scripts/setup.sh "
                             f"(or apt-get install {package})")
    if options.compress and shutil.which(COMPRESSORS[options.compress][0]) is None:
        raise UsageError(f"image build: no {COMPRESSORS[options.compress][0]} for --compress "
                         f"{options.compress}; apt-get install it or leave --compress out")
    if os.uname().machine != "aarch64" and not (BINFMT / "qemu-aarch64").is_file():
        raise UsageError("image build: arm64 programs cannot run here (binfmt_misc has no "
                         "qemu-aarch64); run scripts/setup.sh, which installs "
                         "qemu-user-static and registers it")
    if not options.out.name.endswith(".img"):
        raise UsageError(f"{options.out}: the image is a raw disk image; give a name ending "
                         "in .img")
    check_mirror(options.mirror)


@contextmanager
def source_date_epoch() -> Iterator[None]:
    """SOURCE_DATE_EPOCH set for what runs inside: `pip wheel` then stamps the heartsound
    wheel's files with it, so the same sources give the same wheel (and sha256)."""
    before = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = str(SOURCE_DATE_EPOCH)
    try:
        yield
    finally:
        if before is None:
            del os.environ["SOURCE_DATE_EPOCH"]
        else:
            os.environ["SOURCE_DATE_EPOCH"] = before


def image_target() -> WheelTarget:
    """The wheels the image's own Python takes: aarch64, trixie's glibc and CPython."""
    return WheelTarget(tuple(manylinux_platforms("aarch64", IMAGE_GLIBC)), IMAGE_PYTHON)


def make_bundle(work: Path, model: Path | None) -> tuple[Path, dict]:
    """The offline bundle for the Pi (as `heartsound deploy --offline-bundle` makes it),
    extracted in work/stage; returns its folder and the bundle's manifest."""
    target = image_target()
    print(f"image: downloading the wheels for {target.describe()} ...", file=sys.stderr)
    deps = download_dependency_wheels(work / "deps", device_requirements(), target)
    bundle = build_bundle(work / "bundle", model=model, dependency_wheels=deps, target=target)
    archive = build_offline_bundle(bundle, work / "offline.tar.gz")
    stage = work / "stage"
    safe_extract(archive, stage)  # tarfile's filter= is newer than Debian 12's Python 3.11.2
    shutil.copy(HERE / "customize.sh", stage / "customize.sh")
    return stage / top_folder(bundle), bundle.manifest


def mmdebstrap_command(rootdir: Path, cache: Path, stage: Path,
                       mirror: str = DEFAULT_MIRROR) -> list[str]:
    """mmdebstrap into `rootdir`; the .debs go through `cache` (kept between runs)."""
    bundle_in_image = f"{STAGE_IN_IMAGE}/{stage.name}"
    cmd = ["mmdebstrap", f"--variant={VARIANT}", f"--architectures={ARCH}",
           "--skip=essential/unlink", f"--include={','.join(PACKAGES)}",
           *(f"--dpkgopt={o}" for o in DPKG_OPTS),
           '--setup-hook=mkdir -p "$1"/var/cache/apt/archives "$1"/boot/firmware '
           '"$1"/etc/apt/preferences.d',
           f"--setup-hook=printf '{KERNEL_PIN}' > \"$1\"/{KERNEL_PIN_IN_IMAGE}",
           # one initrd (the kernel's own postinst), not one more per trigger: under
           # qemu-user each takes many minutes; customize.sh turns updates back on
           f"--setup-hook=mkdir -p \"$1\"/etc/initramfs-tools && echo {NO_INITRD_UPDATES} "
           '> "$1"/etc/initramfs-tools/update-initramfs.conf',
           "--dpkgopt=force-confold", "--dpkgopt=force-confdef",
           f"--setup-hook=sync-in {cache} /var/cache/apt/archives/",
           f"--customize-hook=sync-out /var/cache/apt/archives {cache}",
           f"--customize-hook=sync-in {HERE / 'overlay'} /",
           f'--customize-hook=mkdir -p "$1"/{Path(FIRSTBOOT_IN_IMAGE).parent} '
           f'"$1"{STAGE_IN_IMAGE}',  # sync-in and copy-in need their target folder
           f"--customize-hook=copy-in {HERE / 'firstboot.py'} /{Path(FIRSTBOOT_IN_IMAGE).parent}",
           f"--customize-hook=sync-in {stage.parent} {STAGE_IN_IMAGE}",
           f"--chrooted-customize-hook=sh {STAGE_IN_IMAGE}/customize.sh {bundle_in_image}",
           f'--customize-hook=rm -rf "$1"{STAGE_IN_IMAGE}',
           SUITE, str(rootdir), *apt_sources(mirror)]
    return cmd


def run_step(what: str, cmd: list[str], *, log: Path | None = None,
             **kw) -> subprocess.CompletedProcess:
    """Run one build step; its failure becomes one line (the tool's last output lines).

    With a `log`, the tool's whole output goes there and its progress lines
    (mmdebstrap's "I: ...") to stderr as they come: the long steps are not silent, and a
    failing maintainer script's own words are kept (the error line names the log).
    """
    if log:
        proc = _run_logged(cmd, log, **kw)
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        output = proc.stderr + proc.stdout
        lines = [ln for ln in output.splitlines() if ln.strip()]
        if "No space left on device" in output:
            raise DeviceError(f"image build: {what}: the disk is full; free a few GB (the "
                              "build needs about 4 GB beside --out) and run it again")
        errors = [ln for ln in lines if ln.startswith(("dpkg: error", "E: "))]
        last = " | ".join(errors[:1] + lines[-2:] if errors else lines[-3:]) \
            or f"exit {proc.returncode}"
        where = f"; the whole output is in {log}" if log else ""
        raise DeviceError(f"image build: {what} failed: {last}{where}")
    return proc


def _run_logged(cmd: list[str], log: Path, **kw) -> subprocess.CompletedProcess:
    """The output's tail, after its first error line (a maintainer script's "dpkg: error",
    which mmdebstrap's own last lines only summarise)."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    first_error: list[str] = []
    with open(log, "w", buffering=1) as out, subprocess.Popen(  # line by line: tail -f
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw) as proc:
        for line in proc.stdout:
            out.write(line)
            tail.append(line)
            if not first_error and line.startswith(("dpkg: error", "E: ")):
                first_error.append(line)
            if line.startswith(("I: ", "E: ", "W: ")):
                print(f"  {line.rstrip()}", file=sys.stderr, flush=True)
    return subprocess.CompletedProcess(cmd, proc.returncode, "", "".join(first_error + list(tail)))


def installed_packages(rootdir: Path) -> dict[str, dict]:
    """Every installed Debian package of the root, from dpkg's status file."""
    packages, entry = {}, {}
    text = (rootdir / "var/lib/dpkg/status").read_text()
    for line in text.splitlines() + [""]:
        if not line:
            if entry.get("Status", "").endswith(" installed"):
                packages[entry["Package"]] = {"version": entry["Version"],
                                              "architecture": entry["Architecture"]}
            entry = {}
        elif not line[0].isspace() and ":" in line:
            key, _, value = line.partition(":")
            entry[key] = value.strip()
    return dict(sorted(packages.items()))


def deb_file(cache: Path, name: str, version: str, arch: str) -> Path:
    return cache / f"{name}_{version.replace(':', '%3a')}_{arch}.deb"


def make_manifest(rootdir: Path, cache: Path, bundle: dict, release: str,
                  mirror: str = DEFAULT_MIRROR) -> dict:
    packages = installed_packages(rootdir)
    main_source, kernel_source = apt_sources(mirror)
    for name, p in packages.items():
        deb = deb_file(cache, name, p["version"], p["architecture"])
        p["deb_sha256"] = sha256_file(deb) if deb.is_file() else None
    files = bundle["files"]
    return {
        "format": 1,
        "heartsound": bundle["version"],
        "release": release,
        "inputs": {"suite": SUITE, "architecture": ARCH, "mirror": main_source,
                   "kernel_mirror": kernel_source, "variant": VARIANT,
                   "include": list(PACKAGES), "dpkg_options": list(DPKG_OPTS),
                   "source_date_epoch": SOURCE_DATE_EPOCH,
                   "mmdebstrap": _tool_version(["mmdebstrap", "--version"]),
                   "wheel_target": bundle["target"]},
        "debian_packages": packages,
        "wheels": {Path(rel).name: f["sha256"] for rel, f in sorted(files.items())
                   if rel.endswith(".whl")},
        "model": {"file": Path(bundle["model"]).name,
                  "sha256": files[bundle["model"]]["sha256"]},
    }


def _tool_version(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()


def split_boot(rootdir: Path, bootdir: Path) -> None:
    """What raspi-firmware's hooks wrote to /boot/firmware becomes the FAT partition."""
    src = rootdir / "boot/firmware"
    shutil.copytree(src, bootdir)
    for entry in src.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for required in ("config.txt", "cmdline.txt", "vmlinuz", "initrd.img"):
        if not any(p.name.startswith(required) for p in bootdir.iterdir()):
            raise DeviceError(f"image build: raspi-firmware put no {required} in "
                              "/boot/firmware; the card would not boot")


def _du_mib(path: Path) -> int:
    out = run_step("measuring the root", ["du", "-sxm", str(path)]).stdout
    return int(out.split()[0])


def make_partitions(work: Path, rootdir: Path, bootdir: Path, env: dict) -> tuple[Path, Path]:
    boot_img, root_img = work / "boot.img", work / "root.img"
    with open(boot_img, "wb") as f:
        f.truncate(BOOT_MIB * MIB)
    run_step("mkfs.vfat", ["mkfs.vfat", "-F", "32", "-n", BOOT_LABEL, "--invariant",
                           "-i", BOOT_VOLUME_ID, str(boot_img)], env=env)
    entries = sorted(str(p) for p in bootdir.iterdir())
    run_step("mcopy", ["mcopy", "-s", "-p", "-m", "-i", str(boot_img), *entries, "::/"],
             env=env)
    root_mib = int(_du_mib(rootdir) * ROOT_SLACK) + ROOT_EXTRA_MIB
    run_step("mkfs.ext4", ["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-U", ROOT_UUID,
                           "-E", f"hash_seed={HASH_SEED},root_owner=0:0", "-i", "8192",
                           "-d", str(rootdir), str(root_img), f"{root_mib}M"], env=env)
    return boot_img, root_img


def assemble(out: Path, boot_img: Path, root_img: Path) -> None:
    """MBR disk: FAT32 (LBA, bootable) at 4 MiB, then the root."""
    boot_start = BOOT_START_MIB * MIB // SECTOR
    root_start = (BOOT_START_MIB + BOOT_MIB) * MIB // SECTOR
    root_sectors = root_img.stat().st_size // SECTOR
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "wb") as f:
        f.truncate((root_start + root_sectors) * SECTOR)
    table = (f"label: dos\nlabel-id: {DISK_ID}\nunit: sectors\n\n"
             f"start={boot_start}, size={BOOT_MIB * MIB // SECTOR}, type=c, bootable\n"
             f"start={root_start}, size={root_sectors}, type=83\n")
    run_step("sfdisk", ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(tmp)],
             input=table)
    for img, start in ((boot_img, boot_start), (root_img, root_start)):
        run_step("dd", ["dd", f"if={img}", f"of={tmp}", "bs=1M", f"seek={start * SECTOR // MIB}",
                        "conv=notrunc,sparse", "status=none"])
    tmp.replace(out)


def compress(image: Path, kind: str) -> Path:
    run_step(f"compressing with {kind}", [*COMPRESSORS[kind], str(image)])
    return image.with_name(image.name + "." + kind)


def current_release(rootdir: Path) -> str:
    link = rootdir / "home/heartsound/heartsound/current"
    return os.readlink(link).removeprefix("releases/")


def build(options: BuildOptions) -> BuildResult:
    """Build the image (see the module docstring), or copy the cached image built from the
    same inputs (:func:`inputs_key`) unless ``options.rebuild``; the work folder is removed
    afterwards."""
    check_host(options)
    start = time.monotonic()
    out = options.out.resolve()
    caches = options.cache.expanduser().resolve()
    cache, images = caches / "apt", caches / "images"
    cache.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    beside = out.with_name(out.name + ".manifest.json")
    try:
        with source_date_epoch():
            stage, bundle = make_bundle(work, options.model)
        key = inputs_key(bundle, options.mirror)
        cached = None if options.rebuild else from_cache(images, key, out)
        if cached is None:
            beside.write_text(_build_into(out, work, stage, bundle, cache, options))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if cached is None:
        into_cache(images, key, out)
    else:
        print(f"image: the same inputs as the image built {cached} (key {key}): copied it "
              f"from {images}; --rebuild builds it again (with the mirror's packages of "
              "today)", file=sys.stderr)
    manifest = json.loads(beside.read_text())
    packed = compress(out, options.compress) if options.compress else None
    return BuildResult(out, beside, packed, time.monotonic() - start,
                       len(manifest["debian_packages"]), cached)


def _build_into(out: Path, work: Path, stage: Path, bundle: dict, cache: Path,
                options: BuildOptions) -> str:
    """mmdebstrap, the boot files, the manifest and the partitions; the manifest's text."""
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH),
               E2FSPROGS_FAKE_TIME=str(SOURCE_DATE_EPOCH))
    rootdir = work / "root"
    print(f"image: mmdebstrap {SUITE} {ARCH} into {rootdir} (cache {cache}) ...",
          file=sys.stderr)
    run_step("mmdebstrap", mmdebstrap_command(rootdir, cache, stage, options.mirror),
             env=env, log=out.with_name(out.name + ".build.log"))
    split_boot(rootdir, work / "boot")
    manifest = make_manifest(rootdir, cache, bundle, current_release(rootdir), options.mirror)
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    inside = rootdir / MANIFEST_IN_IMAGE
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_text(text)
    print("image: making the partitions ...", file=sys.stderr)
    assemble(out, *make_partitions(work, rootdir, work / "boot", env))
    return text
