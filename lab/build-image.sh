#!/usr/bin/env bash
# Build the lab's Debian 12 guest image into OUTPUT_DIR.
#
#   build-image.sh OUTPUT_DIR
#
# Produces: root.qcow2 (ext4, no partition table), vmlinuz, initrd.img, id_ed25519[.pub]
# (the lab's SSH key, authorised for root) and ssh_host_ed25519_key.pub (for known_hosts).
# labctl.py calls this only when the cache has no image for the current recipe; the recipe's
# hash is the cache key, so any edit to this file or to guest/ builds a new image.
# Needs root (debootstrap, chroot) but no loop devices: mkfs.ext4 -d fills the filesystem
# straight from the directory, so it also works inside containers.
set -euo pipefail

out=${1:?usage: build-image.sh OUTPUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
# The mirror this machine's apt uses (LAB_DEBIAN_MIRROR overrides): see debian-mirror.py.
{ read -r mirror; read -r security_mirror; } < <("$here/debian-mirror.py")
[ -n "${mirror:-}" ] || exit 1  # debian-mirror.py said why
suite=bookworm
image_size=${LAB_IMAGE_SIZE:-6G}

# Userland the roles need on a node, installed now so that converging never downloads.
packages=(
  linux-image-amd64 initramfs-tools systemd-sysv udev kmod dbus
  openssh-server python3 python3-apt sudo ca-certificates
  iproute2 iputils-ping ethtool pciutils network-manager netplan.io
  mdadm nvme-cli xfsprogs e2fsprogs fdisk lvm2
  rdma-core ibverbs-utils ibverbs-providers perftest rdmacm-utils infiniband-diags
  nfs-common nfs-kernel-server
  containernetworking-plugins
  fio iperf3 procps less
  fpart rsync redis-server fuse3
)

[ "$(id -u)" -eq 0 ] || { echo "build-image.sh: must run as root (debootstrap, chroot)" >&2; exit 1; }

work=$(mktemp -d "${out%/}.build.XXXXXX")
rootfs=$work/rootfs
cleanup() {
  # A failed step may leave these mounted; never leave them behind.
  for m in dev/pts dev sys proc; do umount -l "$rootfs/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

in_chroot() {
  chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    /bin/bash -euxo pipefail -c "$1" >>"$work/chroot.log" 2>&1 ||
    { tail -n 40 "$work/chroot.log" >&2; exit 1; }
}

echo "lab image: debootstrap $suite from $mirror"
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

mount -t proc proc "$rootfs/proc"
mount -t sysfs sys "$rootfs/sys"
mount --bind /dev "$rootfs/dev"
mount --bind /dev/pts "$rootfs/dev/pts"

cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security_mirror $suite-security main
EOF
# Guest configuration files live in guest/ (part of the recipe and so of the cache key). They go
# in before the packages so that the initramfs built by the kernel's postinst has the .link file.
cp -a "$here/guest/." "$rootfs/"
chmod 0600 "$rootfs/etc/NetworkManager/system-connections/"*.nmconnection
# apt, unlike debootstrap --include, orders this many maintainer scripts right (polkitd fails
# otherwise). No service may start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod +x "$rootfs/usr/sbin/policy-rc.d"
echo "lab image: installing ${#packages[@]} packages"
in_chroot "apt-get update -q
  apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-unsafe-io ${packages[*]}"
rm "$rootfs/usr/sbin/policy-rc.d"

mkdir -p "$work/key"
ssh-keygen -q -t ed25519 -N '' -C hpc-datapath-lab -f "$work/key/id_ed25519"
install -d -m 0700 "$rootfs/root/.ssh"
install -m 0600 "$work/key/id_ed25519.pub" "$rootfs/root/.ssh/authorized_keys"

in_chroot '
  # Each node gets its name and machine ID from the kernel command line (labctl.py): nothing
  # that must differ between the two nodes may be baked into the shared image.
  rm -f /etc/hostname /var/lib/systemd/random-seed
  : > /etc/machine-id
  systemctl set-default multi-user.target
  echo "root:lab" | chpasswd  # serial console only: sshd refuses passwords
  rm -f /etc/ssh/ssh_host_*
  ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
  systemctl enable serial-getty@ttyS0.service NetworkManager.service ssh.service
  # Timers that would start apt or fstrim in the middle of a test run.
  systemctl mask apt-daily.timer apt-daily-upgrade.timer fstrim.timer e2scrub_all.timer
  # A node with nothing exported must not fail its boot on nfs-server; Redis serves JuiceFS on the
  # lab NAS only (lab/nas.yml enables both on node2).
  systemctl disable nfs-server.service redis-server.service || true
  apt-get clean
  rm -rf /var/lib/apt/lists/*
'
# Every update-initramfs a role runs on a node (mdadm.conf, module lists) took minutes under TCG
# with Debian's defaults, and still 30 to 60 s with MODULES=dep and gzip -1 (123 s of a CI run).
# The node boots from the initrd built above (labctl hands it to QEMU), never from one a role
# builds: the roles still run the distribution's tool, which here builds nothing
# (update_initramfs=no, which update-initramfs honours with exit 0). Written after the kernel's
# install, whose own initrd is the one that boots.
sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$rootfs/etc/initramfs-tools/update-initramfs.conf"
grep -qx 'update_initramfs=no' "$rootfs/etc/initramfs-tools/update-initramfs.conf" ||
  { echo "build-image.sh: update_initramfs=no did not take in update-initramfs.conf" >&2; exit 1; }
for m in dev/pts dev sys proc; do umount "$rootfs/$m"; done

mkdir -p "$out"
cp "$(readlink -f "$rootfs/vmlinuz")" "$out/vmlinuz"
cp "$(readlink -f "$rootfs/initrd.img")" "$out/initrd.img"
cp "$rootfs/etc/ssh/ssh_host_ed25519_key.pub" "$out/"
cp "$work/key/id_ed25519" "$work/key/id_ed25519.pub" "$out/"
mkfs.ext4 -q -F -L labroot -d "$rootfs" "$work/root.raw" "$image_size"
qemu-img convert -O qcow2 "$work/root.raw" "$out/root.qcow2"
echo "lab image: ready in $out ($(du -sh "$out/root.qcow2" | cut -f1))"
