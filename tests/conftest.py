"""Options for the repository-level test suite (Molecule scenarios as pytest items)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

# Helpers shared with the scenarios' verifiers (e.g. secret_scan) live in molecule/shared.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "molecule" / "shared"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--scenarios",
        default="",
        help="space-separated Molecule scenarios to run (default: every scenario under molecule/)",
    )


# The scenarios named under `alone:` in molecule/ci.yml (the whole fleet: 25-45 minutes) get an
# xdist worker to themselves. pytest-xdist's load-group scheduler hands each worker up to three
# work units at a time, so a short scenario queued behind the fleet on its worker waited for the
# whole fleet run (monitoring waited 24 minutes once). A worker only starts an item once it knows
# the next one (pytest's nextitem), so the fleet's worker still gets exactly one companion: a
# plain test if one is left, else the last (shortest, see `slowest_first`) scenario.
def _alone_scenarios(config: pytest.Config) -> set[str]:
    ci = yaml.safe_load((Path(str(config.rootpath)) / "molecule" / "ci.yml").read_text()) or {}
    return set(ci.get("alone") or [])


def _scenario_of(scope: str) -> str | None:
    """The scenario of a work unit: `...::test_scenario[fleet]` (with or without `@fleet`)."""
    found = re.search(r"::test_scenario\[([^\]]+)\]", scope)
    return found.group(1) if found else None


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN001, ANN201 (xdist types)
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    alone = _alone_scenarios(config)

    class AloneScheduling(LoadGroupScheduling):
        def _pending(self, node) -> list[str]:  # noqa: ANN001
            """The node's unfinished work units, in the order it runs them."""
            work = self.assigned_work.get(node, {})
            return [scope for scope, unit in work.items() if not all(unit.values())]

        def _reschedule(self, node) -> None:  # noqa: ANN001
            pending = self._pending(node)
            holds_alone = any(_scenario_of(scope) in alone for scope in pending)
            if self.workqueue and holds_alone and _scenario_of(pending[-1]) not in alone:
                return  # the alone scenario has its companion already: nothing more here
            super()._reschedule(node)

        def _assign_work_unit(self, node) -> None:  # noqa: ANN001
            pending = self._pending(node)
            if pending and _scenario_of(pending[-1]) in alone and len(self.workqueue) > 1:
                plain = [scope for scope in self.workqueue if _scenario_of(scope) is None]
                companion = plain[0] if plain else next(reversed(self.workqueue))
                self.workqueue.move_to_end(companion, last=False)
            super()._assign_work_unit(node)

    return AloneScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The alone scenarios first, so that a worker starts each at once (work goes out in
    collection order) and the plain tests are left to be their companions."""
    alone = _alone_scenarios(config)
    items.sort(key=lambda item: 0 if _scenario_of(item.nodeid) in alone else 1)
