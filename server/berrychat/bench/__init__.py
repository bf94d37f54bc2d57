"""`berrychat bench`: a load generator for a live BerryChat server (loopback only).

    berrychat bench --scenario all --pin                      # spawn a server on CPU 0, SQLite
    berrychat bench --scenario direct --config mariadb.json   # spawn it on that database

The bench seeds users, sessions (tokens generated here) and conversations straight into the
server's database, starts `berrychat serve` pinned with `taskset -c 0` (the generator pins itself
to CPU 1), runs the scenarios, prints a table and writes JSON under `bench/results/` with the
exact command. The generator is one process on one event loop with a minimal WebSocket client
(`asyncio.Protocol`, header-only frame scanning; only sampled receivers parse bodies) and
reports its own CPU so that it is never the hidden bottleneck. Every loop is bounded in count
and in time. The server never imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import resource
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import config
from ..client import http_json
from ..store import open_store
from ..store.base import Dialect, Q, Tx, now_ms
from .direct import scenario_direct, scenario_direct_open
from .measure import SETTLE, Cpu, pct, per_cpu, rss_kib
from .wsclient import HOST, WS, Gen, client_frame

__all__ = ["HOST", "WS", "Gen", "bench_main", "client_frame", "pct", "add_parser", "seed"]

PASSWORD = "bench password 1"


def _portable(arg: str) -> str:
    """A command-line word as recorded in results: this interpreter as `python3`, a file in the
    temporary directory as `<tmp>/<name>`."""
    if arg == sys.executable:
        return "python3"
    if arg.startswith(tempfile.gettempdir() + os.sep):
        return "<tmp>/" + os.path.basename(arg)
    return arg


# ---- seeding -------------------------------------------------------------------------------
async def seed(settings: config.Settings, n_users: int, group: int, pairs: int) -> dict[str, Any]:
    """Users b0..b{n-1}, one session (token) each, a group of the first `group` users, and
    direct conversations (b0,b1), (b2,b3), ... for the first 2*pairs users."""
    from argon2 import PasswordHasher

    a = settings.auth
    pw_hash = PasswordHasher(
        time_cost=a.argon2_time_cost, memory_cost=a.argon2_memory_kib, parallelism=1
    ).hash(PASSWORD)
    store = open_store(settings.database)
    await store.connect()
    await store.migrate()
    tokens = [secrets.token_urlsafe(24) for _ in range(n_users)]
    ts = now_ms()

    def users_tx(d: Dialect) -> Tx[list[int]]:
        rows = [(f"b{i}", f"b{i}", pw_hash, "user", ts) for i in range(n_users)]
        for i in range(0, len(rows), 1000):
            yield Q(
                "INSERT INTO users (username, display_name, password_hash, role, disabled, "
                "created_at) VALUES (?,?,?,?,0,?)",
                rows[i : i + 1000],
                many=True,
            )
        got = yield Q("SELECT id, username FROM users", fetch="all")
        ids = {name: uid for uid, name in got}
        srows = [
            (
                hashlib.sha256(tokens[i].encode()).hexdigest(),
                ids[f"b{i}"],
                "bench",
                ts,
                ts + 86400_000,
            )
            for i in range(n_users)
        ]
        for i in range(0, len(srows), 1000):
            yield Q(
                "INSERT INTO sessions (token_hash, user_id, device_id, created_at, expires_at) "
                "VALUES (?,?,?,?,?)",
                srows[i : i + 1000],
                many=True,
            )
        return [ids[f"b{i}"] for i in range(n_users)]

    uids = await store.run(users_tx)
    lim = settings.limits.max_members
    group_conv = None
    if group:
        group_conv, _, _ = await store.create_conversation(
            "group", uids[0], uids[1:group], "bench group", lim
        )
    direct = []
    for p in range(pairs):
        c, _, _ = await store.create_conversation("direct", uids[2 * p], [uids[2 * p + 1]], "", lim)
        direct.append(c)
    await store.close()
    return {"uids": uids, "tokens": tokens, "group": group_conv, "direct": direct}


# ---- the spawned server --------------------------------------------------------------------
def server_config(base: dict[str, Any], db_path: str) -> dict[str, Any]:
    cfg = json.loads(json.dumps(base))
    cfg.setdefault("server", {}).update({"host": HOST, "port": 0})
    cfg.setdefault("database", {"type": "sqlite"})
    if cfg["database"].get("type", "sqlite") == "sqlite":
        cfg["database"]["database"] = db_path
    lim = cfg.setdefault("limits", {})
    for k in ("messages_per_user", "messages_per_ip", "logins_per_user", "logins_per_ip"):
        lim.setdefault(k, 0)  # the generator is one IP and floods on purpose
    lim.setdefault("max_connections_per_user", 64)
    cfg.setdefault("presence", {}).setdefault("enabled", False)
    return cfg


class Spawned:
    def __init__(self, cfg_path: str, port: int, pin: bool, log_path: str) -> None:
        cmd = [sys.executable, "-m", "berrychat", "--log-level", "WARNING", "serve"]
        cmd += ["--config", cfg_path, "--port", str(port)]
        if pin:
            cmd = ["taskset", "-c", "0", *cmd]
        self.cmd = cmd
        self.port = port
        self.log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        self.pid = self.proc.pid

    async def wait_ready(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                st, _ = await http_json(HOST, self.port, "GET", "/readyz", timeout=2)
                if st == 200:
                    return
            except Exception:
                pass
            await asyncio.sleep(0.2)
        raise TimeoutError("server not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---- scenarios -----------------------------------------------------------------------------
async def scenario_idle(gen: Gen, w: dict[str, Any], pid: int, steps: list[int]) -> list[dict]:
    rows = []
    conns: list[WS] = []
    base = rss_kib(pid)
    for target in steps:
        need = w["tokens"][len(conns) : target]
        cpu = Cpu(pid)
        got, secs = await gen.connect_many(need)
        used = cpu.done()
        conns += got
        await asyncio.sleep(SETTLE[0])
        rss = rss_kib(pid)
        rows.append(
            {
                "connections": len(conns),
                "hellos_per_s": round(len(got) / secs),
                "server_rss_mib": round(rss / 1024, 1),
                "kib_per_conn": round((rss - base) / max(1, len(conns)), 2),
                **used,
            }
        )
    for c in conns:
        c.t.abort()  # type: ignore[union-attr]
    await asyncio.sleep(SETTLE[0])
    return rows


async def scenario_fanout(
    gen: Gen, w: dict[str, Any], pid: int, rates: list[int], seconds: float, sample: int
) -> list[dict]:
    n = len(w["uids"][:500])
    members, _ = await gen.connect_many(w["tokens"][:n], parse=lambda i: i < sample)
    conv = w["group"]
    rows = []
    sender = members[0]
    for rate in rates:
        lat: list[float] = []

        def rec(f: dict[str, Any], lat: list[float] = lat) -> None:
            t = f.get("text", "")
            if t.startswith("t"):
                lat.append(time.time() - float(t[1:]))

        for m in members[:sample]:
            m.msgs = 0
            m.on_msg = rec
        for m in members[sample:]:
            m.msgs = 0
        total = int(rate * seconds)
        cpu = Cpu(pid)
        t0 = time.perf_counter()
        acks = []
        for i in range(total):  # bounded: `total` sends paced over `seconds`
            due = t0 + i / rate
            d = due - time.perf_counter()
            if d > 0:
                await asyncio.sleep(d)
            acks.append(
                sender.request(
                    {
                        "type": "msg.send",
                        "conv": conv,
                        "cid": f"f{rate}-{i}",
                        "text": f"t{time.time():.6f}",
                    }
                )
            )
        await asyncio.wait_for(asyncio.gather(*acks), 60)
        expect = total
        end = time.perf_counter() + 30
        while time.perf_counter() < end and any(m.msgs < expect for m in members):
            await asyncio.sleep(0.05)
        got = sum(m.msgs for m in members)
        res = cpu.done()
        lost = n * expect - got
        res["deliveries_per_server_cpu_s"] = per_cpu(got / seconds, res)
        rows.append(
            {
                "rate_msgs_per_s": rate,
                "deliveries_per_s": round(got / (seconds)),
                "p50_ms": round(pct(lat, 50) * 1000, 2),
                "p95_ms": round(pct(lat, 95) * 1000, 2),
                "p99_ms": round(pct(lat, 99) * 1000, 2),
                "lost": lost,
                **res,
            }
        )
        if lost or pct(lat, 99) > 0.25:
            break  # past saturation: the next step only piles up queues
    for m in members:
        m.t.abort()  # type: ignore[union-attr]
    await asyncio.sleep(SETTLE[0])
    return rows


async def scenario_storm(gen: Gen, w: dict[str, Any], pid: int, clients: int) -> dict[str, Any]:
    """Every client is connected, drops at once, reconnects, syncs and pulls what it missed."""
    pairs = w["direct"][: clients // 2]
    tokens = w["tokens"][: 2 * len(pairs)]
    conns, _ = await gen.connect_many(tokens, parse=True)
    # something to miss: one message per pair while everyone is away (over HTTP would need
    # passwords; send it now and pretend the cursor is one below)
    acks = [
        conns[2 * p].request({"type": "msg.send", "conv": c, "cid": "storm", "text": "missed"})
        for p, c in enumerate(pairs)
    ]
    seqs = [a["seq"] for a in await asyncio.wait_for(asyncio.gather(*acks), 120)]
    for c in conns:
        c.t.abort()  # type: ignore[union-attr]
    await asyncio.sleep(SETTLE[0] / 2)
    cpu = Cpu(pid)
    sem = asyncio.Semaphore(512)

    async def resume(i: int) -> None:
        conv = pairs[i // 2]
        cursor = seqs[i // 2] - 1  # the client had everything but the last message
        async with sem:
            c = await gen.connect(tokens[i], True, timeout=120)
        r = await c.request({"type": "sync", "cursors": {str(conv): cursor}})
        for ch in r["changed"]:
            after = cursor if ch["conv"] == conv else max(0, ch["last_seq"] - 1)
            h = await c.request({"type": "history", "conv": ch["conv"], "after": after})
            if ch["last_seq"] > after:
                assert h["messages"][-1]["seq"] == ch["last_seq"], h
        c.t.abort()  # type: ignore[union-attr]

    await asyncio.wait_for(asyncio.gather(*(resume(i) for i in range(len(tokens)))), 300)
    res = cpu.done()
    return {"clients": len(tokens), "resynced_in_s": res["wall_s"], **res}


# ---- main ----------------------------------------------------------------------------------
def table(title: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    width = {k: max(len(k), *(len(str(r.get(k))) for r in rows)) for k in keys}
    out = [title, "  ".join(k.rjust(width[k]) for k in keys)]
    out += ["  ".join(str(r.get(k)).rjust(width[k]) for k in keys) for r in rows]
    return "\n".join(out)


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="load generator against a spawned server (loopback)")
    b.add_argument("--scenario", default="all", help="idle, fanout, direct, storm or all")
    b.add_argument("--config", help="server config.json (default: SQLite in a temp dir)")
    b.add_argument("--no-pin", action="store_true", help="do not pin server/generator to CPUs")
    b.add_argument("--idle", default="1000,5000,10000", help="idle connection steps")
    b.add_argument("--rates", default="50,100,200,300,400", help="group fan-out msgs/s steps")
    b.add_argument("--seconds", type=float, default=5.0, help="seconds per load step")
    b.add_argument("--users", type=int, default=1000, help="1:1 scenario users (pairs = /2)")
    b.add_argument(
        "--direct-rates",
        default="2000,4000,6000,8000,10000,12000,14000,16000",
        help="1:1 open-loop offered msgs/s steps (all pairs together; empty: skip)",
    )
    b.add_argument(
        "--window",
        type=int,
        default=8,
        help="1:1 closed loop: sends in flight per sender (0 skips it)",
    )
    b.add_argument("--storm", type=int, default=10000, help="reconnect storm clients")
    b.add_argument("--settle", type=float, default=1.0, help="pause between phases (s)")
    b.add_argument("--results", default="", help="results directory (default bench/results)")
    b.set_defaults(fn=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..cli import _run

    return int(_run(bench_main(args)) or 0)


async def bench_main(args: argparse.Namespace) -> int:
    scen = ["idle", "fanout", "direct", "storm"] if args.scenario == "all" else [args.scenario]
    SETTLE[0] = args.settle
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    with contextlib.suppress(OSError, ValueError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if pin:
        os.sched_setaffinity(0, {1})
    base = json.loads(Path(args.config).read_text()) if args.config else {}
    idle_steps = [int(x) for x in args.idle.split(",") if x]
    need = [500] if "fanout" in scen else []
    need += idle_steps if "idle" in scen else []
    need += [args.users] if "direct" in scen else []
    need += [args.storm] if "storm" in scen else []
    n_users = max(need, default=2)
    pairs = max(args.users if "direct" in scen else 0, args.storm if "storm" in scen else 0) // 2
    tmp = Path(tempfile.mkdtemp(prefix="berrychat-bench-"))
    cfg = server_config(base, str(tmp / "bench.db"))
    cfg_path = tmp / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    settings = config.from_dict(cfg, env={})
    print(f"seeding {n_users} users into {settings.database.type} ...", flush=True)
    w = await seed(settings, n_users, group=500 if "fanout" in scen else 0, pairs=pairs)
    port = free_port()
    srv = Spawned(str(cfg_path), port, pin, str(tmp / "server.log"))
    results: dict[str, Any] = {
        # Portable: no interpreter or temporary path of the machine that ran it.
        "command": "berrychat "
        + " ".join(
            shlex.quote(_portable(a)) for a in (getattr(args, "argv", None) or sys.argv[1:])
        ),
        "server_command": " ".join(_portable(a) for a in srv.cmd),
        "database": settings.database.type,
        "host": {
            "cpus": os.cpu_count(),
            "loadavg_before": os.getloadavg(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "uvloop": _has_uvloop(),
        },
        "pinned": pin,
        "presence": cfg["presence"]["enabled"],
        "config": _redacted(base),  # what --config set (the command shows only its name)
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out: list[str] = []
    gen: Gen | None = None
    try:
        await srv.wait_ready()
        gen = Gen(HOST, port)
        if "idle" in scen:
            rows = await scenario_idle(gen, w, srv.pid, idle_steps)
            results["idle"] = rows
            out.append(table("(a) idle authenticated connections", rows))
            print(out[-1], flush=True)
        if "fanout" in scen:
            rates = [int(x) for x in args.rates.split(",") if x]
            rows = await scenario_fanout(gen, w, srv.pid, rates, args.seconds, sample=50)
            ok = [r for r in rows if r["lost"] == 0 and r["p99_ms"] <= 50]
            results["fanout"] = {
                "members": 500,
                "steps": rows,
                "best_deliveries_per_s_p99_le_50ms": max(
                    (r["deliveries_per_s"] for r in ok), default=0
                ),
            }
            out.append(table("(b) 500-member group fan-out", rows))
            print(out[-1], flush=True)
        if "direct" in scen:
            db = settings.database.type
            results["direct"] = direct = {}
            drates = [int(x) for x in args.direct_rates.split(",") if x]
            if drates:
                o = await scenario_direct_open(gen, w, srv.pid, drates, args.seconds, args.users)
                direct["open_loop"] = o
                out.append(
                    table(
                        f"(c) 1:1 durable messages ({db}), open loop, {o['pairs']} pairs: "
                        f"best {o['best_rate_p99_le_50ms_nothing_lost']}/s "
                        "with ack p99 <= 50 ms and nothing lost",
                        o["steps"],
                    )
                )
                print(out[-1], flush=True)
            if args.window > 0:
                row = await scenario_direct(gen, w, srv.pid, args.seconds, args.window, args.users)
                direct["closed_loop"] = row
                out.append(
                    table(
                        f"(c) 1:1 durable messages ({db}), closed loop, "
                        f"{args.window} in flight per sender (latency = queue)",
                        [row],
                    )
                )
                print(out[-1], flush=True)
        if "storm" in scen:
            row = await scenario_storm(gen, w, srv.pid, args.storm)
            results["storm"] = row
            out.append(table("(d) reconnect storm", [row]))
            print(out[-1], flush=True)
    except BaseException:
        srv.stop()
        print(f"bench failed; server log and database kept in {tmp}", file=sys.stderr)
        raise
    else:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        results["loadavg_after"] = os.getloadavg()
        # hellos the server dropped and the 1:1 scenario retried (each counted, none hidden)
        results["hello_retries"] = gen.hello_retries if gen is not None else 0
    rdir = Path(args.results) if args.results else _results_dir()
    rdir.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{args.scenario}-{results['database']}"
    path = rdir / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {path}\ncommand: {results['command']}")
    return 0


def _redacted(v: Any) -> Any:
    """A --config file for the results: passwords, keys and secrets replaced, ports kept."""
    if isinstance(v, dict):
        return {
            k: "<redacted>"
            if any(w in k for w in ("password", "secret", "key", "token"))
            else _redacted(x)
            for k, x in v.items()
        }
    if isinstance(v, list):
        return [_redacted(x) for x in v]
    return v


def _has_uvloop() -> bool:
    try:
        import uvloop  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def _results_dir() -> Path:
    here = Path(__file__).resolve()
    for p in here.parents:
        if (p / "bench" / "results").is_dir() or (p / "server" / "pyproject.toml").exists():
            return p / "bench" / "results"
    return Path.cwd() / "bench" / "results"
