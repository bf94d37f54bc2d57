"""Attachments: receive an upload into storage, check and describe it, authorise downloads, and
relay "played" receipts of voice messages. See docs/protocol.md, "Attachments"."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
import unicodedata
from pathlib import Path
from typing import Any, Protocol

from ..config import Settings
from ..protocol.codes import ChatError
from ..protocol.frames import encode
from ..store import Store, StoreError
from ..store.base import MEDIA_KINDS, AttachmentStore, Dialect, Q, Tx, attachment_public
from . import audio, housekeeping, images, sniff, video
from .links import KEY_FILE, LinkSigner, load_or_create_key
from .storage import FileStore, StorageFull, TempFile

log = logging.getLogger(__name__)


class BodySource(Protocol):
    length: int

    async def read(self, timeout: float) -> bytes: ...


def uploads_dir(settings: Settings) -> Path:
    """`uploads.dir`, or `uploads` next to the SQLite database (the data directory), or
    ./uploads with MariaDB."""
    if settings.uploads.dir:
        return Path(settings.uploads.dir)
    db = settings.database
    if db.type == "sqlite":
        return Path(db.name).resolve().parent / "uploads"
    return Path("uploads").resolve()


def clean_name(raw: str | None) -> str:
    """A display name for the file: no directories, no control characters, at most 255
    characters. Only ever stored and shown, never used as a path."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name in ("", ".", ".."):
        name = "file"
    return name[:255]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _unavailable(e: Exception) -> ChatError:
    log.warning("database error: %s", e)
    return ChatError("unavailable", "database unavailable, retry")


