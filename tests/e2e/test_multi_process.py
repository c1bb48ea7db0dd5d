"""Two ``stableserve serve`` processes on one PostgreSQL database and one Redis (issue 9): rate
limits, idempotent retries and async results are shared whichever process a client reaches, and
an async job whose process is killed with SIGKILL is recovered and finished by the other one."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import cli, free_port
from tests.unit.test_ledger import PG_URL, _pg_admin, pg_unreachable

CREATIVE = "/v2beta/stable-image/upscale/creative"


def _redis_unreachable() -> str | None:
    try:
        import redis

        redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=1).ping()
    except Exception as exc:
        return f"Redis is not reachable: {exc}"
    return None


@pytest.fixture
def shared_env(tmp_path, stableserve_home):
    """The environment two servers share: one PostgreSQL schema, one Redis database (flushed
    of this test's keys by a unique prefix-free db), one secret and one results directory."""
    reason = pg_unreachable() or _redis_unreachable()
    if reason:
        pytest.skip(reason)
    schema = f"test_{secrets.token_hex(6)}"
    _pg_admin(f"CREATE SCHEMA {schema}")
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    (stableserve_home / "demo").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "STABLESERVE_DATABASE_URL": url,
        "STABLESERVE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "STABLESERVE_SECRET_KEY": secrets.token_hex(16),
        "STABLESERVE_RESULTS__DIR": str(tmp_path / "results"),
        "STABLESERVE_RATE_LIMIT__REQUESTS": "6",  # per second: polling stays under it
        "STABLESERVE_RATE_LIMIT__WINDOW_S": "1",
        "STABLESERVE_RATE_LIMIT__TIMEOUT_S": "1",
        "STABLESERVE_JOBS__LEASE_S": "3",
        "STABLESERVE_JOBS__HEARTBEAT_S": "0.5",
    }
    try:
        yield env
    finally:
        _pg_admin(f"DROP SCHEMA {schema} CASCADE")


