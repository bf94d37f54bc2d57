#!/usr/bin/env bash
# The virtual Pi fleet: three arm64 containers provisioned by playbooks/site.yml.
#   scripts/demo.sh up     build/start the fleet, deploy, print what runs where
#   scripts/demo.sh down   remove the containers and the network (secrets stay on the controller)
set -euo pipefail
cd "$(dirname "$0")/.."

NETWORK=berrychat-demo
HOSTS=(berrychat-pi-1 berrychat-pi-2 berrychat-pi-3)
ARCH=${DEMO_ARCH:-arm64}
HTTP_PORT=${DEMO_HTTP_PORT:-8080}
HTTPS_PORT=${DEMO_HTTPS_PORT:-8443}
APT_CACHE=${BERRYCHAT_APT_CACHE:-/var/cache/berrychat/apt}/$ARCH
# What the last successful deploy was made from (see deployed()).
STAMP=.cache/demo-deployed-$ARCH

down() {
  for h in "${HOSTS[@]}"; do podman rm -f -t 10 "$h" >/dev/null 2>&1 || true; done
  podman network rm "$NETWORK" >/dev/null 2>&1 || true
  rm -f "$STAMP"
  echo "virtual fleet removed (generated secrets kept in .secrets/local/)"
}

start_fleet() {
  podman network exists "$NETWORK" || podman network create "$NETWORK" >/dev/null
  for h in "${HOSTS[@]}"; do
    if podman container exists "$h"; then
      [[ "$(podman inspect -f '{{.State.Running}}' "$h")" == true ]] || podman start "$h" >/dev/null
      # A host restored from a snapshot can leave podman believing a container runs whose
      # processes are gone: exec then fails. Restart it once; if that fails too, say what to do.
      if ! podman exec "$h" true >/dev/null 2>&1; then
        podman restart -t 10 "$h" >/dev/null 2>&1 || true
        podman exec "$h" true >/dev/null 2>&1 || {
          echo "$h exists but cannot run commands (state: $(podman inspect -f '{{.State.Status}}' "$h"));" \
            "remove the fleet with 'make demo-down' and run 'make demo' again" >&2
          exit 1
        }
      fi
      continue
    fi
    ports=()
    # The edge Pi publishes HTTP/HTTPS on the host's loopback only.
    if [[ "$h" == berrychat-pi-1 ]]; then
      ports=(-p "127.0.0.1:$HTTP_PORT:80" -p "127.0.0.1:$HTTPS_PORT:443")
    fi
    mkdir -p "$APT_CACHE/$h/partial"
    podman run -d --name "$h" --hostname "$h" --network "$NETWORK" \
      --memory 4g --ulimit nofile=20000:20000 --ulimit nproc=8192:8192 \
      --systemd always -v "$APT_CACHE/$h:/var/cache/apt/archives:rw" \
      --label berrychat-demo=true "${ports[@]}" \
      "localhost/berrychat-pi:$ARCH" /sbin/init >/dev/null
    echo "started $h"
  done
  for h in "${HOSTS[@]}"; do
    # Bounded wait: the system bus appears a moment after the container starts.
    for _ in $(seq 90); do
      state=$(podman exec "$h" systemctl is-system-running --wait 2>/dev/null || true)
      [[ "$state" == running || "$state" == degraded ]] && break
      sleep 2
    done
    [[ "$state" == running || "$state" == degraded ]] || { echo "$h did not boot ($state)" >&2; exit 1; }
  done
}

report() {
  echo
  echo "BerryChat virtual fleet ($ARCH containers on podman network $NETWORK)"
  printf '%-16s %-8s %-40s %s\n' HOST ARCH GROUPS SERVICES
  for h in "${HOSTS[@]}"; do
    arch=$(podman exec "$h" uname -m)
    groups=$(ansible-inventory -i inventory/local --host "$h" >/dev/null 2>&1 && \
      ansible-inventory -i inventory/local --graph | awk -v h="$h" '
        /@/ {g=$0; sub(/.*@/, "", g); sub(/:$/, "", g)} index($0, h) {print g}' | grep -v '^all$' | sort -u | paste -sd, -)
    services=$(podman exec "$h" bash -c '
      for u in nginx berrychat mariadb redis-server coturn prometheus grafana-server; do
        systemctl list-units --type=service --state=active --no-legend "$u*" 2>/dev/null | awk "{print \$1}"
      done' | sed 's/\.service//' | paste -sd, -)
    printf '%-16s %-8s %-40s %s\n' "$h" "$arch" "$groups" "${services:--}"
  done
  echo
  echo "Web client:  http://127.0.0.1:$HTTP_PORT/  https://127.0.0.1:$HTTPS_PORT/ (once the edge roles are deployed)"
  if [[ -f .secrets/local/berrychat_admin_password ]]; then
    echo "Admin login: admin / $(cat .secrets/local/berrychat_admin_password)   (demo only: a real fleet keeps it in .secrets/<inventory>/)"
  fi
  echo "Shell:       podman exec -it berrychat-pi-1 bash   (admin user 'pi', key .secrets/local/admin_ed25519)"
  echo "Secrets:     .secrets/local/ (generated on first deploy, kept on this machine)"
  echo "Re-deploy:   ANSIBLE_STRATEGY=mitogen_linear ansible-playbook -i inventory/local playbooks/site.yml"
  echo "Remove:      make demo-down"
}

admin_key() {
  # The admin user pi_base creates logs in with this key only (password login is off).
  local key=.secrets/local/admin_ed25519
  if [[ ! -f "$key" ]]; then
    mkdir -p -m 0700 .secrets/local
    ssh-keygen -q -t ed25519 -N '' -C berrychat-demo-admin -f "$key"
  fi
}

deploy_id() {
  # Everything site.yml deploys from, and the containers it deployed to: a change in any file
  # below, or a recreated container, means deploying again.
  {
    find ansible.cfg requirements.yml playbooks roles templates inventory/local \
      server/pyproject.toml server/berrychat -type f -not -path '*/__pycache__/*' -print0 |
      sort -z | xargs -0 sha256sum
    for h in "${HOSTS[@]}"; do podman inspect -f '{{.Id}}' "$h"; done
  } | sha256sum | cut -d' ' -f1
}

deployed() {
  # An arm64 site.yml takes most of an hour: skip it when this fleet was deployed from exactly
  # this tree and the edge answers. DEMO_REDEPLOY=1 (or any change) runs it again.
  [[ -z "${DEMO_REDEPLOY:-}" && -f "$STAMP" && "$(cat "$STAMP")" == "$(deploy_id)" ]] || return 1
  curl -skf -o /dev/null --max-time 20 "https://127.0.0.1:$HTTPS_PORT/app/"
}

case "${1:-up}" in
  up)
    admin_key
    podman image exists "localhost/berrychat-pi:$ARCH" || bash images/build.sh "$ARCH"
    start_fleet
    if deployed; then
      echo "The fleet is already deployed from this tree and answers; not running site.yml" \
        "(DEMO_REDEPLOY=1 make demo runs it again)."
    else
      # Mitogen (plugins/strategy): one emulated Python per Pi for the whole play instead of
      # one per task. ANSIBLE_STRATEGY=linear runs Ansible's own strategy.
      ANSIBLE_STRATEGY="${ANSIBLE_STRATEGY:-mitogen_linear}" \
        ansible-playbook -i inventory/local playbooks/site.yml
      mkdir -p .cache && deploy_id > "$STAMP"
    fi
    report
    ;;
  down) down ;;
  status) report ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
