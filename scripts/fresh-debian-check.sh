#!/bin/bash
# Proves that `make demo` and `make test` work from nothing: a fresh Debian 12 made with
# debootstrap, /dev, /proc and /sys bind-mounted, a clone of this repository's HEAD inside.
# Usage (as root): scripts/fresh-debian-check.sh [ROOTFS_DIR]   (default /var/tmp/homepool-deb12)
set -euo pipefail
ROOT=${1:-/var/tmp/homepool-deb12}
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -x "$ROOT/bin/bash" ]; then
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap
    debootstrap bookworm "$ROOT" http://deb.debian.org/debian
fi
cleanup() {
    for m in sys proc dev/pts dev; do umount -l "$ROOT/$m" 2>/dev/null || true; done
}
trap cleanup EXIT
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
mount --bind /proc "$ROOT/proc"
mount --bind /sys "$ROOT/sys"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# Trust what this host trusts (a network whose HTTPS goes through a local CA): a real machine
# has its own. Installing ca-certificates in the chroot picks these up.
mkdir -p "$ROOT/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
chroot "$ROOT" /bin/sh -c "! command -v update-ca-certificates >/dev/null || update-ca-certificates >/dev/null"
rm -rf "$ROOT/root/homepool"
git clone -q "$REPO" "$ROOT/root/homepool"
# A minimal Debian has neither make nor git; the README asks for them first.
chroot "$ROOT" /bin/bash -c "apt-get update -qq && apt-get install -y -qq make >/dev/null"
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /bin/bash -c \
    "cd /root/homepool && make demo && make test"
echo "fresh-debian-check: OK"
