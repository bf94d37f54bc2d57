"""Prometheus /metrics: text exposition format, the documented metric names (the alert rules
depend on two of them), and values that move with traffic."""

from __future__ import annotations

import re
from pathlib import Path

from berrychat.client import http_json

DOC = Path(__file__).resolve().parents[2] / "docs" / "server.md"
LINE = re.compile(r'^([a-z_:][a-z0-9_:]*)(\{[a-z_]+="[^"]*"\})? (-?[0-9.e+]+|\+Inf)$')


async def _scrape(w) -> dict[str, float]:
    status, body = await http_json(w.host, w.port, "GET", "/metrics")
    assert status == 200
    text = body.decode() if isinstance(body, bytes) else str(body)
    out: dict[str, float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        m = LINE.match(line)
        assert m, f"bad exposition line {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    assert types["berrychat_send_commit_seconds"] == "histogram"
    assert types["berrychat_slow_consumer_disconnects_total"] == "counter"
    return out


async def test_metrics_exposition(sworld):
    w = sworld
    _, _, ca = await w.user("ann")
    _, _, cb = await w.user("bob")
    conv = (await ca.request("conv.create", kind="direct", members=["bob"]))["conv"]
    for i in range(5):
        await ca.send_text(conv, f"m{i}")
    await cb.next_event("msg", pred=lambda e: e["seq"] == 6)
    await http_json(w.host, w.port, "POST", "/api/v1/login", {"username": "x", "password": "y"})
    m = await _scrape(w)
    assert m["berrychat_connections"] == 2
    assert m["berrychat_send_commit_seconds_count"] == 5
    assert m['berrychat_send_commit_seconds_bucket{le="+Inf"}'] == 5
    assert m["berrychat_delivery_latency_seconds_count"] == 5
    assert m["berrychat_deliveries_total"] >= 12
    assert m["berrychat_frames_in_total"] >= 8
    assert m["berrychat_messages_committed_total"] == 5
    assert m["berrychat_slow_consumer_disconnects_total"] == 0
    assert m["berrychat_db_seconds_count"] > 0
    assert m['berrychat_errors_total{code="auth_failed"}'] == 1
    assert m["process_resident_memory_bytes"] > 1e6


def test_every_metric_is_documented():
    from support import make_settings

    from berrychat.metrics import Metrics
    from berrychat.server import Server

    s = Server(make_settings({"type": "sqlite", "database": ":memory:"}))
    names = set(s.metrics.names()) | set(Metrics().names())
    doc = DOC.read_text()
    missing = sorted(n for n in names if f"`{n}`" not in doc and f"`{n}{{" not in doc)
    assert not missing, f"not in docs/server.md: {missing}"
