"""`berrychat bench` end to end at toy size: seeds, spawns a real `berrychat serve`, runs each
scenario briefly and writes the JSON with the exact command."""

from __future__ import annotations

import json

from berrychat.bench import bench_main
from berrychat.cli import build_parser


async def test_bench_smoke(tmp_path):
    argv = [
        "bench",
        "--scenario",
        "all",
        "--no-pin",
        "--idle",
        "20,40",
        "--rates",
        "20",
        "--seconds",
        "1",
        "--users",
        "20",
        "--window",
        "2",
        "--storm",
        "40",
        "--settle",
        "0.1",
        "--results",
        str(tmp_path),
    ]
    args = build_parser().parse_args(argv)
    args.argv = argv
    assert await bench_main(args) == 0
    (out,) = tmp_path.glob("*.json")
    r = json.loads(out.read_text())
    assert r["command"].startswith("berrychat bench --scenario all")
    assert [x["connections"] for x in r["idle"]] == [20, 40]
    assert r["fanout"]["steps"][0]["lost"] == 0
    assert r["direct"]["messages"] > 0
    assert r["direct"]["pushes_received"] == r["direct"]["pushes_expected"]
    assert r["storm"]["clients"] == 40
