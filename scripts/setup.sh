#!/usr/bin/env bash
# Set up a fresh Debian machine (as root, or with sudo) for heartsound: the system
# packages the tests and firmware builds need, then the project with every extra in its
# own virtual environment, .venv (Debian's Python is externally managed, PEP 668: pip
# refuses to install into it). Use it with `. .venv/bin/activate`. Idempotent: a second
# run installs nothing new. A Raspberry Pi needs none of this: it installs the wheel with
# the `edge` extra only (see README, "On the device").
#
# PYTHON names the interpreter the venvs are made from; by default Debian's own.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-dev  # the project's .venv, from Debian's Python
  gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib  # Cortex-M4 builds
  qemu-system-arm              # emulated Cortex-M4 (mps2-an386); qemu-system-aarch64 boots the image
  fdisk dosfstools mtools e2fsprogs  # real card images on loop devices (image flash tests)
  openssh-server               # real SSH server on 127.0.0.1 for deployment tests
  portaudio19-dev libasound2-plugins  # PyAudio against an ALSA file capture device
  gcc make cmake               # host builds of the C front end and the TFLM app
  iproute2 util-linux          # network namespaces for the Ray cluster tests
  mmdebstrap arch-test qemu-user-static binfmt-support  # heartsound image build: arm64 root
  dosfstools mtools e2fsprogs fdisk zstd      # its partitions, built without mounting
  cloud-guest-utils            # growpart: the first-boot tests grow a loop-device disk
)

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get update -q
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# `heartsound image build` runs arm64 programs (dpkg scripts, pip, the smoke screening) in
# the image's root through qemu-user: the kernel must know the interpreter (binfmt_misc).
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e "$BINFMT/register" ]; then
  echo "setup: mounting binfmt_misc"
  sudo_if_needed mount -t binfmt_misc binfmt_misc "$BINFMT"
fi
if [ ! -e "$BINFMT/qemu-aarch64" ]; then
  echo "setup: registering qemu-aarch64 with binfmt_misc"
  sudo_if_needed update-binfmts --enable qemu-aarch64
fi

PYTHON=${PYTHON:-/usr/bin/python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV from $PYTHON ($($PYTHON --version))"
  $PYTHON -m venv "$VENV"
fi
echo "setup: installing heartsound with all extras into $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[edge,mic,train,deploy,serial,dev,cluster]"

# The interpreter older Raspberry Pi images run (tflite-runtime 2.14 needs numpy<2), in its
# own environment: the tests prove it gives the same bits as ai-edge-litert.
if [ ! -x .venv-tflrt/bin/python ]; then
  echo "setup: creating .venv-tflrt (tflite-runtime 2.14, numpy<2)"
  $PYTHON -m venv .venv-tflrt
  .venv-tflrt/bin/pip install -q --disable-pip-version-check "tflite-runtime==2.14.0" "numpy<2"
fi
echo "setup: done; activate the environment with: . $VENV/bin/activate"
