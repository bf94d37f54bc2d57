"""The broker: carries encoded frames and control messages between server processes.

Contract (what a Redis broker must also do):
- `publish(user_ids, data)`: deliver `data` (a complete encoded WebSocket frame, identical for
  every recipient) to every connection of these users on every process. At-most-once, no
  ordering guarantee across publishes from different processes; per-publisher order is kept.
- `control(msg)`: deliver a small JSON-able dict to every process (kick sessions or users,
  membership cache invalidation). At-most-once.
- Deliveries arrive by calling `Receiver.deliver(user_ids, data)` /
  `Receiver.on_control(msg)` on the event loop of each process, including the publisher's own.
- `local_user_added(user_id)` / `local_user_removed(user_id)`: the hub reports the first and the
  last connection of a user on this process, so that a routing broker can subscribe only to
  what its connections need (e.g. per-user-shard channels).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol


class Receiver(Protocol):
    def deliver(self, user_ids: Sequence[int], data: bytes) -> None: ...

    def on_control(self, msg: dict[str, Any]) -> None: ...


class Broker(ABC):
    @abstractmethod
    async def start(self, receiver: Receiver) -> None: ...

    @abstractmethod
    def publish(self, user_ids: Sequence[int], data: bytes) -> None: ...

    @abstractmethod
    def control(self, msg: dict[str, Any]) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    def local_user_added(self, user_id: int) -> None:  # noqa: B027 - optional hook
        """First connection of this user on this process."""

    def local_user_removed(self, user_id: int) -> None:  # noqa: B027 - optional hook
        """Last connection of this user on this process closed."""

    async def wait_routed(self, user_id: int) -> None:  # noqa: B027 - optional hook
        """Return once deliveries for this (just attached) user reach this process, so that a
        client's first sync after hello cannot miss a push published in between."""


class InProcessBroker(Broker):
    """The embedded default: one process, delivery is a direct call."""

    def __init__(self) -> None:
        self._rx: Receiver | None = None
        self.published = 0

    async def start(self, receiver: Receiver) -> None:
        self._rx = receiver

    def publish(self, user_ids: Sequence[int], data: bytes) -> None:
        self.published += 1
        if self._rx is not None:
            self._rx.deliver(user_ids, data)

    def control(self, msg: dict[str, Any]) -> None:
        if self._rx is not None:
            self._rx.on_control(msg)

    async def close(self) -> None:
        self._rx = None
