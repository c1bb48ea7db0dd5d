"""Shared pieces of the REST v2beta API tests: a small demo registry and request helpers."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from stableserve.core.engines import DimensionRule, EngineRegistry, load_registry

SMALL = DimensionRule(kind="pixel_range", multiple=64, min_side=64, min_pixels=4096, max_pixels=1_048_576)
NONE = {"none": ""}  # the official samples' trick to force multipart without files


def small_v2_registry() -> EngineRegistry:
    """The demo registry at 128 px defaults, 2 steps per product, 4x upscales capped small."""
    reg = load_registry("demo")
    engines = tuple(
        e
        if e.dimensions.kind == "any"
        else e.model_copy(update={"dimensions": SMALL, "default_width": 128, "default_height": 128})
        for e in reg.engines
    )
    products = {
        name: p.model_copy(update={"steps": 2} | ({"output_pixels": 256 * 256} if p.output_pixels else {}))
        for name, p in reg.products.items()
    }
    return EngineRegistry(
        engines=engines,
        products=products,
        product_aliases=reg.product_aliases,
        origin="demo (small, v2 tests)",
    )


def balance(client: TestClient, account) -> float:
    return client.get("/v1/user/balance", headers=account.headers).json()["credits"]


def post(client, path, account, data=None, files=None, accept="image/*", **headers):
    return client.post(
        f"/v2beta/stable-image/{path}",
        headers={"authorization": f"Bearer {account.key}", "accept": accept, **headers},
        data=data or {},
        files=files or NONE,
    )


def assert_v2_error(r, status: int, name: str, field: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"id", "name", "errors"}
    assert body["name"] == name
    assert len(body["id"]) == 32 and r.headers["x-request-id"] == body["id"]
    assert body["errors"] and all(isinstance(e, str) for e in body["errors"])
    if field:
        assert body["errors"][0].startswith(f"{field}:"), body


def poll(client, account, job_id, path="/v2beta/results/", accept="*/*", timeout=120):
    deadline = time.time() + timeout
    while True:
        r = client.get(
            f"{path}{job_id}", headers={"authorization": f"Bearer {account.key}", "accept": accept}
        )
        if r.status_code != 202 or time.time() > deadline:
            return r
        assert r.json() == {"id": job_id, "status": "in-progress"}
        time.sleep(0.2)
