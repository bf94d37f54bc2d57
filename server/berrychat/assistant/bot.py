"""The built-in AI assistant: a bot account that answers in the chat.

When it answers: in a direct conversation with it, every message; in a group it was added to,
messages that mention it (`mentions` holds its id, or the text says `@<username>`).

How an answer reaches the chat (docs/protocol.md, "Assistant"): while the model streams, the
members get `msg.stream` pushes with the whole text so far (`sid` names the answer; at most one
push per `ai.stream_interval_seconds`; not stored, lost pushes do not matter because each one
carries the full text). When the stream ends, the answer is committed as an ordinary durable
`text` message with `"bot": true` and `"stream": <sid>`, which replaces the streamed bubble.
Failures (model unreachable, timeout, HTTP error, connection dropped mid-answer) end as a
durable message that says what went wrong, with `"error": <code>`.

Answers run on the process that committed the question (once per question cluster-wide).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any

from ..config import ConfigError
from ..metrics import LabeledCounter, Metrics
from ..protocol.codes import ChatError
from ..protocol.frames import encode
from ..store import Op, StoreError
from .client import AssistantError, ChatCompletions

log = logging.getLogger(__name__)

BOT_PASSWORD_HASH = "!bot"  # no password can match: bot accounts never log in

ERROR_TEXT = {
    "unreachable": "⚠️ The assistant is unavailable: the model server cannot be reached.",
    "timeout": "⚠️ The assistant did not answer in time.",
    "http_error": "⚠️ The model server returned an error.",
    "bad_response": "⚠️ The model server sent an answer the assistant could not read.",
    "cut_off": "⚠️ The answer was cut off: the model server closed the connection.",
    "rate_limited": "⏳ Too many questions right now; please ask again in a minute.",
}


class Assistant:
    def __init__(self, settings: Any, chat: Any, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.cfg = settings.ai
        self.chat = chat
        self.client = ChatCompletions(self.cfg)
        self.user_id = 0
        self.username = self.cfg.username
        self._mention = re.compile(rf"(?<![\w@])@{re.escape(self.username)}\b", re.IGNORECASE)
        self._sem = asyncio.Semaphore(self.cfg.max_concurrent)
        self._tasks: set[asyncio.Task] = set()
        self._noticed: dict[tuple[str, int], int] = {}
        self.answers = LabeledCounter(
            "berrychat_assistant_answers_total", "assistant answers by result", "result"
        )
        if metrics is not None:
            metrics._all.append(self.answers)

    async def start(self) -> None:
        """Find or create the assistant's account (role "bot")."""
        store = self.chat.store
        u = await store.get_user_by_name(self.username)
        if u is None:
            try:
                u = await store.create_user(
                    self.username, BOT_PASSWORD_HASH, self.cfg.display_name, "bot"
                )
            except StoreError:  # another process created it first
                u = await store.get_user_by_name(self.username)
        if u is None or u["role"] != "bot":
            raise ConfigError(
                "ai.username", f"{self.username!r} is a person's account: choose another name"
            )
        self.user_id = u["id"]
        self.chat.event_hooks.append(self.on_event)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)

    # ---- deciding to answer --------------------------------------------------------------
    def on_event(self, ev: dict[str, Any], members: Sequence[int]) -> None:
        """A committed stream event and the members it was published to."""
        me = self.user_id
        if not me or ev.get("kind") != "text" or ev.get("from") == me or ev.get("bot"):
            return
        if me not in members:
            return
        mentioned = me in (ev.get("mentions") or ()) or bool(
            self._mention.search(ev.get("text", ""))
        )
        t = asyncio.get_running_loop().create_task(self._maybe_answer(ev, mentioned))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _maybe_answer(self, ev: dict[str, Any], mentioned: bool) -> None:
        try:
            conv = await self.chat.get_conversation(self.user_id, ev["conv"])
            if conv["kind"] != "direct" and not mentioned:
                return
            if not await self._allowed(ev):
                return
            async with self._sem:
                await self._answer(ev, conv)
        except asyncio.CancelledError:
            raise
        except ChatError as e:
            log.warning("assistant skipped a question: %s", e.message)
        except Exception:
            log.exception("assistant failed")

    async def _allowed(self, ev: dict[str, Any]) -> bool:
        cfg, state = self.cfg, self.chat.state
        window = cfg.rate_window_seconds
        checks = (
            ("ai_user", ev["from"], cfg.rate_per_user),
            ("ai_conv", ev["conv"], cfg.rate_per_conversation),
        )
        for name, key, limit in checks:
            if limit and not await state.hit(name, key, limit, window):
                self.answers.inc("rate_limited")
                w = int(time.time() // window)
                if self._noticed.get((name, key)) != w:  # say it once per window
                    self._noticed[(name, key)] = w
                    if len(self._noticed) > 10000:
                        self._noticed.clear()
                    await self._post(
                        ev, ERROR_TEXT["rate_limited"], secrets.token_hex(6), "rate_limited"
                    )
                return False
        return True

    # ---- answering -----------------------------------------------------------------------
    async def _context(self, ev: dict[str, Any], conv: dict[str, Any]) -> list[dict[str, str]]:
        cfg = self.cfg
        h = await self.chat.history(self.user_id, ev["conv"], None, None, cfg.context_messages)
        msgs = [
            m
            for m in h["messages"]
            if m.get("kind") == "text" and m.get("text") and not m.get("error")
        ]
        if not msgs or msgs[-1]["seq"] < ev["seq"]:  # a lagging read: the question first
            msgs = [m for m in msgs if m["seq"] < ev["seq"]] + [ev]
        names = {m["user"]: m.get("display_name") or m["username"] for m in conv["members"]}
        group = conv["kind"] != "direct"
        budget = cfg.context_tokens * 4  # characters, at ~4 per token
        budget -= len(cfg.system_prompt)
        out: list[dict[str, str]] = []
        for m in reversed(msgs):
            if m["from"] == self.user_id:
                item = {"role": "assistant", "content": m["text"]}
            else:
                text = m["text"]
                if group:
                    text = f"{names.get(m['from'], 'someone')}: {text}"
                item = {"role": "user", "content": text}
            budget -= len(item["content"])
            if budget < 0 and out:
                break
            out.append(item)
        out.reverse()
        return [{"role": "system", "content": cfg.system_prompt}, *out]

    async def _answer(self, ev: dict[str, Any], conv: dict[str, Any]) -> None:
        sid = secrets.token_hex(6)
        members = [m["user"] for m in conv["members"]]
        conv_id = ev["conv"]

        def push(text: str) -> None:
            frame = {
                "type": "msg.stream",
                "conv": conv_id,
                "sid": sid,
                "from": self.user_id,
                "reply_to": ev["seq"],
                "text": text,
            }
            self.chat.sink.publish(members, encode(frame))

        push("")  # "the assistant is typing"
        parts: list[str] = []
        last_push = time.monotonic()
        pushed = 0
        error: AssistantError | None = None
        try:
            messages = await self._context(ev, conv)
            async for piece in self.client.stream(messages):
                parts.append(piece)
                now = time.monotonic()
                if now - last_push >= self.cfg.stream_interval_seconds:
                    last_push = now
                    pushed += 1
                    push("".join(parts))
        except AssistantError as e:
            error = e
        text = "".join(parts).strip()
        if error is None and not text:
            error = AssistantError("bad_response", "the model returned an empty answer")
        if error is not None:
            log.warning("assistant: %s (%s)", error.message, error.code)
            self.answers.inc(error.code)
            note = ERROR_TEXT.get(error.code, ERROR_TEXT["http_error"])
            detail = f" ({error.message})" if error.code != "cut_off" else ""
            text = f"{text}\n\n{note}{detail}" if text else f"{note}{detail}"
        else:
            self.answers.inc("ok")
        await self._post(ev, text, sid, error.code if error else None)

    async def _post(self, ev: dict[str, Any], text: str, sid: str, error: str | None) -> None:
        limit = self.settings.limits.max_text_chars
        if len(text) > limit:
            text = text[: limit - 1] + "…"
        extra: dict[str, Any] = {"bot": True, "stream": sid}
        if error:
            extra["error"] = error
        op = Op(
            "text", ev["conv"], self.user_id, f"ai-{sid}", text=text, target=ev["seq"], extra=extra
        )
        await self.chat.apply(op)
