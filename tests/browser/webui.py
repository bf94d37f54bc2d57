"""Shared pieces of the browser tests: the server subprocess, page bookkeeping and UI steps."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

CHROMIUM = os.environ.get("BERRYCHAT_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A fake microphone (and camera) for voice messages, granted without a prompt; media may
    # play without a user gesture (the played receipt test starts playback from a script).
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
# Generous: the shared 2-core test machine is often loaded.
TIMEOUT_MS = 30_000
expect.set_options(timeout=TIMEOUT_MS)

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
PASSWORD = "correct horse battery"


class ServerProcess:
    """`python -m berrychat serve` with a temporary config; the port is read from its log."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.config = workdir / "config.json"
        self.config.write_text(
            json.dumps(
                {
                    "server": {"host": "127.0.0.1", "port": 0},
                    "database": {"type": "sqlite", "database": str(workdir / "chat.db")},
                    # Cheap hashes for tests (same keys as production, see docs/server.md).
                    "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 64},
                    "presence": {"throttle_seconds": 0.2},
                    # Small file limit: the refusal test stays cheap (test_media.py).
                    "uploads": {"max_file_bytes": 2_000_000},
                    # Every test user comes from 127.0.0.1: no per-IP/per-user rate limits.
                    "limits": {
                        "registrations_per_ip": 0,
                        "logins_per_ip": 0,
                        "logins_per_user": 0,
                        "messages_per_ip": 0,
                        "messages_per_user": 0,
                    },
                }
            )
        )
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0, timeout: float = 60.0) -> None:
        cmd = [sys.executable, "-m", "berrychat", "--log-level", "INFO", "serve"]
        cmd += ["--config", str(self.config)]
        if port:
            cmd += ["--port", str(port)]
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        found = threading.Event()
        proc = self.proc

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.log.append(line.rstrip())
                m = re.search(r"listening on [^ ]+:(\d+)", line)
                if m and not found.is_set():
                    self.port = int(m.group(1))
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(timeout) or not self.port or proc.poll() is not None:
            self.stop()
            raise RuntimeError("berrychat serve did not start:\n" + "\n".join(self.log[-30:]))

    def stop(self, timeout: float = 20.0) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # drain: WebSockets close with 1001
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self.proc = None
        return p.returncode

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", "Bearer " + token)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")

    def make_user(self, prefix: str) -> tuple[str, str]:
        """Register a user over HTTP; returns (username, token of device 'test')."""
        name = f"{prefix}{uuid.uuid4().hex[:6]}"
        self.api("POST", "/api/v1/register", {"username": name, "password": PASSWORD})
        tok = self.api(
            "POST",
            "/api/v1/login",
            {"username": name, "password": PASSWORD, "device_id": "test"},
        )["token"]
        return name, tok


class Pages:
    """Opens pages in fresh browser contexts; closes them and checks for uncaught page errors."""

    def __init__(self, browser: Browser, server: ServerProcess) -> None:
        self.browser = browser
        self.server = server
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []

    def new(self, **ctx: Any) -> Page:
        ctx.setdefault("viewport", {"width": 1100, "height": 720})
        c = self.browser.new_context(**ctx)
        c.set_default_timeout(TIMEOUT_MS)
        self.contexts.append(c)
        page = c.new_page()
        page.on("pageerror", lambda e: self.errors.append(f"{e}"))
        return page

    def close(self) -> None:
        for c in self.contexts:
            with contextlib.suppress(Exception):
                c.close()


# ---- UI steps ----------------------------------------------------------------------------
def open_app(page: Page, server: ServerProcess) -> None:
    page.goto(server.url + "/")
    expect(page.locator("#login-form")).to_be_visible()


def register(page: Page, server: ServerProcess, prefix: str, display: str = "") -> str:
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    open_app(page, server)
    page.get_by_role("button", name="Create an account").click()
    page.get_by_label("User name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Display name").fill(display or name.capitalize())
    page.locator("#login-submit").click()
    wait_online(page)
    return name


def login(page: Page, server: ServerProcess, name: str) -> None:
    open_app(page, server)
    page.get_by_label("User name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.locator("#login-submit").click()
    wait_online(page)


def wait_online(page: Page) -> None:
    expect(page.locator("#app-view")).to_be_visible()
    expect(page.locator("#me-state")).to_have_text("online")


def start_direct(page: Page, peer: str, title: str = "") -> None:
    page.get_by_role("button", name="New chat").click()
    page.locator("#nc-members").fill(peer)
    page.get_by_role("button", name="Start chat").click()
    expect(page.locator("#new-chat-dialog")).to_be_hidden()
    expect(page.locator("#chat-title")).to_have_text(title or re.compile(f"^{peer}$", re.I))


def direct_chat(
    pages: Pages, server: ServerProcess, a: str = "Ann", b: str = "Bob"
) -> tuple[Page, Page, str]:
    """Two people register in two browser contexts and the first opens a 1:1 chat with the
    second. Returns (a's page, b's page, b's user name)."""
    a_page = pages.new()
    b_page = pages.new()
    register(a_page, server, a.lower(), a)
    b_name = register(b_page, server, b.lower(), b)
    start_direct(a_page, b_name, b)
    return a_page, b_page, b_name


def send(page: Page, text: str) -> None:
    page.locator("#input").fill(text)
    page.locator("#input").press("Enter")
    expect(page.locator("#input")).to_have_value("")


def message(page: Page, text: str) -> Locator:
    return page.locator("#messages li.msg", has=page.locator(".text", has_text=text))


def conv_item(page: Page, title: str) -> Locator:
    return page.locator("#conv-list li", has=page.locator(".conv-title", has_text=title))


def screenshot(page: Page, name: str) -> None:
    """Screenshots of the main views. They go to docs/screenshots/ (committed, shown in the
    README) only with BERRYCHAT_SCREENSHOTS=1, so that ordinary test runs leave the tree clean."""
    if os.environ.get("BERRYCHAT_SCREENSHOTS") == "1":
        out = SCREENSHOTS
    else:
        out = Path(tempfile.gettempdir()) / "berrychat-screenshots"
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / f"{name}.png"), animations="disabled")


def wait_until(fn: Callable[[], bool], timeout: float = TIMEOUT_MS / 1000, what: str = "") -> None:
    """Poll a condition outside the page (server state), bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or fn}")
