"""Input guards on every protocol (issue 8): an oversize body, a decompression bomb and a flood
of multipart parts (over gRPC: of prompts) are refused in each protocol's error shape, before any
work, and cost nothing."""

from __future__ import annotations

import struct
import zlib

import grpc
import pytest

from stableserve.api.grpc.generated import generation_pb2 as pb
from stableserve.api.grpc.generated import generation_pb2_grpc
from stableserve.api.limits import MAX_BODY_BYTES
from tests.api.conftest import png_bytes
from tests.api.test_grpc import balance, channel, grpc_app, make_account_module, request  # noqa: F401
from tests.api.v2 import NONE

ENGINE = "stable-diffusion-v1-5"
V1_I2I = f"/v1/generation/{ENGINE}/image-to-image"
V2_SD3 = "/v2beta/stable-image/generate/sd3"
OPENAI_EDITS = "/v1/images/edits"


def png_bomb(side: int = 30_000) -> bytes:
    """A valid 1-bit grayscale PNG of ``side`` x ``side`` zeros: about 110 KB encoded, 900
    megapixels (900 MB as 8-bit pixels) decoded."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = png_bomb()
    assert len(data) < 1024 * 1024
    return data


def credits(client, account) -> float:
    return client.get("/v1/user/balance", headers=account.headers).json()["credits"]


def v1_error(r, status: int, name: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["name"] == name and body["message"] and body["id"] == r.headers["x-request-id"]


def v2_error(r, status: int, name: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["name"] == name and body["errors"] and len(body["id"]) == 32


def openai_error(r, status: int) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"]


V1_OPTIONS = {"text_prompts[0][text]": "a house", "init_image_mode": "IMAGE_STRENGTH"}


# -- bodies over 10 MiB: 413 in each protocol's body, refused from the declared length ---------------


def test_oversize_body_is_413_on_every_http_protocol(v2, account):
    big = {"init_image": ("big.png", b"\0" * (MAX_BODY_BYTES + 1), "image/png")}
    v1_error(v2.post(V1_I2I, headers=account.headers, data=V1_OPTIONS, files=big), 413, "payload_too_large")
    too_long = {"text_prompts": [{"text": "x" * MAX_BODY_BYTES}]}  # JSON over 10 MiB
    v1_error(
        v2.post(f"/v1/generation/{ENGINE}/text-to-image", headers=account.headers, json=too_long),
        413,
        "payload_too_large",
    )
    v2_error(
        v2.post(
            V2_SD3,
            headers={**account.headers, "accept": "image/*"},
            data={"prompt": "a house", "mode": "image-to-image", "strength": "0.5"},
            files={"image": ("big.png", b"\0" * (MAX_BODY_BYTES + 1), "image/png")},
        ),
        413,
        "payload_too_large",
    )
    r = v2.post(
        OPENAI_EDITS,
        headers=account.headers,
        data={"prompt": "a house"},
        files={"image": ("big.png", b"\0" * (MAX_BODY_BYTES + 1), "image/png")},
    )
    openai_error(r, 413)
    openai_error(
        v2.post("/v1/images/generations", headers=account.headers, json={"prompt": "x" * MAX_BODY_BYTES}), 413
    )
    assert credits(v2, account) == 100


def test_oversize_grpc_message_is_refused_before_the_servicer(grpc_app, make_account):  # noqa: F811
    account = make_account(100)
    req = request()
    req.prompt.append(pb.Prompt(artifact=pb.Artifact(type=pb.ARTIFACT_IMAGE, binary=b"\0" * MAX_BODY_BYTES)))
    with channel(grpc_app, account.key) as ch, pytest.raises(grpc.RpcError) as err:
        list(generation_pb2_grpc.GenerationServiceStub(ch).Generate(req))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert balance(grpc_app, account) == 100


# -- decompression bombs: a 400 naming the field, not an out-of-memory --------------------------------


def test_decompression_bomb_is_400_on_every_http_protocol(v2, account, bomb):
    r = v2.post(
        V1_I2I, headers=account.headers, data=V1_OPTIONS, files={"init_image": ("b.png", bomb, "image/png")}
    )
    v1_error(r, 400, "invalid_pixel_count")
    assert "init_image" in r.json()["message"]
    r = v2.post(
        "/v2beta/stable-image/upscale/fast",
        headers={**account.headers, "accept": "image/*"},
        files={"image": ("b.png", bomb, "image/png")},
    )
    v2_error(r, 400, "bad_request")
    assert "image" in r.json()["errors"][0]
    r = v2.post(
        V2_SD3,
        headers={**account.headers, "accept": "image/*"},
        data={"prompt": "a house", "mode": "image-to-image", "strength": "0.5"},
        files={"image": ("b.png", bomb, "image/png")},
    )
    v2_error(r, 400, "bad_request")
    r = v2.post(
        OPENAI_EDITS,
        headers=account.headers,
        data={"prompt": "a house"},
        files={"image": ("b.png", bomb, "image/png")},
    )
    openai_error(r, 400)
    assert credits(v2, account) == 100


def test_decompression_bomb_over_grpc_is_invalid_argument(grpc_app, make_account, bomb):  # noqa: F811
    account = make_account(100)
    req = request()
    req.prompt.append(pb.Prompt(artifact=pb.Artifact(type=pb.ARTIFACT_IMAGE, binary=bomb)))
    with channel(grpc_app, account.key) as ch, pytest.raises(grpc.RpcError) as err:
        list(generation_pb2_grpc.GenerationServiceStub(ch).Generate(req))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "init_image" in err.value.details() or "pixels" in err.value.details()
    assert balance(grpc_app, account) == 100


# -- floods: too many multipart parts, too many prompts, prompts too long ----------------------------


def flood(n: int = 2000) -> dict[str, str]:
    return {f"extra_{i}": "x" for i in range(n)}


def test_multipart_flood_is_400_on_every_http_protocol(v2, account):
    image = {"init_image": ("i.png", png_bytes(64, 64), "image/png")}
    r = v2.post(V1_I2I, headers=account.headers, data={**V1_OPTIONS, **flood()}, files=image)
    v1_error(r, 400, "bad_request")
    assert "multipart" in r.json()["message"]
    r = v2.post(
        "/v2beta/stable-image/generate/core",
        headers={**account.headers, "accept": "image/*"},
        data={"prompt": "a house", **flood()},
        files=NONE,
    )
    v2_error(r, 400, "bad_request")
    assert "multipart" in r.json()["errors"][0]
    files = [("image", (f"i{i}.png", b"x", "image/png")) for i in range(50)]  # too many files
    openai_error(v2.post(OPENAI_EDITS, headers=account.headers, data={"prompt": "a house"}, files=files), 400)
    assert credits(v2, account) == 100


def test_prompt_floods_are_refused_on_every_protocol(v2, grpc_app, make_account):  # noqa: F811
    account = make_account(100)
    many = {"text_prompts": [{"text": f"p{i}"} for i in range(65)]}
    r = v2.post(f"/v1/generation/{ENGINE}/text-to-image", headers=account.headers, json=many)
    v1_error(r, 400, "invalid_prompts")
    r = v2.post(
        "/v2beta/stable-image/generate/core",
        headers={**account.headers, "accept": "image/*"},
        data={"prompt": "x" * 10_001},
        files=NONE,
    )
    v2_error(r, 400, "bad_request")
    assert r.json()["errors"][0].startswith("prompt:")
    openai_error(
        v2.post("/v1/images/generations", headers=account.headers, json={"prompt": "x" * 10_001}), 400
    )
    req = request()
    req.prompt.extend(pb.Prompt(text=f"p{i}") for i in range(64))  # 65 in all
    long = request()
    long.prompt[0].text = "x" * 10_001
    with channel(grpc_app, account.key) as ch:
        stub = generation_pb2_grpc.GenerationServiceStub(ch)
        for bad in (req, long):
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Generate(bad))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "prompt" in err.value.details()
    assert credits(v2, account) == 100
    assert balance(grpc_app, account) == 100
