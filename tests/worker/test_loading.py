"""Real loading code on tiny pipelines: HF-cache, local-folder and URL sources; readiness; pull."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from stableserve.core.engines import EngineSource, Family, load_registry
from stableserve.errors import EngineNotReady
from stableserve.inference.demo import ensure_demo_pipeline
from stableserve.inference.loading import HubUnreachable, load_engine, pull, readiness
from stableserve.settings import Settings

PUBLIC = load_registry("public")


@pytest.fixture
def settings(tmp_path, stableserve_home) -> Settings:
    """Own models dir per test, shared demo builds (demo_dir under the session home)."""
    s = Settings(home=tmp_path)
    (tmp_path / "demo").symlink_to(Path(stableserve_home) / "demo", target_is_directory=True)
    (Path(stableserve_home) / "demo").mkdir(exist_ok=True)
    return s


def _fake_hf_cache(settings: Settings, repo: str, folder: Path) -> None:
    """Lay out a Hugging Face cache entry (refs/main -> snapshot) holding ``folder``'s files."""
    base = settings.models_dir / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(folder, base / "snapshots" / commit)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)


def test_hf_source_not_ready_until_cached_then_loads_with_from_pretrained(settings):
    engine = PUBLIC.get("stable-diffusion-v1-5")
    r = readiness(engine, settings)
    assert not r.ready
    assert r.reason.startswith("engine stable-diffusion-v1-5 is not ready: ")
    assert r.reason.endswith("run `stableserve models pull stable-diffusion-v1-5`")
    with pytest.raises(EngineNotReady):
        load_engine(engine, settings)
    _fake_hf_cache(settings, engine.source.repo, ensure_demo_pipeline(Family.SD1, settings.demo_dir))
    assert readiness(engine, settings).ready
    loaded = load_engine(engine, settings)
    assert type(loaded.pipeline).__name__ == "StableDiffusionPipeline" and loaded.nbytes > 0


def test_local_folder_source(settings, tmp_path):
    engine = PUBLIC.get("stable-diffusion-xl-1024-v1-0")
    missing = engine.model_copy(update={"source": EngineSource(kind="local", path=str(tmp_path / "nope"))})
    assert not readiness(missing, settings).ready
    folder = ensure_demo_pipeline(Family.SDXL, settings.demo_dir)
    local = engine.model_copy(update={"source": EngineSource(kind="local", path=str(folder))})
    assert readiness(local, settings).ready
    assert type(load_engine(local, settings).pipeline).__name__ == "StableDiffusionXLPipeline"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def file_server(tmp_path):
    """A loopback HTTP server serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = lambda *a, **k: _Quiet(*a, directory=str(www), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", www
    server.shutdown()


def test_url_source_pull_verifies_and_loads_with_spandrel(settings, file_server):
    base, www = file_server
    weights = ensure_demo_pipeline(Family.UPSCALER_ESRGAN, settings.demo_dir) / "model.safetensors"
    shutil.copy(weights, www / "RealESRGAN_x2plus.safetensors")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    engine = PUBLIC.get("esrgan-v1-x2plus").model_copy(
        update={
            "source": EngineSource(kind="url", url=f"{base}/RealESRGAN_x2plus.safetensors", sha256=digest)
        }
    )
    assert not readiness(engine, settings).ready
    seen = []
    path = pull(engine, settings, progress=lambda d, t: seen.append((d, t)))
    assert path.read_bytes() == weights.read_bytes() and seen[-1] == (len(weights.read_bytes()),) * 2
    assert readiness(engine, settings).ready
    loaded = load_engine(engine, settings)
    assert loaded.upscaler.scale == 2

    wrong = engine.model_copy(
        update={"id": "other", "source": engine.source.model_copy(update={"sha256": "0" * 64})}
    )
    with pytest.raises(EngineNotReady, match="sha256"):
        pull(wrong, settings)
    gone = engine.model_copy(
        update={"id": "gone", "source": engine.source.model_copy(update={"url": f"{base}/x"})}
    )
    with pytest.raises(HubUnreachable, match="could not download"):
        pull(gone, settings)
