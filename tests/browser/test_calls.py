"""A real WebRTC call between two browser contexts through the server's call signalling:
Ann calls, Bob's browser rings and accepts, both peer connections reach "connected" (host
candidates on loopback, Chromium's fake camera and microphone), Ann hangs up; a second call is
declined. The call records appear in the history."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect
from webui import (
    CHROMIUM,
    FLAGS,
    Pages,
    ServerProcess,
    direct_chat,
    screenshot,
    send,
)

MEDIA_FLAGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


@pytest.fixture(scope="module")
def media_browser(browser: Browser) -> Iterator[Browser]:
    """A browser with a fake camera and microphone, granted without a prompt."""
    args = FLAGS + [f for f in MEDIA_FLAGS if f not in FLAGS]
    b = browser.browser_type.launch(
        executable_path=CHROMIUM, headless=True, args=args, timeout=120_000
    )
    yield b
    b.close()


def test_video_call_connects_then_hang_up_and_decline(
    media_browser: Browser, server: ServerProcess
) -> None:
    pages = Pages(media_browser, server)
    try:
        ann_page, bob_page, bob = direct_chat(pages, server)
        send(ann_page, "Calling you in a second")

        ann_page.get_by_role("button", name="Video call").click()
        bob_panel = bob_page.locator("#call-panel")
        expect(bob_panel).to_be_visible()
        expect(bob_page.locator("#call-status")).to_have_text("Incoming video call")
        expect(bob_page.locator("#call-peer")).to_have_text("📹 Ann")
        expect(ann_page.locator("#call-status")).to_have_text("Ringing…")
        bob_page.get_by_role("button", name="Accept").click()

        for page in (ann_page, bob_page):
            expect(page.locator("#call-panel")).to_have_attribute("data-state", "connected")
            expect(page.locator("#call-status")).to_have_text(re.compile(r"^Connected"))
        # the peer connections really are connected, and media arrives
        for page in (ann_page, bob_page):
            assert page.evaluate("window.__berryCall().pc") == "connected"
            page.wait_for_function(
                "() => { const v = document.getElementById('call-remote');"
                " return v.srcObject && v.srcObject.getTracks().length > 0; }"
            )

        screenshot(bob_page, "call")
        ann_page.get_by_role("button", name="Hang up").click()
        expect(bob_page.locator("#call-status")).to_have_text("Call ended")
        expect(ann_page.locator("#call-panel")).to_have_attribute("data-state", "ended")
        assert ann_page.evaluate("window.__berryCall()") is None
        record = ann_page.locator("#messages li.sys", has_text="Outgoing video call")
        expect(record).to_be_visible()

        # a second call, declined by Bob
        ann_page.get_by_role("button", name="Voice call").click()
        expect(bob_page.locator("#call-status")).to_have_text("Incoming voice call")
        bob_page.get_by_role("button", name="Decline").click()
        expect(ann_page.locator("#call-status")).to_have_text("Call declined")
        expect(ann_page.locator("#messages li.sys", has_text="Declined voice call")).to_be_visible()
    finally:
        pages.close()
    assert not pages.errors, f"uncaught errors in the page: {pages.errors}"
