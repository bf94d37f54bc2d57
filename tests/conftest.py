"""Options for the repository-level test suite (Molecule scenarios as pytest items)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--scenarios",
        default="",
        help="space-separated Molecule scenarios to run (default: every scenario under molecule/)",
    )
