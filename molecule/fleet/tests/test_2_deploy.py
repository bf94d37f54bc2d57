"""A rolling playbooks/deploy.yml of a new server version while two connected users send
continuously through the edge: no send fails for good, no acknowledged message is lost or
stored twice, and every instance runs the new version afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from fleet import REPO, Resilient, check_delivery, instance_get, instances, workdir

# Bounds of the client loop: a send every 0.2 s per user, at most MAX_SENDS each, and
# AFTER_DEPLOY more once the playbook has finished; the playbook gets DEPLOY_TIMEOUT seconds.
MAX_SENDS = 6000
AFTER_DEPLOY = 10
DEPLOY_TIMEOUT = 1500


def bumped_source(dst: Path) -> str:
    """A copy of server/ whose version differs: what a release looks like to deploy.yml."""
    shutil.copytree(
        REPO / "server",
        dst,
        ignore=shutil.ignore_patterns(
            "__pycache__", "*.pyc", "tests", "*.egg-info", "build", "dist", ".*"
        ),
    )
    init = dst / "berrychat" / "__init__.py"
    old = re.search(r'__version__ = "([^"]+)"', init.read_text()).group(1)
    new = f"{old}+deploy.test"
    init.write_text(init.read_text().replace(f'"{old}"', f'"{new}"'))
    proj = dst / "pyproject.toml"
    proj.write_text(proj.read_text().replace(f'version = "{old}"', f'version = "{new}"', 1))
    return new


def playbook(name: str, *extra: str) -> list[str]:
    return [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        os.environ["MOLECULE_INVENTORY_FILE"],
        str(REPO / "playbooks" / name),
        *extra,
    ]


async def run_playbook(cmd: list[str], log: Path, timeout: float) -> int:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=out, stderr=asyncio.subprocess.STDOUT, cwd=REPO
        )
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -1


def tail(log: Path, n: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def test_rolling_deploy_loses_no_message(world) -> None:
    tmp_path = workdir("deploy")
    assert world.conv, "the site test did not create the conversation"
    version = bumped_source(tmp_path / "server")
    log = tmp_path / "deploy.log"
    edge = world.edge
    report: dict[str, object] = {}

    async def scenario() -> None:
        devices = {n: Resilient(edge, world.tokens[n], n) for n in ("ann", "bob")}
        for d in devices.values():
            await d.ensure(time.monotonic() + 30)
        deployed = asyncio.Event()
        failures: list[tuple[str, str]] = []
        during: Counter[str] = Counter()

        async def sender(d: Resilient) -> None:
            after = 0
            for i in range(MAX_SENDS):
                if deployed.is_set():
                    if after >= AFTER_DEPLOY:
                        break
                    after += 1
                cid = f"deploy-{d.name}-{i}"
                try:
                    ack = await d.send(world.conv, f"{d.name} #{i}", cid, within=120)
                except Exception as e:  # a send that failed for good: the test fails below
                    failures.append((cid, repr(e)))
                else:
                    assert ack["cid"] == cid
                    world.acked[cid] = ack["seq"]
                    if not deployed.is_set():
                        during[d.name] += 1
                await asyncio.sleep(0.2)

        tasks = [asyncio.create_task(sender(d)) for d in devices.values()]
        started = time.monotonic()
        rc = await run_playbook(
            playbook("deploy.yml", "-e", f"berrychat_source_dir={tmp_path / 'server'}"),
            log,
            DEPLOY_TIMEOUT,
        )
        report["deploy_seconds"] = round(time.monotonic() - started)
        deployed.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 300)
        assert rc == 0, f"deploy.yml failed (rc {rc}):\n{tail(log)}"
        assert not failures, f"sends that never succeeded: {failures[:5]}"
        for d in devices.values():
            await d.settle()
        report.update(
            {
                "acked_during_deploy": dict(during),
                "acked_total": len(world.acked),
                "reconnects": {n: d.connects - 1 for n, d in devices.items()},
                "close_codes": {n: d.close_codes for n, d in devices.items()},
                "resends": {n: d.retries for n, d in devices.items()},
                "transient_errors": {n: dict(d.errors) for n, d in devices.items()},
            }
        )
        print("rolling deploy:", json.dumps(report))
        check_delivery(world.conv, world.acked, list(devices.values()))
        for d in devices.values():
            # Every client was on an instance that restarted: it was told to go (1001),
            # came back through the edge and resynced.
            assert 1001 in d.close_codes, (d.name, d.close_codes)
            assert during[d.name] >= 20, f"{d.name} sent too little during the deploy: {during}"
            await d.close()

    asyncio.run(scenario())
    for h, p in instances():
        body = json.loads(instance_get(h, p, "/healthz"))
        assert body["version"] == version, (h, p, body)
