"""The hot queries use their indexes (SQLite EXPLAIN QUERY PLAN; MariaDB EXPLAIN)."""

import pytest

from berrychat.config import DatabaseSettings
from berrychat.store import open_store
from berrychat.store.base import MSG_COLS, Op

HOT = {
    "history_before": (
        f"SELECT {MSG_COLS} FROM messages WHERE conversation_id=? AND seq<? "
        "ORDER BY seq DESC LIMIT ?",
        (1, 100, 51),
    ),
    "history_after": (
        f"SELECT {MSG_COLS} FROM messages WHERE conversation_id=? AND seq>? "
        "ORDER BY seq ASC LIMIT ?",
        (1, 0, 51),
    ),
    "resend_check": (
        f"SELECT {MSG_COLS} FROM messages{{cid_index}} WHERE (conversation_id=? AND sender_id=? "
        "AND cid=?) OR (conversation_id=? AND sender_id=? AND cid=?)",
        (1, 2, "a", 1, 3, "b"),
    ),
    "membership": (
        "SELECT role, read_seq, delivered_seq FROM members WHERE conversation_id=? AND user_id=?",
        (1, 2),
    ),
    "members_of_conv": ("SELECT user_id FROM members WHERE conversation_id=?", (1,)),
    "conversation_list": (
        "SELECT c.id, c.kind, c.title, c.last_seq, c.last_msg_seq, c.updated_at, "
        "c.member_count, m.role, m.read_seq, m.delivered_seq FROM members m "
        "JOIN conversations c ON c.id = m.conversation_id WHERE m.user_id=? "
        "ORDER BY c.updated_at DESC, c.id DESC",
        (2,),
    ),
    "session": (
        "SELECT s.user_id, s.device_id, s.expires_at, u.username, u.display_name, u.role, "
        "u.disabled FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash=?",
        ("x",),
    ),
}


async def populate(store):
    """A little data, so that the optimizer does not answer from empty tables."""
    users = [await store.create_user(f"u{i}", "x") for i in range(6)]
    ids = [u["id"] for u in users]
    conv, _, _ = await store.create_conversation("group", ids[0], ids[1:], "g", 100)
    ops = [Op("text", conv, ids[i % 6], f"c{i}", text=f"m{i}") for i in range(60)]
    await store.apply_ops(ops, {"max_members": 100, "recall_window_ms": 1, "edit_window_ms": 1})
    await store.create_session("x" * 64, ids[0], "d", 2**40)


@pytest.mark.parametrize("name", sorted(HOT))
async def test_sqlite_plans_use_indexes(tmp_path, name):
    store = open_store(DatabaseSettings(type="sqlite", database=str(tmp_path / "x.db")))
    await store.connect()
    try:
        await store.migrate()
        await populate(store)
        sql, params = HOT[name]
        plan = await store.explain(sql.replace("{cid_index}", ""), params)
        text = " | ".join(plan)
        for line in plan:
            # a full scan is only acceptable for the outer side of the list join, never on messages
            assert not (line.startswith("SCAN") and "messages" in line), text
            assert not line.startswith("SCAN m") or name == "conversation_list", text
        assert "TEMP B-TREE" not in text or name == "conversation_list", text
        assert "USING" in text, text
    finally:
        await store.close()


@pytest.mark.parametrize("name", sorted(HOT))
async def test_mariadb_plans_use_indexes(mariadb, name):
    db = DatabaseSettings(
        type="mysql",
        host="127.0.0.1",
        port=mariadb.port,
        user="root",
        database=mariadb.new_database(),
    )
    store = open_store(db)
    await store.connect()
    try:
        await store.migrate()
        await populate(store)
        sql, params = HOT[name]
        rows = await store.explain(sql.replace("{cid_index}", store.dialect.cid_index), params)
        for r in rows:
            table, access = r[2], r[3]
            assert access != "ALL" or table in ("c",), (name, rows)
            if name == "resend_check":
                assert r[5] == "messages_cid", rows
    finally:
        await store.close()
