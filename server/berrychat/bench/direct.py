"""Scenario (c), 1:1 durable messages: open loop (paced at stepped offered rates) and closed
loop (a fixed number of sends in flight per sender)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..client import http_json
from .measure import SETTLE, Cpu, parse_metrics, pct, per_cpu, server_side
from .wsclient import WS, Gen


async def scenario_direct(
    gen: Gen, w: dict[str, Any], pid: int, seconds: float, window: int, users: int
) -> dict[str, Any]:
    pairs = w["direct"][: users // 2]
    conns, _ = await gen.connect_many(w["tokens"][: 2 * len(pairs)], parse=True, retries=True)
    lat: list[float] = []
    done = 0
    stop_at = time.perf_counter() + seconds

    async def sender(c: WS, conv: int, k: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < stop_at and i < 1_000_000:
            i += 1
            t = time.perf_counter()
            r = await c.request({"type": "msg.send", "conv": conv, "cid": f"{k}-{i}", "text": "hi"})
            if r.get("type") != "ack":
                raise RuntimeError(r)
            lat.append(time.perf_counter() - t)
            done += 1

    for c in conns:
        c.msgs = 0
    m0 = await _scrape(gen)
    cpu = Cpu(pid)
    tasks = []
    for p, conv in enumerate(pairs):
        for _ in range(window):
            tasks.append(sender(conns[2 * p], conv, len(tasks)))
    await asyncio.wait_for(asyncio.gather(*tasks), seconds + 60)
    res = cpu.done()
    res["msgs_per_server_cpu_s"] = per_cpu(done / res["wall_s"], res)
    res.update(server_side(m0, await _scrape(gen)))
    await asyncio.sleep(SETTLE[0])
    pushes = sum(c.msgs for c in conns)
    for c in conns:
        c.t.abort()  # type: ignore[union-attr]
    await asyncio.sleep(SETTLE[0])
    return {
        "pairs": len(pairs),
        "in_flight_per_sender": window,
        "messages": done,
        "msgs_per_s": round(done / res["wall_s"]),
        "ack_p50_ms": round(pct(lat, 50) * 1000, 2),
        "ack_p99_ms": round(pct(lat, 99) * 1000, 2),
        "pushes_received": pushes,
        "pushes_expected": 2 * done,
        **res,
    }


# Open loop: a step is past saturation when something is lost or refused, the acks fall behind
# the offered rate, or the ack p99 exceeds this (the next step only piles up queues).
SATURATED_P99_S = 0.25
SATURATED_SHORTFALL = 0.95
P99_TARGET_MS = 50.0


async def _pace(send: Any, total: int, rate: float, t0: float, limit_s: float) -> list[float]:
    """Call `send(i, due)` for i < total at t0 + i/rate. One timer per loop tick, not per send:
    every send already due goes out in that tick. Returns each send's lag behind schedule."""
    lag: list[float] = []
    i = 0
    end = t0 + limit_s
    while i < total:
        now = time.perf_counter()
        if now > end:
            break  # bounded in time even if the generator cannot keep up
        due = t0 + i / rate
        if due > now:
            # at least 1 ms: shorter timers round to 0 in uvloop and the pacer would spin
            await asyncio.sleep(max(due - now, 0.001))
            continue
        while i < total and due <= now:
            send(i, due)
            lag.append(now - due)
            i += 1
            due = t0 + i / rate
        await asyncio.sleep(0)  # let acks and pushes in between bursts
    return lag


async def _scrape(gen: Gen) -> dict[str, float]:
    st, body = await http_json(gen.host, gen.port, "GET", "/metrics", timeout=10)
    if st != 200 or not isinstance(body, bytes):
        return {}
    return parse_metrics(body.decode())


