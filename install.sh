#!/usr/bin/env bash
# Install Safeguard on a Raspberry Pi (Raspberry Pi OS), a Debian/Ubuntu machine or a Jetson
# (Ubuntu/JetPack) from this checkout. Idempotent: run it again to upgrade.
#
#   sudo ./install.sh                       # install, enable and start safeguard
#   sudo ./install.sh --models-from DIR     # offline: models from a mirror folder
#   sudo ./install.sh --with-listener       # also the listener service (alerts API, dashboard)
#   sudo ./install.sh --no-start            # install and enable, but do not (re)start now
#   ./install.sh --root DIR                 # stage into DIR; the running system is not touched
#   sudo ./install.sh --uninstall [--purge] # remove; --purge also removes config, data, user
#                                           # (--purge alone implies --uninstall)
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=""
MODELS_FROM=""
WITH_LISTENER=0
UNINSTALL=0
PURGE=0
START=1
USER_NAME=safeguard
PREFIX=/opt/safeguard
VENV=$PREFIX/venv
ETC=/etc/safeguard
STATE=/var/lib/safeguard
UNITS=/etc/systemd/system
DOCS=/usr/share/doc/safeguard
DONE=()

usage() {
  sed -n '2,11s/^# \{0,1\}//p' "$0"
  echo "options: --root DIR  --models-from DIR  --with-listener  --no-start  --uninstall  --purge"
}

say() { printf 'safeguard install: %s\n' "$*"; }
did() { DONE+=("$*"); say "$*"; }
warn() { printf 'safeguard install: warning: %s\n' "$*" >&2; }
die() { printf 'safeguard install: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root | --models-from) [ $# -ge 2 ] || die "$1 needs a folder" ;;
  esac
  case "$1" in
    --root) ROOT=$(realpath -m "$2"); shift ;;
    --models-from)
      [ -d "$2" ] || die "--models-from $2: no such folder"
      MODELS_FROM=$(realpath "$2")
      shift
      ;;
    --with-listener) WITH_LISTENER=1 ;;
    --no-start) START=0 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 UNINSTALL=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

# With --root, what would change the running system is recorded here instead of done.
PLAN=""
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  PLAN=$ROOT/safeguard-install.plan
  : >"$PLAN"
elif [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo ./install.sh), or stage with --root DIR"
fi

# Runs a command that changes the system, or records it under --root.
system() {
  if [ -n "$PLAN" ]; then
    printf '%s\n' "$*" >>"$PLAN"
  else
    "$@"
  fi
}

detect_platform() {
  OS_ID=unknown
  OS_LIKE=""
  if [ -r /etc/os-release ]; then
    # shellcheck source=/dev/null
    OS_ID=$(. /etc/os-release && echo "${ID:-unknown}")
    # shellcheck source=/dev/null
    OS_LIKE=$(. /etc/os-release && echo "${ID_LIKE:-}")
  fi
  ARCH=$(uname -m)
  BOARD=""
  [ -r /proc/device-tree/model ] && BOARD=$(tr -d '\0' </proc/device-tree/model)
  PLATFORM=$OS_ID
  if [ "$OS_ID" = raspbian ] || [ -e /etc/rpi-issue ] || [[ $BOARD == Raspberry\ Pi* ]]; then
    PLATFORM=raspberrypi-os
  elif [ -e /etc/nv_tegra_release ] || [[ $BOARD == *Jetson* ]]; then
    PLATFORM=jetson
  fi
  case "$OS_ID $OS_LIKE" in
    *debian* | *ubuntu* | raspbian*) ;;
    *) die "unsupported system '$OS_ID': install.sh supports Raspberry Pi OS, Debian and Ubuntu/JetPack" ;;
  esac
  case "$ARCH" in
    aarch64 | x86_64) ;;
    armv6l | armv7l | armv8l)
      die "32-bit ARM ($ARCH) is not supported: the TFLite runtime (ai-edge-litert) has no 32-bit wheel; install the 64-bit Raspberry Pi OS" ;;
    *) die "unsupported architecture $ARCH" ;;
  esac
  check_python
  say "platform: $PLATFORM ($OS_ID, $ARCH${BOARD:+, $BOARD})"
}

