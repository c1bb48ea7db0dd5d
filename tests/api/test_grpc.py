"""The gRPC API in process: the app's lifespan starts a TLS ``grpc.aio`` server (dev CA) and an
insecure one; a plain ``grpc`` client with our own stubs drives Generate, ChainGenerate,
ListEngines, GetMe / GetOrganization and the error codes. (The unmodified stability-sdk runs
against a server subprocess in tests/e2e/test_grpc_sdk.py.)"""

from __future__ import annotations

import io
import socket

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from google.protobuf.struct_pb2 import Struct
from PIL import Image

from stableserve.api.grpc.generated import dashboard_pb2 as dpb
from stableserve.api.grpc.generated import dashboard_pb2_grpc, engines_pb2_grpc, generation_pb2_grpc
from stableserve.api.grpc.generated import engines_pb2 as epb
from stableserve.api.grpc.generated import generation_pb2 as pb
from tests.api.conftest import account_factory, png_bytes
from tests.api.v2 import small_v2_registry


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def grpc_app(api_settings, tmp_path_factory, make_account_module):
    """The app with a TLS gRPC port and an insecure one (acting for a fresh organization)."""
    from stableserve.api.app import build_app
    from stableserve.cli_certs import write_dev_certs
    from stableserve.settings import GrpcSettings

    certs = write_dev_certs(tmp_path_factory.mktemp("certs"))
    insecure = make_account_module(50)
    config = GrpcSettings(
        port=_port(),
        tls_cert=certs.server,
        tls_key=certs.server_key,
        insecure_port=_port(),
        insecure_org=insecure.org_name,
    )
    settings = api_settings.model_copy(update={"grpc": config})
    app = build_app(settings, registry=small_v2_registry())  # sizes down to 64 px, for speed
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, config, certs, insecure


@pytest.fixture(scope="module")
def make_account_module(api_settings):
    """``make_account`` for module-scoped fixtures."""
    return account_factory(api_settings)


def channel(grpc_app, key: str | None) -> grpc.Channel:
    """A TLS channel to localhost trusting the dev CA, sending ``Bearer key`` like the SDK."""
    _client, config, certs, _ = grpc_app
    creds = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    if key is not None:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(key))
    return grpc.secure_channel(f"localhost:{config.port}", creds)


def request(engine: str = "stable-diffusion-v1-5", **image) -> pb.Request:
    step = pb.StepParameter(sampler=pb.SamplerParameters(cfg_scale=7.0))
    params = {"height": 64, "width": 64, "steps": 2, "seed": [7], "samples": 1, "parameters": [step], **image}
    return pb.Request(
        engine_id=engine,
        request_id="req-1",
        prompt=[pb.Prompt(text="a lighthouse")],
        image=pb.ImageParameters(**params),
    )


def balance(grpc_app, account) -> float:
    client = grpc_app[0]
    return client.get("/v1/user/balance", headers={"Authorization": f"Bearer {account.key}"}).json()[
        "credits"
    ]


def test_generate_streams_one_answer_per_image_and_charges_like_rest(grpc_app, make_account):
    account = make_account(100)
    with channel(grpc_app, account.key) as ch:
        stub = generation_pb2_grpc.GenerationServiceStub(ch)
        answers = list(stub.Generate(request(samples=3, seed=[42]), wait_for_ready=True))
    arts = [a for ans in answers for a in ans.artifacts]
    assert [a.seed for a in arts] == [42, 43, 44] and [a.index for a in arts] == [0, 1, 2]
    for ans, art in zip(answers, arts, strict=True):
        assert ans.request_id == "req-1" and ans.meta.engine_id == "stable-diffusion-v1-5"
        assert art.type == pb.ARTIFACT_IMAGE and art.mime == "image/png" and art.finish_reason == pb.NULL
        assert art.size == len(art.binary) and art.uuid
        assert Image.open(io.BytesIO(art.binary)).size == (64, 64)


def test_credits_are_charged_exactly_as_rest_charges_the_same_work(grpc_app, make_account):
    via_grpc, via_rest = make_account(100), make_account(100)
    with channel(grpc_app, via_grpc.key) as ch:
        stub = generation_pb2_grpc.GenerationServiceStub(ch)
        list(stub.Generate(request(height=128, width=192, steps=10, samples=2)))
    r = grpc_app[0].post(
        "/v1/generation/stable-diffusion-v1-5/text-to-image",
        headers={"Authorization": f"Bearer {via_rest.key}"},
        json={
            "text_prompts": [{"text": "a lighthouse"}],
            "height": 128,
            "width": 192,
            "steps": 10,
            "samples": 2,
        },
    )
    assert r.status_code == 200, r.text
    assert 100 - balance(grpc_app, via_grpc) == pytest.approx(100 - balance(grpc_app, via_rest))
    assert balance(grpc_app, via_rest) < 100


