"""Content moderation through the real app, on every protocol: a flagged prompt (word, pattern
or classifier plugin) is refused before any work and costs nothing (no ledger entry, no job);
per-organization settings override the server's; output images go through the image safety
checker (a test plugin that flags every image) and come back blurred, marked CONTENT_FILTERED
(gRPC FILTER). Server settings: mode ``block``, word ``forbiddenword``, pattern ``bad\\d+``,
classifier ``SaysNo`` ("classifier-says-no"), image checker ``FlagEveryImage``."""

from __future__ import annotations

import base64
import io
import socket
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stableserve.api.grpc.generated import generation_pb2 as pb
from stableserve.api.grpc.generated import generation_pb2_grpc
from stableserve.core.moderation import MESSAGE
from tests.api.conftest import Account, account_factory, png_bytes
from tests.api.v2 import assert_v2_error, poll, post

FLAGGED = ["a forbiddenword castle", "a BAD42 castle", "a classifier-says-no castle"]
SD15 = "stable-diffusion-v1-5"


@dataclass
class Env:
    client: TestClient
    settings: object
    grpc_org: Account
    grpc_port: int


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(api_settings):
    """The app with moderation configured and an insecure gRPC port acting for ``grpc_org``."""
    from stableserve.api.app import build_app
    from stableserve.settings import GrpcSettings, ModerationSettings
    from tests.api.v2 import small_v2_registry

    grpc_org = account_factory(api_settings)(100)
    config = GrpcSettings(insecure_port=_port(), insecure_org=grpc_org.org_name)
    moderation = ModerationSettings(
        mode="block",
        words=["forbiddenword"],
        patterns=[r"bad\d+"],
        classifier="tests.api.moderation_plugins:SaysNo",
        image_checker="tests.api.moderation_plugins:FlagEveryImage",
    )
    settings = api_settings.model_copy(update={"grpc": config, "moderation": moderation})
    with TestClient(build_app(settings, registry=small_v2_registry()), raise_server_exceptions=False) as c:
        yield Env(c, settings, grpc_org, config.insecure_port)


def _balance(env: Env, account: Account) -> float:
    from stableserve.accounts import balance
    from stableserve.db.session import session_factory

    with session_factory(env.settings)() as s:
        return float(balance(s, account.org_id))


def _jobs(env: Env, account: Account) -> int:
    from sqlalchemy import func, select

    from stableserve.db.models import Job
    from stableserve.db.session import session_factory

    with session_factory(env.settings)() as s:
        query = select(func.count()).select_from(Job).where(Job.org_id == account.org_id)
        return s.execute(query).scalar_one()


def _set_policy(env: Env, account: Account, **kw) -> None:
    from stableserve.accounts.moderation import set_policy
    from stableserve.db.session import session_factory

    with session_factory(env.settings).begin() as s:
        set_policy(s, account.org_id, **kw)


def _energy(data: bytes) -> float:
    """Mean absolute difference of neighbouring pixels (high for noise, low once blurred)."""
    a = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)
    return float(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())


def _t2i(prompt: str, *, negative: str | None = None, seed: int = 7) -> dict:
    prompts = [{"text": prompt, "weight": 1}] + ([{"text": negative, "weight": -1}] if negative else [])
    return {"text_prompts": prompts, "width": 128, "height": 128, "steps": 10, "seed": seed}


IMG = png_bytes(64, 64)
MASK = png_bytes(64, 64, mode="L", color=255)
CLEAR = png_bytes(64, 64, mode="RGBA", color=(0, 0, 0, 0))


def _v1(prefix: str, raw_key: bool = False):
    def call(c: TestClient, a: Account, text: str):
        headers = {"Authorization": a.key} if raw_key else a.headers
        return c.post(f"/{prefix}/generation/{SD15}/text-to-image", headers=headers, json=_t2i(text))

    return call


def _v1_image_to_image(c, a, text):
    return c.post(
        f"/v1/generation/{SD15}/image-to-image",
        headers=a.headers,
        data={"text_prompts[0][text]": text, "steps": "10"},
        files={"init_image": ("i.png", IMG, "image/png")},
    )


