"""Fuzzing support: two sizes (a modest one in `make test`, the full one in `make fuzz`), a fixed
seed in the full run, an input counter per target, a per-input time bound, and a memory-growth
check with tracemalloc.

`BERRYCHAT_FUZZ=full` selects the full size (`make fuzz`); each fuzz test then records how many
inputs it ran in the file named by `BERRYCHAT_FUZZ_REPORT` (one JSON object per line), which the
Makefile target sums and prints.
"""

from __future__ import annotations

import gc
import json
import os
import time
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any

from hypothesis import HealthCheck, seed, settings

FULL = os.environ.get("BERRYCHAT_FUZZ", "") == "full"
SEED = 20261128
# No single input may take longer than this (a hang shows as a failure, not a stuck CI). The
# bound is generous because the 2-core CI machine is shared; real inputs take microseconds.
MAX_INPUT_SECONDS = 2.0


class Counter:
    """Counts the inputs of one target and the slowest one."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.n = 0
        self.slowest = 0.0

    def timed(self, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            dt = time.perf_counter() - t0
            self.n += 1
            self.slowest = max(self.slowest, dt)
            assert dt < MAX_INPUT_SECONDS, f"{self.target}: one input took {dt:.2f} s"

    def report(self) -> None:
        line = {"target": self.target, "inputs": self.n, "slowest_ms": round(self.slowest * 1e3, 2)}
        print(f"\nfuzz {self.target}: {self.n} inputs, slowest {line['slowest_ms']} ms")
        path = os.environ.get("BERRYCHAT_FUZZ_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")


def fuzz_settings(full: int, ci: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Hypothesis settings for a fuzz target: `full` examples under `make fuzz` (fixed seed),
    `ci` in `make test`. No example database (nothing written to the work tree), no deadline
    (the shared CI machine stalls at random; `Counter` enforces its own bound instead)."""
    s = settings(
        max_examples=full if FULL else ci,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=not FULL,  # CI: the same examples every run (deterministic)
    )

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = s(fn)
        return seed(SEED)(fn) if FULL else fn

    return wrap


def memory_growth(run_batch: Callable[[int], None], batches: int = 6) -> int:
    """Bytes still allocated after `batches` batches beyond what the first left: a leak grows
    with every batch; a bounded cache does not. The first batch warms caches up."""
    gc.collect()
    tracemalloc.start()
    try:
        run_batch(0)
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        for b in range(1, batches):
            run_batch(b)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


def mutations(samples: Iterable[bytes], rng: Any, n: int) -> Iterable[bytes]:
    """`n` byte-level mutants of valid samples (flip, insert, delete, duplicate, splice,
    truncate): a cheap mutation fuzzer next to Hypothesis' structured generation."""
    pool = list(samples)
    for _ in range(n):
        b = bytearray(rng.choice(pool))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(6)
            i = rng.randrange(len(b) + 1)
            if op == 0 and b:
                b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
            elif op == 1:
                b[i:i] = bytes([rng.randrange(256)]) * rng.choice((1, 1, 2, 8, 200))
            elif op == 2 and b:
                del b[i : i + rng.randint(1, 8)]
            elif op == 3:
                j = rng.randrange(len(b) + 1)
                b[i:i] = b[min(i, j) : max(i, j)][:512]
            elif op == 4:
                other = rng.choice(pool)
                k = rng.randrange(len(other) + 1)
                b = b[:i] + bytearray(other[k:])
            else:
                del b[i:]
        yield bytes(b)


def summarize(path: str) -> str:
    """The per-target counts of a `make fuzz` run and their total (the Makefile prints it)."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    width = max((len(r["target"]) for r in rows), default=6)
    lines = [f"{'target':<{width}}  {'inputs':>8}  slowest"]
    for r in rows:
        lines.append(f"{r['target']:<{width}}  {r['inputs']:>8}  {r['slowest_ms']} ms")
    lines.append(f"{'total':<{width}}  {sum(r['inputs'] for r in rows):>8}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(summarize(sys.argv[1]))
