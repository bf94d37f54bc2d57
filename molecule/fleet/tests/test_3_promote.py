"""Losing the primary Pi: the container holding the MariaDB primary is stopped, and
playbooks/promote.yml turns the replica into the primary. Every message acknowledged before
the failure is still there (same seq, once), and sending works again for both users.

This module changes the fleet for good (one Pi stays down): it runs last."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fleet import Resilient, check_delivery, names, podman, sql, workdir
from test_2_deploy import playbook, run_playbook, tail

PROMOTE_TIMEOUT = 900


def test_promote_refuses_while_the_primary_runs() -> None:
    """Safety: the replica still talks to a live primary, so promotion would split the
    brain; the playbook stops before changing anything."""
    replica = names("db_replicas")[0]
    log = workdir("promote") / "promote-refused.log"
    rc = asyncio.run(
        run_playbook(
            playbook(
                "promote.yml",
                "-e",
                f"berrychat_new_primary={replica}",
                "-e",
                "berrychat_promote_wait=4",
            ),
            log,
            300,
        )
    )
    assert rc != 0, tail(log)
    assert "still connected to its primary" in log.read_text(), tail(log)
    assert sql(replica, "SELECT @@global.read_only") == [["1"]]


def test_promote_replica_after_losing_the_primary_pi(world) -> None:
    if not world.conv:
        pytest.skip("the site test did not create the conversation")
    primary, replica = names("db_primary")[0], names("db_replicas")[0]
    log = workdir("promote") / "promote.log"
    report: dict[str, object] = {}

    async def scenario() -> None:
        devices = {n: Resilient(world.edge, world.tokens[n], n) for n in ("ann", "bob")}
        for d in devices.values():
            await d.ensure(time.monotonic() + 30)
        # Acknowledged just before the failure.
        for i in range(10):
            for d in devices.values():
                cid = f"promote-before-{d.name}-{i}"
                world.acked[cid] = (await d.send(world.conv, f"before {i}", cid, within=30))["seq"]

        # The primary Pi is lost: its MariaDB and its two BerryChat instances with it.
        podman("stop", "-t", "10", primary)
        started = time.monotonic()
        rc = await run_playbook(
            playbook("promote.yml", "-e", f"berrychat_new_primary={replica}"), log, PROMOTE_TIMEOUT
        )
        report["promote_seconds"] = round(time.monotonic() - started)
        assert rc == 0, f"promote.yml failed (rc {rc}):\n{tail(log)}"

        # Service continues: both users send again (reconnecting through the edge, which
        # skips the lost Pi's instances) and see everything.
        for i in range(10):
            for d in devices.values():
                cid = f"promote-after-{d.name}-{i}"
                world.acked[cid] = (await d.send(world.conv, f"after {i}", cid, within=120))["seq"]
        for d in devices.values():
            await d.settle()
        check_delivery(world.conv, world.acked, list(devices.values()))
        report.update(
            {
                "acked_total": len(world.acked),
                "reconnects": {n: d.connects - 1 for n, d in devices.items()},
                "resends": {n: d.retries for n, d in devices.items()},
            }
        )
        print("promotion:", json.dumps(report))
        for d in devices.values():
            await d.close()

    asyncio.run(scenario())

    # The new primary is writable, replicates from nobody, and holds every acknowledged
    # message itself.
    assert sql(replica, "SELECT @@global.read_only") == [["0"]]
    assert podman("exec", replica, "mariadb", "-N", "-e", "SHOW SLAVE STATUS").strip() == ""
    stored = {
        r[0]: int(r[1])
        for r in sql(
            replica,
            f"SELECT cid, seq FROM messages WHERE conversation_id = {int(world.conv)} "
            "AND cid IS NOT NULL",
        )
    }
    lost = {c: s for c, s in world.acked.items() if stored.get(c) != s}
    assert not lost, f"acknowledged messages missing on the new primary: {list(lost)[:5]}"
    # It stays writable after a restart (the tuning file says so too).
    assert "read_only = OFF" in podman(
        "exec", replica, "cat", "/etc/mysql/mariadb.conf.d/60-berrychat.cnf"
    )
