#!/usr/bin/env bash
# The install under a real systemd (`make systemd-check`): an amd64 Debian Bookworm root
# (debootstrap, cached) booted with systemd-nspawn, `install.sh --models-from ... --with-listener`
# inside it, then what only a live systemd shows: the daemon stays up past WatchdogSec with no
# microphone (READY, then pings while capture retries), TFLite sees the CPU under the unit's
# sandbox, the listener starts from its credential config and answers, the `systemd-run` check
# command of the install summary runs, a hung daemon (SIGSTOP) is killed by the watchdog and
# restarted, and repeated crashes never leave it failed (no start limit).
# Needs root, debootstrap, systemd-container and the network to the package registries.
#
#   SYSTEMD_CHECK_DIR=/var/tmp/safeguard-systemd-check  work folder; the base root is cached there
#   SYSTEMD_CHECK_MODELS=../shared/models               the model mirror
#
# The container shares this machine's network (apt and pip need it): the daemon reaches
# whatever broker listens on 127.0.0.1:1883. The root is kept for inspection and thrown away
# at the next run; the container is stopped when the check ends.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${SYSTEMD_CHECK_DIR:-/var/tmp/safeguard-systemd-check}
MODELS=$(realpath "${SYSTEMD_CHECK_MODELS:-$SRC/../shared/models}")
BASE=$WORK/base
ROOTFS=$WORK/root
MACHINE=safeguard-check
began=$(date +%s)
leader=""

