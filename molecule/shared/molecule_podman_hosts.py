"""Pytest plugin for testinfra verifiers: reach Molecule's podman containers directly.

Testinfra's ansible backend does not know the podman connection and would fall back to one
ansible-playbook run per command (very slow under ARM64 emulation). This plugin points the
tests at ``podman://<container>`` instead and exposes the scenario's inventory groups.
"""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache

import pytest


@cache
def _inventory() -> dict:
    path = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not path:
        raise RuntimeError("MOLECULE_INVENTORY_FILE is not set: run the tests through molecule")
    out = subprocess.run(
        ["ansible-inventory", "-i", path, "--list"], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def hosts_in(group: str = "all") -> list[str]:
    """Container names of an inventory group, as testinfra host specs."""
    inv = _inventory()
    if group == "all":
        names = sorted(inv.get("_meta", {}).get("hostvars", {}))
    else:
        names = sorted(inv.get(group, {}).get("hosts", []))
    return [f"podman://{name}" for name in names]


def hostvars(name: str) -> dict:
    """The inventory variables Molecule gave one host."""
    return _inventory().get("_meta", {}).get("hostvars", {}).get(name.removeprefix("podman://"), {})


def pytest_configure(config: pytest.Config) -> None:
    # Default host list for modules without their own testinfra_hosts.
    if os.environ.get("MOLECULE_INVENTORY_FILE"):
        config.option.hosts = ",".join(hosts_in("all"))
        config.option.connection = None
        config.option.ansible_inventory = None
