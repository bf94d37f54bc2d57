"""Going offline and coming back: the client reconnects by itself and catches up by seq, with
no duplicates; messages written while offline are sent once when it is back."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect
from webui import (
    PASSWORD,
    Pages,
    ServerProcess,
    conv_item,
    direct_chat,
    login,
    message,
    register,
    send,
    start_direct,
    wait_online,
)


def page_seqs(page: Page) -> list[int]:
    return [
        int(s)
        for s in page.locator("#messages li[data-seq]").evaluate_all(
            "els => els.map(e => e.dataset.seq).filter(s => s !== '')"
        )
    ]


def assert_no_duplicates(page: Page) -> None:
    seqs = page_seqs(page)
    assert seqs == sorted(set(seqs)), f"duplicate or unordered events on the page: {seqs}"
    texts = page.locator("#messages li.msg .text").all_inner_texts()
    assert len(texts) == len(set(texts)), f"a message is shown twice: {texts}"


def test_offline_then_catch_up(pages: Pages, server: ServerProcess) -> None:
    cat_page, dan_page, dan = direct_chat(pages, server, "Cat", "Dan")
    send(cat_page, "are you there?")
    conv_item(dan_page, "Cat").get_by_role("button").click()
    expect(message(dan_page, "are you there?")).to_be_visible()

    # Dan's network goes away.
    dan_page.context.set_offline(True)
    expect(dan_page.locator("#me-state")).to_have_text("offline")
    expect(dan_page.locator("#conn")).to_contain_text("offline")
    # Meanwhile Cat writes, edits and reacts, and Dan writes something too.
    for i in range(1, 6):
        send(cat_page, f"while you were away {i}")
    last = message(cat_page, "while you were away 5")
    expect(last.locator(".mark")).to_have_attribute("aria-label", "Sent")
    first = message(cat_page, "are you there?")
    first.get_by_role("button", name=re.compile("Actions for message")).click()
    cat_page.get_by_role("menuitem", name="Edit").click()
    cat_page.locator("#input").fill("are you there? (anyone?)")
    cat_page.locator("#input").press("Enter")
    expect(message(cat_page, "are you there? (anyone?)")).to_be_visible()
    send(dan_page, "written offline")
    expect(message(dan_page, "written offline").locator(".mark")).to_have_attribute(
        "aria-label", "Sending"
    )

    # Back online: Dan reconnects by itself, resyncs, and sends what he wrote.
    dan_page.context.set_offline(False)
    wait_online(dan_page)
    for i in range(1, 6):
        expect(message(dan_page, f"while you were away {i}")).to_have_count(1)
    expect(message(dan_page, "are you there? (anyone?)").locator(".edited")).to_be_visible()
    expect(message(cat_page, "written offline")).to_have_count(1)
    expect(message(dan_page, "written offline").locator(".mark")).to_have_attribute(
        "aria-label", re.compile("Delivered|Read")
    )
    # Cat's messages are marked read once Dan's open chat caught up.
    expect(last.locator(".mark")).to_have_attribute("aria-label", "Read")
    # Live traffic after the catch-up still arrives once.
    send(cat_page, "welcome back")
    expect(message(dan_page, "welcome back")).to_have_count(1)
    assert_no_duplicates(dan_page)
    assert_no_duplicates(cat_page)
    # The page's model agrees: the stream held is gap-free up to the server's last seq.
    state = dan_page.evaluate(
        "() => { const c = [...__berry.convs.values()][0];"
        " return {high: c.high, last: c.last_seq, low: c.low, n: c.msgs.size}; }"
    )
    assert state["high"] == state["last"] and state["n"] == state["high"] - state["low"] + 1, state


def test_server_restart_drains_and_clients_resume(pages: Pages, server: ServerProcess) -> None:
    eve_page = pages.new()
    fay_page = pages.new()
    register(eve_page, server, "eve", "Eve")
    fay = register(fay_page, server, "fay", "Fay")
    start_direct(eve_page, fay, "Fay")
    send(eve_page, "before the restart")
    conv_item(fay_page, "Eve").get_by_role("button").click()
    expect(message(fay_page, "before the restart")).to_be_visible()

    # SIGTERM: the server drains and closes every WebSocket with 1001; start it again on the
    # same port and database. Both pages reconnect without being touched.
    port = server.port
    assert server.stop() == 0
    expect(eve_page.locator("#me-state")).not_to_have_text("online")
    server.start(port=port)
    wait_online(eve_page)
    wait_online(fay_page)
    send(eve_page, "after the restart")
    expect(message(fay_page, "after the restart")).to_have_count(1)
    expect(message(fay_page, "before the restart")).to_have_count(1)
    assert_no_duplicates(fay_page)


def test_session_end_and_replacement(pages: Pages, server: ServerProcess) -> None:
    page = pages.new()
    gil, _ = server.make_user("gil")
    login(page, server, gil)
    session = page.evaluate("() => JSON.parse(localStorage.getItem('berrychat.session'))")
    # A newer login on the same device id replaces this session: close 4409, no reconnect loop.
    server.api(
        "POST",
        "/api/v1/login",
        {"username": gil, "password": PASSWORD, "device_id": session["device_id"]},
    )
    expect(page.locator("#conn")).to_contain_text("signed in on this device somewhere else")
    expect(page.locator("#me-state")).to_have_text("disconnected")
    # Reconnecting by hand presents the revoked token: close 4401, so log in again.
    page.locator("#conn").get_by_role("button", name="Reconnect").click()
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("#login-error")).to_contain_text("session ended")
    login(page, server, gil)
    # Logging out elsewhere (the HTTP API with this token) also ends up at the login form.
    token = page.evaluate("() => JSON.parse(localStorage.getItem('berrychat.session')).token")
    server.api("POST", "/api/v1/logout", {}, token=token)
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("#login-error")).to_contain_text("session ended")


def test_a_lost_push_is_filled_by_seq(pages: Pages, server: ServerProcess) -> None:
    """Pushes are at-most-once (protocol.md §11): drop one on its way to the page; the next push
    reveals the hole and the client fills it with `history after=`, in order, once."""
    hal, hal_token = server.make_user("hal")
    page = pages.new()
    dropped: list[str] = []

    def on_ws(ws) -> None:  # noqa: ANN001 - playwright WebSocketRoute
        srv = ws.connect_to_server()

        def to_page(m: str | bytes) -> None:
            if isinstance(m, str) and '"lost push"' in m and '"type":"msg"' in m:
                dropped.append(m)
                return
            ws.send(m)

        srv.on_message(to_page)

    page.route_web_socket("**/ws", on_ws)
    ivo = register(page, server, "ivo", "Ivo")
    conv = server.api(
        "POST", "/api/v1/conversations", {"kind": "direct", "members": [ivo]}, token=hal_token
    )["conv"]
    post = f"/api/v1/conversations/{conv}/messages"
    server.api("POST", post, {"cid": "h1", "text": "first"}, token=hal_token)
    conv_item(page, hal).get_by_role("button").click()
    expect(message(page, "first")).to_be_visible()
    server.api("POST", post, {"cid": "h2", "text": "lost push"}, token=hal_token)
    server.api("POST", post, {"cid": "h3", "text": "after the loss"}, token=hal_token)
    expect(message(page, "after the loss")).to_have_count(1)
    expect(message(page, "lost push")).to_have_count(1)
    assert dropped, "the push was not intercepted"
    assert page_seqs(page) == [1, 2, 3, 4]
    assert_no_duplicates(page)


def test_unsent_messages_survive_a_reload(pages: Pages, server: ServerProcess) -> None:
    kai, kai_token = server.make_user("kai")
    page = pages.new()
    lea = register(page, server, "lea", "Lea")
    start_direct(page, kai)
    page.context.set_offline(True)
    expect(page.locator("#me-state")).to_have_text("offline")
    send(page, "typed on the train")
    expect(message(page, "typed on the train").locator(".mark")).to_have_attribute(
        "aria-label", "Sending"
    )
    page.close()  # the tab is gone before the network is back
    page.context.set_offline(False)
    again = page.context.new_page()
    again.goto(server.url + "/")
    wait_online(again)
    conv_item(again, kai).get_by_role("button").click()
    expect(message(again, "typed on the train").locator(".mark")).to_have_attribute(
        "aria-label", re.compile("Sent|Delivered|Read")
    )

    def stored() -> list[str]:
        convs = server.api("GET", "/api/v1/conversations", token=kai_token)["conversations"]
        h = server.api("GET", f"/api/v1/conversations/{convs[0]['conv']}/messages", token=kai_token)
        return [m["text"] for m in h["messages"] if m["kind"] == "text"]

    assert stored() == ["typed on the train"]
    assert lea
