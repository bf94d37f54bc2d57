#!/usr/bin/env bash
# Prepare this Debian bookworm machine to build and run the virtual Pi fleet.
# Idempotent: every step checks before it changes anything, so a second run is quick.
set -euo pipefail

STAMP_DIR=${BERRYCHAT_STATE:-/var/lib/berrychat-dev}
mkdir -p "$STAMP_DIR"

PACKAGES=(
  podman runc netavark aardvark-dns iptables slirp4netns uidmap fuse-overlayfs catatonit
  qemu-user-static binfmt-support debootstrap
  mariadb-server redis-server nginx
  python3-venv git make curl ca-certificates openssh-client
  # Server tests of voice/video messages: Ogg/MP3/M4A samples and video poster frames.
  ffmpeg
)
if [[ "${WITH_BROWSER:-1}" == 1 ]]; then
  PACKAGES+=(chromium chromium-driver fonts-noto-color-emoji)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup-host: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The test suite starts its own MariaDB/Redis/Nginx: keep the packaged services from
  # starting on install (policy-rc.d is honoured by invoke-rc.d).
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
  trap - EXIT
fi

# podman: runc (crun fails on this hybrid cgroup layout) and explicit ulimits
# (podman's defaults exceed the hard limits here and containers fail with setrlimit EPERM).
hard_nofile=$(ulimit -Hn)
[[ "$hard_nofile" == unlimited ]] && hard_nofile=1048576
nofile=$(( hard_nofile < 20000 ? hard_nofile : 20000 ))
conf=/etc/containers/containers.conf
want=$(cat <<CONF
# Managed by BerryChat scripts/setup-host.sh
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=8192:8192"]

[network]
network_backend = "netavark"

[engine]
runtime = "runc"
CONF
)
if [[ "$(cat "$conf" 2>/dev/null)" != "$want" ]]; then
  mkdir -p /etc/containers
  printf '%s\n' "$want" >"$conf"
  echo "setup-host: wrote $conf"
fi

# ARM64 emulation through binfmt_misc.
if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
  update-binfmts --enable qemu-aarch64 || update-binfmts --import qemu-aarch64
fi
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64

echo "setup-host: ok (podman $(podman --version | awk '{print $3}'), runc, qemu-aarch64 binfmt)"
