"""The web playground's files as the app serves them (the browser test is
tests/e2e/test_playground.py): the page at ``/`` with its security headers, every asset it
loads, nothing from another host, unknown paths still JSON 404s, and the setting that turns it off."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from stableserve.web import STATIC_DIR
from tests.api.test_rest_v1 import assert_v1_error


@pytest.fixture(scope="module")
def page_client(api_settings) -> Iterator[TestClient]:
    """The app without its lifespan (static files and error handlers only)."""
    from stableserve.api.app import build_app

    yield TestClient(build_app(api_settings), raise_server_exceptions=False)


def assets() -> list[str]:
    """Every file the page loads: its <link>/<script> and the modules app.js imports, transitively."""
    html = (STATIC_DIR / "index.html").read_text()
    found = re.findall(r'(?:href|src)="/playground/([\w.-]+)"', html)
    todo = [f for f in found if f.endswith(".js")]
    while todo:
        text = (STATIC_DIR / todo.pop()).read_text()
        for name in re.findall(r'from "\./([\w.-]+)"', text):
            if name not in found:
                found.append(name)
                todo.append(name)
    return found


def test_page_with_security_headers(page_client):
    resp = page_client.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "img-src 'self' data: blob:" in csp
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"
    assert '<script type="module" src="/playground/app.js">' in resp.text
    assert "/" not in page_client.get("/openapi.json").json()["paths"]


def test_every_asset_is_served(page_client):
    names = assets()
    assert {"style.css", "app.js", "api.js", "mask.js", "gallery.js"} <= set(names)
    for name in names:
        resp = page_client.get(f"/playground/{name}")
        assert resp.status_code == 200, name
        kind = "text/css" if name.endswith(".css") else "javascript"
        assert kind in resp.headers["content-type"], (name, resp.headers["content-type"])
        assert resp.headers["x-content-type-options"] == "nosniff"


def test_nothing_comes_from_another_host():
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://", text), f"{path.name} refers to another host"
        assert "@import" not in text and "@font-face" not in text, path.name


def test_unknown_paths_keep_their_json_404(page_client):
    assert_v1_error(page_client.get("/no-such-thing"), 404, "not_found")
    assert_v1_error(page_client.get("/playground/no-such-file.js"), 404, "not_found")
    assert_v1_error(page_client.get("/v1/no-such-route"), 404, "not_found")


def test_setting_turns_it_off(api_settings):
    from stableserve.api.app import build_app

    client = TestClient(build_app(api_settings.model_copy(update={"playground": False})))
    assert_v1_error(client.get("/"), 404, "not_found")
    assert_v1_error(client.get("/playground/app.js"), 404, "not_found")
