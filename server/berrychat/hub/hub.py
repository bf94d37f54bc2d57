"""The hub: the registry of this process's authenticated connections and local fan-out.

It implements the chat layer's `Sink` by handing everything to the broker, and the broker's
`Receiver` by delivering to local connections. A connection is anything with the `Endpoint`
shape (the gateway's WebSocket protocol objects).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .broker import Broker

log = logging.getLogger(__name__)


class Endpoint(Protocol):
    user_id: int
    token_hash: str

    def send_bytes(self, data: bytes) -> None: ...

    def close_ws(self, code: int, reason: str) -> None: ...


class Hub:
    def __init__(self, broker: Broker, *, max_per_user: int, max_total: int) -> None:
        self.broker = broker
        self.max_per_user = max_per_user
        self.max_total = max_total
        self.by_user: dict[int, list[Endpoint]] = {}
        self.by_session: dict[str, list[Endpoint]] = {}
        self.total = 0
        self.deliveries = 0
        self.on_members_changed: Callable[[int, Sequence[int]], None] | None = None
        # further control ops (e.g. "call.out" of the call signalling), by op name
        self.control_handlers: dict[str, Callable[[dict[str, Any]], None]] = {}

    # ---- registry ------------------------------------------------------------------------
    def attach(self, ep: Endpoint) -> tuple[bool, bool]:
        """Register an authenticated connection: (accepted, first connection of this user)."""
        lst = self.by_user.get(ep.user_id)
        if self.total >= self.max_total or (lst is not None and len(lst) >= self.max_per_user):
            return False, False
        if lst is None:
            self.by_user[ep.user_id] = [ep]
            self.broker.local_user_added(ep.user_id)
        else:
            lst.append(ep)
        self.by_session.setdefault(ep.token_hash, []).append(ep)
        self.total += 1
        return True, lst is None

    def detach(self, ep: Endpoint) -> bool:
        """Remove a connection; True if it was the user's last one on this process."""
        lst = self.by_user.get(ep.user_id)
        if lst is None or ep not in lst:
            return False
        lst.remove(ep)
        sl = self.by_session.get(ep.token_hash)
        if sl is not None:
            sl.remove(ep)
            if not sl:
                del self.by_session[ep.token_hash]
        self.total -= 1
        if not lst:
            del self.by_user[ep.user_id]
            self.broker.local_user_removed(ep.user_id)
            return True
        return False

    def connections(self, user_id: int) -> Sequence[Endpoint]:
        return self.by_user.get(user_id, ())

    # ---- Sink (called by the chat layer) -------------------------------------------------
    def publish(self, user_ids: Sequence[int], data: bytes) -> None:
        self.broker.publish(user_ids, data)

    def kick_sessions(self, token_hashes: Sequence[str], code: int, reason: str) -> None:
        if token_hashes:
            self.broker.control(
                {
                    "op": "kick_sessions",
                    "hashes": list(token_hashes),
                    "code": code,
                    "reason": reason,
                }
            )

    def kick_user(self, user_id: int, code: int, reason: str) -> None:
        self.broker.control({"op": "kick_user", "user": user_id, "code": code, "reason": reason})

    def members_changed(self, conv: int, users: Sequence[int] = ()) -> None:
        self.broker.control({"op": "members_changed", "conv": conv, "users": list(users)})

    # ---- Receiver (called by the broker) -------------------------------------------------
    def deliver(self, user_ids: Sequence[int], data: bytes) -> None:
        by_user = self.by_user
        n = 0
        for u in user_ids:
            lst = by_user.get(u)
            if lst:
                for ep in lst:
                    ep.send_bytes(data)
                n += len(lst)
        self.deliveries += n

    def on_control(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "kick_sessions":
            for h in msg["hashes"]:
                for ep in list(self.by_session.get(h, ())):
                    ep.close_ws(msg["code"], msg["reason"])
        elif op == "kick_user":
            for ep in list(self.by_user.get(msg["user"], ())):
                ep.close_ws(msg["code"], msg["reason"])
        elif op == "members_changed":
            if self.on_members_changed is not None:
                self.on_members_changed(msg["conv"], msg.get("users") or ())
        elif op in self.control_handlers:
            self.control_handlers[op](msg)
        else:
            log.warning("unknown control message %r", op)
