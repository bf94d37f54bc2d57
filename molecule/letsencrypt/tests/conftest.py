"""Fixtures of the letsencrypt scenario: one testinfra host per container role.

Named fixtures instead of `testinfra_hosts`: the shared plugin sets pytest's --hosts to every
container, and testinfra lets that option win over a module's `testinfra_hosts`.
"""

from __future__ import annotations

import pytest
import testinfra
from pebble_helpers import EDGE, LAN, PEBBLE


@pytest.fixture(scope="session")
def edge():
    """The edge in acme mode (nginx + certbot, domain = its container name)."""
    return testinfra.get_host(f"podman://{EDGE}")


@pytest.fixture(scope="session")
def lan():
    """The LAN-only edge in selfsigned mode."""
    return testinfra.get_host(f"podman://{LAN}")


@pytest.fixture(scope="session")
def pebble():
    """The Pebble ACME server; also the 'outside' client that connects to the edges' :443."""
    return testinfra.get_host(f"podman://{PEBBLE}")
