"""Options for the repository-level test suite (Molecule scenarios as pytest items)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Helpers shared with the scenarios' verifiers (e.g. secret_scan) live in molecule/shared.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "molecule" / "shared"))

# Greedy scheduling of Molecule scenarios; the fleet starts first (molecule/ci.yml `alone:`).
from xdist_alone import (  # noqa: E402, F401  (hooks, registered by name)
    pytest_collection_modifyitems,
    pytest_xdist_make_scheduler,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--scenarios",
        default="",
        help="space-separated Molecule scenarios to run (default: every scenario under molecule/)",
    )
