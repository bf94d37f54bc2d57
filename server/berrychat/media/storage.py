"""Content-addressed file storage for attachments.

Every stored file is named by the SHA-256 of its bytes: `<dir>/ab/cd/<sha256>`. No part of a
path ever comes from a client (names, types and ids are only kept in the database), so there is
nothing to traverse; identical bytes are stored once. Uploads are written to `<dir>/tmp/` under
a random name first and renamed into place when complete, so a failed or interrupted upload
(including a full disk) never leaves a partial file where downloads look.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
from pathlib import Path

_SHA = re.compile(r"[0-9a-f]{64}")
_HEX2 = re.compile(r"[0-9a-f]{2}")


def _subdirs(d: Path) -> list[Path]:
    """The two-hex-digit subdirectories of the storage layout (`ab/`, `ab/cd/`)."""
    try:
        return sorted(
            Path(e.path)
            for e in os.scandir(d)
            if _HEX2.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
        )
    except OSError:  # not made yet (no upload so far), or not readable
        return []


class StorageFull(Exception):
    """The disk is full (ENOSPC) or over quota (EDQUOT): retry later."""


class FileStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.tmp = self.root / "tmp"

    def prepare(self) -> None:
        """Remove temporary files left by a crash (directories are made on first upload)."""
        if self.tmp.is_dir():
            for p in self.tmp.iterdir():
                with contextlib.suppress(OSError):
                    p.unlink()

    def relpath(self, sha256: str) -> str:
        """The path under the root for a digest (also the X-Accel-Redirect suffix)."""
        if not _SHA.fullmatch(sha256):
            raise ValueError("not a SHA-256 hex digest")
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def path(self, sha256: str) -> Path:
        return self.root / self.relpath(sha256)

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def new_temp(self) -> TempFile:
        if not self.tmp.is_dir():
            self.tmp.mkdir(parents=True, exist_ok=True, mode=0o750)
        return TempFile(self.tmp / f"up-{secrets.token_hex(16)}")

    def commit(self, tmp: TempFile) -> str:
        """Move a complete temporary file into place under its digest (dedupe: if the same
        bytes are stored already, the temporary file is dropped). Returns the digest."""
        digest = tmp.sha256()
        dest = self.path(digest)
        if dest.is_file():
            try:
                os.utime(dest)  # "just used": the orphan sweep leaves recent files alone
            except FileNotFoundError:
                pass  # removed by a sweep a moment ago: store these bytes again below
            else:
                tmp.discard()
                return digest
        try:
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            os.chmod(tmp.path, 0o640)
            os.replace(tmp.path, dest)
        except OSError as e:
            tmp.discard()
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(str(e))
            raise
        return digest

    def remove_unused(self, sha256: str, written_before: float) -> bool:
        """Remove the stored file of a digest that no database row names any more (the caller
        checked). An upload of the same bytes may be finishing at this moment (its row is not
        written yet): such an upload refreshed the file's mtime (`commit`), so a file modified
        at or after `written_before` (Unix time) is put back. The file is renamed aside first,
        so a concurrent `commit` either refreshes it before (kept) or stores it anew after."""
        path = self.path(sha256)
        self.tmp.mkdir(parents=True, exist_ok=True, mode=0o750)
        aside = self.tmp / f"rm-{sha256}-{secrets.token_hex(4)}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        try:
            if os.stat(aside).st_mtime >= written_before:
                with contextlib.suppress(FileExistsError):  # stored anew meanwhile: same bytes
                    os.link(aside, path)
                return False
        finally:
            with contextlib.suppress(OSError):
                aside.unlink()
        # empty ab/cd/ directories stay: removing one could race with a commit into it
        return True

    def stored_before(self, written_before: float) -> list[str]:
        """The digests of the stored files under the root last modified before
        `written_before` (Unix time): candidates for `remove_unused` once the database says
        that no row names them. Only `ab/cd/<sha256>` entries that fit the layout are listed
        (never `tmp/`, never anything else an operator put there)."""
        out: list[str] = []
        for a in _subdirs(self.root):
            for b in _subdirs(a):
                try:
                    entries = list(os.scandir(b))
                except OSError:
                    continue
                for e in entries:
                    name = e.name
                    if not (_SHA.fullmatch(name) and name[:2] == a.name and name[2:4] == b.name):
                        continue
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed meanwhile
                    if stat.S_ISREG(st.st_mode) and st.st_mtime < written_before:
                        out.append(name)
        return out

    def store_bytes(self, data: bytes) -> str:
        """Store a small derived file (a thumbnail, a poster) and return its digest."""
        t = self.new_temp()
        try:
            t.write(data)
            t.close()
        except BaseException:
            t.discard()
            raise
        return self.commit(t)


class TempFile:
    """A file being written, hashed as it grows. On any write error it is removed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._h = hashlib.sha256()
        self.size = 0
        self.head = b""  # the first bytes (for sniffing)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, data: bytes) -> None:
        assert self._fd is not None
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            self.discard()
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(str(e))
            raise
        self._h.update(data)
        if len(self.head) < 64:
            self.head += data[: 64 - len(self.head)]
        self.size += len(data)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            except OSError as e:
                os.close(fd)
                self.discard()
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise StorageFull(str(e))
                raise
            os.close(fd)

    def sha256(self) -> str:
        return self._h.hexdigest()

    def discard(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            self.path.unlink()
