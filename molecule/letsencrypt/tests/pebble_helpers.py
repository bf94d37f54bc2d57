"""Helpers shared by the letsencrypt scenario's tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import testinfra

PEBBLE = "letsencrypt-pebble"
EDGE = "letsencrypt-edge"
LAN = "letsencrypt-lan"
LIVE = "/etc/letsencrypt/live/{}"
HOOK_TAG = "letsencrypt-deploy-hook"
PEBBLE_ROOT = "/tmp/pebble-root.pem"


def live(name: str, leaf: str) -> str:
    return f"{LIVE.format(name)}/{leaf}"


def pebble_host():
    return testinfra.get_host(f"podman://{PEBBLE}")


def cert_field(host, path: str, option: str) -> str:
    """One `openssl x509` field of the first certificate in a PEM file, e.g. -serial."""
    return host.check_output(f"openssl x509 -in {path} -noout {option}")


def served_serial(name: str) -> str:
    """Serial of the certificate nginx on <name>:443 presents, seen from the Pebble container."""
    out = pebble_host().check_output(
        f"openssl s_client -connect {name}:443 -servername {name} </dev/null 2>/dev/null"
        " | openssl x509 -noout -serial"
    )
    return out.strip()


def fetch_pebble_root(host) -> None:
    """Pebble makes a new root at every start; its management API hands it out."""
    host.check_output(f"curl -sf https://{PEBBLE}:15000/roots/0 -o {PEBBLE_ROOT}")


def apply_role(limit: str, *extra_vars: str) -> subprocess.CompletedProcess:
    """Re-run the scenario's converge playbook on one host with overridden variables."""
    scenario = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    ephemeral = env.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if ephemeral and Path(ephemeral, "ansible.cfg").exists():
        env["ANSIBLE_CONFIG"] = str(Path(ephemeral, "ansible.cfg"))
    env["ANSIBLE_ROLES_PATH"] = str(scenario.parent.parent / "roles")
    cmd = ["ansible-playbook", "-i", env["MOLECULE_INVENTORY_FILE"], "--limit", limit]
    for var in extra_vars:
        cmd += ["-e", var]
    cmd.append(str(scenario / "converge.yml"))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False)
