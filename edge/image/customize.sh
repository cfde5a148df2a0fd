#!/bin/sh
# Run by `heartsound image build` inside the image's root (mmdebstrap's chrooted customize
# hook: arm64 programs under qemu-user, /proc and /dev mounted), after the Debian packages
# and before the partitions are made. $1: the folder holding the extracted offline bundle.
set -eu
bundle=$1
user=heartsound
home=/home/$user
root=$home/heartsound   # what `heartsound deploy` uses: ROOT "heartsound" in the login's home

# The login a deploy uses: no password at all (SSH keys only, from heartsound.toml), audio
# for the microphone, sudo without a password for enabling services after a deploy.
echo "I: heartsound: user $user, no passwords"
useradd --create-home --shell /bin/bash --user-group --groups audio "$user"
passwd --lock root >/dev/null
printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$user" > /etc/sudoers.d/heartsound
chmod 0440 /etc/sudoers.d/heartsound

# The station: exactly what an offline install on a running Pi does (smoke screening
# included), as the login user, so the release layout is the one deploys update. Its venv
# sees the system's packages for PyAudio alone (python3-pyaudio: PyPI has no aarch64
# wheel); numpy and the interpreter are the bundle's, installed inside the venv, which
# comes first. Later deploys keep the venv that way (they read current/pyvenv.cfg).
echo "I: heartsound: installing the station under $root (smoke screening included)"
runuser -u "$user" -- env HOME="$home" USER="$user" LOGNAME="$user" \
  python3 "$bundle/install.py" --bundle-dir "$bundle" --root "$root" --system-site-packages
# The always-on microphone service, enabled: its unit starts only when a capture device is
# there (ConditionPathExistsGlob), and the udev rule in overlay/ starts it when one is
# plugged in later. Linked through `current`, so a deploy or a rollback changes what it runs.
ln -s "$root/current/etc/heartsound-screen.service" /etc/systemd/system/heartsound-screen.service
systemctl enable heartsound-screen.service

# Boot: the FAT partition's cmdline.txt and config.txt, made by raspi-firmware's hook.
echo "I: heartsound: boot partition files (raspi-firmware)"
sed -i -e 's/^#\?ROOTPART=.*/ROOTPART=LABEL=RASPIROOT/' \
       -e 's/^#\?CONSOLES=.*/CONSOLES="serial0,115200 tty1"/' /etc/default/raspi-firmware
for kernel in /lib/modules/*; do  # the hook acts only when told it is a configure
  version=$(basename "$kernel")
  DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware "$version" \
    "/boot/vmlinuz-$version"
  /etc/kernel/postinst.d/z51-heartsound-pi5-d0 "$version" "/boot/vmlinuz-$version"
done

# The build kept initramfs-tools' triggers from making the initrd again and again; the
# device's own apt upgrades must update it.
sed -i 's/^update_initramfs=.*/update_initramfs=yes/' /etc/initramfs-tools/update-initramfs.conf

echo heartsound > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\theartsound\n::1\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts
systemctl enable heartsound-firstboot.service systemd-networkd.service
# Made on the device at first boot: never shared by every card flashed from this image.
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