# The system Python the virtual environment is made from: 3.10 or newer and 64-bit (the device
# extra's wheels exist for nothing else). Without python3 yet, apt installs it and this runs again.
check_python() {
  command -v python3 >/dev/null || return 0
  local found version bits
  found=$(python3 -c 'import struct, sys; print("%d.%d" % sys.version_info[:2], 8 * struct.calcsize("P"))') ||
    die "python3 does not run"
  version=${found% *}
  bits=${found#* }
  if [ "${version%%.*}" -lt 3 ] || { [ "${version%%.*}" -eq 3 ] && [ "${version#*.}" -lt 10 ]; }; then
    die "Python $version is too old: Safeguard needs Python 3.10 or newer (Raspberry Pi OS or Debian 12, Ubuntu 22.04 or JetPack 6)"
  fi
  [ "$bits" = 64 ] ||
    die "python3 is a $bits-bit program: Safeguard needs a 64-bit system (the 64-bit Raspberry Pi OS)"
}

# The broker host of the installed config, else of the shipped one.
broker_host() {
  local config=$ROOT$ETC/config.yaml
  [ -f "$config" ] || config=$SRC/config.yaml
  awk '/^[^ #]/ {in_mqtt = ($1 == "mqtt:")} in_mqtt && $1 == "host:" {print $2; exit}' "$config" |
    tr -d '"'"'"
}

camera_source() {
  local config=$ROOT$ETC/config.yaml
  [ -f "$config" ] || config=$SRC/config.yaml
  awk '/^[^ #]/ {in_video = ($1 == "video:")} in_video && $1 == "source:" {print $2; exit}' "$config" |
    tr -d '"'"'"
}

install_packages() {
  local packages=(python3 python3-venv libportaudio2 libsndfile1 ffmpeg iw ca-certificates)
  local host
  host=$(broker_host)
  case "${host:-127.0.0.1}" in
    127.0.0.1 | localhost | ::1) packages+=(mosquitto) ;;
  esac
  case "$(camera_source)" in # a GStreamer pipeline runs through gst-launch-1.0
    gst:*) packages+=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good) ;;
  esac
  local missing=()
  for pkg in "${packages[@]}"; do
    if [ -n "$PLAN" ] || ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
      missing+=("$pkg")
    fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    system apt-get update -qq
    system apt-get install -y -qq --no-install-recommends "${missing[@]}"
    did "apt packages: ${missing[*]}"
  else
    say "apt packages: all present"
  fi
}

create_user() {
  if [ -n "$PLAN" ]; then
    system useradd --system --user-group --home-dir "$STATE" --shell /usr/sbin/nologin "$USER_NAME"
    system usermod --append --groups audio,video "$USER_NAME"
    return
  fi
  if ! id "$USER_NAME" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir "$STATE" --shell /usr/sbin/nologin "$USER_NAME"
    did "created system user $USER_NAME"
  fi
  local group
  for group in audio video; do
    getent group "$group" >/dev/null || groupadd --system "$group"
    id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx "$group" || usermod --append --groups "$group" "$USER_NAME"
  done
}

# Owner changes only on the real system (a staging root has no safeguard user).
own() {
  [ -n "$PLAN" ] && return 0
  chown "$@"
}

# What the Python package is built from (the rest of the checkout does not change it).
package_tar() {
  (cd "$SRC" && tar --exclude='__pycache__' --exclude='*.egg-info' "$@" -cf - \
    pyproject.toml README.md edge listener converter models_tflite)
}

