"""Signed download links in the web client (docs/protocol.md §17): a fresh link is followed as
it is; after the page's clock has moved past the links' lifetime, a click on a download first
asks for a new link, and an image whose link the server refuses is given a new one and loads.
The page clock is Playwright's (time flows; jumping it fires no timers); the server's is real."""

from __future__ import annotations

import datetime
import io
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, expect
from webui import Pages, ServerProcess, register, start_direct


def attach(page: Page, name: str, mime: str, data: bytes) -> None:
    page.locator("#file-input").set_input_files({"name": name, "mimeType": mime, "buffer": data})


def png(size: tuple[int, int], color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def image_loaded(page: Page, name: str) -> None:
    page.wait_for_function(
        'n => { const i = document.querySelector(`#messages img[alt="${n}"]`);'
        " return i && i.complete && i.naturalWidth > 0; }",
        arg=name,
    )


def test_expired_links_are_renewed_by_the_client(pages: Pages, server: ServerProcess) -> None:
    ann_page, bob_page = pages.new(), pages.new()
    bob_page.clock.install()  # before the app loads: Date.now() becomes adjustable
    register(ann_page, server, "ann", "Ann")
    bob = register(bob_page, server, "bob", "Bob")
    start_direct(ann_page, bob, "Bob")
    asked: list[str] = []
    bob_page.on(
        "request", lambda r: asked.append(r.url) if r.url.endswith("/api/v1/files/links") else None
    )
    notes = b"links expire, downloads still work\n" * 40
    attach(ann_page, "notes.txt", "text/plain", notes)
    expect(ann_page.get_by_role("link", name="Download notes.txt")).to_be_visible()
    attach(ann_page, "pic.png", "image/png", png((320, 200), "#6a1b9a"))
    image_loaded(ann_page, "pic.png")
    bob_page.locator("#conv-list button", has_text="Ann").click()
    dl = bob_page.get_by_role("link", name="Download notes.txt")
    expect(dl).to_be_visible()
    image_loaded(bob_page, "pic.png")

    # a fresh link: followed as it is, no new request
    before = len(asked)
    assert before >= 1
    with bob_page.expect_download() as info:
        dl.click()
    assert Path(info.value.path()).read_bytes() == notes
    assert len(asked) == before

    # two hours later on the page's clock every link has expired: a click renews first
    later = datetime.datetime.now() + datetime.timedelta(hours=2)
    bob_page.clock.set_system_time(later)
    with bob_page.expect_download() as info:
        dl.click()
    assert Path(info.value.path()).read_bytes() == notes
    assert len(asked) == before + 1

    # an image whose link the server refuses (here: a broken signature) gets a new link
    img = bob_page.locator('#messages img[alt="pic.png"]')
    good = img.get_attribute("src")
    img.evaluate("i => { i.src = i.getAttribute('src').replace(/&s=.*/, '&s=broken'); }")
    image_loaded(bob_page, "pic.png")
    expect(img).to_have_attribute("src", good)  # the server's window: the same URL again
    assert len(asked) == before + 2
