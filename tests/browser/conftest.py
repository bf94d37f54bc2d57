"""Browser tests of the web client: Debian's Chromium driven by Playwright (Python) against a
real `berrychat serve` subprocess on a free loopback port with a temporary SQLite database.

Playwright never downloads a browser here: it launches /usr/bin/chromium (override with
BERRYCHAT_CHROMIUM) with the flags from ../shared/docs/test-environment.md. Each `launch` gets a
fresh temporary profile (Playwright's own --user-data-dir), each test fresh browser contexts.
Every wait is bounded (expect/locator timeouts below); nothing sleeps to assert.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright
from webui import CHROMIUM, FLAGS, Pages, ServerProcess


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("berrychat"))
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (tests never download one)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS, timeout=120_000)
        yield b
        b.close()


@pytest.fixture
def pages(browser: Browser, server: ServerProcess) -> Iterator[Pages]:
    p = Pages(browser, server)
    yield p
    p.close()
    assert not p.errors, f"uncaught errors in the page: {p.errors}"
