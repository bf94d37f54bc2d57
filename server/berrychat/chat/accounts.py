"""Accounts and sessions: registration, argon2id passwords, tokens (one session per device)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..config import AuthSettings
from ..protocol.codes import CLOSE_AUTH, CLOSE_DISABLED, CLOSE_REPLACED, ChatError
from ..shared import LocalState
from ..store import Conflict, Store
from .sink import NullSink, Sink

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{2,31}$")
DEVICE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_PASSWORD = 1024


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def normalize_username(name: str) -> str:
    return name.strip().lower()


def check_new_account(username: Any, display_name: Any) -> str:
    """The normalized user name of a new account (a person's or a bot's), or bad_field."""
    name = normalize_username(username) if isinstance(username, str) else ""
    if not USERNAME_RE.match(name):
        raise ChatError(
            "bad_field",
            "username: 3-32 characters a-z 0-9 _ . - starting with a letter or digit",
        )
    if not isinstance(display_name, str) or len(display_name) > 200:
        raise ChatError("bad_field", "display_name: at most 200 characters")
    return name


def public_user(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": u["id"],
        "username": u["username"],
        "display_name": u.get("display_name", ""),
        "role": u.get("role", "user"),
    }


class Accounts:
    def __init__(self, auth: AuthSettings, store: Store, sink: Sink | None = None) -> None:
        self.auth = auth
        self.store = store
        self.sink: Sink = sink or NullSink()
        self.state = LocalState()  # replaced by the server's shared state (Redis)
        self.hasher = PasswordHasher(
            time_cost=auth.argon2_time_cost,
            memory_cost=auth.argon2_memory_kib,
            parallelism=auth.argon2_parallelism,
            hash_len=32,
            salt_len=16,
        )
        self._sem = asyncio.Semaphore(auth.hash_concurrency)
        self._dummy: str | None = None

    # ---- hashing (in a thread, bounded: a Pi must not drown in argon2) --------------------
    async def hash_password(self, password: str) -> str:
        async with self._sem:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def verify_password(self, hashed: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return self.hasher.verify(hashed, password)
            except (VerificationError, InvalidHashError):
                return False

        async with self._sem:
            return await asyncio.to_thread(verify)

    def check_password_rules(self, password: str) -> None:
        if not isinstance(password, str) or not (
            self.auth.min_password_length <= len(password) <= MAX_PASSWORD
        ):
            raise ChatError(
                "weak_password",
                f"password must be {self.auth.min_password_length}..{MAX_PASSWORD} characters",
            )

    # ---- accounts ------------------------------------------------------------------------
    async def register(
        self, username: str, password: str, display_name: str = "", role: str = "user"
    ) -> dict[str, Any]:
        name = check_new_account(username, display_name)
        self.check_password_rules(password)
        hashed = await self.hash_password(password)
        try:
            return await self.store.create_user(name, hashed, display_name or name, role)
        except Conflict:
            raise ChatError("user_exists")

    async def login(
        self, username: str, password: str, device_id: str = "default"
    ) -> dict[str, Any]:
        if not isinstance(device_id, str) or not DEVICE_RE.match(device_id):
            raise ChatError("bad_field", "device_id: 1-64 characters A-Z a-z 0-9 _ . : -")
        if not isinstance(username, str) or not isinstance(password, str):
            raise ChatError("bad_field", "username and password: expected strings")
        if len(password) > MAX_PASSWORD:
            raise ChatError("auth_failed")
        user = await self.store.get_user_by_name(normalize_username(username))
        if user is None:
            # Spend the same time as a real check so that user names cannot be probed.
            if self._dummy is None:
                self._dummy = await self.hash_password(secrets.token_hex(8))
            await self.verify_password(self._dummy, password)
            raise ChatError("auth_failed")
        if not await self.verify_password(user["password_hash"], password):
            raise ChatError("auth_failed")
        if user["disabled"]:
            raise ChatError("account_disabled")
        if self.hasher.check_needs_rehash(user["password_hash"]):
            await self.store.set_password(user["id"], await self.hash_password(password))
        token = secrets.token_urlsafe(32)
        th = token_hash(token)
        expires = int(time.time() * 1000) + self.auth.token_ttl_seconds * 1000
        replaced = await self.store.create_session(th, user["id"], device_id, expires)
        if replaced:
            await self._revoke(replaced)
            self.sink.kick_sessions(replaced, CLOSE_REPLACED, "session replaced by a new login")
        return {
            "token": token,
            "expires_at": expires,
            "device_id": device_id,
            "user": public_user(user),
        }

    async def authenticate(self, token: str) -> dict[str, Any]:
        """The session of a token, or ChatError(auth_failed / account_disabled)."""
        if not isinstance(token, str) or not 10 <= len(token) <= 512:
            raise ChatError("auth_failed")
        th = token_hash(token)
        if self.state.shared and await self.state.is_revoked(th):
            raise ChatError("auth_failed")
        s = await self.store.get_session(th)
        if s is None or s["expires_at"] <= int(time.time() * 1000):
            raise ChatError("auth_failed")
        if s["disabled"]:
            raise ChatError("account_disabled")
        return s

    async def logout(self, session: dict[str, Any]) -> None:
        await self.store.delete_session(session["token_hash"])
        await self._revoke([session["token_hash"]])
        self.sink.kick_sessions([session["token_hash"]], CLOSE_AUTH, "logged out")

    async def change_password(self, session: dict[str, Any], old: str, new: str) -> int:
        """Change the password; every other session of the user is revoked. Returns how many."""
        user = await self.store.get_user(session["user_id"])
        if user is None or not isinstance(old, str) or len(old) > MAX_PASSWORD:
            raise ChatError("auth_failed")
        if not await self.verify_password(user["password_hash"], old):
            raise ChatError("auth_failed")
        self.check_password_rules(new)
        await self.store.set_password(user["id"], await self.hash_password(new))
        gone = await self.store.delete_user_sessions(user["id"], keep=session["token_hash"])
        await self._revoke(gone)
        self.sink.kick_sessions(gone, CLOSE_AUTH, "password changed")
        return len(gone)

    # ---- administration (CLI and admin API) ----------------------------------------------
    async def reset_password(self, username: str, new: str) -> None:
        user = await self._by_name(username)
        self.check_password_rules(new)
        await self.store.set_password(user["id"], await self.hash_password(new))
        gone = await self.store.delete_user_sessions(user["id"])
        await self._revoke(gone)
        self.sink.kick_sessions(gone, CLOSE_AUTH, "password reset")

    async def set_disabled(self, username: str, disabled: bool = True) -> dict[str, Any]:
        user = await self._by_name(username)
        await self.store.set_disabled(user["id"], disabled)
        if disabled:
            await self._revoke(await self.store.delete_user_sessions(user["id"]))
            self.sink.kick_user(user["id"], CLOSE_DISABLED, "account disabled")
        return user

    async def _revoke(self, hashes: list[str]) -> None:
        """Remember revoked tokens in the shared state, so that every process refuses them at
        once, whatever replica its session read comes from."""
        if hashes:
            try:
                await self.state.revoke(hashes, self.auth.token_ttl_seconds)
            except Exception as e:  # the rows are deleted already; this is a second line
                import logging

                logging.getLogger(__name__).warning("revocation not shared: %s", e)

    async def _by_name(self, username: str) -> dict[str, Any]:
        user = await self.store.get_user_by_name(normalize_username(username))
        if user is None:
            raise ChatError("not_found", f"no user {username!r}")
        return user
