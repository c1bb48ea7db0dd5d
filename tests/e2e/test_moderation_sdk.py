"""End to end: content moderation seen by the official ``stability-sdk==0.8.6`` (its own
virtualenv, ``tests/e2e/sdk_venv.py``) against ``stableserve serve`` with a blocked word
(``STABLESERVE_MODERATION__WORDS``) and an organization's own word added with
``stableserve orgs moderation``.

- ``stability_sdk.api.Context.generate`` (plaintext: the insecure port acting for ``e2e``)
  raises ``ClassifierException`` whose ``prompt`` is the refused prompt;
- ``client.StabilityInference.generate`` (TLS, the key) yields the ``ARTIFACT_TEXT`` artifact
  with ``finish_reason=FILTER`` that its sample scripts warn about;
- neither costs a credit, and an unflagged prompt still generates.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import cli, grpc_serve_args, running_server, wait_for_tls
from tests.e2e.sdk_venv import SDK_SPEC, SdkUnavailable, clean_env, ensure_sdk_venv

CONTEXT_SCRIPT = """
import sys
from stability_sdk import api

ctx = api.Context(host=sys.argv[1], generate_engine_id="stable-diffusion-v1-5")
try:
    out = ctx.generate(prompts=[sys.argv[2]], weights=[1.0], width=512, height=512, steps=10, seed=7)
except api.ClassifierException as exc:
    print("CLASSIFIED:" + str(exc.prompt))
else:
    print("IMAGES:%d" % len(out[1]))
"""

CLIENT_SCRIPT = """
import sys
from stability_sdk import client
import stability_sdk.interfaces.gooseai.generation.generation_pb2 as generation

api = client.StabilityInference(host=sys.argv[1], key=sys.argv[2], engine="stable-diffusion-v1-5")
for answer in api.generate(prompt=sys.argv[3], width=512, height=512, steps=10, seed=7):
    for artifact in answer.artifacts:
        kind = generation.ArtifactType.Name(artifact.type)
        reason = generation.FinishReason.Name(artifact.finish_reason)
        print("ARTIFACT:%s:%s:%s" % (kind, reason, artifact.text))
"""


@pytest.fixture(scope="module")
def sdk() -> Path:
    """The SDK virtualenv's python (skipped only when no package index is reachable)."""
    try:
        return ensure_sdk_venv()
    except SdkUnavailable as exc:
        pytest.skip(f"{SDK_SPEC} virtualenv cannot be built: {exc}")


def _run(python: Path, script: str, *args: str, ca: Path) -> str:
    r = subprocess.run(
        [str(python), "-c", script, *args],
        env=clean_env(GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=str(ca)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    return r.stdout


def test_stability_sdk_sees_a_refused_prompt_as_classifier_exception(tmp_path, stableserve_home, sdk):
    home = tmp_path / "home"
    home.mkdir()
    args, port, insecure, certs = grpc_serve_args(home)
    env = {"STABLESERVE_MODERATION__WORDS": '["forbiddenword"]'}
    with running_server(home, stableserve_home / "demo", serve_args=args, extra_env=env) as srv:
        wait_for_tls(port, certs.ca)

        def balance() -> float:
            r = requests.get(
                f"{srv.host}/v1/user/balance", headers={"Authorization": f"Bearer {srv.key}"}, timeout=30
            )
            return r.json()["credits"]

        plain = f"127.0.0.1:{insecure}"
        before = balance()
        out = _run(sdk, CONTEXT_SCRIPT, plain, "a forbiddenword castle", ca=certs.ca)
        assert "CLASSIFIED:a forbiddenword castle" in out, out
        out = _run(sdk, CLIENT_SCRIPT, f"localhost:{port}", srv.key, "Forbiddenword!", ca=certs.ca)
        assert out.strip().splitlines() == ["ARTIFACT:ARTIFACT_TEXT:FILTER:Forbiddenword!"], out
        assert balance() == before

        # The organization's own word, added while the server runs, applies to the next request.
        cli(srv.env, "orgs", "moderation", "e2e", "--word", "kittens")
        out = _run(sdk, CONTEXT_SCRIPT, plain, "two kittens", ca=certs.ca)
        assert "CLASSIFIED:two kittens" in out, out
        assert balance() == before

        out = _run(sdk, CONTEXT_SCRIPT, plain, "a quiet lighthouse", ca=certs.ca)
        assert "IMAGES:1" in out, out
        assert balance() < before
