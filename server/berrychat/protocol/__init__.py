"""Sans-I/O protocol layer: HTTP/1.1 requests, WebSocket framing, BerryChat JSON frames.

Nothing in this package touches sockets, asyncio or storage.
"""