def _serve(env: dict, home: Path, demo: Path) -> tuple[subprocess.Popen, str]:
    home.mkdir()
    (home / "demo").symlink_to(demo, target_is_directory=True)
    port = free_port()
    log = open(home / "server.log", "w")  # noqa: SIM115 - the process keeps it
    proc = subprocess.Popen(
        [sys.executable, "-m", "stableserve", "serve", "--port", str(port), "--engines", "demo"],
        env={**env, "STABLESERVE_HOME": str(home)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    host = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        assert proc.poll() is None, (home / "server.log").read_text()
        try:
            requests.get(f"{host}/health", timeout=2)
            return proc, host
        except requests.ConnectionError:
            time.sleep(0.3)
    proc.kill()
    pytest.fail("server did not start: " + (home / "server.log").read_text())


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _poll(host: str, auth: dict, job_id: str, timeout: float = 120) -> requests.Response:
    deadline = time.time() + timeout
    while (r := requests.get(f"{host}/v2beta/results/{job_id}", headers=auth, timeout=30)).status_code == 202:
        assert time.time() < deadline, "the job did not finish"
        time.sleep(0.3)
    return r


def test_two_processes_share_limits_retries_and_results(shared_env, tmp_path, stableserve_home):
    env = {**shared_env, "STABLESERVE_HOME": str(tmp_path / "cli")}
    cli(env, "db", "upgrade")
    cli(env, "orgs", "create", "e2e", "--credits", "1000")
    key = cli(env, "keys", "create", "--org", "e2e")
    auth = {"authorization": f"Bearer {key}"}
    a, host_a = _serve(shared_env, tmp_path / "a", stableserve_home / "demo")
    b, host_b = _serve(shared_env, tmp_path / "b", stableserve_home / "demo")
    try:
        # async result: submitted to A, fetched from B
        r = requests.post(
            f"{host_a}{CREATIVE}",
            headers={**auth, "accept": "image/*", "Idempotency-Key": "creative-1"},
            files={"image": ("in.png", _png(), "image/png")},
            data={"prompt": "a castle", "seed": "7"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        done = _poll(host_b, auth, job_id)
        assert done.status_code == 200 and done.headers["content-type"] == "image/png"
        # an idempotent retry reaching B replays A's answer: the same job, no second charge
        retry = requests.post(
            f"{host_b}{CREATIVE}",
            headers={**auth, "accept": "image/*", "Idempotency-Key": "creative-1"},
            files={"image": ("in.png", _png(), "image/png")},
            data={"prompt": "a castle", "seed": "7"},
            timeout=60,
        )
        assert retry.status_code == 200 and retry.json()["id"] == job_id
        assert retry.headers["idempotent-replayed"] == "true"
        # a running async job submitted to A is cancelled through B, whichever process runs it
        slow = {"text_prompts": [{"text": "a castle"}], "width": 512, "height": 512, "steps": 150}
        r = requests.post(
            f"{host_a}/v1/generation/stable-diffusion-xl-beta-v2-2-2/text-to-image",
            headers={**auth, "Prefer": "respond-async"},
            json=slow,
            timeout=60,
        )
        assert r.status_code == 202, r.text
        slow_id = r.json()["id"]
        deadline = time.time() + 60
        while (
            s := requests.get(f"{host_b}/v1/generation/results/{slow_id}", headers=auth, timeout=30)
        ).json().get("state") != "running":
            assert s.status_code == 202 and time.time() < deadline, s.text
            time.sleep(0.3)
        r = requests.delete(f"{host_b}/v1/generation/results/{slow_id}", headers=auth, timeout=30)
        assert r.status_code == 202, r.text
        deadline = time.time() + 60
        while (
            s := requests.get(f"{host_a}/v1/generation/results/{slow_id}", headers=auth, timeout=30)
        ).status_code == 202:
            assert time.time() < deadline, "the cancelled job did not stop"
            time.sleep(0.3)
        assert s.status_code == 400 and s.json()["name"] == "cancelled", s.text
        balance = requests.get(f"{host_a}/v1/user/balance", headers=auth, timeout=30).json()["credits"]
        assert balance == pytest.approx(1000 - 60)
        # the rate limit counts both processes' requests (6 per second, in Redis): a fresh key
        fresh = {"authorization": f"Bearer {cli(env, 'keys', 'create', '--org', 'e2e')}"}
        codes = [
            requests.get(f"{host}/v1/user/balance", headers=fresh, timeout=30).status_code
            for host in (host_a, host_b) * 4
        ]
        assert codes.count(200) == 6 and codes[6:] == [429, 429], codes
    finally:
        _stop(a)
        _stop(b)


def test_an_async_job_of_a_killed_process_is_finished_by_the_other(shared_env, tmp_path, stableserve_home):
    env = {
        **shared_env,
        "STABLESERVE_HOME": str(tmp_path / "cli"),
        "STABLESERVE_RATE_LIMIT__ENABLED": "false",
    }
    cli(env, "db", "upgrade")
    cli(env, "orgs", "create", "e2e", "--credits", "1000")
    key = cli(env, "keys", "create", "--org", "e2e")
    auth = {"authorization": f"Bearer {key}"}
    env.pop("STABLESERVE_HOME")
    a, host_a = _serve(env, tmp_path / "a", stableserve_home / "demo")
    b = None
    try:
        r = requests.post(
            f"{host_a}{CREATIVE}",
            headers={**auth, "accept": "image/*"},
            files={"image": ("in.png", _png(), "image/png")},
            data={"prompt": "a castle", "seed": "7"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        os.kill(a.pid, signal.SIGKILL)  # its worker processes die with it (daemonic children)
        a.wait(timeout=30)
        b, host_b = _serve(env, tmp_path / "b", stableserve_home / "demo")
        done = _poll(host_b, auth, job_id, timeout=180)
        assert done.status_code == 200, done.text
        balance = requests.get(f"{host_b}/v1/user/balance", headers=auth, timeout=30).json()["credits"]
        assert balance == pytest.approx(1000 - 60)  # charged once
    finally:
        _stop(a)
        if b is not None:
            _stop(b)
