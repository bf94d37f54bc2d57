"""Attachments in the web client: two people exchange an image and a file (preview, full image,
download), a voice message recorded from Chromium's fake microphone with its played receipt,
and clear messages for refused uploads."""

from __future__ import annotations

import io
import re

from PIL import Image
from playwright.sync_api import Page, expect
from webui import Pages, ServerProcess, direct_chat, register, screenshot, start_direct


def png(size: tuple[int, int], color: str) -> bytes:
    buf = io.BytesIO()
    im = Image.new("RGB", size, color)
    im.paste("white", (size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4))
    im.save(buf, "PNG")
    return buf.getvalue()


def attach(page: Page, name: str, mime: str, data: bytes) -> None:
    page.locator("#file-input").set_input_files({"name": name, "mimeType": mime, "buffer": data})


def image_msg(page: Page, name: str):
    return page.locator("#messages li.msg", has=page.locator(f'img[alt="{name}"]'))


def loaded(page: Page, name: str) -> None:
    img = page.locator(f'#messages img[alt="{name}"]')
    expect(img).to_be_visible()
    page.wait_for_function(
        'n => { const i = document.querySelector(`#messages img[alt="${n}"]`);'
        " return i && i.complete && i.naturalWidth > 0; }",
        arg=name,
    )


def fetch_status(page: Page, href: str) -> list:
    return page.evaluate(
        "async h => { const r = await fetch(h); return [r.status, r.headers.get('content-type'),"
        " (await r.arrayBuffer()).byteLength]; }",
        href,
    )


def test_two_people_exchange_an_image_and_a_file(pages: Pages, server: ServerProcess) -> None:
    ann_page, bob_page, bob = direct_chat(pages, server)
    expect(ann_page.get_by_role("button", name="Attach an image or file")).to_be_enabled()

    # Ann sends a photo: both see the thumbnail; the link opens the full image.
    photo = png((800, 600), "#b0154a")
    attach(ann_page, "berries.png", "image/png", photo)
    loaded(ann_page, "berries.png")
    bob_page.locator("#conv-list button", has_text="Ann").click()
    loaded(bob_page, "berries.png")
    link = image_msg(bob_page, "berries.png").get_by_role("link", name="Open image berries.png")
    expect(link).to_have_attribute("aria-label", "Open image berries.png (800×600)")
    # signed short-lived links, never the session token in a URL (§17)
    href = link.get_attribute("href")
    src = image_msg(bob_page, "berries.png").locator("img").get_attribute("src")
    assert re.search(r"\?u=\d+&e=\d+&s=[\w-]{43}$", href) and "token" not in href + src
    status, ctype, size = fetch_status(bob_page, href)
    assert (status, ctype, size) == (200, "image/png", len(photo))

    # Bob answers with a file: Ann downloads it.
    notes = "Shopping: raspberries, pie crust 🥧\n".encode() * 60
    attach(bob_page, "notes.txt", "text/plain", notes)
    dl_link = ann_page.get_by_role("link", name="Download notes.txt")
    expect(dl_link).to_be_visible()
    expect(dl_link.locator(".att-size")).to_have_text(f"{len(notes) / 1024:.1f} KB")
    with ann_page.expect_download() as info:
        dl_link.click()
    assert info.value.suggested_filename == "notes.txt"
    with open(info.value.path(), "rb") as f:
        assert f.read() == notes
    # ... and a photo back, which Ann sees as a preview too.
    attach(bob_page, "reply.png", "image/png", png((300, 400), "#1565c0"))
    loaded(ann_page, "reply.png")
    expect(ann_page.locator("#conv-list .conv-last").first).to_contain_text("Photo")
    screenshot(ann_page, "chat-image")


def test_voice_message_and_played_receipt(pages: Pages, server: ServerProcess) -> None:
    ann_page, bob_page, bob = direct_chat(pages, server)
    rec = ann_page.get_by_role("button", name="Record a voice message")
    rec.click()
    stop = ann_page.get_by_role("button", name="Stop recording and send")
    expect(stop).to_have_attribute("aria-pressed", "true")
    ann_page.wait_for_timeout(1500)  # 1.5 s of the fake microphone's tone
    stop.click()
    mine = ann_page.locator("#messages li.msg audio")
    expect(mine).to_have_count(1)
    bob_page.locator("#conv-list button", has_text="Ann").click()
    audio = bob_page.locator("#messages li.msg audio")
    # about 1.5 s recorded; the exact length depends on the load of the machine
    expect(audio).to_have_attribute("aria-label", re.compile(r"^Voice message, 0:0[1-5]$"))
    audio.evaluate("a => a.play()")
    expect(ann_page.locator("#messages li.msg .att-info")).to_have_text(
        re.compile(r"^0:0[1-5] · played$")
    )


def test_refused_uploads_show_a_clear_message(pages: Pages, server: ServerProcess) -> None:
    page = pages.new()
    register(page, server, "ann", "Ann")
    peer, _ = server.make_user("bob")
    start_direct(page, peer)
    # larger than uploads.max_file_bytes (2 MB in the test server's config)
    attach(page, "big.zip", "application/zip", b"PK\x03\x04" + b"\0" * 2_500_000)
    expect(page.locator("#upload-status")).to_have_text(
        "“big.zip” is 2.4 MB: files can be at most 1.9 MB."
    )
    # a type the bytes do not match: refused by the server
    attach(page, "fake.png", "image/png", b"<html>not a picture</html>" * 4)
    expect(page.locator("#upload-status")).to_contain_text(
        "“fake.png” was not sent: declared image/png but the content is unrecognised bytes"
    )
    page.get_by_role("button", name="Dismiss").click()
    expect(page.locator("#upload-bar")).to_be_hidden()
    expect(page.locator("#messages li.msg")).to_have_count(0)


def test_drop_and_paste_send_files(pages: Pages, server: ServerProcess) -> None:
    page = pages.new()
    register(page, server, "ann", "Ann")
    peer, _ = server.make_user("bob")
    start_direct(page, peer)
    page.evaluate(
        """() => {
        const dt = new DataTransfer();
        dt.items.add(new File(['dropped text'], 'dropped.txt', {type: 'text/plain'}));
        const chat = document.getElementById('chat');
        const opts = {dataTransfer: dt, bubbles: true, cancelable: true};
        chat.dispatchEvent(new DragEvent('dragover', opts));
        chat.dispatchEvent(new DragEvent('drop', opts));
    }"""
    )
    expect(page.get_by_role("link", name="Download dropped.txt")).to_be_visible()
    page.evaluate(
        """() => {
        const dt = new DataTransfer();
        dt.items.add(new File(['from the clipboard'], 'clip.txt', {type: 'text/plain'}));
        const input = document.getElementById('input');
        input.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true,
                                                         cancelable: true}));
    }"""
    )
    expect(page.get_by_role("link", name="Download clip.txt")).to_be_visible()
