"""The chat domain: accounts, conversations, messages, receipts, typing, presence.

Knows nothing of HTTP or WebSockets: results go out through a `Sink` (implemented by the hub)
as already-encoded frame bytes."""
