"""End to end: the official ``stability-sdk==0.8.6`` against ``stableserve serve --grpc-port``.

The SDK lives in a virtualenv of its own (``tests/e2e/sdk_venv.py``: it pins ``grpcio<1.64`` and
``protobuf<6``). The server runs as a subprocess with TLS on a port ending in ``443`` (the SDK
sends its key only there), with a certificate from ``stableserve certs dev`` whose CA the SDK
trusts through ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``, and with an insecure port acting for the
test organization. The client scripts in ``tests/e2e/sdk_samples`` run unchanged, as a user
would run them (``STABILITY_HOST=localhost:PORT``, ``STABILITY_KEY``), and so does the SDK's
own command line (``python -m stability_sdk generate ...``).

Every SDK request is repeated over REST v1 with the same parameters: the balance
(``GET /v1/user/balance``) must drop by exactly the same amount, and where REST can express
the same request, the pixels must be identical too (same seeds, same sampler, same schedule).
The tests skip only when the SDK virtualenv cannot be built for lack of network.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image

from stableserve.cli_certs import DevCerts
from tests.e2e.conftest import Server
from tests.e2e.sdk_venv import SDK_SPEC, SdkUnavailable, clean_env, ensure_sdk_venv, sdk_venv_dir

SAMPLES = Path(__file__).parent / "sdk_samples"
SDK_TIMEOUT_S = 300


@dataclass
class GrpcServer:
    """The running server (``srv``: HTTP host, key, home), its gRPC TLS ``port`` and
    ``insecure_port``, the dev ``certs`` and the SDK virtualenv's ``python``."""

    srv: Server
    port: int
    insecure_port: int
    certs: DevCerts
    python: Path

    def run(
        self, cwd: Path, *args: str, host: str | None = None, key: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``python ARGS`` in the SDK virtualenv, in ``cwd``, as a user of the SDK runs it."""
        env = clean_env(
            STABILITY_HOST=host or f"localhost:{self.port}",
            STABILITY_KEY=self.srv.key if key is None else key,
            GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=str(self.certs.ca),
        )
        return subprocess.run(
            [str(self.python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=SDK_TIMEOUT_S
        )

    def sample(self, cwd: Path, script: str, **kw: str) -> subprocess.CompletedProcess[str]:
        """Run ``tests/e2e/sdk_samples/SCRIPT`` unchanged; it must succeed."""
        r = self.run(cwd, str(SAMPLES / script), **kw)
        assert r.returncode == 0, f"{script} failed:\n{r.stdout}\n{r.stderr}\n{self.log_tail()}"
        return r

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log (for failure messages)."""
        text = (self.srv.home / "server.log").read_text(errors="replace")
        return "server log:\n" + "\n".join(text.splitlines()[-lines:])

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.srv.key}"}

    def balance(self) -> float:
        r = requests.get(f"{self.srv.host}/v1/user/balance", headers=self.auth, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["credits"]

    def rest(self, path: str, **kw) -> list[tuple[bytes, int]]:
        """POST ``/v1/generation/{path}`` (JSON answer): [(png bytes, seed), ...]."""
        r = requests.post(
            f"{self.srv.host}/v1/generation/{path}",
            headers={**self.auth, "Accept": "application/json"},
            timeout=SDK_TIMEOUT_S,
            **kw,
        )
        assert r.status_code == 200, r.text
        return [(base64.b64decode(a["base64"]), a["seed"]) for a in r.json()["artifacts"]]


def _pixels(data: bytes | Path) -> tuple[tuple[int, int], bytes]:
    img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    img.load()
    return img.size, img.convert("RGB").tobytes()


@pytest.fixture(scope="session")
def sdk_python() -> Path:
    """The SDK virtualenv's python (built once per machine/cache; skip only without network)."""
    start = time.monotonic()
    try:
        python = ensure_sdk_venv()
    except SdkUnavailable as exc:
        pytest.skip(f"{SDK_SPEC} virtualenv ({sdk_venv_dir()}) cannot be built: {exc}")
    print(f"{SDK_SPEC} virtualenv ready at {python.parent.parent} in {time.monotonic() - start:.1f}s")
    return python


@pytest.fixture(scope="module")
def grpc_server(shared_server, sdk_python) -> GrpcServer:
    """The e2e server (``shared_server``, once with each executor) with gRPC over TLS on a
    port ending in 443 (dev certificates) and an insecure port acting for the test
    organization ``e2e``."""
    srv = shared_server
    return GrpcServer(srv, srv.grpc_port, srv.grpc_insecure_port, srv.certs, sdk_python)


@pytest.fixture
def work(tmp_path) -> Path:
    """A client working directory with ``init_image.png`` (a gradient, 512x512) and
    ``mask_image.png`` (white square in the middle)."""
    grad = Image.linear_gradient("L").resize((512, 512))
    init = Image.merge("RGB", (grad, grad.rotate(90), Image.new("L", (512, 512), 96)))
    init.save(tmp_path / "init_image.png")
    mask = Image.new("L", (512, 512), 0)
    mask.paste(255, (128, 128, 384, 384))
    mask.save(tmp_path / "mask_image.png")
    return tmp_path


def _charged(g: GrpcServer, run) -> tuple[float, object]:
    before = g.balance()
    result = run()
    return round(before - g.balance(), 6), result


def test_text_to_image(grpc_server, work):
    g = grpc_server
    grpc_cost, _ = _charged(g, lambda: g.sample(work, "text_to_image.py"))
    rest_cost, rest = _charged(
        g,
        lambda: g.rest(
            "stable-diffusion-v1-5/text-to-image",
            json={
                "text_prompts": [
                    {
                        "text": "expansive landscape rolling greens with gargantuan yggdrasil, intricate "
                        "world-spanning roots towering under a blue alien sky, masterful, ghibli"
                    }
                ],
                "seed": 4253978046,
                "steps": 10,
                "cfg_scale": 8.0,
                "width": 512,
                "height": 512,
                "samples": 1,
                "sampler": "K_DPMPP_2M",
            },
        ),
    )
    assert grpc_cost == rest_cost > 0
    assert rest[0][1] == 4253978046
    assert _pixels(work / "4253978046.png") == _pixels(rest[0][0])


def test_image_to_image_with_start_schedule(grpc_server, work):
    g = grpc_server
    grpc_cost, _ = _charged(g, lambda: g.sample(work, "image_to_image.py"))
    with open(work / "init_image.png", "rb") as init:
        rest_cost, rest = _charged(
            g,
            lambda: g.rest(
                "stable-diffusion-v1-5/image-to-image",
                files={"init_image": init},
                data={
                    "text_prompts[0][text]": "crayon drawing of rocket ship launching from forest",
                    "init_image_mode": "STEP_SCHEDULE",
                    "step_schedule_start": 0.6,
                    "step_schedule_end": 0.01,
                    "seed": 123463446,
                    "steps": 10,
                    "cfg_scale": 8.0,
                    "sampler": "K_DPMPP_2M",
                },
            ),
        )
    assert grpc_cost == rest_cost > 0
    assert _pixels(work / "123463446-img2img.png") == _pixels(rest[0][0])


def test_inpainting_with_a_mask(grpc_server, work):
    g = grpc_server
    grpc_cost, _ = _charged(g, lambda: g.sample(work, "inpainting.py"))
    out = Image.open(work / "44332211-inpainted.png").convert("RGB")
    init = Image.open(work / "init_image.png").convert("RGB")
    assert out.size == (512, 512)
    for xy in ((10, 10), (500, 20), (64, 450), (511, 511)):  # outside the white square: unchanged
        assert out.getpixel(xy) == init.getpixel(xy)
    assert out.crop((160, 160, 352, 352)).tobytes() != init.crop((160, 160, 352, 352)).tobytes()
    with open(work / "init_image.png", "rb") as init_f, open(work / "mask_image.png", "rb") as mask_f:
        rest_cost, _ = _charged(
            g,
            lambda: g.rest(
                "stable-inpainting-512-v2-0/image-to-image/masking",
                files={"init_image": init_f, "mask_image": mask_f},
                data={
                    "mask_source": "MASK_IMAGE_WHITE",
                    "text_prompts[0][text]": "crayon drawing of rocket ship launching from forest",
                    "seed": 44332211,
                    "steps": 10,
                    "cfg_scale": 8.0,
                    "sampler": "K_DPMPP_2M",
                },
            ),
        )
    assert grpc_cost == rest_cost > 0


def test_three_samples_from_one_seed(grpc_server, work):
    g = grpc_server
    grpc_cost, _ = _charged(g, lambda: g.sample(work, "samples_seed.py"))
    names = sorted(p.name for p in work.glob("sample-*.png"))
    assert names == ["sample-42.png", "sample-43.png", "sample-44.png"]
    rest_cost, rest = _charged(
        g,
        lambda: g.rest(
            "stable-diffusion-v1-5/text-to-image",
            json={
                "text_prompts": [{"text": "a lighthouse on a cliff at sunset, oil painting"}],
                "seed": 42,
                "steps": 10,
                "width": 512,
                "height": 512,
                "samples": 3,
            },
        ),
    )
    assert grpc_cost == rest_cost > 0
    assert [seed for _, seed in rest] == [42, 43, 44]
    for png, seed in rest:
        assert _pixels(work / f"sample-{seed}.png") == _pixels(png)


def test_style_preset(grpc_server, work):
    g = grpc_server
    grpc_cost, _ = _charged(g, lambda: g.sample(work, "style_preset.py"))
    body = {
        "text_prompts": [{"text": "a cat samurai standing in the rain"}],
        "seed": 1234,
        "steps": 10,
        "width": 512,
        "height": 512,
    }
    rest_cost, rest = _charged(
        g, lambda: g.rest("stable-diffusion-v1-5/text-to-image", json={**body, "style_preset": "anime"})
    )
    assert grpc_cost == rest_cost > 0
    assert _pixels(work / "anime-1234.png") == _pixels(rest[0][0])
    # The preset reached the model: without it the same request gives another image.
    plain = g.rest("stable-diffusion-v1-5/text-to-image", json=body)
    assert _pixels(plain[0][0]) != _pixels(rest[0][0])


def test_upscale(grpc_server, work):
    g = grpc_server
    grpc_cost, _ = _charged(g, lambda: g.sample(work, "upscale.py"))
    with open(work / "init_image.png", "rb") as image:
        rest_cost, rest = _charged(
            g, lambda: g.rest("esrgan-v1-x2plus/image-to-image/upscale", files={"image": image})
        )
    assert grpc_cost == rest_cost > 0
    size, pixels = _pixels(work / "imageupscaled.png")
    assert size == (1024, 1024)
    assert (size, pixels) == _pixels(rest[0][0])


def test_sdk_command_line(grpc_server, work):
    g = grpc_server
    prompt = "A stunning house"
    grpc_cost, r = _charged(
        g,
        lambda: g.run(
            work,
            "-m", "stability_sdk", "generate",
            "-e", "stable-diffusion-v1-5", "-W", "512", "-H", "512",
            "-s", "10", "-S", "7", "-n", "2", "-A", "k_euler",
            prompt,
        ),  # fmt: skip
    )
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{g.log_tail()}"
    written = sorted(work.glob("generation_*"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert [p.suffix for p in written] == [".png", ".png"], (written, r.stderr)  # from Artifact.mime
    rest_cost, rest = _charged(
        g,
        lambda: g.rest(
            "stable-diffusion-v1-5/text-to-image",
            json={
                "text_prompts": [{"text": prompt}],
                "seed": 7,
                "steps": 10,
                "width": 512,
                "height": 512,
                "samples": 2,
                "sampler": "K_EULER",
            },
        ),
    )
    assert grpc_cost == rest_cost > 0
    assert [seed for _, seed in rest] == [7, 8]
    assert [_pixels(p) for p in written] == [_pixels(png) for png, _ in rest]


def test_bad_key_is_unauthenticated_and_free(grpc_server, work):
    g = grpc_server
    before = g.balance()
    r = g.run(work, str(SAMPLES / "text_to_image.py"), key="sk-this-key-does-not-exist")
    assert r.returncode != 0
    assert "StatusCode.UNAUTHENTICATED" in r.stderr, r.stderr
    assert sorted(p.name for p in work.glob("*.png")) == ["init_image.png", "mask_image.png"]
    assert g.balance() == before


def test_insecure_port_acts_for_the_configured_org(grpc_server, work):
    g = grpc_server
    # Plaintext: the SDK sends no key there (its host does not end in 443); the server acts
    # for the organization given by --grpc-insecure-org (the test org).
    tls_cost, _ = _charged(g, lambda: g.sample(work, "text_to_image.py"))
    tls_png = _pixels(work / "4253978046.png")
    shutil.move(work / "4253978046.png", work / "tls.png")
    plain_cost, _ = _charged(
        g, lambda: g.sample(work, "text_to_image.py", host=f"127.0.0.1:{g.insecure_port}", key="")
    )
    assert plain_cost == tls_cost > 0
    assert _pixels(work / "4253978046.png") == tls_png
