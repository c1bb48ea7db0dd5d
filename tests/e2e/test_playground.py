"""End to end: the web playground (``GET /``) in a real headless Chromium, driven by Playwright,
against ``stableserve serve --engines demo``.

Signs in with a key (org and balance shown), generates an image on a demo engine (gallery,
parameters, the balance drops by exactly the price shown before), inpaints it with a mask drawn
with the mouse (only the painted area changes), then checks a phone-sized screen and an API
error. A screenshot of each step goes to ``test-artifacts/playground/``; with
``STABLESERVE_UPDATE_SCREENSHOTS=1`` the README's ``docs/images/playground.png`` is refreshed.

The browser is the system's Chromium (Debian's ``chromium``, installed by ``make browser``);
a browser downloaded by a test tool is not used. Skipped where it is absent.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from pathlib import Path

import pytest
import requests
from PIL import Image, ImageChops

from tests.e2e.conftest import running_server

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "playground"
DOC_IMAGE = ROOT / "docs" / "images" / "playground.png"
ENGINE = "stable-diffusion-v1-5"
# Upper bounds for a busy 2-core machine (a run takes seconds; the first use builds the demo pipeline).
JOB_TIMEOUT_MS = 240_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="no system Chromium at /usr/bin/chromium (run `make browser` or apt-get install chromium)",
)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
expect = sync_api.expect


@pytest.fixture(scope="module")
def server(tmp_path_factory, stableserve_home):
    home = tmp_path_factory.mktemp("e2e-playground-home")
    with running_server(home, stableserve_home / "demo") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


def shot(page, name: str, *, full_page: bool = True) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def new_page(browser, width: int = 1280, height: int = 900):
    """A page in a fresh context (its own session storage) and the list of its script errors."""
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, errors


def sign_in(page, server, key: str) -> None:
    page.goto(f"{server.host}/")
    page.fill("#key", key)
    page.press("#key", "Enter")  # the keyboard, not a click


def image_of(img_locator) -> Image.Image:
    """The pixels of an <img> of the page (drawn on a canvas: the page's CSP allows no fetch of
    its blob: URLs)."""
    b64 = img_locator.evaluate(
        """(img) => {
            const c = document.createElement("canvas");
            c.width = img.naturalWidth;
            c.height = img.naturalHeight;
            c.getContext("2d").drawImage(img, 0, 0);
            return c.toDataURL("image/png").split(",")[1];
        }"""
    )
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def balance(page) -> float:
    return float(page.get_attribute("#balance", "data-credits"))


def test_sign_in_generate_and_inpaint(server, browser):
    page, errors = new_page(browser)
    page.goto(f"{server.host}/")
    expect(page.locator("#signin")).to_be_visible()
    shot(page, "01-signed-out")

    sign_in(page, server, server.key)
    expect(page.locator("#org")).to_have_text("e2e")
    expect(page.locator("#balance")).to_have_text("1000")
    expect(page.locator(f"#engine option[value='{ENGINE}']")).to_be_attached()
    shot(page, "02-signed-in")

    # -- text-to-image: the price shown before, the gallery, the balance after ------------------
    page.select_option("#engine", ENGINE)
    page.select_option("#size", "512x512")
    page.fill("#prompt", "A lighthouse on a cliff at sunset")
    page.fill("#negative", "blurry")
    page.fill("#steps", "10")
    expect(page.locator("#price")).to_have_text(re.compile(r"^\d"))
    price = float(page.get_attribute("#price", "data-credits"))
    assert price > 0
    before = balance(page)
    page.click("#run")
    card = page.locator("#gallery li").first
    expect(card).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#outcome")).to_contain_text("Done", timeout=JOB_TIMEOUT_MS)
    shown = {"engine": ENGINE, "size": "512 × 512", "steps": "10", "mode": "text-to-image"}
    for param, value in shown.items():
        expect(card.locator(f"dd[data-param='{param}']")).to_have_text(value)
    assert int(card.get_attribute("data-seed")) > 0
    after = balance(page)
    assert after == pytest.approx(before - price, abs=1e-9)
    api_balance = requests.get(
        f"{server.host}/v1/user/balance", headers={"Authorization": f"Bearer {server.key}"}, timeout=10
    ).json()["credits"]
    assert api_balance == pytest.approx(after, abs=1e-9)
    expect(page.locator("#history li").first).to_contain_text("done")
    shot(page, "03-generated")
    original = image_of(card.locator("img"))
    assert original.size == (512, 512)

    # -- inpainting from the gallery image, with a mask drawn with the mouse ---------------------
    card.get_by_role("button", name="Inpaint image 1").click()
    expect(page.locator("#engine")).to_have_value(ENGINE)  # the engine that made the image
    mask = page.locator("#mask")
    expect(mask).to_be_visible()
    box = mask.bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x0 + box["width"] * 0.04 * i, y0 + box["height"] * 0.02 * i)
    page.mouse.up()
    page.fill("#prompt", "A red sailing boat")
    page.fill("#steps", "10")
    shot(page, "04-mask-drawn")
    page.press("#prompt", "Control+Enter")  # runs the form from the keyboard
    expect(page.locator("#gallery li")).to_have_count(2, timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#outcome")).to_contain_text("Done", timeout=JOB_TIMEOUT_MS)
    card = page.locator("#gallery li").first
    expect(card.locator("dd[data-param='mode']")).to_have_text("inpaint")
    inpainted = image_of(card.locator("img"))
    assert inpainted.size == original.size
    changed = ImageChops.difference(original, inpainted).getbbox()
    assert changed is not None, "the painted area was not repainted"
    # Only the painted stroke (30..75% across, 40..65% down, plus the brush) may change.
    left, top, right, bottom = changed
    assert left >= 512 * 0.2 and right <= 512 * 0.85 and top >= 512 * 0.3 and bottom <= 512 * 0.75, changed
    shot(page, "05-inpainted")
    page.locator("#prompt").blur()
    page.evaluate("() => window.scrollTo(0, 0)")  # the top: header, source with its mask, gallery
    doc = shot(page, "06-playground", full_page=False)
    assert errors == []
    if os.environ.get("STABLESERVE_UPDATE_SCREENSHOTS") == "1":
        DOC_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(doc, DOC_IMAGE)


def test_phone_screen_has_no_horizontal_overflow(server, browser):
    page, errors = new_page(browser, 390, 844)
    sign_in(page, server, server.key)
    expect(page.locator("#org")).to_have_text("e2e")
    expect(page.locator(f"#engine option[value='{ENGINE}']")).to_be_attached()
    page.check("input[name=mode][value=inpaint]")
    page.check("input[name=mode][value=text-to-image]")
    expect(page.locator("#price")).to_have_text(re.compile(r"^\d"))
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], width
    shot(page, "07-phone")
    assert errors == []


def test_api_error_is_shown_with_its_message_and_id(server, browser):
    page, errors = new_page(browser)
    sign_in(page, server, "sk-not-a-real-key")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-code")).to_have_text("unauthorized")
    expect(page.locator("#error-message")).to_contain_text("Incorrect API key")
    expect(page.locator("#error-id")).to_have_text(re.compile(r"^[0-9a-f]{32}$"))
    expect(page.locator("#main")).to_be_hidden()
    shot(page, "08-bad-key")
    assert errors == []