def _openai_generation(c, a, text):
    body = {"prompt": text, "model": SD15, "size": "64x64", "steps": 2, "response_format": "b64_json"}
    return c.post("/v1/images/generations", headers=a.headers, json=body)


def _openai_edit(c, a, text):
    return c.post(
        "/v1/images/edits",
        headers=a.headers,
        data={"prompt": text, "model": "stable-inpainting-512-v2-0", "steps": "2"},
        files={"image": ("i.png", IMG, "image/png"), "mask": ("m.png", CLEAR, "image/png")},
    )


HTTP = {
    "v1 text-to-image": ("v1", _v1("v1")),
    "v1beta text-to-image": ("v1", _v1("v1beta")),
    "v1alpha text-to-image": ("v1", _v1("v1alpha", raw_key=True)),
    "v1 image-to-image": ("v1", _v1_image_to_image),
    "v2beta generate/core": ("v2", lambda c, a, t: post(c, "generate/core", a, {"prompt": t})),
    "v2beta generate/sd3": ("v2", lambda c, a, t: post(c, "generate/sd3", a, {"prompt": t})),
    "v2beta edit/inpaint": (
        "v2",
        lambda c, a, t: post(c, "edit/inpaint", a, {"prompt": t}, files={"image": IMG, "mask": MASK}),
    ),
    "v2beta edit/search-and-replace search_prompt": (
        "v2",
        lambda c, a, t: post(
            c, "edit/search-and-replace", a, {"prompt": "a dog", "search_prompt": t}, files={"image": IMG}
        ),
    ),
    "v2beta upscale/creative (async)": (
        "v2",
        lambda c, a, t: post(c, "upscale/creative", a, {"prompt": t}, files={"image": IMG}),
    ),
    "openai images/generations": ("openai", _openai_generation),
    "openai images/edits": ("openai", _openai_edit),
}


def assert_refused(family: str, r) -> None:
    """The protocol's answer to a flagged prompt."""
    if family == "v2":
        assert_v2_error(r, 403, "content_moderation")
        assert r.json()["errors"] == [MESSAGE]
    elif family == "v1":
        assert r.status_code == 400, r.text
        body = r.json()
        assert set(body) == {"id", "name", "message"} and body["name"] == "invalid_prompts", body
        assert "not charged" in body["message"] and r.headers["x-request-id"] == body["id"]
    else:
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "content_policy_violation" and error["type"] == "invalid_request_error"
        assert error["message"] == MESSAGE and error["param"] is None


@pytest.mark.parametrize("text", FLAGGED, ids=["word", "pattern", "classifier"])
@pytest.mark.parametrize("case", list(HTTP))
def test_a_flagged_prompt_is_refused_uncharged_on_every_http_route(env, make_account, case, text):
    family, call = HTTP[case]
    account = make_account(100)
    r = call(env.client, account, text)
    assert_refused(family, r)
    assert _balance(env, account) == 100 and _jobs(env, account) == 0  # nothing reserved, no job


def _grpc_request(text: str, request_id: str = "req-mod") -> pb.Request:
    step = pb.StepParameter(sampler=pb.SamplerParameters(cfg_scale=7.0))
    return pb.Request(
        engine_id=SD15,
        request_id=request_id,
        prompt=[pb.Prompt(text=text)],
        image=pb.ImageParameters(height=64, width=64, steps=2, seed=[7], samples=1, parameters=[step]),
    )


def test_grpc_answers_a_flagged_prompt_with_a_filter_text_artifact_and_charges_nothing(env):
    org = env.grpc_org
    before = _balance(env, org)
    with grpc.insecure_channel(f"127.0.0.1:{env.grpc_port}") as ch:
        stub = generation_pb2_grpc.GenerationServiceStub(ch)
        answers = list(stub.Generate(_grpc_request(FLAGGED[0]), wait_for_ready=True, timeout=60))
        stage = pb.Stage(id="s1", request=_grpc_request(FLAGGED[1]))
        chain = pb.ChainRequest(request_id="chain-1", stage=[stage])
        chained = list(stub.ChainGenerate(chain, timeout=60))
    for got, text, rid in ((answers, FLAGGED[0], "req-mod"), (chained, FLAGGED[1], "req-mod")):
        assert len(got) == 1 and got[0].request_id == rid and len(got[0].artifacts) == 1
        art = got[0].artifacts[0]
        assert art.type == pb.ARTIFACT_TEXT and art.finish_reason == pb.FILTER and art.text == text
    assert _balance(env, org) == before and _jobs(env, org) == 0


