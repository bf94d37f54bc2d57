"""Prometheus on the monitoring Pi scrapes the fleet that site.yml deployed: every target the
inventory implies is up, and a message sent through the edge shows in the real BerryChat
servers' metrics as Prometheus stores them (molecule/monitoring proves the role with stand-in
/metrics pages; this is the real server)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from typing import Any

from fleet import instances, ip_of, names

PROMETHEUS_PORT = 9090  # prometheus_port (role default; the fleet does not change it)
COMMITTED = "sum(berrychat_messages_committed_total)"


def prometheus(path: str, **params: str) -> Any:
    """One call of Prometheus' HTTP API on the monitoring Pi (its fleet address)."""
    url = f"http://{ip_of(names('monitoring')[0])}:{PROMETHEUS_PORT}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]


def expected_targets() -> set[tuple[str, str]]:
    """(job, instance) of every scrape target, derived from the inventory groups."""
    monitor = names("monitoring")[0]
    want = {("prometheus", monitor), ("alertmanager", monitor)}
    want |= {("node", h) for h in names("all")}
    want |= {("mysqld", h) for h in names("db_primary") + names("db_replicas")}
    want |= {("redis", h) for h in names("redis")}
    want |= {("nginx", h) for h in names("edge")}
    want |= {("berrychat", f"{h}:{p}") for h, p in instances()}
    return want


def test_every_target_of_the_inventory_is_scraped_and_up() -> None:
    want = expected_targets()
    assert len(want) == 15  # 2 + 3 node + 2 mysqld + redis + nginx + 6 BerryChat instances
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    deadline = time.monotonic() + 150  # a target's first scrape comes within one 30 s interval
    while time.monotonic() < deadline:
        active = prometheus("/api/v1/targets", state="active")["activeTargets"]
        seen = {(t["labels"]["job"], t["labels"]["instance"]): t for t in active}
        if set(seen) == want and all(t["health"] == "up" for t in seen.values()):
            break
        time.sleep(5)
    not_up = {k: (t["health"], t["lastError"]) for k, t in seen.items() if t["health"] != "up"}
    assert set(seen) == want and not not_up, (
        f"missing {sorted(want - set(seen))}, unexpected {sorted(set(seen) - want)}, "
        f"not up {not_up}"
    )
    up = prometheus("/api/v1/query", query="up")["result"]
    values = {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1] for r in up}
    assert {k for k, v in values.items() if v == "1"} == want, values


def committed() -> float:
    result = prometheus("/api/v1/query", query=COMMITTED)["result"]
    return float(result[0]["value"][1]) if result else 0.0


def test_a_message_through_the_edge_shows_in_prometheus(world) -> None:
    assert world.conv, "the exchange test did not run"
    # Every instance's own counter, as scraped: one series per instance of the inventory.
    series = prometheus("/api/v1/series", **{"match[]": "berrychat_messages_committed_total"})
    assert {s["instance"] for s in series} == {f"{h}:{p}" for h, p in instances()}
    before = committed()

    async def send() -> None:
        ann = await world.edge.ws(world.tokens["ann"])
        ack = await ann.send_text(world.conv, "counted by Prometheus", cid="site-metrics-1")
        world.acked["site-metrics-1"] = ack["seq"]
        await ann.close()

    asyncio.run(send())
    after = before
    deadline = time.monotonic() + 150  # the next scrape of that instance (30 s interval)
    while time.monotonic() < deadline and after < before + 1:
        time.sleep(5)
        after = committed()
    assert after >= before + 1, f"{COMMITTED}: {before} before the message, {after} after"
