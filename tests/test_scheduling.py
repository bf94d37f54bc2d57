"""No Molecule scenario waits behind another one on a busy worker (tests/xdist_alone.py).

A generated suite shaped like tests/test_molecule.py (one long `alone:` scenario, two long
and four short ones, each followed in its group by a quick closing test, and three plain
tests) runs under `pytest -n 3 --dist loadgroup`, with the scheduler and, as a control,
without it: xdist's own scheduler queues a scenario behind the long one.
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

SUITE = """
import os, time, pytest

def _run(name, seconds):
    time.sleep(seconds)
    with open(os.environ["SCHED_LOG"], "a") as log:
        log.write(f"{os.environ['PYTEST_XDIST_WORKER']} {name}\\n")

SCENARIOS = [("big", 6), ("L1", 3), ("s1", 0.2), ("L2", 3), ("s2", 0.2), ("s3", 0.2),
             ("s4", 0.2)]
PARAMS = [pytest.param(n, s, marks=pytest.mark.xdist_group(n), id=n) for n, s in SCENARIOS]

@pytest.mark.parametrize("name,seconds", PARAMS)
def test_scenario(name, seconds):
    _run(name, seconds)

@pytest.mark.parametrize("name,seconds", PARAMS)
def test_scenario_left_no_containers(name, seconds):
    _run(f"done:{name}", 0)

def test_plain1():
    _run("plain1", 0)

def test_plain2():
    _run("plain2", 0)

def test_plain3():
    _run("plain3", 0)
"""

SCENARIOS = ["big", "L1", "s1", "L2", "s2", "s3", "s4"]


def _run_suite(tmp_path: Path, with_scheduler: bool) -> dict[str, list[str]]:
    (tmp_path / "molecule").mkdir()
    (tmp_path / "molecule" / "ci.yml").write_text("alone: [big]\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    conftest = f"import sys\nsys.path.insert(0, {str(HERE)!r})\n"
    if with_scheduler:
        conftest += (
            "from xdist_alone import pytest_collection_modifyitems, pytest_xdist_make_scheduler\n"
        )
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_suite.py").write_text(SUITE)
    log = tmp_path / "order.log"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "3", "--dist", "loadgroup",
         "-p", "no:cacheprovider", "test_suite.py"],
        cwd=tmp_path, env={"SCHED_LOG": str(log), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    by_worker: dict[str, list[str]] = defaultdict(list)
    for line in log.read_text().splitlines():
        worker, name = line.split()
        by_worker[worker].append(name)
    closing = [f"done:{name}" for name in SCENARIOS]
    assert sorted(sum(by_worker.values(), [])) == sorted(
        [*SCENARIOS, *closing, "plain1", "plain2", "plain3"]
    )
    return by_worker


def _worker_of_big(by_worker: dict[str, list[str]]) -> list[str]:
    return next(names for names in by_worker.values() if "big" in names)


def _after_big(by_worker: dict[str, list[str]]) -> list[str]:
    """Scenarios that ran after the long one on its worker (they had waited for it)."""
    ran = _worker_of_big(by_worker)
    return [name for name in ran[ran.index("big") + 1 :] if name in SCENARIOS]


def _worker_of(by_worker: dict[str, list[str]], name: str) -> str:
    return next(worker for worker, names in by_worker.items() if name in names)


def test_no_scenario_waits_behind_another(tmp_path: Path) -> None:
    by_worker = _run_suite(tmp_path, with_scheduler=True)
    ran = _worker_of_big(by_worker)
    assert ran[0] == "big", f"the alone scenario must start first on its worker: {ran}"
    assert not _after_big(by_worker), by_worker
    # Each scenario's closing test ran on its worker right after it (one work unit).
    for names in by_worker.values():
        for i, name in enumerate(names):
            if name in SCENARIOS:
                assert names[i + 1 : i + 2] == [f"done:{name}"], by_worker
    # The second long one went to the worker that was free first, not behind the first.
    assert _worker_of(by_worker, "L1") != _worker_of(by_worker, "L2"), by_worker


@pytest.mark.parametrize("control", ["xdist's own scheduler"])
def test_without_it_a_scenario_waits_behind_the_long_one(tmp_path: Path, control: str) -> None:
    by_worker = _run_suite(tmp_path, with_scheduler=False)
    assert _after_big(by_worker), f"{control}: expected a scenario queued behind big: {by_worker}"
