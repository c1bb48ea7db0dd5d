"""Schemathesis over the server's own OpenAPI document (issue 8): for every operation, at least
100 generated requests (valid API keys; an admin key on ``/admin/v1``) get no 5xx and no
response that contradicts the document (status code, content type, body schema, headers).

The app is the real one (routers, auth, ledger, job table, JobClient) on SQLite, with rate
limits off so the fuzzer is not throttled, and an executor that answers every job at once with
small PNGs, since the HTTP contract, not the diffusion, is what is under test here.
"""

from __future__ import annotations

import io
import queue
import threading
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis import checks

from stableserve.core.types import Artifact, GenerationRequest
from stableserve.jobs.events import Queued, Started, Succeeded

EXAMPLES = 100
ENGINES = (  # (path ending, a demo engine that serves it)
    ("/upscale", "esrgan-v1-x2plus"),
    ("/masking", "stable-inpainting-512-v2-0"),
    ("", "stable-diffusion-v1-5"),
)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


class InstantExecutor:
    """An ``Executor`` that succeeds every job at once with ``samples`` solid PNGs of the
    request's size (64 x 64 when the size follows an input image), from one thread of its own."""

    def __init__(self, on_event):
        self.on_event = on_event
        self.jobs: queue.Queue[tuple[str, GenerationRequest] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(5)

    def submit(self, job_id: str, request: GenerationRequest) -> None:
        self.on_event(Queued(job_id))
        self.jobs.put((job_id, request))

    def cancel(self, job_id: str) -> None:
        pass

    def capacity(self) -> int:
        return 1

    def health(self) -> dict[str, Any]:
        return {"kind": "instant", "ok": True, "running": 0, "queued": self.jobs.qsize()}

    def _run(self) -> None:
        while (item := self.jobs.get()) is not None:
            job_id, request = item
            self.on_event(Started(job_id, 1))
            w, h = min(request.width or 64, 256), min(request.height or 64, 256)
            buf = io.BytesIO()
            Image.new("RGB", (w, h), (90, 120, 200)).save(buf, format="PNG")
            seed = request.seed or 1
            artifacts = [
                Artifact(index=i, seed=(seed + i) % 2**32, width=w, height=h, data=buf.getvalue())
                for i in range(request.samples)
            ]
            self.on_event(Succeeded(job_id, artifacts))


def _without_lifespan(app):
    """``app`` for schemathesis, which would otherwise run the lifespan again on its own loop:
    the lifespan is already running under the fixture's TestClient."""

    async def asgi(scope, receive, send):
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    return asgi


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, stableserve_home):
    """(app, user key, admin key): the real app on SQLite with the instant executor."""
    from fastapi.testclient import TestClient

    from stableserve.accounts import keys, orgs
    from stableserve.api.app import build_app
    from stableserve.jobs.client import JobClient
    from stableserve.settings import RateLimitSettings
    from tests.unit.test_ledger import migrated_database

    with migrated_database("sqlite", tmp_path_factory.mktemp("fuzz-db")) as base:
        settings = base.model_copy(
            update={"engines": "demo", "rate_limit": RateLimitSettings(enabled=False)}
        )
        settings.home.mkdir(parents=True, exist_ok=True)
        (stableserve_home / "demo").mkdir(exist_ok=True)
        (settings.home / "demo").symlink_to(stableserve_home / "demo", target_is_directory=True)
        from stableserve.db.session import session_factory

        sessions = session_factory(settings)
        with sessions.begin() as s:
            org = orgs.create_org(s, "fuzz", credits=10**9)
            _k, user_key = keys.create_key(s, org, keys.server_secret(settings))
            _k, admin_key = keys.create_key(s, org, keys.server_secret(settings), is_admin=True)
        job_client = JobClient(settings, sessions, InstantExecutor)
        app = build_app(settings, job_client=job_client)
        with TestClient(app, raise_server_exceptions=False):
            yield app, user_key, admin_key


def _fuzz(operation, headers: dict[str, str]) -> Counter:
    """``EXAMPLES`` generated cases of one operation; returns how many got each status class
    (``2xx``, ``4xx``...); raises the first failing check."""
    seen: Counter = Counter()

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        if "engine_id" in (case.path_parameters or {}) and case.path_parameters["engine_id"][:1] != "x":
            # a random engine id is a 404: most cases name a real engine for this route instead
            case.path_parameters["engine_id"] = next(e for end, e in ENGINES if case.path.endswith(end))
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        seen[f"{response.status_code // 100}xx"] += 1

    run()
    return seen


def test_every_operation_conforms_to_the_openapi_document(fuzz_app):
    app, user_key, admin_key = fuzz_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", _without_lifespan(app))
    failures, counts = [], {}
    for result in schema.get_all_operations():
        operation = result.ok()
        key = admin_key if operation.path.startswith("/admin/") else user_key
        try:
            counts[operation.label] = _fuzz(operation, {"Authorization": f"Bearer {key}"})
        except (Exception, BaseExceptionGroup) as exc:  # every failing operation is reported
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    assert len(counts) >= 60
    for label, seen in sorted(counts.items()):
        print(f"{label}: {dict(seen)}")
        # Operations without parameters or body have one distinct request, which Hypothesis
        # sends once; every other operation gets EXAMPLES generated requests.
        takes_input = any(schema[label.split(" ", 1)[1]][label.split(" ", 1)[0]].iter_parameters())
        assert sum(seen.values()) >= (EXAMPLES if takes_input else 1), label
