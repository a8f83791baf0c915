#!/usr/bin/env bash
# The platform proof (`make pi-check`): an arm64 Debian Bookworm root (the base of Raspberry Pi
# OS) built with debootstrap, run under qemu-user emulation (binfmt_misc), where install.sh
# --models-from installs Safeguard and `safeguard analyze` runs on a development clip.
# Needs root, debootstrap, qemu-user-static and binfmt-support (scripts/apt-packages.txt).
#
#   PI_CHECK_DIR=/var/tmp/safeguard-pi-check  the work folder; the base root is cached there
#   PI_CHECK_MODELS=../shared/models          the model mirror
#   PI_CHECK_CLIP=<a dev clip>                the clip to analyse
#   PI_CHECK_EXPECT=gunshot                   the category analyze must find in it
#   PI_CHECK_PIP=pip                          whose `pip config list` is passed into the root
#
# For the duration of the check the root gets this machine's package-client settings: the CA
# bundle pip trusts here (for a TLS-inspecting proxy) and the index, find-links and timeout
# settings of `pip config list`, written to the root's /etc/pip.conf; local find-links folders
# and file:// indexes (with the folder around them) are bind-mounted read-only at the same path.
# They are removed when the check ends. apt downloads are cached in $PI_CHECK_DIR/cache/apt.
# The root itself is kept for inspection and thrown away at the next run.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${PI_CHECK_DIR:-/var/tmp/safeguard-pi-check}
MODELS=$(realpath "${PI_CHECK_MODELS:-$SRC/../shared/models}")
CLIP=$(realpath "${PI_CHECK_CLIP:-$SRC/../shared/data/audio-dev/clips/gunshots__AK-12__3_14_.flac}")
BASE=$WORK/base
ROOTFS=$WORK/root
began=$(date +%s)

step() { printf '\npi-check [%4ss] %s\n' "$(($(date +%s) - began))" "$*"; }
die() { printf 'pi-check: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, binfmt_misc)"
for tool in debootstrap chroot; do command -v "$tool" >/dev/null || die "$tool is not installed"; done
[ -d "$MODELS" ] || die "no model mirror at $MODELS"
[ -f "$CLIP" ] || die "no clip at $CLIP"

step "binfmt_misc: arm64 executables through qemu"
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 || die "cannot register qemu-aarch64 with binfmt_misc"
fi
grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
  die "qemu-aarch64 is registered without the F flag: the chroot cannot find the interpreter"

mkdir -p "$WORK"
if [ ! -x "$BASE/usr/bin/python3" ]; then
  step "debootstrap: arm64 Debian bookworm (cached in $BASE)"
  rm -rf "$BASE.tmp"
  debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,ca-certificates bookworm "$BASE.tmp"
  mv "$BASE.tmp" "$BASE"
fi

# Everything mounted below the root, deepest first.
root_mounts() { awk -v root="$ROOTFS/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r; }
cleanup() {
  local mount
  rm -f "$ROOTFS/etc/pip.conf" "$ROOTFS/etc/ssl/certs/pi-check-host-ca.crt"
  for mount in $(root_mounts); do umount -l "$mount" 2>/dev/null || true; done
  return 0
}
trap cleanup EXIT

CHECK_CA=pi-check-host-ca.crt CHECK_PIP=${PI_CHECK_PIP:-pip}
# shellcheck source=scripts/root-lib.sh
. "$SRC/scripts/root-lib.sh"

step "a fresh root from the cached base"
cleanup
[ -z "$(root_mounts)" ] || die "cannot unmount everything below $ROOTFS"
rm -rf --one-file-system "$ROOTFS"
cp -a "$BASE" "$ROOTFS"
mkdir -p "$ROOTFS/mnt/models" "$ROOTFS/mnt/clips" "$ROOTFS/usr/src/safeguard" \
  "$WORK/cache/apt" "$ROOTFS/var/cache/apt/archives"
mount -t proc proc "$ROOTFS/proc"
mount --rbind /sys "$ROOTFS/sys"
mount --rbind /dev "$ROOTFS/dev"
mount --bind "$MODELS" "$ROOTFS/mnt/models"
mount --bind "$(dirname "$CLIP")" "$ROOTFS/mnt/clips"
mount --bind "$WORK/cache/apt" "$ROOTFS/var/cache/apt/archives"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
(cd "$SRC" && tar --exclude=./.venv --exclude=./var --exclude=./.git --exclude=./build \
  --exclude='*.egg-info' --exclude='__pycache__' -cf - .) | tar -C "$ROOTFS/usr/src/safeguard" -xf -
step "package-client settings of this machine, for the duration of the check"
pass_pip_settings

in_root() { chroot "$ROOTFS" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
arch=$(in_root uname -m)
[ "$arch" = aarch64 ] || die "the root runs as $arch, not aarch64"
step "inside: Debian $(in_root cat /etc/debian_version), $arch, $(in_root python3 --version)"

step "install.sh --models-from /mnt/models (inside the arm64 root)"
in_root /usr/src/safeguard/install.sh --models-from /mnt/models ||
  die "install.sh failed inside the arm64 root (after $(($(date +%s) - began)) s)"

step "safeguard analyze $(basename "$CLIP") (inside the arm64 root)"
# Without the host's /sys: under qemu-user, the CPU probe of the TFLite XNNPACK delegate
# (cpuinfo) reads this x86 machine's CPU topology there and crashes (SIGSEGV); without it, it
# falls back to defaults. On a real board /sys describes the board's own CPU.
umount -l "$ROOTFS/sys"
out=$(in_root /opt/safeguard/venv/bin/safeguard analyze --json \
  --config /etc/safeguard/config.yaml "/mnt/clips/$(basename "$CLIP")") ||
  die "safeguard analyze failed inside the arm64 root"
printf '%s\n' "$out"
[ -n "$out" ] || die "analyze found no event in $(basename "$CLIP")"
categories=$(python3 -c 'import json, sys; print(" ".join(json.loads(l)["category"] for l in sys.stdin if l.strip()))' <<<"$out") ||
  die "analyze printed something other than JSON events"
[[ " $categories " == *" ${PI_CHECK_EXPECT:-gunshot} "* ]] ||
  die "analyze found [$categories] in $(basename "$CLIP"), not ${PI_CHECK_EXPECT:-gunshot}"

step "passed: install.sh and analyze ($categories) on arm64 Debian bookworm under qemu, $(($(date +%s) - began)) s"
