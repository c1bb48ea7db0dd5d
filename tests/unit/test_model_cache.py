"""Model cache: one load per engine (also under concurrency), LRU eviction under the byte budget."""

from __future__ import annotations

import threading
import time

import torch

from stableserve.core.engines import load_registry
from stableserve.inference.loading import LoadedEngine
from stableserve.inference.model_cache import ModelCache
from stableserve.settings import ModelCacheSettings, Settings

REG = load_registry("demo")


class CountingLoader:
    """Stands in for ``load_engine``: records calls, 'loads' a fixed number of bytes."""

    def __init__(self, nbytes: int):
        self.nbytes, self.calls = nbytes, []

    def __call__(self, engine, settings):
        self.calls.append(engine.id)
        time.sleep(0.05)
        return LoadedEngine(engine, torch.device("cpu"), torch.float32, pipeline=object(), nbytes=self.nbytes)


def test_loads_each_engine_once_even_concurrently(tmp_path):
    loader = CountingLoader(10)
    cache = ModelCache(Settings(home=tmp_path), loader=loader)
    engine = REG.get("stable-diffusion-v1-5")
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(engine))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.calls == ["stable-diffusion-v1-5"]
    assert all(r is results[0] for r in results)


def test_evicts_least_recently_used_over_budget(tmp_path):
    loader = CountingLoader(100)
    cache = ModelCache(Settings(home=tmp_path, model_cache=ModelCacheSettings(max_bytes=250)), loader=loader)
    a, b, c = (REG.get(i) for i in ("stable-diffusion-v1-5", "stable-diffusion-512-v2-1", "esrgan-v1-x2plus"))
    cache.get(a)
    cache.get(b)
    cache.get(a)  # a is now the most recently used
    cache.get(c)  # 300 > 250: b goes
    assert cache.loaded_ids() == ["stable-diffusion-v1-5", "esrgan-v1-x2plus"]
    assert cache.total_bytes() == 200
    cache.get(b)
    assert loader.calls == [
        "stable-diffusion-v1-5",
        "stable-diffusion-512-v2-1",
        "esrgan-v1-x2plus",
        "stable-diffusion-512-v2-1",
    ]
    assert cache.evict("esrgan-v1-x2plus") and not cache.evict("esrgan-v1-x2plus")


def test_an_engine_larger_than_the_budget_still_loads_alone(tmp_path):
    loader = CountingLoader(1000)
    cache = ModelCache(Settings(home=tmp_path, model_cache=ModelCacheSettings(max_bytes=10)), loader=loader)
    cache.get(REG.get("stable-diffusion-v1-5"))
    cache.get(REG.get("stable-diffusion-512-v2-1"))
    assert cache.loaded_ids() == ["stable-diffusion-512-v2-1"]
