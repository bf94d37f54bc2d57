"""The fleet scenario's worker runs nothing else but one companion (tests/xdist_alone.py).

A generated suite shaped like tests/test_molecule.py (one long `alone:` scenario, six short
ones, three plain tests) runs under `pytest -n 3 --dist loadgroup`, with the scheduler and,
as a control, without it: xdist's own scheduler queues short scenarios behind the long one.
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

@pytest.mark.parametrize("name,seconds", [
    pytest.param(n, s, marks=pytest.mark.xdist_group(n), id=n)
    for n, s in [("s1", 0.2), ("s2", 0.2), ("big", 4), ("s3", 0.2), ("s4", 0.2),
                 ("s5", 0.2), ("s6", 0.2)]])
def test_scenario(name, seconds):
    _run(name, seconds)

def test_plain1():
    _run("plain1", 0)

def test_plain2():
    _run("plain2", 0)

def test_plain3():
    _run("plain3", 0)
"""


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
    assert sorted(sum(by_worker.values(), [])) == sorted(
        ["big", "plain1", "plain2", "plain3", "s1", "s2", "s3", "s4", "s5", "s6"]
    )
    return by_worker


def _worker_of_big(by_worker: dict[str, list[str]]) -> list[str]:
    return next(names for names in by_worker.values() if "big" in names)


def test_the_alone_scenario_runs_with_one_plain_companion(tmp_path: Path) -> None:
    ran = _worker_of_big(_run_suite(tmp_path, with_scheduler=True))
    assert ran[0] == "big", f"the alone scenario must start first on its worker: {ran}"
    assert len(ran) == 2 and ran[1].startswith("plain"), ran


@pytest.mark.parametrize("control", ["xdist's own scheduler"])
def test_without_it_short_scenarios_wait_behind_the_long_one(tmp_path: Path, control: str) -> None:
    ran = _worker_of_big(_run_suite(tmp_path, with_scheduler=False))
    waited = [name for name in ran[ran.index("big") + 1 :] if name.startswith("s")]
    assert waited, f"{control}: expected a short scenario queued behind the long one: {ran}"
