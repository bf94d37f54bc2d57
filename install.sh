#!/usr/bin/env bash
# BerryChat on one Raspberry Pi (Raspberry Pi OS / Debian 12 bookworm), in one command:
#
#   ./install.sh                         # as root, or a user with sudo
#   ./install.sh -e '{"grafana_enabled": false}'   # further arguments go to ansible-playbook
#
# 1. installs python3-venv (apt) and creates the Ansible virtualenv .venv/ from the pinned
#    versions in requirements/controller.lock (only what the playbooks need);
# 2. writes an inventory for this Pi on first run — inventory/pi/ (BERRYCHAT_INVENTORY to
#    change it): this host in every group (edge, chat_servers, db_primary, redis, monitoring,
#    turn), reached with ansible_connection=local, a self-signed certificate for the LAN;
#    edit it and run ./install.sh again to change settings (a later run keeps your edits);
# 3. runs playbooks/site.yml against it;
# 4. prints the URL and the admin login. Generated secrets stay in .secrets/pi/.
# Running it again changes nothing (site.yml reports changed=0) unless you changed something.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

INVENTORY=${BERRYCHAT_INVENTORY:-inventory/pi}
NAME=$(basename "$INVENTORY")
SECRETS=.secrets/$NAME
VENV=.venv
LOCK=requirements/controller.lock
# What the playbooks need on the controller (versions from the lock file).
CONTROLLER_PACKAGES=(ansible ansible-core passlib jinja2 pyyaml)
started=$(date +%s)

