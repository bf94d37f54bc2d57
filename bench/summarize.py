"""Medians over repeated `berrychat bench --scenario direct` runs (open loop), as a Markdown table.

    .venv/bin/python bench/summarize.py bench/results/<run 1>.json bench/results/<run 2>.json ...

Per offered rate: how many runs reached that step, and the median of acks/s, ack p50/p99, the
server's and the generator's CPU, and the sum of everything lost or refused. Then the median
of each run's best rate with p99 <= 50 ms and nothing lost, and the load averages recorded.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(runs: list[dict[str, Any]]) -> str:
    steps: dict[int, list[dict[str, Any]]] = {}
    best = []
    for r in runs:
        o = r["direct"]["open_loop"]
        best.append(o["best_rate_p99_le_50ms_nothing_lost"])
        for s in o["steps"]:
            steps.setdefault(s["offered_per_s"], []).append(s)
    out = [
        "| offered msgs/s | runs | acks/s | ack p50 ms | ack p99 ms | lost + refused + unacked "
        "| server CPU % | generator CPU % | mean batch | writes/msg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rate in sorted(steps):
        ss = steps[rate]
        bad = sum(s["lost"] + s["refused"] + s["unacked"] + s["unsent"] for s in ss)
        batch = [s["server_mean_batch"] for s in ss if s.get("server_mean_batch")]
        writes = [s["server_writes_per_msg"] for s in ss if s.get("server_writes_per_msg")]
        out.append(
            f"| {rate:,} | {len(ss)} | {_med([s['acks_per_s'] for s in ss]):,.0f} "
            f"| {_med([s['ack_p50_ms'] for s in ss]):.1f} "
            f"| {_med([s['ack_p99_ms'] for s in ss]):.1f} | {bad} "
            f"| {_med([s['server_cpu_pct'] for s in ss]):.0f} "
            f"| {_med([s['generator_cpu_pct'] for s in ss]):.0f} | {_med(batch):.1f} "
            f"| {_med(writes):.2f} |"
        )
    loads = [r["host"]["loadavg_before"][0] for r in runs] + [r["loadavg_after"][0] for r in runs]
    out.append("")
    out.append(
        f"best rate with ack p99 <= 50 ms and nothing lost: median {_med(best):,.0f}/s "
        f"(runs: {', '.join(f'{b:,}' for b in best)}); 1-minute load average "
        f"{min(loads):.1f}-{max(loads):.1f} over the runs"
    )
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print(summarize([json.loads(Path(p).read_text()) for p in argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