class MediaService:
    def __init__(self, settings: Settings, store: Store, sink: Any, members: Any) -> None:
        self.settings = settings
        self.cfg = settings.uploads
        self.rows = AttachmentStore(store)
        self.store = store
        self.sink = sink
        self.members = members  # async conv -> frozenset of member ids (the chat's cache)
        self.files = FileStore(uploads_dir(settings))
        self.ffmpeg = video.find_ffmpeg(self.cfg.ffmpeg) if self.cfg.video_posters else None
        self.mcfg = settings.media
        self._signer: LinkSigner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._inflight: dict[int, int] = {}  # user -> bytes of their uploads being received

    def prepare(self) -> None:
        self.files.prepare()
        if not self.mcfg.url_signing_key:
            log.warning(
                "media.url_signing_key is not set: download links are signed with a key kept "
                "on this host (%s, made on first use); with several hosts, set the same "
                "media.url_signing_key on all of them",
                self.files.root.parent / KEY_FILE,
            )
        if self.cfg.video_posters:
            if self.ffmpeg:
                log.info("video posters: using %s", self.ffmpeg)
            else:
                log.info("video posters: ffmpeg not found, video messages get no poster")

    @property
    def signer(self) -> LinkSigner:
        """Signs and checks download links (media.url_signing_key, or a key kept next to
        uploads.dir, in the data directory, when none is configured)."""
        if self._signer is None:
            key = self.mcfg.url_signing_key.encode()
            if not key:
                try:
                    key = load_or_create_key(self.files.root.parent)  # the data directory
                except OSError as e:
                    log.error("cannot read or create the download link signing key: %s", e)
                    raise ChatError("unavailable", "download links are unavailable; retry later")
            self._signer = LinkSigner(key, self.mcfg.url_ttl_seconds)
        return self._signer

    # ---- housekeeping --------------------------------------------------------------------
    def start(self) -> None:
        """Sweep orphaned uploads soon after start, then about every hour (every process
        does; the sweep is safe to run concurrently)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_loop(self) -> None:
        # jitter: processes started together (a deploy) do not sweep together
        await asyncio.sleep(random.uniform(10, 60))
        while True:
            try:
                await self.sweep()
            except Exception as e:  # the database may be down; try again next time
                log.warning("orphaned upload sweep failed: %s", e)
            await asyncio.sleep(3600 + random.uniform(0, 300))

    async def sweep(self, now: float | None = None) -> housekeeping.SweepResult:
        """Delete uploads no message has referenced for media.orphan_ttl_hours."""
        ttl = self.mcfg.orphan_ttl_hours * 3600
        res = await housekeeping.sweep_orphans(self.store, self.files, ttl, now)
        if res.rows:
            log.info("removed %d orphaned upload rows and %d files", res.rows, res.files)
        return res

    async def check_quota(self, user: int, incoming: int) -> None:
        """Refuse (before any byte is stored) an upload of `incoming` bytes that would take
        `user` over media.user_quota_mb, counting their other uploads still being received by
        this process (`incoming` is already among them)."""
        quota = self.mcfg.user_quota_mb << 20
        if not quota:
            return
        try:
            used = await housekeeping.usage_bytes(self.store, user)
        except StoreError as e:
            raise _unavailable(e)
        pending = max(0, self._inflight.get(user, incoming) - incoming)
        if used + pending + incoming > quota:
            busy = f", {_mib(pending)} more being uploaded" if pending else ""
            raise ChatError(
                "quota_exceeded",
                f"this upload ({_mib(incoming)}) would exceed your storage quota "
                f"({_mib(used)} of {self.mcfg.user_quota_mb} MiB used{busy})",
            )

    async def user_active(self, user: int) -> None:
        """For signed links: the account still exists and is not disabled."""

        def tx(d: Dialect) -> Tx[Any]:
            return (yield Q("SELECT disabled FROM users WHERE id=?", (user,), "one"))

        try:
            r = await self.store.run(tx, write=False)
        except StoreError as e:
            raise _unavailable(e)
        if r is None:
            raise ChatError("link_invalid")
        if r[0]:
            raise ChatError("account_disabled")

    # ---- limits --------------------------------------------------------------------------
    def limit(self, kind: str) -> int:
        c = self.cfg
        return {
            "image": c.max_image_bytes,
            "voice": c.max_voice_bytes,
            "video": c.max_video_bytes,
        }.get(kind, c.max_file_bytes)

    def limits(self) -> dict[str, int]:
        return {k: self.limit(k) for k in MEDIA_KINDS}

    def max_upload(self) -> int:
        return max(self.limits().values())

    # ---- upload --------------------------------------------------------------------------
    async def upload(
        self, user: int, declared_raw: str | None, name_raw: str | None, body: BodySource
    ) -> dict[str, Any]:
        declared = sniff.normalize(declared_raw)
        kind = sniff.kind_of(declared)
        cap = self.limit(kind)
        if body.length > cap:
            raise ChatError("too_large", f"{kind} uploads are limited to {cap} bytes")
        # reserved while it is received: two uploads of one user at once cannot both pass
        # the quota (on this process; across processes the overshoot is what is in flight)
        self._inflight[user] = self._inflight.get(user, 0) + body.length
        try:
            await self.check_quota(user, body.length)
            return await self._receive(user, kind, declared, name_raw, body)
        finally:
            left = self._inflight.pop(user) - body.length
            if left:
                self._inflight[user] = left

    async def _receive(
        self, user: int, kind: str, declared: str, name_raw: str | None, body: BodySource
    ) -> dict[str, Any]:
        name = clean_name(name_raw)
        timeout = self.cfg.idle_timeout_seconds
        try:
            tmp = self.files.new_temp()
        except OSError as e:
            raise self._os_error(e)
        committed: list[str] = []
        try:
            checked = False
            while True:
                chunk = await body.read(timeout)
                if not chunk:
                    break
                tmp.write(chunk)
                if not checked and len(tmp.head) >= sniff.SNIFF_BYTES:
                    checked = True
                    self._check_type(declared, tmp.head)  # refuse before reading the rest
            if tmp.size != body.length:
                raise ChatError("upload_incomplete")
            if not checked:
                self._check_type(declared, tmp.head)
            tmp.close()
            return await self._finish(user, kind, declared, name, tmp, committed)
        except StorageFull:
            raise ChatError("storage_full", "the server's upload storage is full; retry later")
        except OSError as e:
            raise self._os_error(e)
        finally:
            tmp.discard()  # no-op once committed (the file was moved into place)

    @staticmethod
    def _os_error(e: OSError) -> ChatError:
        log.error("upload storage failed: %s", e)
        return ChatError("unavailable", "upload storage unavailable; retry later")

    @staticmethod
    def _check_type(declared: str, head: bytes) -> None:
        why = sniff.check(declared, head)
        if why is not None:
            raise ChatError("type_mismatch", why)

    async def _finish(
        self,
        user: int,
        kind: str,
        mime: str,
        name: str,
        tmp: TempFile,
        committed: list[str],
    ) -> dict[str, Any]:
        family = sniff.sniff(tmp.head) or ""
        meta: dict[str, Any] = {}
        children: list[dict[str, Any]] = []
        aid = secrets.token_urlsafe(16)
        if kind == "image":
            try:
                res = await asyncio.to_thread(
                    images.process,
                    str(tmp.path),
                    mime,
                    max_pixels=self.cfg.max_image_pixels,
                    thumb_px=self.cfg.thumbnail_px,
                    strip=self.cfg.strip_metadata,
                )
            except images.BadImage as e:
                raise ChatError("bad_media", str(e))
            if res.cleaned is not None:
                sha = await asyncio.to_thread(self.files.store_bytes, res.cleaned)
                size = len(res.cleaned)
            else:
                size = tmp.size
                sha = await asyncio.to_thread(self.files.commit, tmp)
            tsha = await asyncio.to_thread(self.files.store_bytes, res.thumbnail)
            tid = secrets.token_urlsafe(16)
            meta = {"width": res.width, "height": res.height, "thumb": tid}
            meta.update(thumb_width=res.thumb_width, thumb_height=res.thumb_height)
            children.append(
                self._child(tid, aid, user, "thumbnail", res.thumb_mime, tsha, res.thumbnail)
            )
        else:
            size = tmp.size
            if kind in ("voice", "video"):
                d = await asyncio.to_thread(audio.duration_seconds, str(tmp.path), family)
                if d is not None:
                    meta["duration"] = round(d, 3)
            sha = await asyncio.to_thread(self.files.commit, tmp)
            if kind == "video" and self.ffmpeg:
                jpg = await video.poster_jpeg(
                    self.ffmpeg, str(self.files.path(sha)), self.cfg.thumbnail_px
                )
                if jpg:
                    psha = await asyncio.to_thread(self.files.store_bytes, jpg)
                    pid = secrets.token_urlsafe(16)
                    meta["poster"] = pid
                    children.append(self._child(pid, aid, user, "poster", "image/jpeg", psha, jpg))
        committed.append(sha)
        row = {
            "id": aid,
            "uploader_id": user,
            "kind": kind,
            "name": name,
            "mime": mime,
            "size": size,
            "sha256": sha,
            "meta": meta,
        }
        try:
            await self.rows.create(row)
            for c in children:
                await self.rows.create(c)
        except StoreError as e:
            raise _unavailable(e)
        pub = attachment_public((aid, user, kind, name, mime, size, sha, None, None, 0))
        pub.update(meta)
        return pub

    @staticmethod
    def _child(
        cid: str, parent: str, user: int, kind: str, mime: str, sha: str, data: bytes
    ) -> dict[str, Any]:
        return {
            "id": cid,
            "uploader_id": user,
            "kind": kind,
            "name": f"{kind}.{'png' if mime == 'image/png' else 'jpg'}",
            "mime": mime,
            "size": len(data),
            "sha256": sha,
            "parent_id": parent,
        }

    # ---- download ------------------------------------------------------------------------
    async def readable(self, aid: str, user: int) -> dict[str, Any]:
        """What the download needs, when `user` may read it; ChatError(not_found) otherwise
        (an unknown id and a forbidden one look the same)."""
        try:
            r = await self.rows.readable(aid, user)
        except StoreError as e:
            raise _unavailable(e)
        if r is None:
            # a thumbnail or poster is readable like the attachment it belongs to
            try:
                child = await self.rows.get(aid)
                parent = child[8] if child is not None else None
                if parent is not None and await self.rows.readable(parent, user) is not None:
                    r = child
            except StoreError as e:
                raise _unavailable(e)
        if r is None:
            raise ChatError("not_found", "no such file (or not shared with you)")
        path = self.files.path(r[6])
        return {
            "id": r[0],
            "kind": r[2],
            "name": r[3],
            "mime": r[4],
            "size": r[5],
            "sha256": r[6],
            "path": str(path),
            "relpath": self.files.relpath(r[6]),
        }

    # ---- played receipts -----------------------------------------------------------------
    async def played(self, user: int, conv: int, seq: int) -> dict[str, Any]:
        """The listener played a voice/video message: tell the sender's devices and the
        listener's other devices. Not stored (a receipt for the moment)."""
        try:
            members = await self.members(conv)
        except StoreError as e:
            raise _unavailable(e)
        if user not in members:
            raise ChatError("not_found", "no such conversation")

        def tx(d: Dialect) -> Tx[Any]:
            return (
                yield Q(
                    "SELECT sender_id, kind, recalled_at FROM messages "
                    "WHERE conversation_id=? AND seq=?",
                    (conv, seq),
                    "one",
                )
            )

        try:
            r = await self.store.run(tx, write=False)
        except StoreError as e:
            raise _unavailable(e)
        if r is None or r[1] not in ("voice", "video") or r[2] is not None:
            raise ChatError("not_found", "no such voice or video message")
        ts = int(time.time() * 1000)
        frame = {"type": "media.played", "conv": conv, "seq": seq, "user": user, "ts": ts}
        self.sink.publish(sorted({r[0], user}), encode(frame))
        return {"conv": conv, "seq": seq, "ts": ts}
