"""Percentiles and CPU/RSS accounting for the generator and the spawned server."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

SETTLE = [1.0]  # seconds to let queues drain between phases (--settle)


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Cpu:
    """CPU seconds of this process (the generator) and of the server process (all its threads;
    also the part spent in the kernel: socket writes over loopback include the receiving side's
    TCP processing)."""

    def __init__(self, server_pid: int | None) -> None:
        self.pid = server_pid
        self.t0 = time.perf_counter()
        self.g0 = self._self()
        self.s0, self.k0 = self._server()

    @staticmethod
    def _self() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def _server(self) -> tuple[float, float]:
        """(user + system, system) CPU seconds of the server."""
        if self.pid is None:
            return 0.0, 0.0
        try:
            f = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            tck = os.sysconf("SC_CLK_TCK")
            return (int(f[11]) + int(f[12])) / tck, int(f[12]) / tck
        except OSError:
            return 0.0, 0.0

    def done(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self.t0
        total, kernel = self._server()
        return {
            "wall_s": round(wall, 3),
            "generator_cpu_pct": round(100 * (self._self() - self.g0) / wall, 1),
            "server_cpu_pct": round(100 * (total - self.s0) / wall, 1) if self.pid else None,
            "server_sys_cpu_pct": round(100 * (kernel - self.k0) / wall, 1) if self.pid else None,
        }


def per_cpu(rate: float, res: dict[str, Any]) -> int | None:
    """Throughput per second of server CPU: what one whole core would carry if the server
    were CPU-bound (on a loaded host the server gets only part of its core)."""
    pct = res.get("server_cpu_pct")
    return round(rate * 100 / pct) if pct else None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text lines `name{labels} value` as {"name{labels}": value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                continue
    return out


def hist_quantile(before: dict[str, float], after: dict[str, float], name: str, q: float) -> float:
    """Upper bound (ms) of the histogram bucket holding quantile `q` of what `name` observed
    between two scrapes (inf: above the largest finite bucket; nan: nothing observed)."""
    pre = name + '_bucket{le="'
    buckets = []
    for k, v in after.items():
        if k.startswith(pre):
            le = k[len(pre) : -2]
            buckets.append((float("inf") if le == "+Inf" else float(le), v - before.get(k, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    for le, n in buckets:
        if n >= q * total:
            return le * 1000
    return float("inf")  # pragma: no cover - the +Inf bucket holds everything


def server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What the server saw between two scrapes: group commits, mean batch size, and its own
    send-to-commit latency (bucket upper bounds, so "p99 <= x ms")."""
    batches = after.get("berrychat_commit_batches_total", 0) - before.get(
        "berrychat_commit_batches_total", 0
    )
    ops = after.get("berrychat_messages_committed_total", 0) - before.get(
        "berrychat_messages_committed_total", 0
    )
    writes = after.get("berrychat_writes_total", 0) - before.get("berrychat_writes_total", 0)
    name = "berrychat_send_commit_seconds"
    return {
        "server_commits": int(batches),
        "server_mean_batch": round(ops / batches, 1) if batches else None,
        # coalesced transport writes (one per dirty connection per loop tick) per committed op
        "server_writes_per_msg": round(writes / ops, 2) if ops else None,
        "server_commit_p50_le_ms": hist_quantile(before, after, name, 0.50),
        "server_commit_p99_le_ms": hist_quantile(before, after, name, 0.99),
    }
