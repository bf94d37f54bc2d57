"""The web client is served by `berrychat serve` itself, small, and robust to bad answers."""

from __future__ import annotations

import urllib.error
import urllib.request

from playwright.sync_api import expect
from webui import Pages, ServerProcess, login, message, open_app, screenshot, send, start_direct

BUDGET = 200_000  # bytes transferred by the first load (issue 6)


def test_first_load_is_under_200_kb(pages: Pages, server: ServerProcess) -> None:
    page = pages.new()
    finished = []
    page.on("requestfinished", lambda r: finished.append(r))
    open_app(page, server)
    page.wait_for_load_state("networkidle")
    total = 0
    for r in finished:
        sizes = r.sizes()
        total += sizes["responseBodySize"] + sizes["responseHeadersSize"]
    # Every asset of the app came from our server, compressed.
    urls = sorted({r.url.rsplit("/", 1)[-1] for r in finished})
    assert {"app.js", "net.js", "style.css"} <= set(urls), urls
    js = [r for r in finished if r.url.endswith("/app.js")][0]
    assert js.response().header_value("content-encoding") == "gzip"
    print(f"\nfirst load: {len(finished)} requests, {total} bytes transferred")
    assert 0 < total < BUDGET
    expect(page.get_by_label("User name", exact=True)).to_be_focused()
    screenshot(page, "login")


def test_static_files_are_safe_and_cacheable(server: ServerProcess) -> None:
    def get(path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(server.url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    status, h, body = get("/app/app.js")
    assert status == 200 and h["Content-Type"].startswith("text/javascript")
    assert h["Cache-Control"] == "no-cache" and h["ETag"]
    assert get("/app/app.js", **{"If-None-Match": h["ETag"]})[0] == 304
    for bad in ("/app/../server.py", "/app/%2e%2e/server.py", "/app/..%2fcli.py", "/app/nope.js"):
        assert get(bad)[0] == 404, bad
    # Browsers are sent to the client; API clients still get JSON at /.
    assert get("/", Accept="application/json")[2].startswith(b"{")
    status, h, body = get("/", Accept="text/html")
    assert status == 200 and b"<!doctype html>" in body.lower()


def test_garbage_from_the_server_does_not_break_the_page(
    pages: Pages, server: ServerProcess
) -> None:
    page = pages.new()
    bob, _ = server.make_user("bob")
    ann, _ = server.make_user("ann")
    # 1. The login endpoint answers with an HTML error page (a proxy in trouble).
    page.route(
        "**/api/v1/login",
        lambda route: route.fulfill(
            status=502, body="<h1>Bad gateway</h1>", content_type="text/html"
        ),
    )
    open_app(page, server)
    page.get_by_label("User name", exact=True).fill(ann)
    page.get_by_label("Password", exact=True).fill("correct horse battery")
    page.locator("#login-submit").click()
    expect(page.locator("#login-error")).to_contain_text("unexpected answer")
    page.unroute("**/api/v1/login")

    # 2. Junk frames injected into the live WebSocket are ignored.
    routes = []

    def on_ws(ws) -> None:  # noqa: ANN001 - playwright WebSocketRoute
        ws.connect_to_server()
        routes.append(ws)

    page.route_web_socket("**/ws", on_ws)
    login(page, server, ann)
    start_direct(page, bob)
    for junk in (
        "not json",
        "[1, 2, 3]",
        '{"no":"type"}',
        '{"type":"msg","conv":"x","seq":1}',
        '{"type":"msg","conv":1,"seq":-5,"kind":"text"}',
        '{"type":"receipt","conv":null}',
        '{"type":"presence","user":"eve","status":5}',
        '{"type":"typing","conv":999999,"user":1}',
        '{"type":"brand-new-push","x":1}',
        '{"type":"ack","id":"999999","re":"nothing"}',
    ):
        routes[-1].send(junk)
    send(page, "still working")
    expect(message(page, "still working").locator(".mark")).to_have_attribute("aria-label", "Sent")
