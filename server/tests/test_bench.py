"""`berrychat bench` end to end at toy size: seeds, spawns a real `berrychat serve`, runs each
scenario briefly and writes the JSON with the exact command."""

from __future__ import annotations

import json
import math
import time

from berrychat.bench import _redacted, bench_main
from berrychat.bench.direct import _pace
from berrychat.bench.measure import hist_quantile, parse_metrics, server_side
from berrychat.cli import build_parser


async def _bench(tmp_path, options: str) -> dict:
    argv = ["bench", *options.split(), "--no-pin", "--settle", "0.1", "--results", str(tmp_path)]
    args = build_parser().parse_args(argv)
    args.argv = argv
    assert await bench_main(args) == 0
    (out,) = tmp_path.glob("*.json")
    return json.loads(out.read_text())


async def test_bench_smoke(tmp_path):
    r = await _bench(
        tmp_path,
        "--scenario all --idle 20,40 --rates 20 --seconds 1 --users 20 --window 2 "
        "--direct-rates 40 --storm 40",
    )
    assert r["command"].startswith("berrychat bench --scenario all")
    assert r["config"] == {}  # no --config
    assert [x["connections"] for x in r["idle"]] == [20, 40]
    assert r["fanout"]["steps"][0]["lost"] == 0
    closed = r["direct"]["closed_loop"]
    assert closed["messages"] > 0
    assert closed["pushes_received"] == closed["pushes_expected"]
    assert closed["server_commits"] >= 1 and closed["server_writes_per_msg"] > 0
    assert [s["offered_per_s"] for s in r["direct"]["open_loop"]["steps"]] == [40]
    assert r["storm"]["clients"] == 40


async def test_bench_direct_open_loop(tmp_path):
    """Paced 1:1 steps: every send acknowledged after its commit, every push (the sender's copy
    and the peer's) received, the server's own view of the step recorded."""
    r = await _bench(
        tmp_path,
        "--scenario direct --users 20 --direct-rates 50,100 --seconds 1 --window 0",
    )
    assert "closed_loop" not in r["direct"]
    assert r["hello_retries"] == 0
    o = r["direct"]["open_loop"]
    assert o["pairs"] == 10
    steps = o["steps"]
    assert [s["offered_per_s"] for s in steps] == [50, 100]
    for s in steps:
        assert s["sent"] == s["acked"] == s["offered_per_s"]  # one second per step
        assert s["unsent"] == s["unacked"] == s["refused"] == s["lost"] == 0
        assert s["pushes_received"] == s["pushes_expected"] == 2 * s["acked"]
        assert s["server_commits"] >= 1 and s["server_mean_batch"] >= 1
        assert s["server_writes_per_msg"] > 0
        assert 0 <= s["ack_p50_ms"] <= s["ack_p95_ms"] <= s["ack_p99_ms"] <= s["ack_max_ms"]
        assert s["generator_cpu_pct"] >= 0 and s["server_cpu_pct"] is not None
        assert 0 <= s["server_sys_cpu_pct"] <= s["server_cpu_pct"]
    assert o["best_rate_p99_le_50ms_nothing_lost"] in (0, 50, 100)
    if o["best_rate_p99_le_50ms_nothing_lost"]:
        assert o["best_ack_p99_ms"] <= 50


async def test_pace_sends_each_once_in_order_from_its_schedule():
    sent: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    lag = await _pace(lambda i, due: sent.append((i, due)), 200, 2000.0, t0, 5.0)
    assert [i for i, _ in sent] == list(range(200))
    assert all(due == t0 + i / 2000.0 for i, due in sent)  # latency counts from here
    assert len(lag) == 200 and min(lag) >= 0


def test_metrics_quantiles_from_bucket_deltas():
    before = parse_metrics(
        "# HELP x y\n"
        'berrychat_send_commit_seconds_bucket{le="0.001"} 5\n'
        'berrychat_send_commit_seconds_bucket{le="0.01"} 5\n'
        'berrychat_send_commit_seconds_bucket{le="+Inf"} 5\n'
        "berrychat_commit_batches_total 1\nberrychat_messages_committed_total 5\n"
    )
    after = parse_metrics(
        'berrychat_send_commit_seconds_bucket{le="0.001"} 95\n'
        'berrychat_send_commit_seconds_bucket{le="0.01"} 104\n'
        'berrychat_send_commit_seconds_bucket{le="+Inf"} 106\n'
        "berrychat_commit_batches_total 11\nberrychat_messages_committed_total 105\n"
    )
    assert hist_quantile(before, after, "berrychat_send_commit_seconds", 0.5) == 1.0
    assert hist_quantile(before, after, "berrychat_send_commit_seconds", 0.99) == math.inf
    s = server_side(before, after)
    assert s["server_commits"] == 10 and s["server_mean_batch"] == 10.0
    assert s["server_commit_p50_le_ms"] == 1.0
    assert math.isnan(hist_quantile(after, after, "berrychat_send_commit_seconds", 0.5))


def test_results_record_the_config_without_secrets():
    cfg = {"database": {"type": "mysql", "port": 3306, "password": "pw"}, "media": {}}
    cfg["media"]["url_signing_key"] = "k"
    assert _redacted(cfg) == {
        "database": {"type": "mysql", "port": 3306, "password": "<redacted>"},
        "media": {"url_signing_key": "<redacted>"},
    }
