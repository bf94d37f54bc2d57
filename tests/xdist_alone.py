"""A pytest-xdist scheduler that gives some scenarios a worker to themselves.

The scenarios named under `alone:` in molecule/ci.yml (the whole fleet: 25-45 minutes) run on
an xdist worker of their own. xdist's load-group scheduler hands each worker up to three work
units at a time, so a short scenario queued behind the fleet on its worker waited for the whole
fleet run (monitoring once waited 24 minutes). A worker only starts an item once it knows the
next one (pytest's nextitem), so the alone scenario's worker still gets exactly one companion:
a plain test if one is left, else the last (shortest, see `slowest_first`) scenario.
Used by tests/conftest.py; tests/test_scheduling.py proves it on a small generated suite.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml


def _alone_scenarios(config: pytest.Config) -> set[str]:
    path = Path(str(config.rootpath)) / "molecule" / "ci.yml"
    ci = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    return set(ci.get("alone") or [])


def scenario_of(scope: str) -> str | None:
    """The scenario of a work unit: `...::test_scenario[fleet]` (with or without `@fleet`)."""
    found = re.search(r"::test_scenario\[([^\]]+)\]", scope)
    return found.group(1) if found else None


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    alone = _alone_scenarios(config)

    class AloneScheduling(LoadGroupScheduling):
        def _pending(self, node: Any) -> list[str]:
            """The node's unfinished work units, in the order it runs them."""
            work = self.assigned_work.get(node, {})
            return [scope for scope, unit in work.items() if not all(unit.values())]

        def _reschedule(self, node: Any) -> None:
            pending = self._pending(node)
            holds_alone = any(scenario_of(scope) in alone for scope in pending)
            if self.workqueue and holds_alone and scenario_of(pending[-1]) not in alone:
                return  # the alone scenario has its companion already: nothing more here
            super()._reschedule(node)

        def _assign_work_unit(self, node: Any) -> None:
            pending = self._pending(node)
            if pending and scenario_of(pending[-1]) in alone and len(self.workqueue) > 1:
                plain = [scope for scope in self.workqueue if scenario_of(scope) is None]
                companion = plain[0] if plain else next(reversed(self.workqueue))
                self.workqueue.move_to_end(companion, last=False)
            super()._assign_work_unit(node)

    return AloneScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The alone scenarios first, so that a worker starts each at once (work goes out in
    collection order) and the plain tests are left to be their companions."""
    alone = _alone_scenarios(config)
    items.sort(key=lambda item: 0 if scenario_of(item.nodeid) in alone else 1)
