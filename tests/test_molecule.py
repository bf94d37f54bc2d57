"""Every Molecule scenario as one pytest item, so `make test` ends with one summary line.

Scenarios run in parallel under pytest-xdist (`--dist loadgroup`, one group per scenario).
Each scenario's full log is kept under .cache/molecule-logs/<scenario>.log and its tail is
shown on failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from secret_scan import secret_values, secrets_in_log

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".cache" / "molecule-logs"
# Bounded: a scenario that hangs is killed rather than eating CI's whole budget. The default
# holds for every role scenario; molecule/ci.yml `timeouts:` gives longer ones (the fleet).
SCENARIO_TIMEOUT_S = int(os.environ.get("MOLECULE_SCENARIO_TIMEOUT", "3000"))


def _ci() -> dict:
    """molecule/ci.yml: which architecture, order, worker and time limit each scenario gets."""
    return yaml.safe_load((ROOT / "molecule" / "ci.yml").read_text()) or {}


def _timeout(scenario: str) -> int:
    """Seconds the scenario may run: MOLECULE_SCENARIO_TIMEOUT, else molecule/ci.yml
    `timeouts:`, else 3000."""
    if "MOLECULE_SCENARIO_TIMEOUT" in os.environ:
        return SCENARIO_TIMEOUT_S
    ci = _ci()
    return int((ci.get("timeouts") or {}).get(scenario, SCENARIO_TIMEOUT_S))


def _ci_arch(scenario: str) -> str:
    """MOLECULE_ARCH from the environment, else the scenario's entry in molecule/ci.yml."""
    forced = os.environ.get("MOLECULE_ARCH", "")
    if forced:
        return forced
    ci = _ci()
    return "arm64" if scenario in (ci.get("arm64") or []) else "native"


def _all_scenarios() -> list[str]:
    """Every scenario, the slowest first (molecule/ci.yml `slowest_first`), then by name, so
    parallel workers do not end with one long scenario running alone."""
    ci = _ci()
    rank = {s: i for i, s in enumerate(ci.get("slowest_first") or [])}
    names = (p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))
    return sorted(names, key=lambda s: (rank.get(s, len(rank)), s))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scenario" not in metafunc.fixturenames:
        return
    wanted = metafunc.config.getoption("--scenarios").split()
    known = _all_scenarios()
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise pytest.UsageError(f"unknown Molecule scenario(s): {', '.join(unknown)}")
    # Scenarios under `manual:` in molecule/ci.yml run only when named (--scenarios / SCENARIOS).
    manual = set(_ci().get("manual") or {})
    chosen = wanted or [s for s in known if s not in manual]
    metafunc.parametrize(
        "scenario", [pytest.param(s, marks=pytest.mark.xdist_group(s)) for s in chosen]
    )


def test_every_scenario_has_a_ci_architecture() -> None:
    ci = _ci()
    listed = set(ci.get("arm64") or []) | set(ci.get("native") or {}) | set(ci.get("manual") or {})
    assert listed == set(_all_scenarios()), "molecule/ci.yml must name every scenario once"


def _molecule(action: list[str], scenario: str, env: dict[str, str], out, timeout: int) -> None:
    """One bounded molecule command (destroy before and after a run), output into the log."""
    subprocess.run(
        ["molecule", *action, "-s", scenario],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )


def test_scenario(scenario: str) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{scenario}.log"
    arch = _ci_arch(scenario)
    # A fresh ephemeral directory per run: its secrets/ holds what this run generated, read
    # below before the final destroy prunes it.
    ephemeral = ROOT / ".cache" / "molecule-ephemeral" / scenario
    shutil.rmtree(ephemeral, ignore_errors=True)
    env = dict(
        os.environ,
        MOLECULE_ARCH=arch,
        MOLECULE_EPHEMERAL_DIRECTORY=str(ephemeral),
        # Every playbook run as `ansible-playbook -v`: its output is checked for secrets.
        ANSIBLE_VERBOSITY="1",
        ANSIBLE_FORCE_COLOR="0",
        PY_COLORS="0",
        NO_COLOR="1",
    )
    limit_s = _timeout(scenario)
    started = time.monotonic()
    timed_out = False
    with log.open("w") as out:
        _molecule(["destroy"], scenario, env, out, timeout=300)
        # Its own process group, so a timeout stops ansible-playbook and pytest under it too.
        proc = subprocess.Popen(
            ["molecule", "test", "-s", scenario, "--destroy", "never"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.flush()
        leaked = secrets_in_log(ephemeral / "secrets", log.read_text(errors="replace"))
        generated = len(secret_values(ephemeral / "secrets"))
        # Leave no containers behind (bounded: destroy is a single podman rm per host).
        _molecule(["destroy"], scenario, env, out, timeout=300)
    took = time.monotonic() - started
    print(f"molecule {scenario} ({arch}): {took:.0f}s, {generated} generated secret file(s)")
    if timed_out:
        limit = f"{limit_s} s"
        pytest.fail(f"molecule test -s {scenario} ({arch}) ran past {limit}; log {log}")
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-80:])
        pytest.fail(f"molecule test -s {scenario} failed (rc={proc.returncode}); log {log}\n{tail}")
    assert not leaked, (
        f"the -v output of molecule test -s {scenario} contains the value of generated "
        f"secret(s) {', '.join(leaked)}; log {log}"
    )


def test_scenario_left_no_containers(scenario: str) -> None:
    """No container of the scenario outlives its run (its final destroy removed every one).

    Also the second test of the scenario's xdist group: a worker starts an item only once it
    knows the next one, so this item is what lets a worker run its scenario without a second
    scenario queued behind it (tests/xdist_alone.py hands out the next one only when it is free).
    """
    platforms = yaml.safe_load((ROOT / "molecule" / scenario / "molecule.yml").read_text())
    wanted = {p["name"] for p in platforms.get("platforms") or []}
    assert wanted, f"molecule/{scenario}/molecule.yml names no platforms"
    listed = subprocess.run(
        ["podman", "ps", "-a", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    left = sorted(wanted & set(listed))
    assert not left, f"containers of {scenario} left behind: {left}"
