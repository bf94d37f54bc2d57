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

The process that deletes a row removes the file from its own `uploads.dir` at once; with several
chat hosts the file may be on another host's disk instead (each host has its own directory). So
every sweep also collects its own directory: a stored file that no row of the database names and
that nobody wrote or re-uploaded within the grace window is removed, whichever process or host
deleted its rows (`collect_unnamed_files`).
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
CHECK_BATCH = 200  # digests looked up per query by the directory collection


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
    files: int = 0  # stored files removed from this process's uploads.dir (both ways below)
    collected: int = 0  # of those: found by the directory scan (rows deleted by any process)
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
    res.collected = await collect_unnamed_files(store, files, file_cutoff)
    res.files += res.collected
    return res


async def collect_unnamed_files(store: Store, files: FileStore, written_before: float) -> int:
    """Remove the files of this process's `uploads.dir` that no attachment row names and that
    were last written (or refreshed by an upload of the same bytes, `FileStore.commit`) before
    `written_before`: the files of rows another process — on this host or another — deleted, and
    files whose upload failed before its row was written. Returns how many were removed.

    The same guarantees as the removal after a row is deleted: a file any row names stays (the
    rows are read after the directory, from the primary); a file written within the grace window
    stays (an upload writes its file before its row); a file refreshed meanwhile is put back
    (`remove_unused`). And a guard against a wrong database: when the `attachments` table is
    empty, nothing is collected (a process pointed at a fresh or wrong database must not empty
    the directory); the files wait for the next sweep after any upload."""
    candidates = await asyncio.to_thread(files.stored_before, written_before)
    if not candidates:
        return 0
    if not await _any_attachment(store):
        log.warning(
            "%s holds %d stored files older than the grace window but the database has no "
            "attachments at all: not removing any (is this the right database?)",
            files.root,
            len(candidates),
        )
        return 0
    removed = 0
    for i in range(0, len(candidates), CHECK_BATCH):
        chunk = candidates[i : i + CHECK_BATCH]
        named = await _shas_named(store, chunk)
        for sha in chunk:
            if sha in named:
                continue
            if await asyncio.to_thread(files.remove_unused, sha, written_before):
                removed += 1
    if removed:
        log.info("removed %d stored files that no attachment names any more", removed)
    return removed


async def _any_attachment(store: Store) -> bool:
    def tx(d: Dialect) -> Tx[Any]:
        return (yield Q("SELECT 1 FROM attachments LIMIT 1", (), "one"))

    return (await store.run(tx)) is not None


async def _shas_named(store: Store, shas: list[str]) -> set[str]:
    """Which of these digests some attachment row (any user, any kind) names."""

    def tx(d: Dialect) -> Tx[Any]:
        marks = ",".join("?" * len(shas))
        return (
            yield Q(
                f"SELECT DISTINCT sha256 FROM attachments WHERE sha256 IN ({marks})",
                tuple(shas),
                "all",
            )
        )

    return {r[0] for r in await store.run(tx)}


async def _sha_in_use(store: Store, sha: str) -> bool:
    def tx(d: Dialect) -> Tx[Any]:
        return (yield Q("SELECT 1 FROM attachments WHERE sha256=? LIMIT 1", (sha,), "one"))

    return (await store.run(tx)) is not None
