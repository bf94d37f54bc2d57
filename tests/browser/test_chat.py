"""Two people chat in two browser contexts against a real server."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect
from webui import (
    Pages,
    ServerProcess,
    conv_item,
    login,
    message,
    register,
    screenshot,
    send,
    start_direct,
    wait_online,
)


def seqs_on_page(page: Page) -> list[int]:
    return [
        int(s)
        for s in page.locator("#messages li[data-seq]").evaluate_all(
            "els => els.map(e => e.dataset.seq).filter(s => s !== '')"
        )
    ]


def test_two_people_chat(pages: Pages, server: ServerProcess) -> None:
    ann_page = pages.new()
    bob_page = pages.new()
    ann = register(ann_page, server, "ann", "Ann")
    bob = register(bob_page, server, "bob", "Bob")

    # A third person puts both in a group (through the HTTP API, like a bot would).
    cy, cy_token = server.make_user("cy")
    group = server.api(
        "POST",
        "/api/v1/conversations",
        {"kind": "group", "members": [ann, bob], "title": "Pi club 🥧"},
        token=cy_token,
    )["conv"]
    server.api(
        "POST",
        f"/api/v1/conversations/{group}/messages",
        {"cid": "g1", "text": "Soldering at six in the lab 🔧"},
        token=cy_token,
    )
    expect(conv_item(bob_page, "Pi club").locator(".conv-last")).to_have_text(
        f"{cy}: Soldering at six in the lab 🔧"
    )

    # Ann starts a 1:1 chat and writes; Bob sees it in his list: unread count, last message,
    # Ann's presence.
    start_direct(ann_page, bob, "Bob")
    send(ann_page, "Hello Bob 👋")
    first = message(ann_page, "Hello Bob 👋")
    expect(first.locator(".mark")).to_have_attribute("aria-label", re.compile("Sent|Delivered"))
    item = conv_item(bob_page, "Ann")
    expect(item.locator(".badge")).to_have_text("1")
    expect(item.locator(".conv-last")).to_have_text("Hello Bob 👋")
    expect(item.locator(".dot")).to_have_class(re.compile("online"))
    expect(item.get_by_role("button")).to_have_attribute("aria-label", re.compile("1 unread"))
    # Bob's device acknowledged delivery.
    expect(first.locator(".mark")).to_have_attribute("aria-label", "Delivered")
    screenshot(bob_page, "conversation-list")

    # Bob opens it: Ann sees the read mark, and the unread badge goes away.
    item.get_by_role("button").click()
    expect(message(bob_page, "Hello Bob 👋")).to_be_visible()
    expect(first.locator(".mark")).to_have_attribute("aria-label", "Read")
    expect(item.locator(".badge")).to_have_count(0)
    expect(ann_page.locator("#chat-sub")).to_have_text("online")

    # Typing indicator, both in the open chat and in the list.
    bob_page.locator("#input").press_sequentially("Hi An")
    expect(ann_page.locator("#typing")).to_have_text("Bob is typing…")
    bob_page.locator("#input").press("n")  # still typing (typing states expire after 6 s)
    expect(conv_item(ann_page, "Bob").locator(".typing-note")).to_have_text("Bob is typing…")

    # Bob replies to Ann's message through the message menu.
    bob_msg = message(bob_page, "Hello Bob 👋")
    bob_msg.get_by_role("button", name=re.compile("Actions for message")).click()
    bob_page.get_by_role("menuitem", name="Reply").click()
    expect(bob_page.locator("#reply-bar")).to_contain_text("Replying to Ann")
    bob_page.locator("#input").fill("Hi Ann! 🍓")
    bob_page.locator("#input").press("Enter")
    reply = message(ann_page, "Hi Ann! 🍓")
    expect(reply.locator(".quote")).to_have_text("You: Hello Bob 👋")
    expect(ann_page.locator("#typing")).to_have_text("")

    # Ann reacts to the reply; Bob sees the reaction and can add his own by clicking the chip.
    reply.get_by_role("button", name=re.compile("Actions for message")).click()
    ann_page.get_by_role("menuitem", name="React with 👍").click()
    chip = message(bob_page, "Hi Ann! 🍓").locator(".chip")
    expect(chip).to_have_text("👍 1")
    chip.click()
    expect(reply.locator(".chip")).to_have_text("👍 2")

    # Ann edits her first message (ArrowUp in the empty composer edits the last one).
    ann_page.locator("#input").focus()
    ann_page.locator("#input").press("ArrowUp")
    expect(ann_page.locator("#input")).to_have_value("Hello Bob 👋")
    ann_page.locator("#input").fill("Hello Bob 👋 (edited)")
    ann_page.locator("#input").press("Enter")
    edited = message(bob_page, "Hello Bob 👋 (edited)")
    expect(edited.locator(".edited")).to_have_text("edited")
    expect(conv_item(bob_page, "Ann").locator(".conv-last")).to_have_text("You: Hi Ann! 🍓")

    # Ann sends a message with the emoji picker, then recalls one.
    ann_page.get_by_role("button", name="Insert emoji").click()
    ann_page.locator("#emoji-picker").get_by_role("button", name="🥧").click()
    expect(ann_page.locator("#input")).to_have_value("🥧")
    ann_page.locator("#input").press_sequentially(" pie at six?")
    ann_page.locator("#input").press("Enter")
    expect(message(bob_page, "🥧 pie at six?")).to_be_visible()
    send(ann_page, "wrong chat, sorry")
    oops = message(ann_page, "wrong chat, sorry")
    expect(message(bob_page, "wrong chat, sorry")).to_be_visible()
    oops.get_by_role("button", name=re.compile("Actions for message")).click()
    ann_page.get_by_role("menuitem", name="Recall").click()
    expect(message(bob_page, "wrong chat, sorry")).to_have_count(0)
    expect(bob_page.locator("#messages li.msg.recalled .text")).to_have_text("Message recalled")
    expect(first.locator(".mark")).to_have_attribute("aria-label", "Read")
    # Both sides hold each event once, in seq order.
    for p in (ann_page, bob_page):
        s = seqs_on_page(p)
        assert s == sorted(set(s)), s
    screenshot(ann_page, "chat")

    # Attachments (test_media.py): the composer offers them.
    expect(ann_page.get_by_role("button", name=re.compile("Attach"))).to_be_enabled()

    # A phone-sized screen: one pane at a time, with a way back.
    phone = pages.new(viewport={"width": 390, "height": 760}, is_mobile=True, has_touch=True)
    login(phone, server, bob)
    expect(conv_item(phone, "Ann")).to_be_visible()
    expect(phone.locator("#chat")).to_be_hidden()
    screenshot(phone, "phone-list")
    conv_item(phone, "Ann").get_by_role("button").click()
    expect(message(phone, "Hi Ann! 🍓")).to_be_visible()
    expect(phone.locator("#sidebar")).to_be_hidden()
    screenshot(phone, "phone-chat")
    phone.get_by_role("button", name="Back to conversations").click()
    expect(conv_item(phone, "Ann")).to_be_visible()

    # Log out: back to the login form, and the token is revoked on the server.
    bob_page.get_by_role("button", name="Log out").click()
    expect(bob_page.locator("#login-form")).to_be_visible()
    expect(bob_page.locator("#login-error")).to_have_text("You are logged out.")
    bob_page.reload()
    expect(bob_page.locator("#login-form")).to_be_visible()
    login(bob_page, server, bob)
    wait_online(bob_page)
    assert ann  # registered through the UI
