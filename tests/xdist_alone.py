"""A pytest-xdist scheduler that never queues a Molecule scenario behind another one.

xdist's load-group scheduler hands a worker its next work unit while the current one still
runs (a worker only starts an item once it knows the next one: pytest's nextitem). Behind a
long scenario that unit waits: a short one once waited 24 minutes behind the fleet, and in a
clean-clone run on 2026-12-07 mariadb sat queued behind monitoring while another worker was
idle for 6 minutes. Here a worker gets its next unit only when nothing but one
test is left of its work: every scenario's group ends with a quick test
(tests/test_molecule.py: test_scenario_left_no_containers), which is that known next item while
the scenario runs, so the choice of what comes next is made when the worker is free (greedy list
scheduling, the slowest scenarios first: molecule/ci.yml `slowest_first`).
The scenarios under `alone:` (the whole fleet) are started first.
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
    """The scenario of a test or work unit: `...::test_scenario[fleet]` and its closing test
    `...::test_scenario_left_no_containers[fleet]` (with or without `@fleet`)."""
    found = re.search(r"::test_scenario(?:_left_no_containers)?\[([^\]]+)\]", scope)
    return found.group(1) if found else None


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class GreedyScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            # One work unit per scenario: its run and its closing test. Named here, because
            # xdist 3.8 cannot add `@group` to node ids under pytest 9 (it sets Item._nodeid,
            # which pytest 9 no longer reads), so `xdist_group` marks alone group nothing.
            name = scenario_of(nodeid)
            return f"scenario:{name}" if name else super()._split_scope(nodeid)

        def _reschedule(self, node: Any) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            # More than one test left (a scenario and its closing test, or more): the worker
            # has what it needs to go on; the next unit is chosen once it is free.
            if self._pending_of(self.assigned_work.get(node, {})) > 1:
                return
            self._assign_work_unit(node)

    return GreedyScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The alone scenarios first, so that a worker starts each at once (work goes out in
    collection order)."""
    alone = _alone_scenarios(config)
    items.sort(key=lambda item: 0 if scenario_of(item.nodeid) in alone else 1)
