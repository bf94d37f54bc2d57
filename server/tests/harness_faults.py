"""The fault plan shared by `test_faults.py` (short) and `bench/soak.py` (`make soak`, long):
for each fault, chat for a while, inject it, keep chatting until every device is back, stop,
resync every device and count sent / acknowledged / delivered / lost / duplicated, plus what
the fault left in the metrics and the logs."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness_cluster import Cluster, http_get
from harness_load import ChatLoad, table

from berrychat.client import http_json

# metric keys whose change across a phase is evidence of a fault
EVIDENCE_METRICS = (
    "berrychat_redis_errors_total",
    'berrychat_errors_total{code="unavailable"}',
    'berrychat_errors_total{code="storage_full"}',
    "berrychat_connections",
)


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    keys = [k for k in set(before) | set(after) if k.startswith(EVIDENCE_METRICS)]
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys)}


def _new_log_lines(cluster: Cluster, before: dict[str, int]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, n in before.items():
        lines = cluster.log_text(name).splitlines()[n:]
        if lines:
            out[name] = lines
    return out


def _grep(lines: dict[str, list[str]], names: tuple[str, ...], *words: str) -> list[str]:
    hits = []
    for name in names:
        for ln in lines.get(name, []):
            if any(w.lower() in ln.lower() for w in words):
                hits.append(f"{name}: {ln.strip()[:160]}")
    return hits


async def _kill9(cluster: Cluster) -> dict[str, Any]:
    victim = 1
    await asyncio.to_thread(cluster.kill9_server, victim)
    port = cluster.servers[victim].port
    try:
        scrape = http_get(port, "/metrics", timeout=1)[0]
    except OSError:
        scrape = 0  # what Prometheus sees: up == 0 for that target
    return {"victim": victim, "scrape_status_after_kill": scrape}


async def _restart_victim(cluster: Cluster) -> None:
    await asyncio.to_thread(cluster.restart_server, 1)


async def _fill_uploads(cluster: Cluster, load: ChatLoad) -> dict[str, Any]:
    """Upload distinct 64 KiB files through nginx until the (size-limited) uploads filesystem
    is full; every answer must be 201 or 507 storage_full, and nothing partial may remain."""
    token = load.devices[0].token
    statuses: Counter = Counter()
    full_in_a_row = 0
    for i in range(200):  # bounded: a 1 MiB tmpfs holds ~15 of them
        body = os.urandom(64 * 1024)
        st, r = await http_json(
            "127.0.0.1",
            cluster.port,
            "POST",
            f"/api/v1/uploads?name=f{i}.bin",
            raw_body=body,
            token=token,
            timeout=20,
        )
        code = r.get("error", {}).get("code") if isinstance(r, dict) else None
        statuses[f"{st} {code or ''}".strip()] += 1
        full_in_a_row = full_in_a_row + 1 if st == 507 else 0
        if full_in_a_row >= 3:
            break
    tmp = cluster.uploads_dir / "tmp"
    leftovers = len(list(tmp.iterdir())) if tmp.is_dir() else 0
    return {"upload_answers": dict(statuses), "partial_files_left": leftovers}


FAULTS: dict[str, Callable[[Cluster, ChatLoad], Any]] = {
    "kill -9 one server process": lambda c, _: _kill9(c),
    "restart Redis": lambda c, _: asyncio.to_thread(c.restart_redis, 1.0),
    "restart MariaDB (primary)": lambda c, _: asyncio.to_thread(c.restart_mariadb, 1.0),
    "nginx reload": lambda c, _: asyncio.to_thread(c.reload_nginx),
    "nginx restart": lambda c, _: asyncio.to_thread(c.restart_nginx, 1.0),
    "uploads filesystem full": _fill_uploads,
}


def default_faults(cluster: Cluster) -> list[str]:
    """Every fault this cluster can take (filling uploads needs the size-limited mount)."""
    return [f for f in FAULTS if f != "uploads filesystem full" or cluster.uploads_mounted]


def _evidence(
    fault: str, deltas: dict[str, float], lines: dict[str, list[str]], info: dict[str, Any]
) -> list[str]:
    """What shows the fault in metrics and logs (empty: nothing did)."""
    servers = tuple(n for n in lines if n.startswith("server"))
    ev: list[str] = []
    if fault.startswith("kill"):
        if info.get("scrape_status_after_kill") == 0:
            ev.append("metrics: the killed process's /metrics scrape fails (up == 0)")
        ev += _grep(lines, ("nginx",), "refused", "prematurely closed", "reset by peer")[:2]
    elif fault == "restart Redis":
        if deltas.get("berrychat_redis_errors_total", 0) > 0:
            ev.append(
                f"metrics: berrychat_redis_errors_total +{deltas['berrychat_redis_errors_total']:g}"
            )
        ev += _grep(lines, servers, "redis")[:2]
        ev += _grep(lines, ("redis",), "ready to accept")[:1]
    elif fault.startswith("restart MariaDB"):
        k = 'berrychat_errors_total{code="unavailable"}'
        if deltas.get(k, 0) > 0:
            ev.append(f"metrics: {k} +{deltas[k]:g}")
        ev += _grep(lines, servers, "database", "mariadb", "mysql")[:2]
        ev += _grep(lines, ("mariadb",), "shutdown complete", "ready for connections")[:2]
    elif fault.startswith("uploads"):
        k = 'berrychat_errors_total{code="storage_full"}'
        if deltas.get(k, 0) > 0:
            ev.append(f"metrics: {k} +{deltas[k]:g}")
        ans = info.get("upload_answers", {})
        if any(a.startswith("507") for a in ans):
            ev.append(f"uploads answered {ans}")
    elif fault.startswith("nginx"):
        ev += _grep(lines, ("nginx",), "reconfiguring", "signal", "exiting", "start worker")[:3]
        if info.get("accepts_delta", 0) > 0:
            ev.append(f"nginx stub_status: {info['accepts_delta']} new connections accepted")
    return ev


async def run_plan(
    cluster: Cluster,
    load: ChatLoad,
    *,
    before_s: float,
    after_s: float,
    faults: list[str] | None = None,
    rounds: int = 1,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run each fault `rounds` times; return one row per fault occurrence."""
    rows: list[dict[str, Any]] = []
    for rnd in range(rounds):
        for fault in faults or default_faults(cluster):
            phase = fault if rounds == 1 else f"{fault} (round {rnd + 1})"
            load.phase = phase
            load.reset_counters()
            m0 = await asyncio.to_thread(cluster.metrics_sum)
            l0 = await asyncio.to_thread(cluster.log_lines)
            assert cluster.nginx is not None
            a0 = (await asyncio.to_thread(cluster.nginx.status))["accepts"]
            load.start_sending()
            await asyncio.sleep(before_s)
            t0 = time.monotonic()
            log(f"[{phase}] injecting")
            info = await FAULTS[fault](cluster, load) or {}
            await asyncio.sleep(0.5)
            await load.wait_all_connected(60)
            recovered = time.monotonic() - t0
            m1 = await asyncio.to_thread(cluster.metrics_sum)
            await asyncio.sleep(after_s)
            await load.stop_sending(60)
            if fault.startswith("kill"):
                await _restart_victim(cluster)
            await load.resync_all(60)
            stored = await asyncio.to_thread(cluster.stored_stream)
            row = load.check(phase, stored)
            a1 = (await asyncio.to_thread(cluster.nginx.status))["accepts"]
            info["accepts_delta"] = a1 - a0
            lines = _new_log_lines(cluster, l0)
            deltas = _delta(m0, m1)
            row["recovered_s"] = recovered
            row["metrics_delta"] = deltas
            row["evidence"] = _evidence(fault, deltas, lines, info)
            row["info"] = info
            rows.append(row)
            log(
                f"[{phase}] sent {row['sent']} acked {row['acknowledged']} "
                f"delivered {row['delivered']}/{row['expected_deliveries']} lost {row['lost']} "
                f"dup {row['duplicated']} order {row['order_errors']} "
                f"reconnects {row['reconnects']} max {row['reconnect_max']:.2f}s "
                f"evidence {row['evidence'][:2]}"
            )
    return rows


def write_report(rows: list[dict[str, Any]], path: Path, header: str) -> str:
    text = f"{header}\n\n{table(rows)}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.with_suffix(".json").write_text(json.dumps(rows, indent=2, default=str))
    return text
