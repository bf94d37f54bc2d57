"""The chat service: every operation a client can ask for, independent of transport.

Results are plain dicts (the ack payloads); pushes leave through the `Sink` as encoded frames,
encoded once per broadcast.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..config import Settings
from ..protocol.codes import ChatError
from ..protocol.frames import encode
from ..ratelimit import RateLimits
from ..shared import LocalState
from ..store import Op, OpResult, Store, StoreError
from .accounts import Accounts, normalize_username
from .committer import Committer
from .presence import Presence
from .sink import Sink

log = logging.getLogger(__name__)


class MemberCache:
    """conversation id -> member user ids (LRU). Invalidated on membership changes."""

    def __init__(self, store: Store, size: int = 20000) -> None:
        self.store = store
        self.size = size
        self._d: OrderedDict[int, frozenset[int]] = OrderedDict()

    async def get(self, conv: int) -> frozenset[int]:
        m = self._d.get(conv)
        if m is not None:
            self._d.move_to_end(conv)
            return m
        m = frozenset(await self.store.member_ids(conv))
        self._d[conv] = m
        if len(self._d) > self.size:
            self._d.popitem(last=False)
        return m

    def peek(self, conv: int) -> frozenset[int] | None:
        return self._d.get(conv)

    def invalidate(self, conv: int) -> None:
        self._d.pop(conv, None)


class PeerCache:
    """user -> users sharing a conversation with them (the presence audience), kept for
    `ttl` seconds; dropped for every member of a conversation whose membership changes."""

    def __init__(self, store: Store, ttl: float = 60.0, size: int = 50000) -> None:
        self.store = store
        self.ttl = ttl
        self.size = size
        self._d: OrderedDict[int, tuple[float, frozenset[int]]] = OrderedDict()

    async def get(self, user: int) -> frozenset[int]:
        now = time.monotonic()
        hit = self._d.get(user)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        peers = frozenset(await self.store.peer_ids(user))
        self._d[user] = (now, peers)
        self._d.move_to_end(user)
        if len(self._d) > self.size:
            self._d.popitem(last=False)
        return peers

    def forget(self, users: Iterable[int]) -> None:
        for u in users:
            self._d.pop(u, None)


def _unavailable(e: Exception) -> ChatError:
    log.warning("database error: %s", e)
    return ChatError("unavailable", "database unavailable, retry")


class ChatService:
    def __init__(self, settings: Settings, store: Store, sink: Sink) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.store = store
        self.sink = sink
        self.accounts = Accounts(settings.auth, store, sink)
        self.members = MemberCache(store)
        self.peers = PeerCache(store)
        self.presence = Presence(settings.presence, self.peers.get, sink.publish)
        lim = settings.limits
        self.committer = Committer(
            store,
            {
                "max_members": lim.max_members,
                "recall_window_ms": lim.recall_window_seconds * 1000,
                "edit_window_ms": lim.edit_window_seconds * 1000,
            },
            self._after_commit,
            delay_ms=lim.group_commit_ms,
            max_batch=lim.group_commit_max,
        )
        # called with request-to-fan-out seconds per stream op (metrics), when set
        self.observe_fanout: Callable[[float], None] | None = None
        # called with every committed event and its recipients (bots' webhooks, the assistant)
        self.event_hooks: list[Callable[[dict[str, Any], Sequence[int]], None]] = []
        self.state = LocalState()
        self.presence.state = self.state
        self.accounts.state = self.state
        self.rates = RateLimits(settings.limits, self.state, None)
        self._typing_last: dict[tuple[int, int], tuple[bool, float]] = {}

    def use_state(self, state: LocalState) -> None:
        """Share presence, rate limits and revocations with other processes (Redis)."""
        self.state = state
        self.presence.state = state
        self.accounts.state = state
        self.rates.state = state

    # ---- conversations -------------------------------------------------------------------
    async def create_conversation(
        self, user: int, kind: str, members: Sequence[int | str], title: str = ""
    ) -> dict[str, Any]:
        refs = _norm_refs(members)
        try:
            found = await self.store.resolve_users(refs)
        except StoreError as e:
            raise _unavailable(e)
        missing = [r for r in refs if r not in found]
        if missing:
            raise ChatError("not_found", f"no such user: {missing[0]}")
        ids = sorted({found[r] for r in refs} - {user})
        if kind == "direct" and len(ids) != 1:
            raise ChatError(
                "bad_field", "members: a direct conversation has exactly one other user"
            )
        if len(ids) + 1 > self.limits.max_members:
            raise ChatError("member_limit", f"at most {self.limits.max_members} members")
        try:
            conv, existed, ev = await self.store.create_conversation(
                kind, user, ids, title if kind == "group" else "", self.limits.max_members
            )
        except StoreError as e:
            raise _unavailable(e)
        if ev is not None:
            self.peers.forget([user, *ids])
            self.sink.members_changed(conv, [user, *ids])
            self.sink.publish([user, *ids], encode({"type": "msg", **ev}))
        return {"conv": conv, "existed": existed}

    async def list_conversations(self, user: int) -> list[dict[str, Any]]:
        try:
            return await self.store.list_conversations(user)
        except StoreError as e:
            raise _unavailable(e)

    async def get_conversation(self, user: int, conv: int) -> dict[str, Any]:
        try:
            d = await self.store.conversation_detail(conv, user)
        except StoreError as e:
            raise _unavailable(e)
        if d is None:
            raise ChatError("not_found", "no such conversation")
        return d

    # ---- the stream (messages and conversation changes) ----------------------------------
    def submit(self, op: Op, cb: Callable[[OpResult | None], None]) -> None:
        """Queue a stream operation for the next group commit; `cb` gets the result after the
        commit (None if the database failed) and before the fan-out."""
        self.committer.submit(op, cb)

    async def apply(self, op: Op) -> dict[str, Any]:
        """Apply one stream operation and wait: the ack payload, or ChatError."""
        return op_ack(await self.committer.submit_wait(op))

    def members_changed(self, conv: int, users: Sequence[int] = ()) -> None:
        """Drop cached member and peer lists touched by a membership change of `conv`
        (called here and, through the broker, on every other process)."""
        old = self.members.peek(conv)
        self.members.invalidate(conv)
        if old is not None:
            self.peers.forget(old)
        if users:
            self.peers.forget(users)

    async def add_members(self, user: int, conv: int, refs: Sequence[int | str]) -> dict[str, Any]:
        if not await self.is_member(conv, user):
            raise ChatError("not_found", "no such conversation")
        refs = _norm_refs(refs)
        try:
            found = await self.store.resolve_users(refs)
        except StoreError as e:
            raise _unavailable(e)
        missing = [r for r in refs if r not in found]
        if missing:
            raise ChatError("not_found", f"no such user: {missing[0]}")
        return await self.apply(Op("add", conv, user, users=[found[r] for r in refs]))

    async def _after_commit(self, ops: Sequence[Op], results: Sequence[OpResult]) -> None:
        changed = {op.conv for op, r in zip(ops, results, strict=True) if r.members_changed}
        for conv in changed:
            old = self.members.peek(conv) or ()
            touched = set(old)
            for op, r in zip(ops, results, strict=True):
                if op.conv == conv and r.members_changed:
                    touched.update(r.also_notify)
                    touched.update(op.users or ())
                    if op.user is not None:
                        touched.add(op.user)
                    touched.add(op.actor)
            self.members_changed(conv)
            self.sink.members_changed(conv, sorted(touched))
        for r in results:
            if r.event is None or r.dup:
                continue
            users = self.members.peek(r.event["conv"])
            if users is None:
                try:
                    users = await self.members.get(r.event["conv"])
                except StoreError as e:
                    log.warning("fan-out skipped, members unavailable: %s", e)
                    continue
            targets = list(users) + [u for u in r.also_notify if u not in users]
            if r.members_changed:
                self.peers.forget(targets)
            self.sink.publish(targets, encode({"type": "msg", **r.event}))
            for hook in self.event_hooks:
                try:
                    hook(r.event, targets)
                except Exception:
                    log.exception("event hook failed")
        if self.observe_fanout is not None:
            now = time.perf_counter()
            for op in ops:
                if op.t0:
                    self.observe_fanout(now - op.t0)

    async def history(
        self, user: int, conv: int, before: int | None, after: int | None, limit: int | None
    ) -> dict[str, Any]:
        limit = min(limit or self.limits.history_page, 500)
        try:
            r = await self.store.history(conv, user, before=before, after=after, limit=limit)
        except StoreError as e:
            raise _unavailable(e)
        if r is None:
            raise ChatError("not_found", "no such conversation")
        msgs, more = r
        return {"conv": conv, "messages": msgs, "more": more}

    async def sync(self, user: int, cursors: dict[int, tuple[int, int | None]]) -> dict[str, Any]:
        """Conversations that changed relative to the client's cursors, and cursor ids the user
        can no longer see. The client then pulls `history after=<its seq>` per changed one."""
        convs = await self.list_conversations(user)
        changed = []
        seen = set()
        for c in convs:
            seen.add(c["conv"])
            cur = cursors.get(c["conv"])
            if (
                cur is None
                or c["last_seq"] > cur[0]
                or (cur[1] is not None and cur[1] != c["read_seq"])
            ):
                changed.append(c)
        removed = sorted(k for k in cursors if k not in seen)
        return {"changed": changed, "removed": removed, "server_time": int(time.time() * 1000)}

    # ---- receipts, typing, presence ------------------------------------------------------
    async def receipt(self, user: int, conv: int, kind: str, seq: int) -> dict[str, Any]:
        try:
            r = await self.store.update_cursor(conv, user, kind, seq)
        except StoreError as e:
            raise _unavailable(e)
        if r is None:
            raise ChatError("not_found", "no such conversation")
        read, delivered = r
        payload = {
            "type": "receipt",
            "conv": conv,
            "user": user,
            "read_seq": read,
            "delivered_seq": delivered,
        }
        members = await self._members(conv)
        if len(members) <= self.limits.receipts_fanout_max_members:
            self.sink.publish(list(members), encode(payload))
        else:
            self.sink.publish([user], encode(payload))
        return {"conv": conv, "read_seq": read, "delivered_seq": delivered}

    async def _members(self, conv: int) -> frozenset[int]:
        try:
            return await self.members.get(conv)
        except StoreError as e:
            raise _unavailable(e)

    async def is_member(self, conv: int, user: int) -> bool:
        return user in await self._members(conv)

    async def typing(self, user: int, conv: int, on: bool) -> None:
        if not self.settings.presence.typing_enabled:
            return
        members = await self._members(conv)
        if user not in members:
            raise ChatError("not_found", "no such conversation")
        now = time.monotonic()
        key = (user, conv)
        last = self._typing_last.get(key)
        if last is not None and last[0] == on and now - last[1] < 1.0:
            return  # throttle repeats to one per second
        self._typing_last[key] = (on, now)
        if len(self._typing_last) > 100000:
            self._typing_last.clear()
        others = [m for m in members if m != user]
        if others:
            self.sink.publish(
                others, encode({"type": "typing", "conv": conv, "user": user, "on": on})
            )

    async def presence_get(self, user: int, users: Sequence[int]) -> dict[str, Any]:
        if not self.presence.enabled:
            return {"enabled": False, "users": {}}
        try:
            peers = set(await self.peers.get(user)) | {user}
        except StoreError as e:
            raise _unavailable(e)
        # Users who share no conversation are not reported at all (no probing of accounts).
        visible = [u for u in users if u in peers]
        got = await self.presence.get_many(visible)
        return {"enabled": True, "users": {str(u): got[u] for u in visible}}


def _norm_refs(refs: Sequence[int | str]) -> list[int | str]:
    """User references as given by clients: ids, or user names in any letter case."""
    return list(dict.fromkeys(normalize_username(r) if isinstance(r, str) else r for r in refs))


def op_ack(res: OpResult | None) -> dict[str, Any]:
    """The ack payload for a stream op result (raises ChatError for failures)."""
    if res is None:
        raise ChatError("unavailable", "database unavailable, retry with the same cid")
    if res.error:
        raise ChatError(res.error, res.message or None)
    ev = res.event or {}
    return {"conv": ev.get("conv"), "seq": ev.get("seq"), "ts": ev.get("ts"), "dup": res.dup}
