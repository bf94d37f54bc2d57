"""Shared state of the fleet verifier: the edge, two users and their conversation, and every
message acknowledged so far (each later test checks that none of them was lost)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

import pytest
from fleet import Edge


@dataclass
class World:
    edge: Edge
    tokens: dict[str, str]
    conv: int = 0
    # cid -> seq of every message acknowledged to its sender, in the main conversation.
    acked: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="session")
def world() -> World:
    edge = Edge.discover()
    suffix = secrets.token_hex(3)
    password = secrets.token_urlsafe(18)

    async def users() -> dict[str, str]:
        out = {}
        for name in ("ann", "bob"):
            body = await edge.register_and_login(f"{name}{suffix}", password)
            out[name] = body["token"]
        return out

    return World(edge, asyncio.run(users()))
