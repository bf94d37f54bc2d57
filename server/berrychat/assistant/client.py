"""The client of an OpenAI-compatible chat-completions API (`POST <base_url>/chat/completions`
with `"stream": true`): OpenAI, llama.cpp's server, Ollama, vLLM, LocalAI...

The streamed answer is server-sent events: `data: {json}` lines, each with
`choices[0].delta.content`, ended by `data: [DONE]` (or by the end of the body). A server that
ignores `stream` and answers with one JSON body is accepted too.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from ..bots.http_client import HttpClientError, request
from ..config import AiSettings


class AssistantError(Exception):
    """The model could not answer. `code`: unreachable | timeout | http_error | bad_response
    | cut_off."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def endpoint(base_url: str) -> str:
    return base_url.rstrip("/") + "/chat/completions"


class ChatCompletions:
    def __init__(self, settings: AiSettings) -> None:
        self.s = settings
        self.url = endpoint(settings.base_url)

    async def stream(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        """Yield the answer's text pieces as they arrive; raise AssistantError."""
        s = self.s
        body = json.dumps(
            {
                "model": s.model,
                "messages": messages,
                "stream": True,
                "max_tokens": s.max_tokens,
                "temperature": s.temperature,
            }
        ).encode()
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if s.api_key:
            headers["Authorization"] = f"Bearer {s.api_key}"
        deadline = time.monotonic() + s.total_timeout_seconds

        def left(t: float) -> float:
            rest = deadline - time.monotonic()
            if rest <= 0:
                raise AssistantError(
                    "timeout", f"the answer took longer than {s.total_timeout_seconds:g} s"
                )
            return min(t, rest)

        try:
            resp = await request(
                "POST",
                self.url,
                body=body,
                headers=headers,
                connect_timeout=s.connect_timeout_seconds,
                head_timeout=left(s.first_token_timeout_seconds),
            )
        except HttpClientError as e:
            raise _translate(e, started=False) from None
        got_any = False
        try:
            if resp.status != 200:
                detail = await _error_detail(resp)
                raise AssistantError("http_error", f"HTTP {resp.status}{detail}")
            ctype = resp.headers.get("content-type", "")
            if "event-stream" not in ctype:
                raw = await resp.read(left(s.first_token_timeout_seconds), 4 << 20)
                text = _whole_answer(raw)
                if text:
                    yield text
                return
            async for line in resp.lines(
                left(s.first_token_timeout_seconds), s.idle_timeout_seconds
            ):
                left(1.0)  # the total time limit, checked between lines
                if not line.startswith(b"data:"):
                    continue  # comments (":"), "event:", "id:", blank separators
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    obj = json.loads(data)
                except ValueError:
                    raise AssistantError("bad_response", "the model sent invalid JSON") from None
                if isinstance(obj, dict) and obj.get("error"):
                    raise AssistantError("http_error", f"the model reported: {_msg(obj)}")
                piece = _delta(obj)
                if piece:
                    got_any = True
                    yield piece
            if not resp._chunked and resp._left is None:
                # EOF framing: a dropped connection looks like the end; [DONE] never came
                raise AssistantError("cut_off", "the model server closed the connection")
        except HttpClientError as e:
            raise _translate(e, started=got_any) from None
        finally:
            resp.close()


def _translate(e: HttpClientError, started: bool) -> AssistantError:
    if e.code == "timeout":
        return AssistantError("timeout", e.message)
    if e.code == "connect":
        return AssistantError("unreachable", e.message)
    if e.code == "closed":
        return AssistantError("cut_off" if started else "unreachable", e.message)
    return AssistantError("bad_response", e.message)


async def _error_detail(resp: Any) -> str:
    try:
        raw = await resp.read(5.0, 4096)
    except HttpClientError:
        return ""
    try:
        return f": {_msg(json.loads(raw))}"
    except ValueError:
        text = raw.decode("utf-8", "replace").strip()
        return f": {text[:200]}" if text else ""


def _msg(obj: Any) -> str:
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)[:200]
    return str(err or obj)[:200]


def _delta(obj: Any) -> str:
    try:
        choice = obj["choices"][0]
    except (KeyError, IndexError, TypeError):
        return ""
    if not isinstance(choice, dict):
        return ""
    d = choice.get("delta") or choice.get("message") or {}
    c = d.get("content") if isinstance(d, dict) else None
    return c if isinstance(c, str) else ""


def _whole_answer(raw: bytes) -> str:
    try:
        obj = json.loads(raw)
    except ValueError:
        raise AssistantError("bad_response", "the model's answer is not JSON") from None
    if isinstance(obj, dict) and obj.get("error"):
        raise AssistantError("http_error", f"the model reported: {_msg(obj)}")
    return _delta(obj)
