"""Keyboard-only use, and group chats."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect
from webui import (
    PASSWORD,
    Pages,
    ServerProcess,
    conv_item,
    login,
    message,
    open_app,
    screenshot,
    send,
    wait_online,
    wait_until,
)


def tab_to(page: Page, selector: str, limit: int = 30) -> None:
    """Press Tab until `selector` has the focus (bounded)."""
    for _ in range(limit):
        if page.evaluate("s => document.activeElement?.matches(s) ?? false", selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{selector} never got the focus with Tab")


def test_keyboard_only(pages: Pages, server: ServerProcess) -> None:
    gus, _ = server.make_user("gus")
    hal, hal_token = server.make_user("hal")
    page = pages.new()
    open_app(page, server)
    # The user-name field has the focus; log in with the keyboard alone.
    page.keyboard.type(gus)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    wait_online(page)
    # New chat -> dialog (focus in the name field) -> Enter starts it -> focus in the composer.
    tab_to(page, "#new-chat")
    page.keyboard.press("Enter")
    expect(page.locator("#nc-members")).to_be_focused()
    page.keyboard.type(hal)
    page.keyboard.press("Enter")
    expect(page.locator("#input")).to_be_focused()
    page.keyboard.type("typed, never clicked")
    page.keyboard.press("Enter")
    expect(message(page, "typed, never clicked").locator(".mark")).to_have_attribute(
        "aria-label", re.compile("Sent|Delivered|Read")
    )
    # Emoji picker by keyboard: open it, move with the arrows, pick with Enter.
    tab_to(page, "#emoji-btn")
    page.keyboard.press("Enter")
    expect(page.locator("#emoji-picker button").first).to_be_focused()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    expect(page.locator("#input")).to_be_focused()
    expect(page.locator("#input")).to_have_value("😂")
    page.keyboard.press("Enter")
    expect(message(page, "😂")).to_be_visible()
    # Message menu by keyboard: Tab to a message's actions, arrows, Escape returns the focus.
    # Message actions by keyboard: one of them is in the Tab order (the newest message's),
    # the arrow keys move between messages, Escape closes the menu and returns the focus.
    expect(page.locator("#input")).to_be_focused()
    newest = message(page, "😂").get_by_role("button", name=re.compile("Actions"))
    # acknowledged (a pending message has no actions yet) and so the one in the Tab order
    expect(newest).to_have_attribute("tabindex", "0")
    for _ in range(4):  # back over the emoji, voice-recording and attach buttons
        page.keyboard.press("Shift+Tab")
    expect(newest).to_be_focused()
    page.keyboard.press("ArrowUp")
    more = message(page, "typed, never clicked").get_by_role("button", name=re.compile("Actions"))
    expect(more).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("menu")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("menu")).to_be_hidden()
    expect(more).to_be_focused()

    # The server stored both messages (seen through the HTTP API as the other user).
    def stored() -> list[str]:
        convs = server.api("GET", "/api/v1/conversations", token=hal_token)["conversations"]
        if not convs:
            return []
        h = server.api("GET", f"/api/v1/conversations/{convs[0]['conv']}/messages", token=hal_token)
        return [m.get("text") for m in h["messages"] if m["kind"] == "text"]

    wait_until(lambda: stored() == ["typed, never clicked", "😂"], what="the stored messages")


def test_group_chat_and_scroll_back(pages: Pages, server: ServerProcess) -> None:
    ivy, ivy_token = server.make_user("ivy")
    jon, _ = server.make_user("jon")
    kim, kim_token = server.make_user("kim")
    page = pages.new()
    login(page, server, ivy)
    page.get_by_role("button", name="New chat").click()
    page.get_by_role("radio", name="Group").check()
    page.locator("#nc-members").fill(f"{jon}, {kim}")
    page.get_by_label("Group name").fill("Pi club 🥧")
    page.get_by_role("button", name="Start chat").click()
    expect(page.locator("#chat-title")).to_have_text("Pi club 🥧")
    expect(page.locator("#chat-sub")).to_have_text("3 members")
    expect(page.locator("#messages li.sys").first).to_contain_text("created the group")
    send(page, "welcome, both")

    # Kim posts 120 messages through the HTTP API (a bot, say); the open chat gets them live.
    conv = server.api("GET", "/api/v1/conversations", token=kim_token)["conversations"][0]["conv"]
    for i in range(120):
        server.api(
            "POST",
            f"/api/v1/conversations/{conv}/messages",
            {"cid": f"bot-{i}", "text": f"bot line {i:03d}"},
            token=kim_token,
        )
    expect(message(page, "bot line 119")).to_be_visible()
    expect(message(page, "bot line 000").locator(".who")).to_have_text(kim)
    expect(message(page, "bot line 119").locator(".sr")).to_have_text(kim)
    # A fresh session of Ivy loads only the newest page, then scrolls back through history.
    page2 = pages.new()
    login(page2, server, ivy)
    conv_item(page2, "Pi club").get_by_role("button").click()
    expect(message(page2, "bot line 119")).to_be_visible()
    expect(message(page2, "bot line 000")).to_have_count(0)
    older = page2.get_by_role("button", name="Load older messages")
    for attempt in range(6):
        if message(page2, "welcome, both").count():
            break
        shown = page2.locator("#messages li").count()
        if attempt == 0:  # by keyboard
            older.focus()
            page2.keyboard.press("Enter")
        else:  # by scrolling to the top
            page2.locator("#scroller").evaluate("e => { e.scrollTop = 0; }")
        page2.wait_for_function(
            "n => document.querySelectorAll('#messages li').length > n", arg=shown
        )
    expect(message(page2, "welcome, both")).to_have_count(1)
    expect(message(page2, "bot line 000")).to_have_count(1)
    seqs = page2.locator("#messages li[data-seq]").evaluate_all(
        "els => els.map(e => Number(e.dataset.seq))"
    )
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    page2.locator("#scroller").evaluate("e => { e.scrollTop = 0; }")
    screenshot(page2, "group-chat")
    assert ivy_token
