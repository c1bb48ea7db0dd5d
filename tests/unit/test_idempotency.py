"""Idempotency-Key pieces without the full app: fingerprints, the store (leases, expiry, races,
SQLite and PostgreSQL) and the middleware's storage rules around a stub application."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stableserve.api.errors import http_error
from stableserve.api.idempotency import Idempotency, IdempotencyStore, skip_storage
from stableserve.api.idempotency.fingerprint import fingerprint, scope_hash
from stableserve.api.idempotency.store import Claimed, Existing
from stableserve.db.base import utcnow
from stableserve.db.session import session_factory
from tests.unit.test_ledger import migrated_database


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    with migrated_database(request.param, tmp_path) as s:
        yield s


class Clock:
    """A settable aware-UTC clock."""

    def __init__(self):
        self.now = utcnow()

    def __call__(self):
        return self.now


# -- fingerprints ---------------------------------------------------------------------------------
def _multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> tuple[Headers, bytes]:
    body = b""
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return Headers({"content-type": f"multipart/form-data; boundary={boundary}"}), body


def _fp(headers: Headers, body: bytes, path: str = "/v2beta/x", query: bytes = b"") -> str:
    return fingerprint("POST", path, query, headers, body)


def test_multipart_fingerprint_ignores_the_boundary_but_not_the_parts():
    parts = [("prompt", None, b"a fox"), ("image", "in.png", b"\x89PNG...")]
    one, two = _fp(*_multipart("aaa111", parts)), _fp(*_multipart("bbb222", parts))
    assert one == two and len(one) == 64
    assert _fp(*_multipart("c", [("prompt", None, b"a cat"), parts[1]])) != one
    assert _fp(*_multipart("c", [parts[0], ("image", "other.png", b"\x89PNG...")])) != one
    assert _fp(*_multipart("c", parts[::-1])) != one
    headers, body = _multipart("aaa111", parts)
    assert _fp(headers, body, query=b"x=1") != one and _fp(headers, body, path="/v2beta/y") != one
    accept = Headers({"content-type": headers["content-type"], "accept": "application/json"})
    assert _fp(accept, body) != one
    # A malformed multipart body is fingerprinted by its bytes (and still never raises).
    assert _fp(headers, b"garbage") != _fp(Headers({"content-type": "multipart/form-data; boundary=z"}), b"x")


def test_json_fingerprint_ignores_key_order_and_spacing():
    json_headers = Headers({"content-type": "application/json"})
    assert _fp(json_headers, b'{"a": 1, "b": [1, 2]}') == _fp(json_headers, b'{"b":[1,2],"a":1}')
    assert _fp(json_headers, b'{"a": 1}') != _fp(json_headers, b'{"a": 2}')
    assert _fp(json_headers, b"{not json") != _fp(json_headers, b"{not json ")
    assert _fp(json_headers, b'{"a": 1}') != _fp(Headers({"content-type": "text/plain"}), b'{"a": 1}')


def test_scope_hash_separates_keys_and_organizations_and_hides_the_key():
    def h(**headers):
        return scope_hash(b"secret", Headers(headers))

    assert h(authorization="Bearer sk-1") == h(authorization="sk-1")
    assert h(authorization="sk-1") != h(authorization="sk-2")
    assert h(authorization="sk-1") != h(authorization="sk-1", organization="org-2")
    assert h() == h(authorization="Bearer ") and "sk-1" not in h(authorization="sk-1")
    assert scope_hash(b"other", Headers({"authorization": "sk-1"})) != h(authorization="sk-1")


# -- store ----------------------------------------------------------------------------------------
def test_store_lease_ttl_and_purge(settings):
    clock = Clock()
    store = IdempotencyStore(session_factory(settings), ttl_s=100, lease_s=10, clock=clock)
    first = store.claim("scope", "k", "fp")
    assert isinstance(first, Claimed)
    assert store.claim("scope", "k", "fp") == Existing("running", "fp")
    assert isinstance(store.claim("other-scope", "k", "fp"), Claimed)
    clock.now += timedelta(seconds=8)
    assert store.renew(first.row_id)
    clock.now += timedelta(seconds=8)  # 16 s after the claim, 8 s after the renewal: still held
    assert store.claim("scope", "k", "fp2") == Existing("running", "fp")
    clock.now += timedelta(seconds=3)  # the lease lapsed (a dead server): the key is free
    second = store.claim("scope", "k", "fp2")
    assert isinstance(second, Claimed) and second.row_id != first.row_id
    assert not store.complete(first.row_id, 200, [], b"late")  # the lapsed claim cannot store
    assert store.complete(second.row_id, 201, [("content-type", "text/plain")], b"body")
    done = store.claim("scope", "k", "fp2")
    assert done == Existing("done", "fp2", 201, [("content-type", "text/plain")], b"body")
    clock.now += timedelta(seconds=99)
    assert isinstance(store.claim("scope", "k", "fp3"), Existing)
    clock.now += timedelta(seconds=2)  # past the ttl
    assert isinstance(store.claim("scope", "k", "fp3"), Claimed)
    store.release(store.claim("scope", "k2", "fp").row_id)
    assert isinstance(store.claim("scope", "k2", "fp"), Claimed)
    clock.now += timedelta(days=2)
    assert store.purge() == 3  # "scope"/k, "other-scope"/k, "scope"/k2


def test_store_race_has_one_winner(settings):
    store = IdempotencyStore(session_factory(settings))
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: store.claim("scope", "race", "fp"), range(8)))
    assert sum(isinstance(o, Claimed) for o in outcomes) == 1
    assert all(o == Existing("running", "fp") for o in outcomes if not isinstance(o, Claimed))


# -- middleware around a stub app ------------------------------------------------------------------
def _stub(settings, statuses: list[int], *, sleep_s: float = 0.0, **options):
    calls: list[bytes] = []

    async def endpoint(request):
        body = await request.body()
        calls.append(body)
        await asyncio.sleep(sleep_s)
        if body == b"no-store":
            skip_storage(request)
        status = statuses.pop(0) if statuses else 200
        if status == 599:
            raise RuntimeError("boom")
        return Response(f"call {len(calls)}".encode(), status_code=status, headers={"x-request-id": "inner"})

    def render(scope, exc):
        err = http_error(exc)
        return JSONResponse({"name": err.name, "message": err.message}, status_code=err.status)

    store = IdempotencyStore(session_factory(settings), lease_s=options.pop("lease_s", 60))
    app = Idempotency(
        Starlette(routes=[Route("/x", endpoint, methods=["POST", "GET"])]),
        store=store,
        secret=b"secret",
        render=render,
        lease_s=store.lease.total_seconds(),
        **options,
    )
    return TestClient(app, raise_server_exceptions=False), calls


def _send(client, key="k", body=b"same", **headers):
    return client.post(
        "/x", content=body, headers={"Authorization": "sk-1", "Idempotency-Key": key, **headers}
    )


def test_only_complete_successes_are_stored(settings):
    client, calls = _stub(settings, [500, 503, 429, 402, 400, 599])
    codes = [_send(client).status_code for _ in range(6)]
    assert codes == [500, 503, 429, 402, 400, 500] and len(calls) == 6  # each retry ran again
    ok = _send(client)
    again = _send(client)
    assert ok.status_code == again.status_code == 200 and again.text == ok.text == "call 7"
    assert again.headers["idempotent-replayed"] == "true" and "x-request-id" not in again.headers
    assert len(calls) == 7
    assert _send(client, body=b"other").json()["name"] == "idempotency_key_mismatch"
    assert _send(client, body=b"other").status_code == 422
    # No header, or another method: untouched.
    assert client.post("/x", content=b"same").text == "call 8"
    assert client.get("/x", headers={"Idempotency-Key": "k"}).text == "call 9"
    anonymous = [client.post("/x", content=b"same", headers={"Idempotency-Key": "k"}).text for _ in range(2)]
    assert anonymous == ["call 10", "call 11"]  # no caller to scope the key by: the app answers (401)


def test_skip_storage_too_large_and_oversize_bodies(settings):
    client, calls = _stub(settings, [], max_response_bytes=6, max_body_bytes=10)
    assert _send(client, key="a", body=b"no-store").text == "call 1"
    assert _send(client, key="a", body=b"no-store").text == "call 2"  # not stored: ran again
    big = _send(client, key="b")  # "call 3": 6 bytes, fits
    assert _send(client, key="b").headers["idempotent-replayed"] == "true" and big.text == "call 3"
    client2, _ = _stub(settings, [], max_response_bytes=5)
    assert _send(client2, key="c").text == "call 1"  # delivered whole, remembered without a body
    r = _send(client2, key="c")
    assert r.status_code == 409 and "too large" in r.json()["message"]
    r = _send(client, key="d", body=b"x" * 11)
    assert r.status_code == 413 and r.json()["name"] == "payload_too_large"
    assert _send(client, key="", body=b"x").status_code == 400
    assert len(calls) == 3


def test_a_running_claim_is_renewed_and_a_duplicate_gets_409(settings):
    client, calls = _stub(settings, [], sleep_s=1.5, lease_s=0.3)  # renewed every 0.1 s
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("first", _send(client)))
    thread.start()
    deadline = time.time() + 10
    while not calls and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.6)  # two leases: without renewal the key would be free by now
    dup = _send(client)
    assert dup.status_code == 409 and dup.json()["name"] == "idempotency_key_in_use"
    thread.join(timeout=30)
    assert result["first"].status_code == 200 and len(calls) == 1
    assert _send(client).text == result["first"].text
