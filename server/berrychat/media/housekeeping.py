"""Per-user storage quotas and the removal of uploads no message references any more
(docs/server.md, "Download links, orphans and quotas": `media.user_quota_mb`,
`media.orphan_ttl_hours`).

Both read the `attachments` and `attachment_refs` tables directly; migration 4 adds the
`attachments (uploader_id)` index for the quota and the `attachment_orphans` table (since when an
upload has been unreferenced) for the sweep.

Several processes (and Pis) may sweep at the same time: recording is idempotent (INSERT IGNORE),
every row is deleted by a statement that re-checks that it is still an orphan (so exactly one
process deletes it), and a stored file is only removed when no row of any user still names its
digest (content-addressed dedupe: two uploads can share one file) — see
`FileStore.remove_unused` for the race with an upload of the same bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..store import Store
from ..store.base import Dialect, Q, Tx
from .storage import FileStore

log = logging.getLogger(__name__)

BATCH = 200  # orphans deleted per transaction
MAX_BATCHES = 50  # per sweep; the rest waits for the next one
FILE_GRACE_SECONDS = 600.0  # a file written or re-uploaded this recently is never removed


async def usage_bytes(store: Store, user: int) -> int:
    """What counts against `user`'s quota: the sizes of the distinct files (by SHA-256) of their
    own uploads. Identical bytes uploaded twice count once; thumbnails and posters (made by the
    server) do not count."""

    def tx(d: Dialect) -> Tx[Any]:
        return (
            yield Q(
                "SELECT COALESCE(SUM(size), 0) FROM (SELECT MAX(size) AS size FROM attachments "
                "WHERE uploader_id=? AND parent_id IS NULL GROUP BY sha256) t",
                (user,),
                "one",
            )
        )

    r = await store.run(tx, write=False)
    return int(r[0]) if r else 0


@dataclass
class SweepResult:
    marked: int = 0  # uploads newly found unreferenced (their clock starts)
    rows: int = 0  # attachment rows deleted (uploads with their thumbnails and posters)
    files: int = 0  # stored files removed
    kept_files: list[str] = field(default_factory=list)  # digests still used by another row


_UNREFERENCED = "NOT EXISTS (SELECT 1 FROM attachment_refs r WHERE r.attachment_id = {})"


async def sweep_orphans(
    store: Store,
    files: FileStore,
    ttl_seconds: float,
    now: float | None = None,
) -> SweepResult:
    """Delete uploads that no message has referenced for longer than `ttl_seconds` (never sent,
    or every message that carried them recalled), with their thumbnails and posters, then the
    stored files no remaining row names. Idempotent; safe with several processes at once.

    How long an upload has been unreferenced is kept in `attachment_orphans` (migration 4): each
    sweep first forgets uploads referenced again, then records the newly unreferenced ones with
    the sweep's time. So an upload goes between `ttl_seconds` and `ttl_seconds` plus one sweep
    interval after it stopped being referenced (or was made, if never sent): late, never early."""
    t = time.time() if now is None else now
    now_ms = int(t * 1000)
    cutoff_ms = int((t - ttl_seconds) * 1000)
    file_cutoff = t - max(ttl_seconds, FILE_GRACE_SECONDS)
    res = SweepResult()

    def track(d: Dialect) -> Tx[int]:
        yield Q(  # referenced again (sent after all): its clock stops
            "DELETE FROM attachment_orphans WHERE EXISTS (SELECT 1 FROM attachment_refs r "
            "WHERE r.attachment_id = attachment_orphans.attachment_id)"
        )
        return (
            yield Q(
                f"{d.insert_ignore} INTO attachment_orphans (attachment_id, since) "
                "SELECT a.id, ? FROM attachments a WHERE a.parent_id IS NULL AND "
                + _UNREFERENCED.format("a.id")
                + " AND NOT EXISTS (SELECT 1 FROM attachment_orphans o "
                "WHERE o.attachment_id = a.id)",
                (now_ms,),
                "rowcount",
            )
        )

    res.marked = max(0, await store.run(track) or 0)

    def find(d: Dialect) -> Tx[Any]:
        return (
            yield Q(
                "SELECT attachment_id FROM attachment_orphans WHERE since < ? "
                f"ORDER BY since LIMIT {BATCH}",
                (cutoff_ms,),
                "all",
            )
        )

    for _ in range(MAX_BATCHES):
        ids = [r[0] for r in await store.run(find)]
        if not ids:
            break

        def delete(d: Dialect, ids: list[str] = ids) -> Tx[tuple[int, set[str]]]:
            n, shas = 0, set()
            for aid in ids:
                rows = yield Q(
                    "SELECT sha256 FROM attachments WHERE id=? OR parent_id=?", (aid, aid), "all"
                )
                # re-checked in the statement: a message may reference it by now, or another
                # process may have deleted it; the affected-row count says who did
                gone = yield Q(
                    "DELETE FROM attachments WHERE id=? AND parent_id IS NULL AND "
                    + _UNREFERENCED.format("attachments.id"),
                    (aid,),
                    "rowcount",
                )
                yield Q("DELETE FROM attachment_orphans WHERE attachment_id=?", (aid,))
                if not gone:
                    continue
                gone_children = yield Q(
                    "DELETE FROM attachments WHERE parent_id=?", (aid,), "rowcount"
                )
                n += 1 + (gone_children or 0)
                shas.update(r[0] for r in rows)
            return n, shas

        n, shas = await store.run(delete)
        res.rows += n
        for sha in sorted(shas):
            if await _sha_in_use(store, sha):
                res.kept_files.append(sha)
            elif await asyncio.to_thread(files.remove_unused, sha, file_cutoff):
                res.files += 1
        if len(ids) < BATCH:
            break
    return res


async def _sha_in_use(store: Store, sha: str) -> bool:
    def tx(d: Dialect) -> Tx[Any]:
        return (yield Q("SELECT 1 FROM attachments WHERE sha256=? LIMIT 1", (sha,), "one"))

    return (await store.run(tx)) is not None
