"""The AI assistant in the web client: a mention in a group is answered by a fake
OpenAI-compatible model server (streaming, like llama.cpp/Ollama); the answer grows in place
while it streams, then becomes a stored message with a bot badge."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect
from webui import Pages, ServerProcess, login, message, screenshot, send

TOKENS = ["A ", "Raspberry ", "Pi ", "is ", "a ", "small ", "single-board ", "computer."]
ANSWER = "".join(TOKENS).strip()


class _Model(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Model.requests.append({"path": self.path, "json": json.loads(body)})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for tok in TOKENS:
            ev = {"choices": [{"index": 0, "delta": {"content": tok}}]}
            self._chunk(f"data: {json.dumps(ev)}\n\n".encode())
            time.sleep(0.3)  # slow enough to see the answer grow
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def model() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Model)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def ai_server(tmp_path_factory: pytest.TempPathFactory, model: str) -> Iterator[ServerProcess]:
    s = ServerProcess(Path(tmp_path_factory.mktemp("berrychat-ai")))
    cfg = json.loads(s.config.read_text())
    cfg["ai"] = {
        "enabled": True,
        "base_url": model,
        "model": "tiny",
        "stream_interval_seconds": 0.05,
    }
    s.config.write_text(json.dumps(cfg))
    s.start()
    yield s
    s.stop()


def test_assistant_answers_a_mention_streaming(browser: Browser, ai_server: ServerProcess) -> None:
    pages = Pages(browser, ai_server)
    try:
        name, token = ai_server.make_user("ann")
        conv = ai_server.api(
            "POST",
            "/api/v1/conversations",
            {"kind": "group", "members": ["assistant"], "title": "Study group"},
            token=token,
        )["conv"]
        page = pages.new()
        login(page, ai_server, name)
        page.locator("#conv-list li", has_text="Study group").locator("button").click()
        expect(page.locator("#chat-title")).to_have_text("Study group")
        send(page, "Hi all")
        time.sleep(0.3)
        assert _Model.requests == []  # no mention: the assistant stays quiet
        # record every text the streamed bubble shows, as the page draws it
        page.evaluate(
            """() => {
              window.__seen = [];
              new MutationObserver(() => {
                const t = document.querySelector('#messages li.streaming .text');
                if (t) window.__seen.push(t.textContent);
              }).observe(document.getElementById('messages'),
                         {subtree: true, childList: true, characterData: true});
            }"""
        )
        send(page, "@assistant what is a Raspberry Pi?")
        streaming = page.locator("#messages li.streaming")
        expect(streaming.locator(".bot-badge")).to_have_text("bot")
        final = message(page, ANSWER)
        expect(final).to_be_visible()
        expect(final.locator(".bot-badge")).to_be_visible()
        expect(streaming).to_have_count(0)
        screenshot(page, "assistant")
        seen = [t for t in page.evaluate("window.__seen") if t != "…"]
        partial = [t for t in seen if t and ANSWER.startswith(t.strip()) and t.strip() != ANSWER]
        assert len(set(partial)) >= 2, seen  # it grew in place, piece by piece
        req = _Model.requests[-1]
        assert req["path"] == "/v1/chat/completions" and req["json"]["stream"] is True
        assert req["json"]["messages"][-1]["content"].endswith("@assistant what is a Raspberry Pi?")
        # durable: still there after a reload
        page.reload()
        page.locator("#conv-list li", has_text="Study group").locator("button").click()
        expect(message(page, ANSWER).locator(".bot-badge")).to_be_visible()
        assert conv > 0
    finally:
        pages.close()
    assert not pages.errors, f"uncaught errors in the page: {pages.errors}"
