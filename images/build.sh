#!/usr/bin/env bash
# Build the virtual Raspberry Pi image: Debian bookworm with systemd as PID 1, made from
# Debian's own packages with debootstrap and imported into podman.
#   images/build.sh arm64    -> localhost/berrychat-pi:arm64   (the real target, emulated)
#   images/build.sh native   -> localhost/berrychat-pi:native  (same recipe, host architecture)
# The image is tagged with a hash of this recipe and rebuilt only when the recipe changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
flavour=${1:-arm64}
case "$flavour" in
  arm64) arch=arm64 ;;
  native) arch=$(dpkg --print-architecture) ;;
  *) echo "usage: $0 arm64|native" >&2; exit 2 ;;
esac

recipe_hash=$( (cat "$here/build.sh"; cat "$here"/rootfs/* 2>/dev/null; echo "$arch") | sha256sum | cut -c1-12)
name=localhost/berrychat-pi
tag="$flavour-$recipe_hash"
if podman image exists "$name:$tag"; then
  podman tag "$name:$tag" "$name:$flavour"
  echo "image $name:$flavour is current ($tag)"
  exit 0
fi

# The mirror is whatever this machine's own apt sources use (deb822 or one-line format).
apt_uris() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -r "$f" ]] && grep -hoE '^(URIs:|deb) +[a-z]+://[^ ]+' "$f" | awk '{print $2}'
  done
  return 0
}
mirror=$(apt_uris | grep -E '/debian/?$' | head -1 || true)
security=$(apt_uris | grep -E '/debian-security/?$' | head -1 || true)
[[ -n "$mirror" ]] || { echo "no Debian mirror found in this machine's apt sources" >&2; exit 1; }
mirror=${mirror%/}; security=${security%/}

work=$(mktemp -d /var/tmp/berrychat-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
echo "building $name:$tag from $mirror (this takes a few minutes under emulation)"
packages=python3,python3-apt,systemd,systemd-sysv,dbus,sudo,ca-certificates,iproute2,procps,less,gnupg,apt-transport-https,locales,tzdata,cron
debootstrap --arch="$arch" --variant=minbase --include="$packages" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -30 "$work/debootstrap.log" >&2; exit 1; }

{
  echo "deb $mirror bookworm main"
  echo "deb $mirror bookworm-updates main"
  [[ -n "$security" ]] && echo "deb $security bookworm-security main"
} >"$root/etc/apt/sources.list"
# Keep downloaded packages: test containers share one archive cache per architecture.
echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >"$root/etc/apt/apt.conf.d/10keep-debs"
echo 'APT::Install-Recommends "false";' >"$root/etc/apt/apt.conf.d/10no-recommends"
echo berrychat-pi >"$root/etc/hostname"
# Units that make no sense in a container.
for unit in getty@tty1.service systemd-udevd.service systemd-udevd-control.socket \
            systemd-udevd-kernel.socket systemd-firstboot.service systemd-remount-fs.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
if [[ "$flavour" == arm64 ]]; then
  # qemu-user cannot set up user namespaces: units with PrivateUsers= (Debian's redis-server)
  # fail to start. This drop-in lives in the test image only; the roles stay unchanged.
  mkdir -p "$root/etc/systemd/system/service.d"
  printf '[Service]\nPrivateUsers=no\n' >"$root/etc/systemd/system/service.d/10-emulation.conf"
  # Nor can systemd set up the credentials directory of units with LoadCredential= under
  # qemu-user (status 243/CREDENTIALS): systemd-tmpfiles-setup would fail at every boot, and
  # after a container restart /run/mysqld (and the like) would be missing. No credentials are
  # passed to these containers, so the lists are emptied for the three boot units that have one.
  for unit in systemd-tmpfiles-setup systemd-tmpfiles-setup-dev systemd-sysusers; do
    mkdir -p "$root/etc/systemd/system/$unit.service.d"
    printf '[Service]\nLoadCredential=\n' >"$root/etc/systemd/system/$unit.service.d/10-emulation.conf"
  done
fi
chroot "$root" apt-get update -qq >/dev/null
chroot "$root" apt-get clean
echo "flavour=$flavour recipe=$recipe_hash" >"$root/etc/berrychat-image"

tar -C "$root" -c . | podman import \
  --change 'CMD ["/sbin/init"]' --change 'ENV container=podman' --change 'STOPSIGNAL SIGRTMIN+3' \
  - "$name:$tag" >/dev/null
podman tag "$name:$tag" "$name:$flavour"
echo "built $name:$tag"
