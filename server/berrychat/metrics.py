"""Prometheus metrics, text exposition format 0.0.4, without a dependency.

Counters and histograms are plain attribute updates on the hot path (no locks, no label
lookups for the unlabelled ones); gauges are read from callbacks when `/metrics` is scraped.
One `Metrics` object per server instance (tests run several servers in one process).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

# seconds: 0.5 ms .. 10 s
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def _fmt(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    if isinstance(v, int) or float(v).is_integer():
        return str(int(v))
    return repr(float(v))


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Counter:
    __slots__ = ("name", "help", "value")
    kind = "counter"

    def __init__(self, name: str, help: str) -> None:
        self.name = name
        self.help = help
        self.value = 0

    def inc(self, n: int | float = 1) -> None:
        self.value += n

    def samples(self) -> Iterable[str]:
        yield f"{self.name} {_fmt(self.value)}"


class LabeledCounter:
    """A counter with one label (e.g. errors by code)."""

    __slots__ = ("name", "help", "label", "values")
    kind = "counter"

    def __init__(self, name: str, help: str, label: str) -> None:
        self.name = name
        self.help = help
        self.label = label
        self.values: dict[str, float] = {}

    def inc(self, key: str, n: int | float = 1) -> None:
        self.values[key] = self.values.get(key, 0) + n

    def samples(self) -> Iterable[str]:
        for k in sorted(self.values):
            yield f'{self.name}{{{self.label}="{_esc(k)}"}} {_fmt(self.values[k])}'


class Gauge:
    __slots__ = ("name", "help", "fn", "kind")

    def __init__(self, name: str, help: str, fn: Callable[[], float], kind: str = "gauge") -> None:
        self.name = name
        self.help = help
        self.fn = fn
        self.kind = kind  # "counter" for values that only grow but live elsewhere

    def samples(self) -> Iterable[str]:
        try:
            v = self.fn()
        except Exception:
            return
        yield f"{self.name} {_fmt(v)}"


class Histogram:
    __slots__ = ("name", "help", "buckets", "counts", "sum", "count")
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.help = help
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def samples(self) -> Iterable[str]:
        acc = 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            yield f'{self.name}_bucket{{le="{_fmt(b)}"}} {acc}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {_fmt(round(self.sum, 6))}"
        yield f"{self.name}_count {self.count}"


class Metrics:
    """Every metric the server exports (listed in docs/server.md, "Metrics")."""

    def __init__(self) -> None:
        self._all: list[Counter | LabeledCounter | Gauge | Histogram] = []
        c, h = self.counter, self.histogram
        self.rate_limited = LabeledCounter(
            "berrychat_rate_limited_total", "requests refused by a rate limit, by limit", "limit"
        )
        self._all.append(self.rate_limited)
        self.redis_published = c(
            "berrychat_redis_published_total", "PUBLISH commands sent (batched per loop tick)"
        )
        self.redis_received = c(
            "berrychat_redis_received_total", "deliveries received from other processes"
        )
        self.redis_dropped = c(
            "berrychat_redis_dropped_total", "deliveries dropped on purpose (fault injection)"
        )
        self.redis_errors = c("berrychat_redis_errors_total", "failed Redis operations")
        self.errors = LabeledCounter(
            "berrychat_errors_total", "error answers by code (WebSocket and HTTP)", "code"
        )
        self._all.append(self.errors)
        self.closes = LabeledCounter(
            "berrychat_ws_closes_total", "WebSocket closes initiated by the server, by code", "code"
        )
        self._all.append(self.closes)
        self.send_commit = h(
            "berrychat_send_commit_seconds",
            "msg.* frame received (or HTTP send) to transaction committed",
        )
        self.e2e = h(
            "berrychat_delivery_latency_seconds",
            "end to end inside the server: stream frame received to the push queued for "
            "the last local recipient (cross-process: to the remote process's delivery)",
        )
        self.db_latency = h("berrychat_db_seconds", "database transaction duration")
        self.redis_delivery = h(
            "berrychat_redis_delivery_seconds",
            "publish on another process to delivery here, through Redis (per payload)",
        )
        self.redis_latency = h(
            "berrychat_redis_seconds", "Redis round trip (publish pipelines, shared state)"
        )

    def counter(self, name: str, help: str) -> Counter:
        m = Counter(name, help)
        self._all.append(m)
        return m

    def histogram(self, name: str, help: str) -> Histogram:
        m = Histogram(name, help)
        self._all.append(m)
        return m

    def gauge(self, name: str, help: str, fn: Callable[[], float], kind: str = "gauge") -> Gauge:
        m = Gauge(name, help, fn, kind)
        self._all.append(m)
        return m

    def names(self) -> list[str]:
        return [m.name for m in self._all]

    def render(self) -> bytes:
        out: list[str] = []
        for m in self._all:
            out.append(f"# HELP {m.name} {m.help}")
            out.append(f"# TYPE {m.name} {m.kind}")
            out.extend(m.samples())
        out.append("")
        return "\n".join(out).encode("utf-8")
