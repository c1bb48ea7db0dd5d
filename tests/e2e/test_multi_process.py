"""Two ``stableserve serve`` processes on one PostgreSQL database and one Redis (issue 9): rate
limits, idempotent retries, async results and cancels work whichever process a client reaches,
and an async job whose process is killed with SIGKILL is recovered and finished by the other
one. Async jobs are v1 generations sent with ``Prefer: respond-async``."""

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

ENGINE = "stable-diffusion-xl-beta-v2-2-2"  # 128 x 128 allowed: seconds on a CPU
ASYNC_T2I = f"/v1/generation/{ENGINE}/text-to-image"  # with Prefer: respond-async
SMALL = {"text_prompts": [{"text": "a castle"}], "width": 128, "height": 128, "steps": 10, "seed": 7}


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


def _poll(host: str, auth: dict, job_id: str, timeout: float = 120) -> requests.Response:
    deadline = time.time() + timeout
    while (r := _call("GET", f"{host}/v1/generation/results/{job_id}", headers=auth)).status_code == 202:
        assert time.time() < deadline, "the job did not finish"
        time.sleep(0.3)
    return r


def _call(method: str, url: str, **kwargs) -> requests.Response:
    """One request, repeated after ``Retry-After`` while it is rate limited (429)."""
    while (r := requests.request(method, url, timeout=30, **kwargs)).status_code == 429:
        time.sleep(float(r.headers.get("retry-after", "1")))
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
        price = _call("POST", f"{host_b}/v1/generation/{ENGINE}/price", headers=auth, json=SMALL).json()
        price = price["credits"]
        r = _call("POST", f"{host_a}{ASYNC_T2I}", json=SMALL,
                  headers={**auth, "Prefer": "respond-async", "Idempotency-Key": "async-1"})  # fmt: skip
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        done = _poll(host_b, auth, job_id)
        assert done.status_code == 200 and done.json()["artifacts"][0]["seed"] == 7
        # an idempotent retry reaching B replays A's answer: the same job, no second charge
        retry = _call("POST", f"{host_b}{ASYNC_T2I}", json=SMALL,
                      headers={**auth, "Prefer": "respond-async", "Idempotency-Key": "async-1"})  # fmt: skip
        assert retry.status_code == 202 and retry.json()["id"] == job_id
        assert retry.headers["idempotent-replayed"] == "true"
        # a running async job submitted to A is cancelled through B, whichever process runs it
        slow = {"text_prompts": [{"text": "a castle"}], "width": 512, "height": 512, "steps": 150}
        r = _call("POST", f"{host_a}/v1/generation/stable-diffusion-xl-beta-v2-2-2/text-to-image",
                  headers={**auth, "Prefer": "respond-async"}, json=slow)  # fmt: skip
        assert r.status_code == 202, r.text
        results = f"/v1/generation/results/{r.json()['id']}"
        deadline = time.time() + 60
        while (s := _call("GET", f"{host_b}{results}", headers=auth)).json().get("state") != "running":
            assert s.status_code == 202 and time.time() < deadline, s.text
            time.sleep(0.5)
        r = _call("DELETE", f"{host_b}{results}", headers=auth)
        assert r.status_code == 202, r.text
        deadline = time.time() + 60
        while (s := _call("GET", f"{host_a}{results}", headers=auth)).status_code == 202:
            assert time.time() < deadline, "the cancelled job did not stop"
            time.sleep(0.5)
        assert s.status_code == 400 and s.json()["name"] == "cancelled", s.text
        balance = requests.get(f"{host_a}/v1/user/balance", headers=auth, timeout=30).json()["credits"]
        assert balance == pytest.approx(1000 - price)
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
        slow = {**SMALL, "width": 512, "height": 512, "steps": 30}  # not finished when A dies
        r = _call("POST", f"{host_a}{ASYNC_T2I}", json=slow, headers={**auth, "Prefer": "respond-async"})
        assert r.status_code == 202, r.text
        job_id, price = r.json()["id"], r.json()["credits"]
        os.kill(a.pid, signal.SIGKILL)  # its worker processes die with it (daemonic children)
        a.wait(timeout=30)
        b, host_b = _serve(env, tmp_path / "b", stableserve_home / "demo")
        done = _poll(host_b, auth, job_id, timeout=180)
        assert done.status_code == 200, done.text
        balance = requests.get(f"{host_b}/v1/user/balance", headers=auth, timeout=30).json()["credits"]
        assert balance == pytest.approx(1000 - price)  # charged once
    finally:
        _stop(a)
        if b is not None:
            _stop(b)
