"""The long version of server/tests/test_faults.py (`make soak`): the same real cluster on
loopback (private MariaDB, private redis-server, three `berrychat serve` processes, private nginx
with least_conn and WebSocket proxying), more clients and several rounds of every fault.

    .venv/bin/python bench/soak.py [--rounds 3] [--users 12] [--before 10] [--after 10]

Prints the table fault | sent | acknowledged | delivered | lost | duplicated | reconnect p50/max
and writes it with the raw figures to bench/results/<UTC time>-soak.md and .json. Exits 1 when
an acknowledged message was lost or duplicated, a device holds a hole, or a fault left no trace
in the metrics or logs. Bounded: every phase and wait has a deadline; traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "server" / "tests"))

from harness_cluster import Cluster  # noqa: E402
from harness_faults import run_plan, write_report  # noqa: E402
from harness_load import ChatLoad  # noqa: E402


async def main(args: argparse.Namespace) -> int:
    missing = Cluster.available()
    if missing:
        print(f"not installed: {missing}", file=sys.stderr)
        return 2
    cluster = Cluster(args.servers, uploads_limit_bytes=1 << 20)
    t0 = time.monotonic()
    try:
        await asyncio.to_thread(cluster.start)
        load = ChatLoad(
            cluster.port,
            users=args.users,
            devices_per_user=args.devices,
            send_interval=args.interval,
            seed=args.seed,
        )
        try:
            await load.setup()
            rows = await run_plan(
                cluster, load, before_s=args.before, after_s=args.after, rounds=args.rounds
            )
        finally:
            await load.close()
    finally:
        await asyncio.to_thread(cluster.stop)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    cmd = "bench/soak.py " + " ".join(sys.argv[1:])
    header = (
        f"Soak: {args.rounds} round(s) of every fault, {args.users} users x {args.devices} "
        f"devices, {args.servers} server processes, one send per {args.interval} s per sender; "
        f"{time.monotonic() - t0:.0f} s wall. Command: `{cmd.strip()}`"
    )
    text = write_report(rows, ROOT / "bench" / "results" / f"{stamp}-soak.md", header)
    print(text)
    bad = [
        r
        for r in rows
        if r["lost"]
        or r["duplicated"]
        or r["order_errors"]
        or r["acknowledged"] != r["sent"]
        or r["delivered"] != r["expected_deliveries"]
        or not r["evidence"]
    ]
    for r in bad:
        print(f"FAILED: {r['fault']}: {r['problems'][:5]} evidence={r['evidence']}")
    if not bad:
        cluster.cleanup()
    else:
        print(f"logs kept in {cluster.root}")
    return 1 if bad else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--users", type=int, default=12)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--servers", type=int, default=3)
    p.add_argument("--before", type=float, default=10.0, help="seconds of chat before a fault")
    p.add_argument("--after", type=float, default=10.0, help="seconds of chat after recovery")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between sends")
    p.add_argument("--seed", type=int, default=1)
    sys.exit(asyncio.run(main(p.parse_args())))