step() { printf '\nsystemd-check [%4ss] %s\n' "$(($(date +%s) - began))" "$*"; }
die() { printf 'systemd-check: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, systemd-nspawn)"
for tool in debootstrap systemd-nspawn nsenter; do
  command -v "$tool" >/dev/null || die "$tool is not installed (scripts/apt-packages.txt)"
done
[ -d "$MODELS" ] || die "no model mirror at $MODELS"

CHECK_CA=systemd-check-host-ca.crt CHECK_PIP=${SYSTEMD_CHECK_PIP:-pip}
# shellcheck source=scripts/root-lib.sh
. "$SRC/scripts/root-lib.sh"

mkdir -p "$WORK"
if [ ! -x "$BASE/lib/systemd/systemd" ]; then
  step "debootstrap: amd64 Debian bookworm with systemd (cached in $BASE)"
  rm -rf "$BASE.tmp"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates,sudo \
    bookworm "$BASE.tmp"
  mv "$BASE.tmp" "$BASE"
fi

root_mounts() { awk -v root="$ROOTFS/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r; }
cleanup() {
  local mount
  if [ -n "$leader" ] && kill -0 "$leader" 2>/dev/null; then
    kill -s SIGRTMIN+4 "$leader" 2>/dev/null || true  # systemd: power off
    for _ in $(seq 30); do kill -0 "$leader" 2>/dev/null || break; sleep 1; done
    kill -9 "$leader" 2>/dev/null || true
  fi
  for mount in $(root_mounts); do umount -l "$mount" 2>/dev/null || true; done
  return 0
}
trap cleanup EXIT

step "a fresh root from the cached base"
rm -rf --one-file-system "$ROOTFS"
cp -a "$BASE" "$ROOTFS"
mkdir -p "$ROOTFS/usr/src/safeguard" "$ROOTFS/mnt/models"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
echo "$MACHINE" >"$ROOTFS/etc/hostname"
echo "127.0.1.1 $MACHINE" >>"$ROOTFS/etc/hosts"
(cd "$SRC" && tar --exclude=./.venv --exclude=./.venv-tflite --exclude=./var --exclude=./.git \
  --exclude=./build --exclude='*.egg-info' --exclude='__pycache__' -cf - .) |
  tar -C "$ROOTFS/usr/src/safeguard" -xf -
pass_pip_settings
# the CA bundle pip trusts here, for apt and curl inside too (a TLS-inspecting proxy)
cp "$ROOTFS/etc/ssl/certs/$CHECK_CA" "$ROOTFS/etc/ssl/certs/ca-certificates.crt" 2>/dev/null || true

step "boot: systemd-nspawn -b"
# --register=no --keep-unit: this machine's own init is not systemd (no machined, no bus)
systemd-nspawn -D "$ROOTFS" -b -M "$MACHINE" --register=no --keep-unit --console=passive \
  --bind-ro="$MODELS:/mnt/models" >"$WORK/console.log" 2>&1 &
nspawn=$!
for _ in $(seq 60); do
  leader=$(pgrep -P "$nspawn" -x systemd || true)
  [ -n "$leader" ] && break
  sleep 0.5
done
[ -n "$leader" ] || die "the container did not boot: $(tail -5 "$WORK/console.log")"
inside() { nsenter -t "$leader" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
state=$(inside systemctl is-system-running --wait || true)
step "inside: systemd $(inside systemctl --version | head -1 | cut -d' ' -f2), system $state"

step "install.sh --models-from /mnt/models --with-listener"
inside /usr/src/safeguard/install.sh --models-from /mnt/models --with-listener ||
  die "install.sh failed under systemd"

show() { inside systemctl show "$1" -p "$2" --value; }
active_for() {  # unit seconds: active without a restart for that long
  local unit=$1 seconds=$2 restarts
  restarts=$(show "$unit" NRestarts)
  sleep "$seconds"
  [ "$(show "$unit" ActiveState)" = active ] || die "$unit is $(show "$unit" ActiveState)"
  [ "$(show "$unit" NRestarts)" = "$restarts" ] || die "$unit was restarted meanwhile"
}

step "safeguard: up for 40 s (past WatchdogSec=30) with no microphone"
active_for safeguard 40
status=$(show safeguard StatusText)
printf '  STATUS=%s\n' "$status"
[[ $status == *"capture retrying"* ]] || die "STATUS does not say the microphone is retried"
journal=$(inside journalctl -u safeguard --no-pager -o cat)
grep -q "ready: models loaded" <<<"$journal" || die "no READY in the journal"
! grep -q "Error in cpuinfo" <<<"$journal" || die "TFLite cannot read /proc/cpuinfo in the unit"

step "safeguard-listener: up, started from its credential config, answering"
active_for safeguard-listener 5
port=$(sed -n '/^http:/,/^[a-z]/s/^ *port: *\([0-9]*\).*/\1/p' "$ROOTFS/etc/safeguard/listener.yaml")
inside python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
  "http://127.0.0.1:${port:-8080}/healthz" || die "the listener's /healthz does not answer"
echo

step "the install summary's check command (systemd-run as the service's user)"
check=$(inside bash -c 'sudo systemd-run --quiet --pipe --wait --collect -p User=safeguard \
  -p Group=safeguard -p SupplementaryGroups="audio video" -p EnvironmentFile=/etc/safeguard/secrets.env \
  /opt/safeguard/venv/bin/safeguard check --config /etc/safeguard/config.yaml 2>&1' || true)
printf '%s\n' "$check" | sed 's/^/  /'
grep -q "^config: ok" <<<"$check" || die "the check command did not validate the config"

step "watchdog: the daemon hung (SIGSTOP) is killed and restarted"
restarts=$(show safeguard NRestarts)
inside systemctl kill -s SIGSTOP safeguard
for _ in $(seq 60); do
  [ "$(show safeguard NRestarts)" -gt "$restarts" ] && [ "$(show safeguard ActiveState)" = active ] && break
  sleep 1
done
[ "$(show safeguard NRestarts)" -gt "$restarts" ] || die "the watchdog did not restart a hung daemon"
inside journalctl -u safeguard --no-pager -o cat | grep -m1 "Watchdog timeout" ||
  die "no watchdog timeout in the journal"

step "no start limit: six crashes in a row, still restarted"
for _ in 1 2 3 4 5 6; do
  for _ in $(seq 30); do [ "$(show safeguard SubState)" = running ] && break; sleep 1; done
  inside systemctl kill -s SIGKILL safeguard
  sleep 1
done
for _ in $(seq 30); do [ "$(show safeguard SubState)" = running ] && break; sleep 1; done
[ "$(show safeguard ActiveState)" = active ] ||
  die "after six crashes safeguard is $(show safeguard ActiveState)/$(show safeguard SubState)"
printf '  restarts so far: %s\n' "$(show safeguard NRestarts)"

step "passed: install.sh, both services, watchdog and restarts under systemd $(inside systemctl --version | head -1 | cut -d' ' -f2), $(($(date +%s) - began)) s"
