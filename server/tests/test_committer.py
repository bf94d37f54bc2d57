"""The pipelined group commit (berrychat/chat/committer.py) on a real SQLite store.

While one batch is being acknowledged and fanned out, the next one is already in the database.
These tests hold it to what the message path promises: every op answered exactly once; an ack
only once its message is committed (read back through a separate connection inside the
callback); acks and fan-out in commit (seq) order, each batch's acks before its fan-out; ops
submitted from inside ack callbacks (a client sending its next message at once) ride later
batches and keep the order.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from berrychat.chat.committer import Committer
from berrychat.config import DatabaseSettings
from berrychat.store import Op, OpResult
from berrychat.store.sqlite import SqliteStore

LIMITS = {"max_members": 100, "recall_window_ms": 120_000, "edit_window_ms": 120_000}


async def _world(tmp_path: Path) -> tuple[SqliteStore, Path, int, int]:
    path = tmp_path / "commit.db"
    store = SqliteStore(DatabaseSettings(type="sqlite", database=str(path)))
    await store.connect()
    await store.migrate()
    ann = (await store.create_user("ann", "x"))["id"]
    bob = (await store.create_user("bob", "x"))["id"]
    conv, _, _ = await store.create_conversation("direct", ann, [bob], "", 100)
    return store, path, ann, conv


def _committed(path: Path, conv: int, seq: int) -> bool:
    with sqlite3.connect(path) as db:  # another connection: sees committed rows only
        row = db.execute(
            "SELECT 1 FROM messages WHERE conversation_id=? AND seq=?", (conv, seq)
        ).fetchone()
    return row is not None


async def test_acks_after_commit_and_in_order_through_pipelined_batches(tmp_path: Path) -> None:
    store, path, ann, conv = await _world(tmp_path)
    events: list[tuple[str, object]] = []  # ("ack", seq) and ("fanout", [seqs]) in call order
    uncommitted_at_ack: list[int] = []
    answers: dict[str, int] = {}

    async def after_commit(ops: Sequence[Op], results: Sequence[OpResult]) -> None:
        events.append(("fanout", [r.event["seq"] for r in results if r.event]))
        await asyncio.sleep(0.002)  # fan-out takes a moment: the next batch commits meanwhile

    committer = Committer(store, LIMITS, after_commit, delay_ms=1, max_batch=16)
    follow_ups = 0

    def submit(cid: str) -> None:
        def done(res: OpResult | None) -> None:
            nonlocal follow_ups
            assert res is not None and res.error is None and res.event, (cid, res)
            seq = res.event["seq"]
            answers[cid] = answers.get(cid, 0) + 1
            events.append(("ack", seq))
            if not _committed(path, conv, seq):
                uncommitted_at_ack.append(seq)
            if follow_ups < 60:  # a client sending its next message at once
                follow_ups += 1
                submit(f"next-{follow_ups}")

        committer.submit(Op("text", conv, ann, cid=cid, text=cid), done)

    try:
        for i in range(100):
            submit(f"first-{i}")
        await asyncio.wait_for(committer.drain(), 30)
    finally:
        await store.close()

    assert len(answers) == 160 and set(answers.values()) == {1}, "every op answered once"
    assert not uncommitted_at_ack, f"acked before commit: {uncommitted_at_ack[:5]}"
    acked = [seq for kind, seq in events if kind == "ack"]
    assert acked == sorted(acked) and len(set(acked)) == 160, "acks in seq order, no seq twice"
    fanned = [seqs for kind, seqs in events if kind == "fanout"]
    assert [s for batch in fanned for s in batch] == acked, "fan-out in commit order"
    assert committer.batches == len(fanned) > 1, "several batches"
    # Each batch's acks come before its own fan-out.
    position = {seq: i for i, (kind, seq) in enumerate(events) if kind == "ack"}
    for i, (kind, seqs) in enumerate(events):
        if kind == "fanout":
            assert all(position[s] < i for s in seqs)  # type: ignore[union-attr]


async def test_a_failed_batch_answers_none_and_the_next_one_commits(tmp_path: Path) -> None:
    store, path, ann, conv = await _world(tmp_path)
    results: list[OpResult | None] = []

    async def after_commit(ops: Sequence[Op], res: Sequence[OpResult]) -> None:
        return None

    committer = Committer(store, LIMITS, after_commit, delay_ms=1, max_batch=16)
    try:
        await store.close()  # the database goes away: this batch must fail, not hang
        committer.submit(Op("text", conv, ann, cid="lost", text="x"), results.append)
        await asyncio.wait_for(committer.drain(), 30)
        await store.connect()
        committer.submit(Op("text", conv, ann, cid="kept", text="y"), results.append)
        await asyncio.wait_for(committer.drain(), 30)
    finally:
        await store.close()
    assert results[0] is None, "a failed commit answers None (the client retries)"
    kept = results[1]
    assert kept is not None and kept.event is not None
    assert _committed(path, conv, kept.event["seq"])
