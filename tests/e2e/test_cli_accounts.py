"""The account commands as a user runs them: ``python -m stableserve ...`` subprocesses on a
fresh ``STABLESERVE_HOME`` (SQLite), including beside another writer of the same database."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest


def cli(home: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``python -m stableserve ARGS`` with ``STABLESERVE_HOME=home`` (default SQLite, no env secret)."""
    env = {**os.environ, "STABLESERVE_HOME": str(home)}
    env.pop("STABLESERVE_DATABASE_URL", None)
    env.pop("STABLESERVE_SECRET_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "stableserve", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture
def home(tmp_path) -> Path:
    """A fresh, not yet existing data directory."""
    return tmp_path / "home"


def test_orgs_keys_credits_round_trip(home):
    created = cli(home, "orgs", "create", "acme", "--credits", "12.5")
    assert created.returncode == 0, created.stderr
    assert re.search(r"created organization acme \(org-[0-9a-f]{24}\) with 12\.5 credits", created.stdout)
    assert (home / "stableserve.db").exists() and (home / "secret.key").exists() is False

    dup = cli(home, "orgs", "create", "acme")
    assert dup.returncode == 2 and "error: an organization named 'acme' already exists" in dup.stderr
    assert "Traceback" not in dup.stderr

    made = cli(home, "keys", "create", "--org", "acme")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert re.fullmatch(r"sk-[A-Za-z0-9_-]{48}", key), made.stdout  # only the key on stdout
    assert oct((home / "secret.key").stat().st_mode & 0o777) == "0o600"

    listed = cli(home, "keys", "list", "--org", "acme")
    assert listed.returncode == 0, listed.stderr
    key_id = re.search(r"key-[0-9a-f]{16}", listed.stdout).group(0)
    assert f"sk-{key[3:10]}..." in listed.stdout and key not in listed.stdout

    granted = cli(home, "credits", "grant", "--org", "acme", "2")
    assert granted.returncode == 0 and "balance 14.5" in granted.stdout, granted.stderr
    shown = cli(home, "credits", "show", "--org", "acme")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"balance\s+14\.5 credits", shown.stdout) and re.search(r"granted\s+14\.5", shown.stdout)

    orgs = cli(home, "orgs", "list")
    assert orgs.returncode == 0 and "acme" in orgs.stdout and "acme@localhost" in orgs.stdout

    revoked = cli(home, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and f"revoked {key_id}" in revoked.stdout, revoked.stderr
    relisted = cli(home, "keys", "list", "--org", "acme")
    assert re.search(rf"{key_id}.*UTC.*UTC", relisted.stdout)  # created and revoked times shown


def test_errors_exit_2_without_traceback(home):
    for args, message in (
        (("keys", "revoke", "key-0000000000000000"), "error: API key key-0000000000000000 not found"),
        (("keys", "create", "--org", "nope"), "error: organization nope not found"),
        (("credits", "grant", "--org", "nope", "abc"), "error: not a number of credits: 'abc'"),
        (("credits", "show", "--org", "nope"), "error: organization nope not found"),
    ):
        r = cli(home, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr
    r = cli(home, "db", "upgrade")
    from stableserve.db.migrate import head_revision

    assert r.returncode == 0 and f"is at revision {head_revision()}" in r.stdout, r.stderr


def test_commands_wait_for_a_concurrent_writer(home):
    """A server holding the SQLite write lock delays a command; it does not fail it."""
    assert cli(home, "orgs", "create", "busy", "--credits", "1").returncode == 0
    conn = sqlite3.connect(home / "stableserve.db", isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")  # what a running server's ledger transaction holds
    timer = threading.Timer(3.0, lambda: conn.execute("COMMIT"))
    timer.start()
    try:
        r = cli(home, "credits", "grant", "--org", "busy", "4")
    finally:
        timer.join()
        conn.close()
    assert r.returncode == 0 and "balance 5" in r.stdout, r.stderr


def test_admin_keys_plans_and_monthly_grants(home):
    from stableserve.accounts import authenticate, server_secret
    from stableserve.db.session import dispose, session_factory
    from stableserve.settings import Settings

    assert cli(home, "orgs", "create", "studio", "--credits", "1").returncode == 0
    made = cli(home, "keys", "create", "--org", "studio", "--admin")
    assert made.returncode == 0 and "created admin key" in made.stderr, made.stderr
    key = made.stdout.strip()
    assert re.fullmatch(r"sk-[A-Za-z0-9_-]{48}", key), made.stdout
    plain = cli(home, "keys", "create", "--org", "studio").stdout.strip()
    listed = cli(home, "keys", "list", "--org", "studio")
    assert re.search(rf"sk-{re.escape(key[3:10])}\.\.\..*yes", listed.stdout)
    assert re.search(rf"sk-{re.escape(plain[3:10])}\.\.\..*no", listed.stdout)
    settings = Settings(home=home, database_url=None, secret_key=None)
    try:
        with session_factory(settings).begin() as s:
            assert authenticate(s, key, server_secret(settings)).is_admin is True
            assert authenticate(s, plain, server_secret(settings)).is_admin is False
    finally:
        dispose(settings)

    plans = cli(home, "plans", "list")
    assert plans.returncode == 0, plans.stderr
    for plan, credits in (("free", "25"), ("creator", "1,000"), ("pro", "5,000"), ("enterprise", "50,000")):
        assert re.search(rf"{plan}\s.*\s{credits}\s", plans.stdout), plans.stdout

    set_plan = cli(home, "orgs", "set-plan", "studio", "creator")
    assert set_plan.returncode == 0 and "organization studio is on plan creator" in set_plan.stdout
    first = cli(home, "plans", "apply-grants")
    assert first.returncode == 0 and re.search(r"applied 1 monthly grant\(s\) for \d{4}-\d{2}", first.stdout)
    assert "applied 0 monthly grant(s)" in cli(home, "plans", "apply-grants").stdout  # once a month
    assert re.search(r"balance\s+1,001 credits", cli(home, "credits", "show", "--org", "studio").stdout)
    assert re.search(r"creator\s.*\s1\s", cli(home, "plans", "list").stdout)  # one organization on it

    weight = cli(home, "plans", "set-weight", "pro", "3")
    assert weight.returncode == 0 and "plan pro: weight 3" in weight.stdout
    assert re.search(r"pro\s.*│\s+3\s+│\s+0\s", cli(home, "plans", "list").stdout)  # weight 3, no org
    bad = cli(home, "plans", "set-weight", "pro", "0")
    assert bad.returncode == 2 and "weight: must be an integer from 1 to 100" in bad.stderr

    bad = cli(home, "orgs", "set-plan", "studio", "nope")
    assert bad.returncode == 2 and "error: plan nope not found" in bad.stderr
    assert "Traceback" not in bad.stderr
    off = cli(home, "orgs", "set-plan", "studio", "none")
    assert off.returncode == 0 and "organization studio is on plan none" in off.stdout
