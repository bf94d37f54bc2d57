"""The storage interface and its SQL implementation shared by SQLite and MariaDB.

Every transaction is written once as a generator that yields `Q` (one statement) and receives
its result; each backend drives the generator: SQLite synchronously in its database thread,
MariaDB with `await` on aiomysql. So the SQL logic exists once, and a transaction never holds
the event loop.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .schema import BOOKKEEPING, LATEST, MIGRATIONS

T = TypeVar("T")

MSG_COLS = (
    "conversation_id, seq, sender_id, cid, kind, body, target_seq, extra, created_at, "
    "edited_at, recalled_at"
)
# Stream event kinds. "text" is a message, "call" a call record (missed, ended, ...); the others
# change earlier messages or the conversation.
MESSAGE_KINDS = ("text", "call")
# Messages that carry an attachment (docs/protocol.md, "Attachments"); they behave like text
# (caption in "text", edit, recall, react, reply) and name the file in "attachment".
MEDIA_KINDS = ("image", "file", "voice", "video")
TEXT_LIKE = ("text", *MEDIA_KINDS)
MESSAGE_KINDS = (*MESSAGE_KINDS, *MEDIA_KINDS)
GROUP_OPS = ("rename", "add", "remove", "leave", "role")


class StoreError(Exception):
    """The database failed (unreachable, timeout, ...): retryable for the client."""


class Conflict(StoreError):
    """A unique key was violated."""


@dataclass(slots=True)
class Q:
    sql: str
    params: Sequence[Any] | Sequence[Sequence[Any]] = ()
    fetch: str = "none"  # none | all | one | rowcount | lastid
    many: bool = False


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str

    @property
    def for_update(self) -> str:
        return " FOR UPDATE" if self.name == "mysql" else ""

    @property
    def cid_index(self) -> str:
        """Make MariaDB probe the (conversation_id, sender_id, cid) key for resend checks
        instead of range-scanning a whole conversation by primary key."""
        return " FORCE INDEX (messages_cid)" if self.name == "mysql" else ""

    @property
    def insert_ignore(self) -> str:
        return "INSERT IGNORE" if self.name == "mysql" else "INSERT OR IGNORE"


Tx = Generator[Q, Any, T]


@dataclass(slots=True)
class Op:
    """One change to a conversation's stream, applied by `Store.apply_ops` in a group commit."""

    kind: str  # text | edit | recall | react | rename | add | remove | leave | role
    conv: int
    actor: int
    cid: str | None = None
    text: str = ""
    target: int | None = None  # reply_to for text; the target seq for edit/recall/react
    mentions: list[int] | None = None
    users: list[int] | None = None  # add
    user: int | None = None  # remove / role
    role: str | None = None
    emoji: str | None = None
    remove: bool = False
    t0: float = 0.0  # time.perf_counter() when the request arrived (metrics)
    # server-set fields merged into a text event (e.g. {"bot": true}); the record of a call
    extra: dict[str, Any] | None = None
    attachment: str | None = None  # text: the id of an upload of the actor's to attach


@dataclass(slots=True)
class OpResult:
    error: str | None = None
    message: str = ""
    event: dict[str, Any] | None = None
    dup: bool = False
    members_changed: bool = False
    also_notify: list[int] = field(default_factory=list)


