"""The AI assistant against a local OpenAI-compatible server (tests/fake_model.py) that streams
like llama.cpp/Ollama: the real HTTP client, the real server, real WebSocket clients. Covers
streaming into the chat, the durable final message, when it answers (direct chat, mentions in
groups), the request it sends (model, system prompt, context limit, key), and the error
messages for a slow, failing, unreachable or dropped model, and the rate limit."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fake_model import FakeModel
from support import PASSWORD, World, make_settings, start_world

from berrychat.assistant.client import AssistantError, ChatCompletions
from berrychat.client import Client, login
from berrychat.config import AiSettings


@pytest.fixture
async def model() -> AsyncIterator[FakeModel]:
    m = await FakeModel().start()
    yield m
    await m.stop()


async def _world(db: dict[str, Any], base_url: str, **ai: Any) -> World:
    cfg = {
        "enabled": True,
        "base_url": base_url,
        "model": "tiny-test",
        "system_prompt": "You are a test assistant.",
        "first_token_timeout_seconds": 5,
        "idle_timeout_seconds": 5,
        "stream_interval_seconds": 0.01,
        **ai,
    }
    return await start_world(make_settings(db, ai=cfg))


async def _stop(w: World) -> None:
    await w.close()
    await w.server.stop(drain_seconds=0.5)


async def _answer(c: Client, conv: int, to: int | None = None) -> dict[str, Any]:
    """The assistant's next stored message in `conv` (answering seq `to`, when given)."""
    return await c.next_event(
        "msg",
        timeout=10,
        pred=lambda e: e["conv"] == conv and e.get("bot") and (to is None or e["reply_to"] == to),
    )


async def test_streams_into_a_direct_chat_and_stores_the_answer(sqlite_db, model):
    w = await _world(sqlite_db, model.base_url)
    try:
        _, _, ann = await w.user("ann")
        assert ann is not None
        conv = (await ann.request("conv.create", kind="direct", members=["assistant"]))["conv"]
        q = await ann.send_text(conv, "hello?")
        streams: list[dict[str, Any]] = []
        while True:
            ev = await ann.next_event(timeout=10)
            if ev["type"] == "msg.stream":
                streams.append(ev)
            elif ev["type"] == "msg" and ev.get("bot"):
                final = ev
                break
        assert streams[0]["text"] == "" and streams[0]["reply_to"] == q["seq"]
        texts = [s["text"] for s in streams]
        assert any(0 < len(t) < len("Hello there, Ann!") for t in texts)  # arrived piece by piece
        assert all(texts[i].startswith(texts[i - 1]) for i in range(1, len(texts)))
        assert final["text"] == "Hello there, Ann!" and final["stream"] == streams[0]["sid"]
        assert final["reply_to"] == q["seq"] and "error" not in final
        # durable: in the history for any device, from the bot account
        h = await ann.request("history", conv=conv)
        assert h["messages"][-1]["text"] == "Hello there, Ann!" and h["messages"][-1]["bot"]
        lst = await ann.request("conv.list")
        peer = next(c for c in lst["conversations"] if c["conv"] == conv)["peer"]
        assert peer["username"] == "assistant" and peer["bot"] is True
        # the request it sent: OpenAI shape, streaming, no key on a LAN server
        req = model.requests[0]
        assert req["path"] == "/v1/chat/completions" and req["method"] == "POST"
        body = req["json"]
        assert body["model"] == "tiny-test" and body["stream"] is True
        assert body["messages"][0] == {"role": "system", "content": "You are a test assistant."}
        assert body["messages"][-1] == {"role": "user", "content": "hello?"}
        assert "authorization" not in req["headers"]
        # the next question carries the conversation so far
        await ann.send_text(conv, "and again")
        await _answer(ann, conv)
        roles = [m["role"] for m in model.requests[1]["json"]["messages"]]
        assert roles == ["system", "user", "assistant", "user"]
        m = w.server.metrics.render().decode()
        assert 'berrychat_assistant_answers_total{result="ok"} 2' in m
    finally:
        await _stop(w)


async def test_answers_mentions_in_groups_only(sqlite_db, model):
    w = await _world(sqlite_db, model.base_url, api_key="k-123", context_messages=2)
    try:
        _, _, ann = await w.user("ann")
        _, _, bob = await w.user("bob")
        assert ann is not None and bob is not None
        conv = (
            await ann.request(
                "conv.create", kind="group", members=["bob", "assistant"], title="team"
            )
        )["conv"]
        bot_id = w.server.assistant.user_id
        await ann.send_text(conv, "lunch at noon?")
        await bob.send_text(conv, "sure")
        await asyncio.sleep(0.3)
        assert model.requests == []  # not mentioned: silent
        await bob.send_text(conv, "what is 2+2?", mentions=[bot_id])
        ans = await _answer(ann, conv)
        assert ans["from"] == bot_id and ans["text"] == "Hello there, Ann!"
        req = model.requests[0]
        assert req["headers"]["authorization"] == "Bearer k-123"
        msgs = req["json"]["messages"]
        # context limit: the system prompt and the last 2 messages, named in a group
        assert [m["content"] for m in msgs[1:]] == ["bob: sure", "bob: what is 2+2?"]
        q = await ann.send_text(conv, "@Assistant say hi")  # a written mention works too
        await _answer(bob, conv, q["seq"])
        assert len(model.requests) == 2
    finally:
        await _stop(w)


