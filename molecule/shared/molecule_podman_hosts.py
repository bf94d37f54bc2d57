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
    # testinfra lets --hosts win over a module's testinfra_hosts, so leave it empty and give
    # modules without their own list every host of the scenario (below).
    if os.environ.get("MOLECULE_INVENTORY_FILE"):
        config.option.hosts = None
        config.option.connection = None
        config.option.ansible_inventory = None


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Runs before testinfra's own hook, which then parametrizes `host` from this list.
    if os.environ.get("MOLECULE_INVENTORY_FILE") and not hasattr(
        metafunc.module, "testinfra_hosts"
    ):
        metafunc.module.testinfra_hosts = hosts_in("all")
