"""The `berrychat` command: serve, migrate, check-config, user add|disable|enable|reset-password."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from . import __version__, config
from .chat.accounts import Accounts
from .hub.redis_broker import BrokerUnavailable
from .protocol.codes import ChatError
from .store import Store, StoreError, open_store


def _settings(args: argparse.Namespace) -> config.Settings:
    return config.load(args.config)


def _run(coro: Awaitable[Any]) -> Any:
    try:
        import uvloop  # type: ignore[import-not-found]

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


async def _with_store(settings: config.Settings, fn: Callable[[Store], Awaitable[Any]]) -> Any:
    store = open_store(settings.database)
    await store.connect()
    try:
        return await fn(store)
    finally:
        await store.close()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:  # one descriptor per connection: use the hard limit
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, OSError, ValueError):
        pass
    if args.host:
        settings = settings.replace(server={"host": args.host})
    if args.port is not None:
        settings = settings.replace(server={"port": args.port})
    from .server import serve

    _run(serve(settings))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def go(store: Store) -> list[int]:
        return await store.migrate()

    applied = _run(_with_store(settings, go))
    print(f"applied migrations: {applied}" if applied else "schema is current")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = config.load(args.file)
    if args.print:
        print(json.dumps(config.redacted(settings), indent=2))
    else:
        print(
            f"config ok: {args.file} (database {settings.database.type}, "
            f"listen {settings.server.host}:{settings.server.port})"
        )
    return 0


def _password(args: argparse.Namespace) -> str:
    if args.password_env:
        pw = os.environ.get(args.password_env)
        if pw is None:
            raise SystemExit(f"error: environment variable {args.password_env} is not set")
        return pw
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    pw = getpass.getpass("password: ")
    if getpass.getpass("again: ") != pw:
        raise SystemExit("error: passwords differ")
    return pw


@contextlib.asynccontextmanager
async def _redis_sink(settings: config.Settings) -> Any:
    """The control channel and shared state of the running servers, for CLI revocations."""
    from .hub.hub import Hub
    from .hub.redis_broker import RedisBroker
    from .shared import RedisState

    broker = RedisBroker(settings.redis)
    hub = Hub(broker, max_per_user=1, max_total=0)  # no connections: only sends control
    await broker.start(hub)
    assert broker.redis is not None
    state = RedisState(broker.redis, settings.redis.prefix, broker.process_id, None)
    try:
        yield hub, state
    finally:
        await broker.close()  # flushes the pending control messages


def _print_result(settings: config.Settings, go: Callable[[Store], Awaitable[str]]) -> int:
    """Run one store action of a command, print its answer; a ChatError is one error line."""
    try:
        print(_run(_with_store(settings, go)))
    except ChatError as e:
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return 1
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def go(store: Store) -> str:
        await store.migrate()
        if settings.redis.enabled and args.action in ("disable", "reset-password"):
            # running servers close the user's connections at once and refuse the tokens
            async with _redis_sink(settings) as (sink, state):
                acc = Accounts(settings.auth, store, sink)
                acc.state = state
                return await act(acc)
        return await act(Accounts(settings.auth, store))

    async def act(acc: Accounts) -> str:
        if args.action == "add":
            role = "admin" if args.admin else "user"
            u = await acc.register(args.username, _password(args), args.display_name or "", role)
            return f"created user {u['username']} (id {u['id']}, role {role})"
        if args.action == "disable":
            await acc.set_disabled(args.username, True)
            return f"disabled {args.username}; its sessions are revoked"
        if args.action == "enable":
            await acc.set_disabled(args.username, False)
            return f"enabled {args.username}"
        if args.action == "reset-password":
            await acc.reset_password(args.username, _password(args))
            return f"password of {args.username} reset; its sessions are revoked"
        raise AssertionError(args.action)

    return _print_result(settings, go)


def cmd_bot(args: argparse.Namespace) -> int:
    """bot add|list|remove|token: bot accounts and their API tokens (docs/server.md)."""
    from .bots.service import BotAdmin

    settings = _settings(args)

    async def go(store: Store) -> str:
        await store.migrate()
        admin = BotAdmin(store)
        if args.action == "add":
            r = await admin.add(
                args.username,
                args.display_name or "",
                args.webhook_url or "",
                args.events,
            )
            lines = [
                f"created bot {r['bot']['username']} (id {r['bot']['id']})",
                f"token: {r['token']}",
                f"webhook secret: {r['webhook_secret']}",
                "(shown once: store them now)",
            ]
            return "\n".join(lines)
        if args.action == "list":
            bots = await admin.list()
            if args.json:
                return json.dumps(bots, indent=2)
            rows = [
                f"{b['username']}\t{b['id']}\t{','.join(b['events'])}\t"
                f"{b['webhook_url'] or '-'}\t{'token' if b['has_token'] else 'no token'}"
                for b in bots
            ]
            return "\n".join(rows) if rows else "no bots"
        if args.action == "remove":
            await admin.remove(args.username)
            return f"removed bot {args.username}; its token no longer works"
        if args.action == "token":
            return f"token: {await admin.new_token(args.username)} (the previous one is revoked)"
        raise AssertionError(args.action)

    return _print_result(settings, go)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="berrychat", description="BerryChat instant-messaging server")
    p.add_argument("--version", action="version", version=f"berrychat {__version__}")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the server")
    s.add_argument("--config", "-c", help="config.json (default: embedded SQLite defaults)")
    s.add_argument("--host", help="override server.host")
    s.add_argument("--port", type=int, help="override server.port")
    s.set_defaults(fn=cmd_serve)

    m = sub.add_parser("migrate", help="create or upgrade the database schema (safe to re-run)")
    m.add_argument("--config", "-c")
    m.set_defaults(fn=cmd_migrate)

    c = sub.add_parser("check-config", help="validate a config file without starting")
    c.add_argument("file")
    c.add_argument("--print", action="store_true", help="print the effective settings")
    c.set_defaults(fn=cmd_check_config)

    u = sub.add_parser("user", help="manage accounts")
    u.add_argument("--config", "-c")
    usub = u.add_subparsers(dest="action", required=True)
    for name, helptext in (
        ("add", "create a user (password from stdin, a prompt or --password-env)"),
        ("disable", "disable a user and revoke its sessions"),
        ("enable", "enable a disabled user"),
        ("reset-password", "set a new password and revoke its sessions"),
    ):
        x = usub.add_parser(name, help=helptext)
        x.add_argument("username")
        if name in ("add", "reset-password"):
            x.add_argument("--password-env", help="read the password from this variable")
        if name == "add":
            x.add_argument("--admin", action="store_true", help="give the admin role")
            x.add_argument("--display-name")
    u.set_defaults(fn=cmd_user)

    b = sub.add_parser("bot", help="manage bot accounts and their API tokens")
    b.add_argument("--config", "-c")
    bsub = b.add_subparsers(dest="action", required=True)
    x = bsub.add_parser("add", help="create a bot; prints its API token and webhook secret")
    x.add_argument("username")
    x.add_argument("--display-name")
    x.add_argument("--webhook-url", help="POST signed events here (http:// or https://)")
    x.add_argument("--events", default="messages,mentions", help="messages,mentions")
    x = bsub.add_parser("list", help="list bots")
    x.add_argument("--json", action="store_true")
    x = bsub.add_parser("remove", help="delete a bot's token and disable its account")
    x.add_argument("username")
    x = bsub.add_parser("token", help="issue a new API token (revokes the previous one)")
    x.add_argument("username")
    b.set_defaults(fn=cmd_bot)

    from .bench import add_parser

    add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.fn(args) or 0)
    except config.ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    except StoreError as e:
        print(f"database error: {e}", file=sys.stderr)
        return 3
    except BrokerUnavailable as e:
        print(f"redis error: {e}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
