"""JSON logs (observability.logs): every line carries the request id of the request it belongs
to (the ``x-request-id`` header; gRPC: initial metadata), and prompts reach the log only when
``settings.logs.include_prompts`` says so."""

from __future__ import annotations

import io
import json
import logging

import pytest

from stableserve.api.grpc.generated import generation_pb2_grpc
from stableserve.observability.logs import RequestIdFilter, formatter, request_id_var
from tests.api.test_grpc import channel, grpc_app, make_account_module, request  # noqa: F401

SECRET = "a lighthouse named zq-7731-secret"
T2I = {"text_prompts": [{"text": SECRET}], "width": 128, "height": 128, "steps": 10}


@pytest.fixture
def json_log():
    """Everything logged at INFO and above while the test runs, as JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter("json"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_every_line_of_a_request_has_its_id_and_no_prompt(v2, account, json_log):
    r = v2.post("/v1/generation/stable-diffusion-v1-5/text-to-image", headers=account.headers, json=T2I)
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    lines = json_log()
    assert lines and all({"time", "level", "logger", "request_id", "message"} <= set(line) for line in lines)
    mine = [line for line in lines if line["request_id"] == rid]
    assert any(line["message"].startswith("job ") and "queued" in line["message"] for line in mine)
    assert any(line["message"].startswith(f"request {rid} POST") for line in mine)
    assert SECRET not in json.dumps(lines)
    error = v2.post("/v1/generation/stable-diffusion-v1-5/text-to-image", headers=account.headers, json={})
    assert error.status_code == 400
    assert any(line["request_id"] == error.headers["x-request-id"] for line in json_log())


def test_prompts_are_logged_only_when_configured(v2, account, json_log, monkeypatch):
    settings = v2.app.state.stableserve.settings
    monkeypatch.setattr(settings.logs, "include_prompts", True)
    r = v2.post("/v1/generation/stable-diffusion-v1-5/text-to-image", headers=account.headers, json=T2I)
    assert r.status_code == 200, r.text
    assert any(SECRET in line["message"] for line in json_log())


def test_grpc_calls_get_a_request_id_in_metadata_and_logs(grpc_app, make_account, json_log):  # noqa: F811
    account = make_account(100)
    with channel(grpc_app, account.key) as ch:
        call = generation_pb2_grpc.GenerationServiceStub(ch).Generate(request())
        answers = list(call)
        rid = dict(call.initial_metadata())["x-request-id"]
    assert answers and len(rid) == 32
    assert any(line["request_id"] == rid and "queued" in line["message"] for line in json_log())


def test_outside_a_request_the_id_is_a_dash():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert RequestIdFilter().filter(record) and record.request_id == "-"
    token = request_id_var.set("abc")
    try:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
        RequestIdFilter().filter(record)
        assert record.request_id == "abc"
        assert json.loads(formatter("json").format(record))["request_id"] == "abc"
    finally:
        request_id_var.reset(token)
