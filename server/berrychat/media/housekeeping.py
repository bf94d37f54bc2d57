"""Per-user storage quotas and the removal of uploads no message ever used (docs/server.md,
"Uploads": `media.user_quota_mb`, `media.orphan_ttl_hours`).

Both read the `attachments` and `attachment_refs` tables directly (migration 4 indexes
`uploader_id` and `created_at` for them).

Several processes (and Pis) may sweep at the same time: every row is deleted by a statement that
re-checks that it is still an orphan, so exactly one process deletes it, and a stored file is only
removed when no row of any user still names its digest (content-addressed dedupe: two uploads can
share one file) — see `FileStore.remove_unused` for the race with an upload of the same bytes.
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
    rows: int = 0  # attachment rows deleted (uploads with their thumbnails and posters)
    files: int = 0  # stored files removed
    kept_files: list[str] = field(default_factory=list)  # digests still used by another row


async def sweep_orphans(
    store: Store, files: FileStore, ttl_seconds: float, now: float | None = None
) -> SweepResult:
    """Delete uploads older than `ttl_seconds` that no message references (never sent, or every
    message that carried them recalled), with their thumbnails and posters, then the stored
    files no remaining row names. Idempotent; safe with several processes sweeping at once."""
    t = time.time() if now is None else now
    cutoff_ms = int((t - ttl_seconds) * 1000)
    file_cutoff = t - max(ttl_seconds, FILE_GRACE_SECONDS)
    res = SweepResult()
    orphan = (
        "parent_id IS NULL AND created_at < ? AND NOT EXISTS "
        "(SELECT 1 FROM attachment_refs r WHERE r.attachment_id = attachments.id)"
    )

    def find(d: Dialect) -> Tx[Any]:
        return (
            yield Q(
                f"SELECT id FROM attachments WHERE {orphan} ORDER BY created_at LIMIT {BATCH}",
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
                gone = yield Q(
                    f"DELETE FROM attachments WHERE id=? AND {orphan}", (aid, cutoff_ms), "rowcount"
                )
                if not gone:
                    continue  # another process took it, or a message references it now
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
        if len(ids) < BATCH or n == 0:
            break
    return res


async def _sha_in_use(store: Store, sha: str) -> bool:
    def tx(d: Dialect) -> Tx[Any]:
        return (yield Q("SELECT 1 FROM attachments WHERE sha256=? LIMIT 1", (sha,), "one"))

    return (await store.run(tx)) is not None