say() { printf '\n==> %s\n' "$*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null || die "run me as root (sudo is not installed)"
  exec sudo BERRYCHAT_INVENTORY="$INVENTORY" "$0" "$@"
fi

# In a subshell: os-release sets NAME and other variables of its own.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [[ "$codename" != bookworm && -z "${BERRYCHAT_ANY_OS:-}" ]]; then
  die "this is $(. /etc/os-release && echo "${PRETTY_NAME:-an unknown system}"); BerryChat supports Raspberry Pi OS / Debian 12 bookworm (BERRYCHAT_ANY_OS=1 to try anyway)"
fi
[[ -f "$LOCK" && -f playbooks/site.yml ]] || die "run me from a complete BerryChat checkout"

say "System packages (python3-venv, openssh-client)"
missing=()
for p in python3-venv ca-certificates openssh-client; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
else
  echo "already installed"
fi

say "Ansible virtualenv ($VENV, pinned by $LOCK)"
stamp="$VENV/.install-sh-$(sha256sum "$LOCK" | cut -c1-16)"
if [[ -f "$stamp" && -x "$VENV/bin/ansible-playbook" ]]; then
  echo "up to date"
else
  [[ -x "$VENV/bin/pip" ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -c "$LOCK" "${CONTROLLER_PACKAGES[@]}"
  rm -f "$VENV"/.install-sh-*
  touch "$stamp"
fi
export PATH="$PWD/$VENV/bin:$PATH"

say "Inventory ($INVENTORY)"
if [[ -f "$INVENTORY/hosts.yml" ]]; then
  echo "kept (delete $INVENTORY to have it written again)"
else
  host=$(hostname -s)
  address=$(hostname -I 2>/dev/null | awk '{print $1}')
  [[ -n "$address" ]] || die "this host has no IPv4 address (hostname -I is empty)"
  admin=${SUDO_USER:-}
  [[ -n "$admin" && "$admin" != root ]] || admin=pi
  # The admin account pi_base keeps logs in with SSH keys only (password login is turned
  # off): its current authorized keys, else a key pair generated here.
  mkdir -p -m 0700 "$SECRETS"
  home=$(getent passwd "$admin" | cut -d: -f6 || true)
  keys_file=${home:-/nonexistent}/.ssh/authorized_keys
  if [[ -s "$keys_file" ]] && grep -qE '^(ssh-|ecdsa-|sk-)' "$keys_file"; then
    keys=$(grep -E '^(ssh-|ecdsa-|sk-)' "$keys_file")
  else
    [[ -f "$SECRETS/admin_ed25519" ]] ||
      ssh-keygen -q -t ed25519 -N '' -C "berrychat-$host-admin" -f "$SECRETS/admin_ed25519"
    keys=$(cat "$SECRETS/admin_ed25519.pub")
  fi
  mkdir -p "$INVENTORY/group_vars"
  {
    echo "---"
    echo "# Written by install.sh for this one Pi: every group on this host, no SSH."
    echo "all:"
    echo "  vars:"
    echo "    ansible_connection: local"
    echo "    ansible_python_interpreter: /usr/bin/python3"
    echo "  hosts:"
    echo "    $host:"
    echo "      ansible_host: $address"
    echo "  children:"
    for g in edge chat_servers db_primary redis monitoring turn; do
      echo "    $g:"
      echo "      hosts:"
      echo "        $host:"
    done
  } >"$INVENTORY/hosts.yml"
  {
    echo "---"
    echo "# Written by install.sh; edit and run ./install.sh again. Role variables:"
    echo "# roles/<role>/README.md. Generated secrets: .secrets/$NAME/ (kept on this Pi)."
    # An absolute path: the summary play on the implicit localhost has no inventory_dir.
    echo "berrychat_secrets_dir: $PWD/$SECRETS"
    echo
    echo "# The name of the service on the LAN (mDNS: <hostname>.local). With a public DNS name"
    echo "# and ports 80/443 forwarded here, set it, set letsencrypt_mode: acme and"
    echo "# letsencrypt_email, and a Let's Encrypt certificate replaces the self-signed one."
    echo "berrychat_domain: $host.local"
    echo "letsencrypt_mode: selfsigned"
    echo "letsencrypt_selfsigned_extra_sans: [\"IP:$address\"]"
    echo
    echo "# Wiring between the edge roles (as in inventory/example)."
    echo "letsencrypt_webroot: /var/www/acme"
    echo "nginx_lb_acme_webroot: /var/www/acme"
    echo "nginx_lb_tls_certificate: \"/etc/letsencrypt/live/{{ berrychat_domain }}/fullchain.pem\""
    echo "nginx_lb_tls_certificate_key: \"/etc/letsencrypt/live/{{ berrychat_domain }}/privkey.pem\""
    echo
    echo "# The admin account on this Pi (pi_base): SSH keys only, password login is turned off."
    echo "pi_base_admin_user: $admin"
    echo "pi_base_admin_ssh_keys:"
    while IFS= read -r k; do printf '  - "%s"\n' "$k"; done <<<"$keys"
  } >"$INVENTORY/group_vars/all.yml"
  echo "written: $INVENTORY/hosts.yml, $INVENTORY/group_vars/all.yml"
fi

say "playbooks/site.yml"
ansible-playbook -i "$INVENTORY" playbooks/site.yml "$@"

address=$(awk '/ansible_host:/ {print $2; exit}' "$INVENTORY/hosts.yml")
domain=$(sed -n 's/^berrychat_domain: *//p' "$INVENTORY/group_vars/all.yml" | tr -d '"')
say "BerryChat is running ($(($(date +%s) - started)) s)"
echo "URL:         https://$address/   (also https://$domain/ where mDNS works)"
if [[ -f "$SECRETS/berrychat_admin_password" ]]; then
  echo "Admin login: admin / $(cat "$SECRETS/berrychat_admin_password")   (kept in $SECRETS/berrychat_admin_password)"
fi
if [[ -f "$SECRETS/admin_ed25519" ]]; then
  echo "SSH:         only with the key $SECRETS/admin_ed25519 (password login is off)"
fi
echo "Certificate: self-signed unless you set up Let's Encrypt (see $INVENTORY/group_vars/all.yml)"
echo "Settings:    $INVENTORY/group_vars/all.yml, then ./install.sh again"
