"""API tier: the real app (FastAPI TestClient), a real SQLite database, real worker processes
running demo engines. One app per test module; each test gets its own organization and key."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stableserve.settings import Settings


@dataclass
class Account:
    """An organization with an API key: ``headers`` authenticate as it."""

    org_id: str
    org_name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api_settings(request, tmp_path_factory, stableserve_home) -> Iterator[Settings]:
    """Settings over a fresh migrated database (SQLite file, or a throwaway PostgreSQL schema,
    skipped when no server is reachable); demo pipelines shared with the session home."""
    from tests.unit.test_ledger import migrated_database

    with migrated_database(request.param, tmp_path_factory.mktemp("api-db")) as settings:
        settings = settings.model_copy(update={"engines": "demo"})
        settings.home.mkdir(parents=True, exist_ok=True)
        (stableserve_home / "demo").mkdir(exist_ok=True)
        (settings.home / "demo").symlink_to(stableserve_home / "demo", target_is_directory=True)
        yield settings


@pytest.fixture(scope="module")
def client(api_settings) -> Iterator[TestClient]:
    """The app with its lifespan (worker processes) running."""
    from stableserve.api.app import build_app

    with TestClient(build_app(api_settings), raise_server_exceptions=False) as c:
        yield c


def account_factory(settings: Settings):
    """``make(credits=100)`` -> Account with a fresh org and key, on ``settings``' database."""
    from stableserve.accounts import keys, orgs
    from stableserve.db.session import session_factory

    sessions = session_factory(settings)

    def make(credits: float = 100) -> Account:
        name = f"org-{secrets.token_hex(4)}"
        with sessions() as s, s.begin():
            org = orgs.create_org(s, name, credits=credits)
            _key, secret = keys.create_key(s, org, keys.server_secret(settings))
            return Account(org_id=org.id, org_name=name, key=secret)

    return make


@pytest.fixture
def make_account(api_settings):
    """Factory: ``make_account(credits=100)`` -> Account with a fresh org and key."""
    return account_factory(api_settings)


@pytest.fixture
def account(make_account) -> Account:
    """An organization with 100 credits."""
    return make_account(100)


def png_bytes(w: int, h: int, mode: str = "RGB", color=(30, 120, 200)) -> bytes:
    """An encoded PNG of one color."""
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def v2(api_settings):
    """The app on the small v2 test registry (the worker processes run the same demo pipelines)."""
    from stableserve.api.app import build_app
    from tests.api.v2 import small_v2_registry

    app = build_app(api_settings, registry=small_v2_registry())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