def test_grpc_images_are_blurred_and_marked_filter(env):
    org = env.grpc_org
    with grpc.insecure_channel(f"127.0.0.1:{env.grpc_port}") as ch:
        stub = generation_pb2_grpc.GenerationServiceStub(ch)
        answers = list(stub.Generate(_grpc_request("a lighthouse"), wait_for_ready=True, timeout=120))
    art = answers[0].artifacts[0]
    assert art.type == pb.ARTIFACT_IMAGE and art.finish_reason == pb.FILTER
    assert _balance(env, org) < 100  # filtered images are still a successful, charged generation


def test_negative_prompts_are_not_checked(env, make_account):
    account = make_account(100)
    r = env.client.post(
        f"/v1/generation/{SD15}/text-to-image",
        headers={**account.headers, "Accept": "image/png"},
        json=_t2i("a calm lake", negative="forbiddenword, bad42"),
    )
    assert r.status_code == 200, r.text
    assert r.headers["Finish-Reason"] == "CONTENT_FILTERED"  # the image checker flags every image
    assert _balance(env, account) < 100


def test_organization_settings_override_the_server(env, make_account):
    off, filtered, strict, plain = (make_account(100) for _ in range(4))
    _set_policy(env, off, mode="off")
    _set_policy(env, filtered, mode="filter")
    _set_policy(env, strict, words=["kittens"])
    url = f"/v1/generation/{SD15}/text-to-image"

    # off: the server's word passes and the image is left alone.
    r_off = env.client.post(url, headers=off.headers, json=_t2i(FLAGGED[0], seed=11))
    assert r_off.status_code == 200, r_off.text
    art_off = r_off.json()["artifacts"][0]
    assert art_off["finishReason"] == "SUCCESS"
    # filter: the prompt passes, the image (same seed) is blurred and marked.
    r_filter = env.client.post(url, headers=filtered.headers, json=_t2i(FLAGGED[0], seed=11))
    assert r_filter.status_code == 200, r_filter.text
    art_filter = r_filter.json()["artifacts"][0]
    assert art_filter["finishReason"] == "CONTENT_FILTERED"
    sharp, blurred = (_energy(base64.b64decode(a["base64"])) for a in (art_off, art_filter))
    assert blurred < sharp / 5, (sharp, blurred)
    # The organization's own words are added to the server's; other organizations are unaffected.
    assert_refused("v1", env.client.post(url, headers=strict.headers, json=_t2i("two kittens")))
    assert_refused("v1", env.client.post(url, headers=strict.headers, json=_t2i(FLAGGED[0])))
    assert env.client.post(url, headers=plain.headers, json=_t2i("two kittens")).status_code == 200
    assert _balance(env, strict) == 100 and _jobs(env, strict) == 0


def test_v2beta_marks_filtered_images_in_both_accept_modes(env, make_account):
    account = make_account(100)
    r = post(env.client, "generate/core", account, {"prompt": "a lighthouse", "seed": "3"})
    assert r.status_code == 200, r.text
    assert r.headers["finish-reason"] == "CONTENT_FILTERED"
    r = post(env.client, "generate/core", account, {"prompt": "a lighthouse"}, accept="application/json")
    assert r.status_code == 200 and r.json()["finish_reason"] == "CONTENT_FILTERED"
    job = post(env.client, "upscale/creative", account, {"prompt": "a castle"}, files={"image": IMG})
    assert job.status_code == 200, job.text
    done = poll(env.client, account, job.json()["id"])
    assert done.status_code == 200 and done.headers["finish-reason"] == "CONTENT_FILTERED"