install_venv() {
  local venv=$ROOT$VENV src=$ROOT$PREFIX/src stamp extras=device
  # the listener's own packages (API server, store) only where its service is installed
  [ "$WITH_LISTENER" = 1 ] && extras=device,listener
  check_python
  # the stamp names the extras: a later --with-listener must install the listener's packages
  stamp=$( (package_tar --sort=name --mtime=@0 --owner=0 --group=0; echo "$extras") | sha256sum | cut -c1-16)
  if [ -x "$venv/bin/safeguard" ] && [ "$(cat "$ROOT$PREFIX/.source-stamp" 2>/dev/null)" = "$stamp" ]; then
    say "virtual environment: $VENV is current"
    return
  fi
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  rm -rf "$src"
  mkdir -p "$src"
  package_tar | tar -C "$src" -xf -
  # pip reads the system's /etc/pip.conf, where Raspberry Pi OS configures its ARM wheel index
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${src}[$extras]"
  rm -rf "$src/build" "$src"/*.egg-info
  echo "$stamp" >"$ROOT$PREFIX/.source-stamp"
  did "virtual environment: $VENV with safeguard[$extras] from $SRC ($("$venv/bin/safeguard" --version))"
}

# The models only a camera needs (video.source): without a camera in the config they are
# fetched best effort, so that one can be added later.
VIDEO_MODELS=" mobilenet_v1_embedding "

# Fetches every model of the manifest and checks its sha256 (a present file is checked too).
install_models() {
  local models=$ROOT$STATE/models from=() errors="" rc=0 line name reason camera skipped=""
  [ -n "$MODELS_FROM" ] && from=(--from "$MODELS_FROM")
  mkdir -p "$models"
  # its output goes to the terminal, its errors are read here
  exec 3>&1
  errors=$("$ROOT$VENV/bin/safeguard" models fetch --dir "$models" "${from[@]}" 2>&1 1>&3) || rc=$?
  exec 3>&-
  if [ "$rc" != 0 ]; then
    camera=$(camera_source)
    # One line per model that failed: "safeguard: model NAME: why"; any other error is fatal.
    while IFS= read -r line; do
      case "$line" in
        "safeguard: model "*) ;;
        "safeguard: "*) die "models: ${line#safeguard: }" ;;
        *) printf '%s\n' "$line" >&2; continue ;;
      esac
      name=${line#safeguard: model }
      name=${name%%[: ]*}
      reason=${line#safeguard: }
      if [[ $VIDEO_MODELS == *" $name "* ]] && [ "${camera:-none}" = none ]; then
        warn "$reason; only a camera needs it and the config has none (video.source), so the install goes on; run install.sh again before adding a camera"
        skipped+=" $name"
      else
        die "$reason; fix that (the network, or the mirror of --models-from) and run install.sh again"
      fi
    done <<<"$errors"
    [ -n "$skipped" ] || die "models: safeguard models fetch failed (exit $rc)"
  elif [ -n "$errors" ]; then
    printf '%s\n' "$errors" >&2
  fi
  own -R "$USER_NAME:$USER_NAME" "$ROOT$STATE"
  did "models: fetched and verified in $STATE/models${MODELS_FROM:+ (from $MODELS_FROM)}${skipped:+ (not:$skipped)}"
}

# Installs a config file. NAME.dist always holds the default of the installed version: a config
# still equal to it is the unedited previous default and takes the new one; an edited config is
# kept (compare it with NAME.dist for new settings).
install_config() {
  local file=$1 dest=$ROOT$2 mode=$3
  if [ ! -e "$dest" ]; then
    install -m "$mode" "$file" "$dest"
    own "root:$USER_NAME" "$dest"
    did "config: $2"
  elif cmp -s "$file" "$dest"; then
    :
  elif [ -e "$dest.dist" ] && cmp -s "$dest" "$dest.dist"; then
    install -m "$mode" "$file" "$dest"
    own "root:$USER_NAME" "$dest"
    did "config: $2 was the previous default, unedited: upgraded to the new default"
  else
    say "config: kept $2, which differs from the default (the new default is $2.dist)"
  fi
  install -m 0644 "$file" "$dest.dist"
}

install_files() {
  mkdir -p "$ROOT$ETC" "$ROOT$STATE" "$ROOT$UNITS" "$ROOT$DOCS"
  chmod 0750 "$ROOT$ETC" "$ROOT$STATE"
  own "root:$USER_NAME" "$ROOT$ETC"
  own "$USER_NAME:$USER_NAME" "$ROOT$STATE"
  install_config "$SRC/config.yaml" "$ETC/config.yaml" 0640
  local secrets=$ROOT$ETC/secrets.env
  if [ ! -e "$secrets" ]; then
    (umask 077 && cat >"$secrets") <<'EOF'
# Secrets for safeguard.service (read by systemd as root; keep this file mode 0600).
# SAFEGUARD_MQTT_PASSWORD=
# SAFEGUARD_TWILIO_AUTH_TOKEN=
# SAFEGUARD_SMTP_PASSWORD=
# The listener's API token, for clip upload (listener.enabled); with --with-listener it is the
# one in /etc/safeguard/listener.api_token:
# SAFEGUARD_API_TOKEN=
# The camera preview's password (video.preview.enabled):
# SAFEGUARD_PREVIEW_PASSWORD=
EOF
    did "secrets: $ETC/secrets.env (mode 0600)"
  fi
  chmod 0600 "$secrets"
  own root:root "$secrets"
  install -m 0644 "$SRC/systemd/safeguard.service" "$ROOT$UNITS/safeguard.service"
  install -m 0644 "$SRC/docs/device.md" "$SRC/README.md" "$ROOT$DOCS/"
  if [ "$WITH_LISTENER" = 1 ]; then
    install -m 0644 "$SRC/systemd/safeguard-listener.service" "$ROOT$UNITS/"
    install -m 0644 "$SRC/docs/listener.md" "$ROOT$DOCS/"
    # The listener (a DynamicUser= service) gets it as a credential: LoadCredential=listener.yaml
    install_config "$SRC/config.listener.yaml" "$ETC/listener.yaml" 0640
    local token=$ROOT$ETC/listener.api_token
    if [ ! -s "$token" ]; then
      (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$token")
      did "listener API token: $ETC/listener.api_token (mode 0600)"
    fi
    chmod 0600 "$token"
  fi
  did "units: $UNITS/safeguard.service${WITH_LISTENER:+$([ "$WITH_LISTENER" = 1 ] && echo ", safeguard-listener.service")}"
}

# A kept (edited) config must still be valid for the version just installed.
check_config() {
  local out
  if ! out=$("$ROOT$VENV/bin/safeguard" check --config-only --config "$ROOT$ETC/config.yaml" 2>&1); then
    die "$ETC/config.yaml does not fit this version (${out#safeguard: }); fix it (the new default is $ETC/config.yaml.dist) and run install.sh again"
  fi
}

enable_services() {
  local services=(safeguard)
  [ "$WITH_LISTENER" = 1 ] && services+=(safeguard-listener)
  if [ -z "$PLAN" ] && ! command -v systemctl >/dev/null; then
    say "no systemctl here: start it by hand with $VENV/bin/safeguard run --config $ETC/config.yaml"
    return
  fi
  if [ -z "$PLAN" ] && [ ! -d /run/systemd/system ]; then
    systemctl enable "${services[@]}"  # works offline (a chroot, an image being built)
    did "enabled ${services[*]} (systemd is not running here: it starts at the next boot)"
    return
  fi
  system systemctl daemon-reload
  system systemctl enable "${services[@]}"
  if [ "$START" = 1 ]; then
    system systemctl restart "${services[@]}"
    did "enabled and (re)started ${services[*]}"
  else
    did "enabled ${services[*]}"
  fi
}

uninstall() {
  local services=() unit
  for unit in safeguard safeguard-listener; do # only the installed ones
    [ -e "$ROOT$UNITS/$unit.service" ] && services+=("$unit")
  done
  if [ ${#services[@]} -gt 0 ]; then
    if [ -n "$PLAN" ] || [ -d /run/systemd/system ]; then
      system systemctl disable --now "${services[@]}" ||
        warn "systemctl disable --now ${services[*]} failed; removing them anyway"
    elif command -v systemctl >/dev/null; then
      systemctl disable "${services[@]}" || warn "systemctl disable ${services[*]} failed"
    fi
  fi
  rm -f "$ROOT$UNITS/safeguard.service" "$ROOT$UNITS/safeguard-listener.service"
  rm -rf "${ROOT:?}$PREFIX" "${ROOT:?}$DOCS"
  if [ -z "$PLAN" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
  did "removed the services, $PREFIX and $DOCS"
  if [ "$PURGE" = 1 ]; then
    # the listener's state (DynamicUser=) lives in /var/lib/private, /var/lib/NAME is a link
    rm -rf "${ROOT:?}$ETC" "${ROOT:?}$STATE" "${ROOT:?}/var/lib/safeguard-listener" \
      "${ROOT:?}/var/lib/private/safeguard-listener"
    if [ -n "$PLAN" ] || id "$USER_NAME" >/dev/null 2>&1; then
      system userdel "$USER_NAME"
    fi
    did "purged $ETC, $STATE, the listener's data and the $USER_NAME user"
  else
    say "kept $ETC (config, secrets) and $STATE (outbox, models): --purge removes them"
  fi
}

# `safeguard check` with the service's user, groups and secrets (a shell has none of them).
CHECK_COMMAND="sudo systemd-run --quiet --pipe --wait --collect -p User=$USER_NAME -p Group=$USER_NAME \\
    -p SupplementaryGroups=\"audio video\" -p EnvironmentFile=$ETC/secrets.env \\
    $VENV/bin/safeguard check --config $ETC/config.yaml"

summary() {
  echo
  say "done${ROOT:+ (staged in $ROOT; the running system was not touched)}:"
  local line
  for line in "${DONE[@]}"; do echo "  - $line"; done
  if [ -n "$PLAN" ]; then
    echo "  what a real install also runs is listed in $PLAN"
  fi
  if [ "$UNINSTALL" = 0 ]; then
    cat <<EOF

Edit $ETC/config.yaml (device id, location, broker), secrets in $ETC/secrets.env, then:
  sudo systemctl restart safeguard
Check it:
  systemctl status safeguard
  journalctl -u safeguard -f
Check the config as the service sees it (its user, groups and $ETC/secrets.env):
  $CHECK_COMMAND
EOF
  fi
}

if [ "$UNINSTALL" = 1 ]; then
  uninstall
  summary
  exit 0
fi
detect_platform
install_packages
create_user
install_venv
install_files
install_models
check_config
enable_services
summary
