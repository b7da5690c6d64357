#!/usr/bin/env bash
# Builds (once, about a minute) the Debian 12 root that the boot rehearsal boots with systemd-nspawn.
# Debian 12 ships systemd 252, the same major version as Amazon Linux 2023.
# The root is cached under .local/rehearsal/, keyed by this script's hash; a change here rebuilds it.
# Prints the root's path. Needs root (debootstrap, chroot) and Debian's package registry.
set -euo pipefail
cd "$(dirname "$0")/.."

# What Amazon Linux 2023 packages become on Debian is in rehearsal/packages.py; this list must
# cover every Debian package named there (the rehearsal checks it), plus the base system.
PACKAGES=(
  systemd systemd-sysv dbus iproute2 procps ca-certificates curl
  python3 python3-venv python3-pip logrotate nginx postgresql-15 awscli xfsprogs
)
key=$( (cat "$0"; echo "${PACKAGES[*]}") | sha256sum | cut -c1-12)
base=.local/rehearsal
root=$base/root-$key
if [ -f "$root/.complete" ]; then echo "$root"; exit 0; fi

if [ "$(id -u)" != 0 ]; then echo "rehearsal-root: needs root (debootstrap, systemd-nspawn)" >&2; exit 2; fi
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
if [ ${#need[@]} -gt 0 ]; then
  echo "rehearsal-root: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The same Debian mirror this machine's apt uses.
mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
         | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ' || true)
mirror=${mirror:-http://deb.debian.org/debian}
# An interrupted build may have left debootstrap's /proc or /sys mounted inside: unmount first.
grep -o " $PWD/$root.tmp/[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
rm -rf --one-file-system "$root.tmp"
mkdir -p "$base"
echo "rehearsal-root: debootstrap bookworm from $mirror (about a minute, once)" >&2
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$root.tmp" "$mirror" >"$base/debootstrap.log" 2>&1 \
  || { tail -n 20 "$base/debootstrap.log" >&2; exit 1; }
# Services must not start inside the chroot while packages install.
printf '#!/bin/sh\nexit 101\n' > "$root.tmp/usr/sbin/policy-rc.d"; chmod +x "$root.tmp/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$root.tmp/etc/resolv.conf"
chroot "$root.tmp" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${PACKAGES[*]}" \
  >"$base/apt.log" 2>&1 || { tail -n 20 "$base/apt.log" >&2; exit 1; }
chroot "$root.tmp" /bin/sh -c 'pg_dropcluster 15 main 2>/dev/null || true; apt-get clean'
rm -f "$root.tmp/usr/sbin/policy-rc.d"
# A server boots with no Debian defaults that Amazon Linux would not have running.
chroot "$root.tmp" systemctl disable nginx.service postgresql.service >/dev/null 2>&1 || true
chroot "$root.tmp" systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1 || true
echo rehearsal > "$root.tmp/etc/hostname"
touch "$root.tmp/.complete"
rm -rf "$root"
mv "$root.tmp" "$root"
# Older roots of earlier versions of this script are no longer used.
find "$base" -maxdepth 1 -name 'root-*' ! -name "root-$key" -exec rm -rf {} + 2>/dev/null || true
echo "$root"