async def _open_step(
    gen: Gen, conns: list[WS], pairs: list[int], pid: int, rate: int, seconds: float
) -> dict[str, Any]:
    n = len(pairs)
    total = max(1, int(rate * seconds))
    lat: list[float] = []
    refused = [0]
    last = [0.0]

    def on_ack(ok: bool, due: float) -> None:
        t = time.perf_counter()
        last[0] = t
        if ok:
            lat.append(t - due)
        else:
            refused[0] += 1

    for c in conns:
        c.msgs = 0
        c.on_ack = on_ack
        c.pending.clear()

    def send(i: int, due: float) -> None:
        p = i % n
        conns[2 * p].send_paced(
            {"type": "msg.send", "conv": pairs[p], "cid": f"o{rate}-{i}", "text": "hi"}, due
        )

    m0 = await _scrape(gen)
    cpu = Cpu(pid)
    t0 = time.perf_counter() + 0.01
    lag = await _pace(send, total, rate, t0, seconds + 30)
    sent = len(lag)
    end = time.perf_counter() + 60
    while time.perf_counter() < end and len(lat) + refused[0] < sent:
        await asyncio.sleep(0.01)
    acked = len(lat)
    expected = 2 * acked  # the sender's own copy and the peer's
    end = time.perf_counter() + 30
    while time.perf_counter() < end and sum(c.msgs for c in conns) < expected:
        await asyncio.sleep(0.01)
    pushes = sum(c.msgs for c in conns)
    res = cpu.done()
    res.update(server_side(m0, await _scrape(gen)))
    span = max(last[0] - t0, seconds * (sent - 1) / max(1, total)) if acked else 0.0
    acks_per_s = round(acked / span) if span > 0 else 0
    res["msgs_per_server_cpu_s"] = per_cpu(acked / res["wall_s"], res)
    return {
        "offered_per_s": rate,
        "sent": sent,
        "acked": acked,
        "acks_per_s": acks_per_s,
        "ack_p50_ms": round(pct(lat, 50) * 1000, 2),
        "ack_p95_ms": round(pct(lat, 95) * 1000, 2),
        "ack_p99_ms": round(pct(lat, 99) * 1000, 2),
        "ack_max_ms": round(max(lat, default=float("nan")) * 1000, 2),
        "send_lag_p99_ms": round(pct(lag, 99) * 1000, 2),
        "refused": refused[0],
        "unacked": sent - acked - refused[0],
        "pushes_received": pushes,
        "pushes_expected": expected,
        "unsent": total - sent,
        "lost": expected - pushes,
        **res,
    }


async def scenario_direct_open(
    gen: Gen, w: dict[str, Any], pid: int, rates: list[int], seconds: float, users: int
) -> dict[str, Any]:
    """`users/2` pairs; the first of each pair sends, paced so that all pairs together offer
    `rate` msgs/s (round robin). Ack latency counts from each send's scheduled time, so a
    generator or server that falls behind cannot hide it (no coordinated omission)."""
    pairs = w["direct"][: users // 2]
    conns, _ = await gen.connect_many(
        w["tokens"][: 2 * len(pairs)], parse=True, raw_msgs=True, retries=True
    )
    rows = []
    try:
        for rate in rates:
            row = await _open_step(gen, conns, pairs, pid, rate, seconds)
            rows.append(row)
            await asyncio.sleep(SETTLE[0])
            if (
                row["lost"]
                or row["unsent"]
                or row["refused"]
                or row["unacked"]
                or row["ack_p99_ms"] > SATURATED_P99_S * 1000
                or row["acks_per_s"] < SATURATED_SHORTFALL * rate
            ):
                break
    finally:
        for c in conns:
            c.t.abort()  # type: ignore[union-attr]
        await asyncio.sleep(SETTLE[0])
    ok = [
        r
        for r in rows
        if r["ack_p99_ms"] <= P99_TARGET_MS
        and r["lost"] == 0
        and r["unsent"] == 0
        and r["refused"] == 0
        and r["unacked"] == 0
        and r["acks_per_s"] >= SATURATED_SHORTFALL * r["offered_per_s"]
    ]
    best = max(ok, key=lambda r: r["offered_per_s"], default=None)
    return {
        "mode": "open loop: paced at each offered rate, latency from the scheduled send time",
        "pairs": len(pairs),
        "seconds_per_step": seconds,
        "steps": rows,
        "best_rate_p99_le_50ms_nothing_lost": best["offered_per_s"] if best else 0,
        "best_acks_per_s": best["acks_per_s"] if best else 0,
        "best_ack_p99_ms": best["ack_p99_ms"] if best else None,
    }