def test_image_to_image_masking_upscale_and_style_preset(grpc_app, make_account):
    account = make_account(100)
    init = png_bytes(64, 64, color=(10, 120, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    step = pb.StepParameter(
        sampler=pb.SamplerParameters(cfg_scale=7), schedule=pb.ScheduleParameters(start=0.6, end=0.01)
    )
    with channel(grpc_app, account.key) as ch:
        stub = generation_pb2_grpc.GenerationServiceStub(ch)
        i2i = request(parameters=[step])
        i2i.prompt.append(pb.Prompt(artifact=pb.Artifact(type=pb.ARTIFACT_IMAGE, binary=init)))
        out = list(stub.Generate(i2i))[0].artifacts[0]
        assert Image.open(io.BytesIO(out.binary)).size == (64, 64)
        masked = request("stable-inpainting-512-v2-0", parameters=[step])
        masked.prompt.append(pb.Prompt(artifact=pb.Artifact(type=pb.ARTIFACT_IMAGE, binary=init)))
        masked.prompt.append(pb.Prompt(artifact=pb.Artifact(type=pb.ARTIFACT_MASK, binary=buf.getvalue())))
        art = list(stub.Generate(masked))[0].artifacts[0]
        got = np.asarray(Image.open(io.BytesIO(art.binary)).convert("RGB")).astype(int)
        src = np.asarray(Image.open(io.BytesIO(init)).convert("RGB")).astype(int)
        keep = np.asarray(mask) == 0
        assert (got[keep] == src[keep]).all()  # black mask pixels are kept
        up = pb.Request(
            engine_id="esrgan-v1-x2plus",
            request_id="up",
            prompt=[pb.Prompt(artifact=pb.Artifact(type=pb.ARTIFACT_IMAGE, binary=init))],
            image=pb.ImageParameters(seed=[0], steps=20),
        )
        art = list(stub.Generate(up))[0].artifacts[0]
        assert Image.open(io.BytesIO(art.binary)).size == (128, 128)
        styled = request()
        extras = Struct()
        extras.update({"$IPC": {"preset": "anime"}})
        styled.extras.CopyFrom(extras)
        assert list(stub.Generate(styled))[0].artifacts[0].seed == 7
        bad = request()
        bad.extras.update({"$IPC": {"preset": "not-a-preset"}})
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.Generate(bad))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "style_preset" in exc.value.details()


def test_status_codes_and_free_failures(grpc_app, make_account):
    account = make_account(100)
    cases = [
        (None, request(), grpc.StatusCode.UNAUTHENTICATED),
        ("sk-not-a-key", request(), grpc.StatusCode.UNAUTHENTICATED),
        (account.key, request("no-such-engine"), grpc.StatusCode.NOT_FOUND),
        (account.key, request(height=100, width=64), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for key, req, code in cases:
        with channel(grpc_app, key) as ch, pytest.raises(grpc.RpcError) as exc:
            list(generation_pb2_grpc.GenerationServiceStub(ch).Generate(req))
        assert exc.value.code() == code, (key, exc.value.details())
    poor = make_account(0.001)
    with channel(grpc_app, poor.key) as ch, pytest.raises(grpc.RpcError) as exc:
        list(generation_pb2_grpc.GenerationServiceStub(ch).Generate(request()))
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert balance(grpc_app, account) == 100 and balance(grpc_app, poor) == pytest.approx(0.001)


def test_chain_generate_passes_images_between_stages(grpc_app, make_account):
    account = make_account(100)
    first = request()
    second = request(parameters=[pb.StepParameter(schedule=pb.ScheduleParameters(start=0.5))])
    chain = pb.ChainRequest(
        request_id="chain",
        stage=[
            pb.Stage(
                id="a", request=first, on_status=[pb.OnStatus(action=[pb.STAGE_ACTION_PASS], target="b")]
            ),
            pb.Stage(id="b", request=second, on_status=[pb.OnStatus(action=[pb.STAGE_ACTION_RETURN])]),
        ],
    )
    with channel(grpc_app, account.key) as ch:
        answers = list(generation_pb2_grpc.GenerationServiceStub(ch).ChainGenerate(chain))
    assert len(answers) == 1 and answers[0].artifacts[0].mime == "image/png"


def test_engines_and_dashboard(grpc_app, make_account):
    account = make_account(42)
    with channel(grpc_app, account.key) as ch:
        engines = engines_pb2_grpc.EnginesServiceStub(ch).ListEngines(epb.ListEnginesRequest())
        dash = dashboard_pb2_grpc.DashboardServiceStub(ch)
        me = dash.GetMe(dpb.EmptyRequest())
        org = dash.GetOrganization(dpb.GetOrganizationRequest(id=me.organizations[0].organization.id))
        with pytest.raises(grpc.RpcError) as exc:
            dash.GetMetrics(dpb.GetMetricsRequest())
    ids = {e.id for e in engines.engine}
    assert {"stable-diffusion-v1-5", "esrgan-v1-x2plus", "stable-inpainting-512-v2-0"} <= ids
    assert all(e.type == epb.PICTURE and e.ready for e in engines.engine)
    assert me.organizations[0].organization.id == account.org_id
    assert org.payment_info.balance == pytest.approx(42)
    assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_insecure_port_acts_for_its_organization(grpc_app):
    _client, config, _certs, insecure = grpc_app
    with grpc.insecure_channel(f"127.0.0.1:{config.insecure_port}") as ch:
        answers = list(generation_pb2_grpc.GenerationServiceStub(ch).Generate(request()))
    assert answers[0].artifacts[0].seed == 7
    assert balance(grpc_app, insecure) < 50


def test_a_client_that_goes_away_cancels_its_job_and_pays_nothing(grpc_app, make_account):
    import time

    account = make_account(100)
    with channel(grpc_app, account.key) as ch:
        call = generation_pb2_grpc.GenerationServiceStub(ch).Generate(
            request(height=512, width=512, steps=150, samples=4)
        )
        time.sleep(1.5)  # queued and running
        assert balance(grpc_app, account) < 100  # reserved
        call.cancel()
        with pytest.raises(grpc.RpcError) as exc:
            list(call)
    assert exc.value.code() == grpc.StatusCode.CANCELLED
    deadline = time.time() + 60
    while balance(grpc_app, account) != 100 and time.time() < deadline:
        time.sleep(0.2)
    assert balance(grpc_app, account) == 100  # the reservation was released
