"""What the chat domain needs from the layer that knows connections (the hub)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Sink(Protocol):
    def publish(self, user_ids: Sequence[int], data: bytes) -> None:
        """Deliver an encoded frame to every connection (on any process) of these users.
        At-most-once: clients recover anything lost by syncing by seq."""

    def kick_sessions(self, token_hashes: Sequence[str], code: int, reason: str) -> None:
        """Close the connections of these sessions (logout, replaced, password change)."""

    def kick_user(self, user_id: int, code: int, reason: str) -> None:
        """Close every connection of a user (account disabled)."""

    def members_changed(self, conv: int, users: Sequence[int] = ()) -> None:
        """Membership of `conv` changed (drop cached member lists, on every process); `users`
        are the members before and after (their cached presence audiences are dropped too)."""


class NullSink:
    """A sink that drops everything (CLI commands, tests of the domain alone)."""

    def publish(self, user_ids: Sequence[int], data: bytes) -> None:
        pass

    def kick_sessions(self, token_hashes: Sequence[str], code: int, reason: str) -> None:
        pass

    def kick_user(self, user_id: int, code: int, reason: str) -> None:
        pass

    def members_changed(self, conv: int, users: Sequence[int] = ()) -> None:
        pass
