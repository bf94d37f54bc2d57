"""WebSocket connections: one asyncio.Protocol per socket, per-connection byte queues flushed once
per loop tick, one heartbeat sweeper for all connections."""

from .gateway import Gateway

__all__ = ["Gateway"]