@pytest.mark.parametrize(
    ("mode", "code", "needle"),
    [
        ("error", "http_error", "model not loaded"),
        ("slow", "timeout", "did not answer in time"),
        ("drop", "cut_off", "cut off"),
    ],
)
async def test_model_failures_become_a_clear_message(sqlite_db, model, mode, code, needle):
    model.mode = mode
    w = await _world(sqlite_db, model.base_url, first_token_timeout_seconds=0.5)
    try:
        _, _, ann = await w.user("ann")
        assert ann is not None
        conv = (await ann.request("conv.create", kind="direct", members=["assistant"]))["conv"]
        await ann.send_text(conv, "are you there?")
        ans = await _answer(ann, conv)
        assert ans["error"] == code and needle in ans["text"]
        if mode == "drop":  # what arrived before the cut is kept
            assert ans["text"].startswith("Hello there")
        h = await ann.request("history", conv=conv)
        assert h["messages"][-1]["error"] == code
    finally:
        await _stop(w)


async def test_unreachable_model_and_rate_limit(sqlite_db):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w = await _world(sqlite_db, f"http://127.0.0.1:{port}/v1", rate_per_user=1)
    try:
        _, _, ann = await w.user("ann")
        assert ann is not None
        conv = (await ann.request("conv.create", kind="direct", members=["assistant"]))["conv"]
        await ann.send_text(conv, "hi")
        ans = await _answer(ann, conv)
        assert ans["error"] == "unreachable" and "cannot be reached" in ans["text"]
        await ann.send_text(conv, "hi again")
        ans = await _answer(ann, conv)
        assert ans["error"] == "rate_limited"
        await ann.send_text(conv, "and again")  # told once per window, then silence
        await asyncio.sleep(0.3)
        assert not [e for e in ann.drain_events() if e["type"] == "msg" and e.get("bot")]
    finally:
        await _stop(w)


async def test_assistant_name_taken_by_a_person_is_a_config_error(sqlite_db, model):
    from berrychat.config import ConfigError
    from berrychat.server import Server

    w = await start_world(make_settings(sqlite_db))
    try:
        await w.user("helper")
    finally:
        await _stop(w)
    s = make_settings(
        sqlite_db, ai={"enabled": True, "base_url": model.base_url, "username": "helper"}
    )
    srv = Server(s)
    with pytest.raises(ConfigError) as e:
        await srv.start()
    assert e.value.key == "ai.username"
    await srv.stop(drain_seconds=0.1)


async def test_client_reads_a_plain_json_answer_and_eof_framed_streams(model):
    """A server that ignores "stream" and answers with one JSON body still works; a stream
    framed by closing the connection is complete with [DONE] and cut off without it."""
    model.mode = "json"
    c = ChatCompletions(AiSettings(base_url=model.base_url))
    out = [p async for p in c.stream([{"role": "user", "content": "x"}])]
    assert "".join(out) == "Hello there, Ann!"
    model.mode = "eof"
    out = [p async for p in c.stream([{"role": "user", "content": "x"}])]
    assert "".join(out) == "Hello there, Ann!"
    model.mode = "eof_drop"
    got = []
    with pytest.raises(AssistantError) as e:
        async for p in c.stream([{"role": "user", "content": "x"}]):
            got.append(p)
    assert e.value.code == "cut_off" and "".join(got) == "Hello there"
    model.mode = "slow"
    c = ChatCompletions(AiSettings(base_url=model.base_url, first_token_timeout_seconds=0.2))
    with pytest.raises(AssistantError) as e:
        async for _ in c.stream([{"role": "user", "content": "x"}]):
            pass
    assert e.value.code == "timeout"


async def test_one_answer_per_question_across_processes(sqlite_db, redis_server, model):
    """Two processes with the assistant enabled share Redis: one account, one answer."""
    from berrychat.server import Server

    s = make_settings(
        sqlite_db,
        redis=redis_server.settings(),
        ai={"enabled": True, "base_url": model.base_url, "stream_interval_seconds": 0.01},
    )
    servers = [Server(s), Server(s)]
    for srv in servers:
        await srv.start()
    w1, w2 = World(servers[0]), World(servers[1])
    try:
        assert servers[0].assistant.user_id == servers[1].assistant.user_id
        _, _, ann = await w1.user("ann")
        ann2 = await w2.connect((await login(w2.host, w2.port, "ann", PASSWORD, "d2"))["token"])
        assert ann is not None
        conv = (await ann.request("conv.create", kind="direct", members=["assistant"]))["conv"]
        q = await ann.send_text(conv, "one question")
        ans = await _answer(ann, conv, q["seq"])
        assert ans["text"] == "Hello there, Ann!"
        assert (await _answer(ann2, conv, q["seq"]))["text"] == ans["text"]  # other process
        await asyncio.sleep(0.5)
        assert len(model.requests) == 1
        h = await ann.request("history", conv=conv)
        assert [m["text"] for m in h["messages"] if m.get("bot")] == ["Hello there, Ann!"]
    finally:
        for w in (w1, w2):
            await w.close()
        for srv in servers:
            await srv.stop(drain_seconds=0.2)
