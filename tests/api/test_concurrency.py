"""50 simultaneous requests from one organization whose credits cover exactly 30: 30 images,
20 insufficient-credit errors, balance exactly 0, ledger sums agree (SQLite and PostgreSQL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import png_bytes
from tests.unit.test_ledger import migrated_database

ENGINE = "esrgan-v1-x2plus"  # 0.2 credits per image, milliseconds per image on the demo network


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_fifty_requests_thirty_credits_worth(kind, tmp_path, stableserve_home):
    from stableserve.accounts import keys, ledger, orgs
    from stableserve.api.app import build_app
    from stableserve.core.engines import load_registry
    from stableserve.db.session import session_factory

    price = load_registry("demo").get(ENGINE).price.per_image
    with migrated_database(kind, tmp_path) as settings:
        settings = settings.model_copy(update={"engines": "demo"})
        settings.home.mkdir(parents=True, exist_ok=True)
        (stableserve_home / "demo").mkdir(exist_ok=True)
        (settings.home / "demo").symlink_to(stableserve_home / "demo", target_is_directory=True)
        sessions = session_factory(settings)
        with sessions.begin() as s:
            org = orgs.create_org(s, "crowd", credits=Decimal(str(price)) * 30)
            _k, key = keys.create_key(s, org, keys.server_secret(settings))
            org_id = org.id
        image = png_bytes(64, 64)

        with TestClient(build_app(settings), raise_server_exceptions=False) as client:

            def one(_):
                return client.post(f"/v1/generation/{ENGINE}/image-to-image/upscale", data={"width": "512"},
                                   files={"image": ("i.png", image)},
                                   headers={"Authorization": f"Bearer {key}", "Accept": "image/png"})

            with ThreadPoolExecutor(max_workers=50) as pool:
                responses = list(pool.map(one, range(50)))

        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) == 30, [r.text for r in responses if r.status_code not in (200, 402)]
        assert codes.count(402) == 20
        assert all(r.json()["name"] == "insufficient_credits" for r in responses if r.status_code == 402)
        assert all(r.content[:8] == b"\x89PNG\r\n\x1a\n" for r in responses if r.status_code == 200)
        with sessions() as s:
            assert ledger.balance(s, org_id) == Decimal("0")
            summary = ledger.summary(s, org_id)
        assert summary["reserved"] == 0
        assert summary["granted"] - summary["captured"] == summary["balance"] == 0
