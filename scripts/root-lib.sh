# Shared by scripts/pi-check.sh and scripts/systemd-check.sh (sourced, not run): gives a
# throwaway Debian root this machine's package-client settings. Expects $ROOTFS (the root)
# and $CHECK_CA (the file name the CA bundle gets in the root's /etc/ssl/certs).
# shellcheck shell=bash

# Bind-mounts a host path at the same path inside the root, read-only.
bind_ro() {
  local target=$ROOTFS$1
  if [ -d "$1" ]; then mkdir -p "$target"; else mkdir -p "$(dirname "$target")" && touch "$target"; fi
  mount --bind "$1" "$target"
  mount -o remount,bind,ro "$target"
}

# The host's pip settings (`pip config list`; environment over config files) as the root's
# /etc/pip.conf, with the CA bundle copied in and local index folders bind-mounted.
pass_pip_settings() {
  local pip=${CHECK_PIP:-pip} cert="" line key value item path kept
  local -A conf=()
  local listing=""
  if command -v "$pip" >/dev/null; then  # files first, then the environment (which wins)
    listing=$("$pip" config list 2>/dev/null || true)
    listing=$(grep -v '^:env:' <<<"$listing"; grep '^:env:' <<<"$listing")
  fi
  while IFS= read -r line; do
    [[ $line =~ ^([^=]*)\.([a-z-]+)=\'(.*)\'$ ]] || continue
    key=${BASH_REMATCH[2]} value=${BASH_REMATCH[3]}
    case "$key" in
      cert) cert=$value ;;
      index-url | extra-index-url | find-links | trusted-host | timeout | default-timeout | retries) conf[$key]=$value ;;
    esac
  done <<<"$listing"
  [ -n "$cert" ] || cert=/etc/ssl/certs/ca-certificates.crt
  {
    echo "[global]"
    if [ -f "$cert" ]; then
      cp "$cert" "$ROOTFS/etc/ssl/certs/$CHECK_CA"
      echo "cert = /etc/ssl/certs/$CHECK_CA"
    fi
    for key in "${!conf[@]}"; do
      kept=()
      for item in ${conf[$key]}; do
        path=""
        case "$item" in
          file://*) path=${item#file://} ;;
          /*) path=$item ;;
        esac
        if [ -n "$path" ]; then
          [ -e "$path" ] || continue  # a local index this machine does not have
          # A local index's pages link to files beside it (../../files/...): mount its parent.
          [[ $item == file://* ]] && [ "$(dirname "${path%/}")" != / ] && path=$(dirname "${path%/}")
          mountpoint -q "$ROOTFS$path" 2>/dev/null || bind_ro "$path"
        fi
        kept+=("$item")
      done
      if [ ${#kept[@]} -gt 0 ]; then echo "$key = ${kept[*]}"; fi
    done
  } >"$ROOTFS/etc/pip.conf"
  sed 's/^/  pip.conf: /' "$ROOTFS/etc/pip.conf"
}
