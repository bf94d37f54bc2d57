"""Bot rows (table `bots`, migration 2) on top of a Store: one per bot account (a `users` row
with role "bot"). Only the SHA-256 of a bot's API token is stored; the webhook secret is kept
as is because the server signs with it."""

from __future__ import annotations

from typing import Any

from ..store import Store
from ..store.base import Dialect, Q, Tx, now_ms

BOT_COLS = (
    "b.user_id, u.username, u.display_name, u.disabled, b.created_by, b.webhook_url, "
    "b.webhook_secret, b.events, b.created_at, b.token_hash"
)


def _row(r: Any) -> dict[str, Any]:
    return {
        "id": r[0],
        "username": r[1],
        "display_name": r[2],
        "disabled": bool(r[3]),
        "created_by": r[4],
        "webhook_url": r[5],
        "webhook_secret": r[6],
        "events": [e for e in r[7].split(",") if e],
        "created_at": r[8],
        "has_token": r[9] is not None,
    }


class BotStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(
        self,
        user_id: int,
        created_by: int,
        token_hash: str,
        webhook_url: str,
        webhook_secret: str,
        events: list[str],
    ) -> None:
        def tx(d: Dialect) -> Tx[None]:
            yield Q(
                "INSERT INTO bots (user_id, created_by, token_hash, webhook_url, webhook_secret, "
                "events, created_at) VALUES (?,?,?,?,?,?,?)",
                (
                    user_id,
                    created_by,
                    token_hash,
                    webhook_url,
                    webhook_secret,
                    ",".join(events),
                    now_ms(),
                ),
            )

        await self.store.run(tx)

    async def all(self) -> list[dict[str, Any]]:
        def tx(d: Dialect) -> Tx[Any]:
            return (
                yield Q(
                    f"SELECT {BOT_COLS} FROM bots b JOIN users u ON u.id = b.user_id "
                    "ORDER BY u.username",
                    (),
                    "all",
                )
            )

        return [_row(r) for r in await self.store.run(tx, write=False)]

    async def by_name(self, username: str) -> dict[str, Any] | None:
        def tx(d: Dialect) -> Tx[Any]:
            return (
                yield Q(
                    f"SELECT {BOT_COLS} FROM bots b JOIN users u ON u.id = b.user_id "
                    "WHERE u.username=?",
                    (username,),
                    "one",
                )
            )

        r = await self.store.run(tx, write=False)
        return _row(r) if r is not None else None

    async def by_token_hash(self, token_hash: str) -> dict[str, Any] | None:
        def tx(d: Dialect) -> Tx[Any]:
            return (
                yield Q(
                    f"SELECT {BOT_COLS} FROM bots b JOIN users u ON u.id = b.user_id "
                    "WHERE b.token_hash=?",
                    (token_hash,),
                    "one",
                )
            )

        r = await self.store.run(tx, write=False)
        return _row(r) if r is not None else None

    async def set_token(self, user_id: int, token_hash: str | None) -> None:
        def tx(d: Dialect) -> Tx[None]:
            yield Q("UPDATE bots SET token_hash=? WHERE user_id=?", (token_hash, user_id))

        await self.store.run(tx)

    async def set_webhook(
        self, user_id: int, url: str, secret: str | None, events: list[str]
    ) -> None:
        def tx(d: Dialect) -> Tx[None]:
            if secret is None:
                yield Q(
                    "UPDATE bots SET webhook_url=?, events=? WHERE user_id=?",
                    (url, ",".join(events), user_id),
                )
            else:
                yield Q(
                    "UPDATE bots SET webhook_url=?, webhook_secret=?, events=? WHERE user_id=?",
                    (url, secret, ",".join(events), user_id),
                )

        await self.store.run(tx)

    async def delete(self, user_id: int) -> None:
        def tx(d: Dialect) -> Tx[None]:
            yield Q("DELETE FROM bots WHERE user_id=?", (user_id,))
            yield Q("UPDATE users SET disabled=1 WHERE id=?", (user_id,))

        await self.store.run(tx)