def now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(seq: Sequence[T], n: int = 200) -> Iterable[Sequence[T]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _any_of(columns: Sequence[str], keys: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    """A WHERE condition matching any of `keys` (one value per column each) and its arguments:
    `(a=? AND b=?) OR (a=? AND b=?) ...`."""
    term = "(" + " AND ".join(f"{c}=?" for c in columns) + ")"
    return " OR ".join([term] * len(keys)), [v for key in keys for v in key]


def _qs(n: int) -> str:
    return ",".join("?" * n)


def event_from_row(r: Sequence[Any]) -> dict[str, Any]:
    """A messages row as the stream event that was broadcast when it was appended."""
    conv, seq, sender, cid, kind, body, target, extra, ts = r[:9]
    ev: dict[str, Any] = {"conv": conv, "seq": seq, "ts": ts, "from": sender, "kind": kind}
    if cid is not None:
        ev["cid"] = cid
    if kind in TEXT_LIKE:
        ev["text"] = body
        if target is not None:
            ev["reply_to"] = target
    elif kind == "edit":
        ev["text"] = body
        ev["target"] = target
    elif target is not None:
        ev["target"] = target
    if extra:
        ev.update(json.loads(extra))
    return ev


def history_item(r: Sequence[Any], reactions: dict[str, list[int]] | None) -> dict[str, Any]:
    """A messages row in its current state (edits applied, recalls blanked, reactions)."""
    ev = event_from_row(r)
    edited_at, recalled_at = r[9], r[10]
    if ev["kind"] in TEXT_LIKE:
        if recalled_at is not None:
            ev["recalled"] = True
            ev["text"] = ""
            ev.pop("mentions", None)
            ev.pop("attachment", None)
        elif edited_at is not None:
            ev["edited_at"] = edited_at
        if reactions:
            ev["reactions"] = reactions
    return ev


class Store(ABC):
    """Storage interface used by the chat layer. All methods are coroutines."""

    dialect: Dialect
    # called with the duration of every transaction in seconds (metrics), when set
    observe: Callable[[float], None] | None = None

    # ---- backend hooks -------------------------------------------------------------------
    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def run(
        self, fn: Callable[..., Tx[T]], *args: Any, write: bool = True, reader: int | None = None
    ) -> T:
        """Run a generator transaction; raises Conflict on unique-key violations, StoreError
        when the database is unavailable. `reader`: a read on behalf of this user that may be
        served by a replica (history, conversation list, sync) unless read-your-writes needs
        the primary."""

    def wrote(self, user: int) -> None:  # noqa: B027 - optional hook
        """`user` just wrote (read-your-writes bookkeeping for replicas)."""

    @abstractmethod
    async def execute_script(self, statements: list[str]) -> None:
        """Run DDL statements (migrations), each on its own."""

    # ---- migrations ----------------------------------------------------------------------
    async def schema_version(self) -> int:
        def tx(d: Dialect) -> Tx[int]:
            if d.name == "sqlite":
                exists = yield Q(
                    "SELECT name FROM sqlite_master WHERE type='table' "
                    "AND name='schema_migrations'",
                    fetch="one",
                )
            else:
                exists = yield Q(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema=DATABASE() AND table_name='schema_migrations'",
                    fetch="one",
                )
            if not exists:
                return 0
            row = yield Q("SELECT MAX(version) FROM schema_migrations", fetch="one")
            return int(row[0] or 0) if row else 0

        return await self.run(tx, write=False)

    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied (empty when current)."""
        if await self.schema_version() == LATEST:
            return []
        await self.execute_script([BOOKKEEPING[self.dialect.name]])
        current = await self.schema_version()
        applied = []
        for version, name, stmts in MIGRATIONS:
            if version <= current:
                continue
            await self.execute_script(stmts[self.dialect.name])

            def rec(d: Dialect, v: int = version, n: str = name) -> Tx[None]:
                yield Q(
                    f"{d.insert_ignore} INTO schema_migrations (version, name, applied_at) "
                    "VALUES (?,?,?)",
                    (v, n, now_ms()),
                )

            await self.run(rec)
            applied.append(version)
        return applied

    async def ping(self) -> bool:
        def tx(d: Dialect) -> Tx[bool]:
            row = yield Q("SELECT 1", fetch="one")
            return bool(row and row[0] == 1)

        return await self.run(tx, write=False)

    async def is_current(self) -> bool:
        return await self.schema_version() == LATEST

    # ---- users ---------------------------------------------------------------------------
    async def create_user(
        self, username: str, password_hash: str, display_name: str = "", role: str = "user"
    ) -> dict[str, Any]:
        def tx(d: Dialect) -> Tx[int]:
            return (
                yield Q(
                    "INSERT INTO users (username, display_name, password_hash, role, disabled, "
                    "created_at) VALUES (?,?,?,?,0,?)",
                    (username, display_name, password_hash, role, now_ms()),
                    fetch="lastid",
                )
            )

        uid = await self.run(tx)
        user = await self.get_user(uid)
        assert user is not None
        return user

    _USER_COLS = "id, username, display_name, password_hash, role, disabled, created_at"

    @staticmethod
    def _user(r: Sequence[Any] | None) -> dict[str, Any] | None:
        if r is None:
            return None
        keys = ("id", "username", "display_name", "password_hash", "role", "disabled", "created_at")
        u = dict(zip(keys, r, strict=True))
        u["disabled"] = bool(u["disabled"])
        return u

    async def get_user(self, user_id: int) -> dict[str, Any] | None:
        def tx(d: Dialect) -> Tx[Any]:
            return (yield Q(f"SELECT {self._USER_COLS} FROM users WHERE id=?", (user_id,), "one"))

        return self._user(await self.run(tx, write=False))

    async def get_user_by_name(self, username: str) -> dict[str, Any] | None:
        def tx(d: Dialect) -> Tx[Any]:
            return (
                yield Q(f"SELECT {self._USER_COLS} FROM users WHERE username=?", (username,), "one")
            )

        return self._user(await self.run(tx, write=False))

    async def resolve_users(self, refs: Sequence[int | str]) -> dict[int | str, int]:
        """Map user ids / user names to ids of existing, enabled users (missing ones omitted)."""
        ids = [r for r in refs if isinstance(r, int)]
        names = [r for r in refs if isinstance(r, str)]

        def tx(d: Dialect) -> Tx[dict[int | str, int]]:
            out: dict[int | str, int] = {}
            for ch in _chunks(ids):
                rows = yield Q(
                    f"SELECT id FROM users WHERE disabled=0 AND id IN ({_qs(len(ch))})", ch, "all"
                )
                out.update({r[0]: r[0] for r in rows})
            for ch in _chunks(names):
                rows = yield Q(
                    "SELECT id, username FROM users WHERE disabled=0 "
                    f"AND username IN ({_qs(len(ch))})",
                    ch,
                    "all",
                )
                out.update({r[1]: r[0] for r in rows})
            return out

        return await self.run(tx, write=False)

    async def user_briefs(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        def tx(d: Dialect) -> Tx[dict[int, dict[str, Any]]]:
            out = {}
            for ch in _chunks(list(ids)):
                rows = yield Q(
                    f"SELECT id, username, display_name FROM users WHERE id IN ({_qs(len(ch))})",
                    ch,
                    "all",
                )
                for r in rows:
                    out[r[0]] = {"id": r[0], "username": r[1], "display_name": r[2]}
            return out

        return await self.run(tx, write=False)

    async def set_password(self, user_id: int, password_hash: str) -> None:
        def tx(d: Dialect) -> Tx[None]:
            yield Q("UPDATE users SET password_hash=? WHERE id=?", (password_hash, user_id))

        await self.run(tx)

    async def set_disabled(self, user_id: int, disabled: bool) -> None:
        def tx(d: Dialect) -> Tx[None]:
            yield Q("UPDATE users SET disabled=? WHERE id=?", (int(disabled), user_id))

        await self.run(tx)

    async def set_role(self, user_id: int, role: str) -> None:
        def tx(d: Dialect) -> Tx[None]:
            yield Q("UPDATE users SET role=? WHERE id=?", (role, user_id))

        await self.run(tx)

    # ---- sessions ------------------------------------------------------------------------
    async def create_session(
        self, token_hash: str, user_id: int, device_id: str, expires_at: int
    ) -> list[str]:
        """Store a session; replace (and return the hashes of) the device's previous session."""

        def tx(d: Dialect) -> Tx[list[str]]:
            rows = yield Q(
                f"SELECT token_hash FROM sessions WHERE user_id=? AND device_id=?{d.for_update}",
                (user_id, device_id),
                "all",
            )
            old = [r[0] for r in rows]
            if old:
                yield Q(
                    "DELETE FROM sessions WHERE user_id=? AND device_id=?", (user_id, device_id)
                )
            yield Q(
                "INSERT INTO sessions (token_hash, user_id, device_id, created_at, expires_at) "
                "VALUES (?,?,?,?,?)",
                (token_hash, user_id, device_id, now_ms(), expires_at),
            )
            return old

        return await self.run(tx)

    async def get_session(self, token_hash: str) -> dict[str, Any] | None:
        def tx(d: Dialect) -> Tx[Any]:
            return (
                yield Q(
                    "SELECT s.user_id, s.device_id, s.expires_at, u.username, u.display_name, "
                    "u.role, u.disabled FROM sessions s JOIN users u ON u.id = s.user_id "
                    "WHERE s.token_hash=?",
                    (token_hash,),
                    "one",
                )
            )

        r = await self.run(tx, write=False)
        if r is None:
            return None
        keys = (
            "user_id",
            "device_id",
            "expires_at",
            "username",
            "display_name",
            "role",
            "disabled",
        )
        s = dict(zip(keys, r, strict=True))
        s["disabled"] = bool(s["disabled"])
        s["token_hash"] = token_hash
        return s

    async def delete_session(self, token_hash: str) -> None:
        def tx(d: Dialect) -> Tx[None]:
            yield Q("DELETE FROM sessions WHERE token_hash=?", (token_hash,))

        await self.run(tx)

    async def delete_user_sessions(self, user_id: int, keep: str | None = None) -> list[str]:
        def tx(d: Dialect) -> Tx[list[str]]:
            rows = yield Q("SELECT token_hash FROM sessions WHERE user_id=?", (user_id,), "all")
            gone = [r[0] for r in rows if r[0] != keep]
            for h in gone:
                yield Q("DELETE FROM sessions WHERE token_hash=?", (h,))
            return gone

        return await self.run(tx)

    async def live_sessions(self, token_hashes: Sequence[str]) -> dict[str, tuple[int, bool]]:
        """For the given session hashes that still exist: (expires_at, user disabled)."""

        def tx(d: Dialect) -> Tx[dict[str, tuple[int, bool]]]:
            out: dict[str, tuple[int, bool]] = {}
            for ch in _chunks(list(token_hashes), 500):
                rows = yield Q(
                    "SELECT s.token_hash, s.expires_at, u.disabled FROM sessions s "
                    f"JOIN users u ON u.id = s.user_id WHERE s.token_hash IN ({_qs(len(ch))})",
                    ch,
                    "all",
                )
                for r in rows:
                    out[r[0]] = (r[1], bool(r[2]))
            return out

        return await self.run(tx, write=False)

    async def disabled_users(self, user_ids: Sequence[int]) -> set[int]:
        def tx(d: Dialect) -> Tx[set[int]]:
            out: set[int] = set()
            for ch in _chunks(list(user_ids), 500):
                rows = yield Q(
                    f"SELECT id FROM users WHERE disabled=1 AND id IN ({_qs(len(ch))})", ch, "all"
                )
                out.update(r[0] for r in rows)
            return out

        return await self.run(tx, write=False)

    async def purge_expired_sessions(self, now: int) -> int:
        def tx(d: Dialect) -> Tx[int]:
            return (yield Q("DELETE FROM sessions WHERE expires_at < ?", (now,), "rowcount"))

        return await self.run(tx)

    # ---- conversations -------------------------------------------------------------------
    async def create_conversation(
        self, kind: str, creator: int, members: Sequence[int], title: str, max_members: int
    ) -> tuple[int, bool, dict | None]:
        """Create a direct or group conversation. Returns (id, existed, creation event).

        A direct conversation between two users exists once (`direct_key`); creating it again
        returns the existing one."""
        others = sorted({m for m in members if m != creator})
        direct_key = None
        if kind == "direct":
            a, b = sorted((creator, others[0]))
            direct_key = f"{a}:{b}"
        everyone = [creator, *others]
        if len(everyone) > max_members:
            raise ValueError("member_limit")

        def tx(d: Dialect) -> Tx[tuple[int, bool, dict | None]]:
            if direct_key is not None:
                row = yield Q(
                    "SELECT id FROM conversations WHERE direct_key=?", (direct_key,), "one"
                )
                if row:
                    return row[0], True, None
            ts = now_ms()
            cid = yield Q(
                "INSERT INTO conversations (kind, title, direct_key, created_by, created_at, "
                "updated_at, last_seq, last_msg_seq, member_count) VALUES (?,?,?,?,?,?,1,0,?)",
                (kind, title, direct_key, creator, ts, ts, len(everyone)),
                "lastid",
            )
            rows = []
            for u in everyone:
                role = "owner" if (u == creator and kind == "group") else "member"
                rows.append((cid, u, role, ts, 0, 0))
            yield Q(
                "INSERT INTO members (conversation_id, user_id, role, joined_at, read_seq, "
                "delivered_seq) VALUES (?,?,?,?,?,?)",
                rows,
                many=True,
            )
            extra = json.dumps({"title": title, "members": everyone, "conv_kind": kind})
            row = (cid, 1, creator, None, "create", "", None, extra, ts, None, None)
            yield Q(f"INSERT INTO messages ({MSG_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
            yield Q(
                "UPDATE members SET read_seq=1, delivered_seq=1 "
                "WHERE conversation_id=? AND user_id=?",
                (cid, creator),
            )
            return cid, False, event_from_row(row)

        for u in everyone:
            self.wrote(u)  # every member's next conversation list must show it
        try:
            return await self.run(tx)
        except Conflict:
            if direct_key is None:
                raise
            return await self.run(tx)  # lost a race for the same pair: return theirs

    async def membership(self, conv: int, user: int) -> dict[str, Any] | None:
        def tx(d: Dialect) -> Tx[Any]:
            return (
                yield Q(
                    "SELECT role, read_seq, delivered_seq FROM members "
                    "WHERE conversation_id=? AND user_id=?",
                    (conv, user),
                    "one",
                )
            )

        r = await self.run(tx, write=False)
        return None if r is None else {"role": r[0], "read_seq": r[1], "delivered_seq": r[2]}

    async def member_ids(self, conv: int) -> list[int]:
        def tx(d: Dialect) -> Tx[list[int]]:
            rows = yield Q("SELECT user_id FROM members WHERE conversation_id=?", (conv,), "all")
            return [r[0] for r in rows]

        return await self.run(tx, write=False)

    async def peer_ids(self, user: int) -> list[int]:
        """Users who share at least one conversation with `user` (presence audience)."""

        def tx(d: Dialect) -> Tx[list[int]]:
            rows = yield Q(
                "SELECT DISTINCT m2.user_id FROM members m1 JOIN members m2 "
                "ON m2.conversation_id = m1.conversation_id WHERE m1.user_id=? AND m2.user_id<>?",
                (user, user),
                "all",
            )
            return [r[0] for r in rows]

        return await self.run(tx, write=False)

    async def conversation_detail(self, conv: int, user: int) -> dict[str, Any] | None:
        """The conversation with all members and their cursors, or None if `user` is not in it."""

        def tx(d: Dialect) -> Tx[Any]:
            me = yield Q(
                "SELECT 1 FROM members WHERE conversation_id=? AND user_id=?", (conv, user), "one"
            )
            if not me:
                return None
            c = yield Q(
                "SELECT id, kind, title, created_by, created_at, updated_at, last_seq, "
                "member_count FROM conversations WHERE id=?",
                (conv,),
                "one",
            )
            ms = yield Q(
                "SELECT m.user_id, m.role, m.read_seq, m.delivered_seq, u.username, "
                "u.display_name, u.role FROM members m JOIN users u ON u.id = m.user_id "
                "WHERE m.conversation_id=? ORDER BY m.joined_at, m.user_id",
                (conv,),
                "all",
            )
            return c, ms

        r = await self.run(tx, write=False, reader=user)
        if r is None:
            return None
        c, ms = r
        keys = (
            "id",
            "kind",
            "title",
            "created_by",
            "created_at",
            "updated_at",
            "last_seq",
            "member_count",
        )
        out = dict(zip(keys, c, strict=True))
        out["members"] = [
            {
                "user": m[0],
                "role": m[1],
                "read_seq": m[2],
                "delivered_seq": m[3],
                "username": m[4],
                "display_name": m[5],
                **({"bot": True} if m[6] == "bot" else {}),
            }
            for m in ms
        ]
        return out

    async def list_conversations(self, user: int) -> list[dict[str, Any]]:
        """The user's conversations, most recently active first, with unread counts, the last
        message and (for direct conversations) the peer."""

        def tx(d: Dialect) -> Tx[list[dict[str, Any]]]:
            rows = yield Q(
                "SELECT c.id, c.kind, c.title, c.last_seq, c.last_msg_seq, c.updated_at, "
                "c.member_count, m.role, m.read_seq, m.delivered_seq FROM members m "
                "JOIN conversations c ON c.id = m.conversation_id WHERE m.user_id=? "
                "ORDER BY c.updated_at DESC, c.id DESC",
                (user,),
                "all",
            )
            out = []
            last_keys = []
            directs = []
            for r in rows:
                item = {
                    "conv": r[0],
                    "kind": r[1],
                    "title": r[2],
                    "last_seq": r[3],
                    "updated_at": r[5],
                    "member_count": r[6],
                    "role": r[7],
                    "read_seq": r[8],
                    "delivered_seq": r[9],
                    "unread": max(0, r[3] - r[8]),
                    "last_message": None,
                }
                out.append(item)
                if r[4]:
                    last_keys.append((r[0], r[4]))
                if r[1] == "direct":
                    directs.append(r[0])
            by_id = {o["conv"]: o for o in out}
            for ch in _chunks(last_keys, 100):
                cond = " OR ".join(["(conversation_id=? AND seq=?)"] * len(ch))
                params = [x for k in ch for x in k]
                mrows = yield Q(f"SELECT {MSG_COLS} FROM messages WHERE {cond}", params, "all")
                for mr in mrows:
                    by_id[mr[0]]["last_message"] = history_item(mr, None)
            for ch in _chunks(directs, 200):
                prow = yield Q(
                    "SELECT m.conversation_id, u.id, u.username, u.display_name, u.role "
                    "FROM members m "
                    f"JOIN users u ON u.id = m.user_id WHERE m.conversation_id IN ({_qs(len(ch))}) "
                    "AND m.user_id<>?",
                    [*ch, user],
                    "all",
                )
                for p in prow:
                    peer = {"id": p[1], "username": p[2], "display_name": p[3]}
                    if p[4] == "bot":
                        peer["bot"] = True
                    by_id[p[0]]["peer"] = peer
            return out

        return await self.run(tx, write=False, reader=user)

    # ---- the message stream --------------------------------------------------------------
    async def history(
        self, conv: int, user: int, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool] | None:
        """A page of the stream in ascending seq, and whether more exists in that direction.
        None when `user` is not a member."""

        def tx(d: Dialect) -> Tx[Any]:
            me = yield Q(
                "SELECT 1 FROM members WHERE conversation_id=? AND user_id=?", (conv, user), "one"
            )
            if not me:
                return None
            if after is not None:
                rows = yield Q(
                    f"SELECT {MSG_COLS} FROM messages WHERE conversation_id=? AND seq>? "
                    "ORDER BY seq ASC LIMIT ?",
                    (conv, after, limit + 1),
                    "all",
                )
                more = len(rows) > limit
                rows = rows[:limit]
            else:
                rows = yield Q(
                    f"SELECT {MSG_COLS} FROM messages WHERE conversation_id=? AND seq<? "
                    "ORDER BY seq DESC LIMIT ?",
                    (conv, before if before is not None else 2**62, limit + 1),
                    "all",
                )
                more = len(rows) > limit
                rows = list(reversed(rows[:limit]))
            reactions: dict[int, dict[str, list[int]]] = {}
            if rows:
                rr = yield Q(
                    "SELECT seq, emoji, user_id FROM reactions WHERE conversation_id=? "
                    "AND seq BETWEEN ? AND ? ORDER BY created_at, user_id",
                    (conv, rows[0][1], rows[-1][1]),
                    "all",
                )
                for seq, emoji, uid in rr:
                    reactions.setdefault(seq, {}).setdefault(emoji, []).append(uid)
            return [history_item(r, reactions.get(r[1])) for r in rows], more

        return await self.run(tx, write=False, reader=user)

    async def update_cursor(
        self, conv: int, user: int, kind: str, seq: int
    ) -> tuple[int, int] | None:
        """Move the user's read or delivered cursor forward (never back, never past last_seq).
        Returns (read_seq, delivered_seq) after the update, None when not a member."""
        col = "read_seq" if kind == "read" else "delivered_seq"

        def tx(d: Dialect) -> Tx[Any]:
            row = yield Q(
                "SELECT read_seq, delivered_seq FROM members WHERE conversation_id=? "
                f"AND user_id=?{d.for_update}",
                (conv, user),
                "one",
            )
            if row is None:
                return None
            # The conversation row is read without a lock: receipts never wait for sends.
            crow = yield Q("SELECT last_seq FROM conversations WHERE id=?", (conv,), "one")
            read, delivered = row
            last = crow[0] if crow else 0
            seq_c = min(seq, last)
            if kind == "read":
                read = max(read, seq_c)
                delivered = max(delivered, read)
            else:
                delivered = max(delivered, seq_c)
            if (read, delivered) != (row[0], row[1]):
                yield Q(
                    "UPDATE members SET read_seq=?, delivered_seq=? WHERE conversation_id=? "
                    "AND user_id=?",
                    (read, delivered, conv, user),
                )
            return read, delivered

        del col
        self.wrote(user)
        return await self.run(tx)

    async def apply_ops(self, ops: Sequence[Op], limits: dict[str, int]) -> list[OpResult]:
        """Apply a batch of stream operations in one transaction (group commit).

        Each op gets its own result: an error code, or the appended event (with its new seq),
        or `dup=True` with the original event when (conv, actor, cid) was seen before."""
        res = await self.run(_apply_ops_tx, list(ops), limits)
        for op in ops:
            self.wrote(op.actor)
        return res


def _apply_ops_tx(d: Dialect, ops: list[Op], limits: dict[str, int]) -> Tx[list[OpResult]]:
    ts = now_ms()
    results = [OpResult() for _ in ops]
    convs_ids = sorted({o.conv for o in ops})
    convs: dict[int, dict[str, Any]] = {}
    for ch in _chunks(convs_ids):
        rows = yield Q(
            "SELECT id, kind, title, last_seq, last_msg_seq, member_count FROM conversations "
            f"WHERE id IN ({_qs(len(ch))}) ORDER BY id{d.for_update}",
            ch,
            "all",
        )
        for r in rows:
            convs[r[0]] = {
                "kind": r[1],
                "title": r[2],
                "last_seq": r[3],
                "last_msg_seq": r[4],
                "member_count": r[5],
                "dirty": False,
            }
    # Membership of every user an op names, per conversation.
    wanted: dict[int, set[int]] = {}
    for o in ops:
        s = wanted.setdefault(o.conv, set())
        s.add(o.actor)
        if o.user is not None:
            s.add(o.user)
        if o.users:
            s.update(o.users)
    # One query for every (conversation, user) pair of the batch, not one per conversation:
    # a batch of 1:1 messages names as many conversations as ops, and on MariaDB each query is
    # a round trip inside the transaction.
    roles: dict[tuple[int, int], str] = {}
    pairs = sorted({(conv, u) for conv, users in wanted.items() if conv in convs for u in users})
    for ch in _chunks(pairs, 100):
        cond, args = _any_of(("conversation_id", "user_id"), ch)
        rows = yield Q(
            f"SELECT conversation_id, user_id, role FROM members WHERE {cond}", args, "all"
        )
        for r in rows:
            roles[(r[0], r[1])] = r[2]
    # Earlier appends with the same client id (idempotent resend).
    keyed = [(o.conv, o.actor, o.cid) for o in ops if o.cid is not None]
    seen: dict[tuple[int, int, str], dict[str, Any]] = {}
    for ch in _chunks(sorted(set(keyed)), 100):
        cond, args = _any_of(("conversation_id", "sender_id", "cid"), ch)
        rows = yield Q(f"SELECT {MSG_COLS} FROM messages{d.cid_index} WHERE {cond}", args, "all")
        for r in rows:
            seen[(r[0], r[2], r[3])] = event_from_row(r)

    msg_rows: list[tuple] = []
    member_adds: list[tuple] = []
    member_dels: list[tuple[int, int]] = []
    role_sets: dict[tuple[int, int], str] = {}
    cursor_moves: dict[tuple[int, int], int] = {}
    edits: list[tuple] = []
    recalls: list[tuple] = []
    react_adds: list[tuple] = []
    react_dels: list[tuple] = []
    targets: dict[tuple[int, int], Any] = {}
    ref_rows: list[tuple[str, int, int]] = []

    for i, o in enumerate(ops):
        res = results[i]
        key = (o.conv, o.actor, o.cid) if o.cid is not None else None
        if key is not None and key in seen:
            res.event = seen[key]
            res.dup = True
            continue
        c = convs.get(o.conv)
        my_role = roles.get((o.conv, o.actor))
        if c is None or my_role is None:
            res.error = "not_found"
            continue
        extra: dict[str, Any] = {}
        body = ""
        target = o.target
        kind = o.kind
        err = None
        if kind in ("edit", "recall", "react"):
            tkey = (o.conv, o.target)
            if tkey not in targets:
                targets[tkey] = yield Q(
                    "SELECT sender_id, kind, created_at, recalled_at FROM messages "
                    "WHERE conversation_id=? AND seq=?",
                    tkey,
                    "one",
                )
            t = targets[tkey]
            if t is None or t[1] not in TEXT_LIKE:
                err = ("not_found", "no such message")
            elif t[3] is not None:
                err = ("conflict", "the message was recalled")
            elif kind == "edit":
                if t[0] != o.actor:
                    err = ("forbidden", "only the author can edit a message")
                elif ts - t[2] > limits["edit_window_ms"]:
                    err = ("recall_window", "the edit window has passed")
                else:
                    body = o.text
                    edits.append((o.text, ts, o.conv, o.target))
            elif kind == "recall":
                moderator = c["kind"] == "group" and my_role in ("owner", "admin")
                if t[0] != o.actor and not moderator:
                    err = ("forbidden", "only the author or a group admin can recall")
                elif t[0] == o.actor and not moderator and ts - t[2] > limits["recall_window_ms"]:
                    err = ("recall_window", "the recall window has passed")
                else:
                    recalls.append((ts, o.conv, o.target))
                    targets[tkey] = (t[0], t[1], t[2], ts)
            else:
                rk = (o.conv, o.target, o.actor, o.emoji)
                if o.remove:
                    react_dels.append(rk)
                else:
                    react_adds.append((*rk, ts))
                extra = {"emoji": o.emoji, "remove": o.remove}
        elif kind == "call":
            extra = {"call": dict(o.extra or {})}
        elif kind == "text":
            body = o.text
            if o.mentions:
                extra["mentions"] = o.mentions
            if o.extra:
                extra.update(o.extra)
            if o.target is not None and not 1 <= o.target <= c["last_seq"]:
                err = ("bad_field", "reply_to: no such message")
            elif o.attachment is not None:
                att = yield from _attachment_for_message(o.attachment, o.actor)
                if att is None:
                    err = ("not_found", "attachment: no such upload of yours")
                else:
                    kind = att["kind"]
                    extra["attachment"] = att
        else:  # group operations
            target = None
            if c["kind"] != "group":
                err = ("forbidden", "only group conversations can be changed")
            elif kind == "rename":
                if my_role not in ("owner", "admin"):
                    err = ("forbidden", "only owners and admins can rename")
                else:
                    c["title"] = o.text
                    extra = {"title": o.text}
            elif kind == "add":
                if my_role not in ("owner", "admin"):
                    err = ("forbidden", "only owners and admins can add members")
                else:
                    new = [u for u in dict.fromkeys(o.users or []) if (o.conv, u) not in roles]
                    if not new:
                        err = ("conflict", "already members")
                    elif c["member_count"] + len(new) > limits["max_members"]:
                        err = ("member_limit", f"at most {limits['max_members']} members")
                    else:
                        for u in new:
                            roles[(o.conv, u)] = "member"
                            member_adds.append((o.conv, u, "member", ts, 0, 0))
                        c["member_count"] += len(new)
                        extra = {"users": new}
                        res.members_changed = True
            elif kind in ("remove", "leave"):
                who = o.actor if kind == "leave" else o.user
                assert who is not None
                their = roles.get((o.conv, who))
                if their is None:
                    err = ("not_found", "not a member")
                elif kind == "remove" and (
                    who == o.actor
                    or my_role not in ("owner", "admin")
                    or their == "owner"
                    or (their == "admin" and my_role != "owner")
                ):
                    err = ("forbidden", "your role does not allow removing this member")
                else:
                    del roles[(o.conv, who)]
                    member_dels.append((o.conv, who))
                    c["member_count"] -= 1
                    extra = {"user": who}
                    res.members_changed = True
                    res.also_notify.append(who)
                    if their == "owner":
                        # Hand ownership on: the longest-standing admin, else member.
                        heir = yield Q(
                            "SELECT user_id FROM members WHERE conversation_id=? AND user_id<>? "
                            "ORDER BY CASE role WHEN 'admin' THEN 0 ELSE 1 END, joined_at, "
                            "user_id LIMIT 1",
                            (o.conv, who),
                            "one",
                        )
                        if heir is not None and all(m != (o.conv, heir[0]) for m in member_dels):
                            roles[(o.conv, heir[0])] = "owner"
                            role_sets[(o.conv, heir[0])] = "owner"
                            extra["new_owner"] = heir[0]
            elif kind == "role":
                their = roles.get((o.conv, o.user)) if o.user is not None else None
                if my_role != "owner":
                    err = ("forbidden", "only the owner can change roles")
                elif their is None:
                    err = ("not_found", "not a member")
                elif their == "owner":
                    err = ("forbidden", "the owner's role cannot be changed")
                else:
                    roles[(o.conv, o.user)] = o.role or "member"
                    role_sets[(o.conv, o.user)] = o.role or "member"
                    extra = {"user": o.user, "role": o.role}
            else:
                err = ("bad_frame", f"unknown operation {kind}")
        if err is not None:
            res.error, res.message = err
            continue
        c["last_seq"] += 1
        c["dirty"] = True
        seq = c["last_seq"]
        if kind in MESSAGE_KINDS:
            c["last_msg_seq"] = seq
        ej = json.dumps(extra, ensure_ascii=False) if extra else None
        row = (o.conv, seq, o.actor, o.cid, kind, body, target, ej, ts, None, None)
        msg_rows.append(row)
        res.event = event_from_row(row)
        if "attachment" in extra:
            a = extra["attachment"]
            for aid in (a["id"], a.get("thumb"), a.get("poster")):
                if aid:
                    ref_rows.append((aid, o.conv, seq))
        if key is not None:
            seen[key] = res.event
        if (o.conv, o.actor) in roles:
            ck = (o.conv, o.actor)
            cursor_moves[ck] = max(cursor_moves.get(ck, 0), seq)

    # Remove reactions first so that remove-then-add in one batch ends added.
    for rk in react_dels:
        yield Q(
            "DELETE FROM reactions WHERE conversation_id=? AND seq=? AND user_id=? AND emoji=?", rk
        )
    if react_adds:
        yield Q(
            f"{d.insert_ignore} INTO reactions (conversation_id, seq, user_id, emoji, created_at) "
            "VALUES (?,?,?,?,?)",
            react_adds,
            many=True,
        )
    if msg_rows:
        yield Q(
            f"INSERT INTO messages ({MSG_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", msg_rows, many=True
        )
    if ref_rows:
        yield Q(
            f"{d.insert_ignore} INTO attachment_refs (attachment_id, conversation_id, seq) "
            "VALUES (?,?,?)",
            ref_rows,
            many=True,
        )
    for text, ets, conv, seq in edits:
        yield Q(
            "UPDATE messages SET body=?, edited_at=? WHERE conversation_id=? AND seq=?",
            (text, ets, conv, seq),
        )
    for rts, conv, seq in recalls:
        yield Q(
            "UPDATE messages SET body='', recalled_at=? WHERE conversation_id=? AND seq=?",
            (rts, conv, seq),
        )
        # a recalled attachment is no longer shared through this message
        yield Q("DELETE FROM attachment_refs WHERE conversation_id=? AND seq=?", (conv, seq))
    for conv, c in convs.items():
        if c["dirty"]:
            yield Q(
                "UPDATE conversations SET last_seq=?, last_msg_seq=?, updated_at=?, title=?, "
                "member_count=? WHERE id=?",
                (c["last_seq"], c["last_msg_seq"], ts, c["title"], c["member_count"], conv),
            )
    for conv, user in member_dels:
        yield Q("DELETE FROM members WHERE conversation_id=? AND user_id=?", (conv, user))
    if member_adds:
        yield Q(
            "INSERT INTO members (conversation_id, user_id, role, joined_at, read_seq, "
            "delivered_seq) VALUES (?,?,?,?,?,?)",
            member_adds,
            many=True,
        )
    for (conv, user), role in role_sets.items():
        yield Q(
            "UPDATE members SET role=? WHERE conversation_id=? AND user_id=?", (role, conv, user)
        )
    for (conv, user), seq in cursor_moves.items():
        yield Q(
            "UPDATE members SET read_seq=?, delivered_seq=? WHERE conversation_id=? AND user_id=? "
            "AND read_seq<?",
            (seq, seq, conv, user, seq),
        )
    return results


# ---- attachments (docs/protocol.md, "Attachments") ---------------------------------------------
ATT_COLS = "id, uploader_id, kind, name, mime, size, sha256, meta, parent_id, created_at"


def attachment_public(r: Sequence[Any]) -> dict[str, Any]:
    """An attachments row as clients see it (in messages and upload answers)."""
    out: dict[str, Any] = {
        "id": r[0],
        "kind": r[2],
        "name": r[3],
        "mime": r[4],
        "size": r[5],
        "sha256": r[6],
    }
    if r[7]:
        out.update(json.loads(r[7]))
    return out


def _attachment_for_message(aid: str, actor: int) -> Tx[dict[str, Any] | None]:
    r = yield Q(f"SELECT {ATT_COLS} FROM attachments WHERE id=?", (aid,), "one")
    if r is None or r[1] != actor or r[8] is not None:
        return None
    return attachment_public(r)


class AttachmentStore:
    """Attachment rows on top of a Store (kept apart so the message path stays small)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(self, row: dict[str, Any]) -> None:
        vals = (
            row["id"],
            row["uploader_id"],
            row["kind"],
            row["name"],
            row["mime"],
            row["size"],
            row["sha256"],
            json.dumps(row["meta"], separators=(",", ":")) if row.get("meta") else None,
            row.get("parent_id"),
            row.get("created_at") or now_ms(),
        )

        def tx(d: Dialect) -> Tx[None]:
            yield Q(f"INSERT INTO attachments ({ATT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)", vals)

        self.store.wrote(row["uploader_id"])
        await self.store.run(tx)

    async def get(self, aid: str) -> tuple[Any, ...] | None:
        def tx(d: Dialect) -> Tx[Any]:
            return (yield Q(f"SELECT {ATT_COLS} FROM attachments WHERE id=?", (aid,), "one"))

        r = await self.store.run(tx, write=False)
        return tuple(r) if r is not None else None

    async def readable(self, aid: str, user: int) -> tuple[Any, ...] | None:
        """The row when `user` may download it: the uploader, or a current member of a
        conversation with a message that references it (a thumbnail or poster counts as its
        parent's). None otherwise, indistinguishable from an unknown id."""

        def tx(d: Dialect) -> Tx[Any]:
            r = yield Q(f"SELECT {ATT_COLS} FROM attachments WHERE id=?", (aid,), "one")
            if r is None:
                return None
            if r[1] == user:
                return r
            ok = yield Q(
                "SELECT 1 FROM attachment_refs a JOIN members m "
                "ON m.conversation_id = a.conversation_id "
                "WHERE a.attachment_id=? AND m.user_id=? LIMIT 1",
                (aid, user),
                "one",
            )
            return r if ok else None

        # from the primary: a recipient may ask right after the message was sent
        r = await self.store.run(tx, write=False)
        return tuple(r) if r is not None else None
