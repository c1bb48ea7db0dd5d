"""The worker's model cache: each engine's pipeline loaded once, shared by its tasks, LRU-evicted.

One ``LoadedEngine`` per engine id holds the base pipeline; the runner derives the
text-to-image / image-to-image / inpainting pipelines from its components with
``from_pipe``, so tasks share weights. When loading an engine would exceed the budget
(``settings.model_cache.max_bytes``, parameter bytes; 0 = unlimited), least-recently-used
engines are dropped first. Thread-safe: concurrent ``get`` calls for one engine load it once.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import torch

from stableserve.core.engines import EngineSpec
from stableserve.inference.loading import LoadedEngine, load_engine
from stableserve.settings import Settings

Loader = Callable[[EngineSpec, Settings], LoadedEngine]


class ModelCache:
    """LRU cache of loaded engines under a byte budget.

    ``loader(engine, settings)`` loads one engine (default ``loading.load_engine``); raises
    whatever it raises (``EngineNotReady`` for missing weights).
    """

    def __init__(self, settings: Settings, loader: Loader = load_engine):
        self._settings = settings
        self._loader = loader
        self._entries: OrderedDict[str, LoadedEngine] = OrderedDict()
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._loads: list[tuple[str, float]] = []  # (engine_id, seconds) since the last drain

    @property
    def budget(self) -> int:
        """Parameter bytes allowed in the cache (0 = no limit)."""
        return self._settings.model_cache.max_bytes

    def loaded_ids(self) -> list[str]:
        """Engine ids currently loaded, least recently used first."""
        with self._lock:
            return list(self._entries)

    def total_bytes(self) -> int:
        """Parameter bytes of everything loaded."""
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def get(self, engine: EngineSpec) -> LoadedEngine:
        """The loaded engine, loading it (and evicting LRU engines over budget) if needed."""
        with self._lock:
            hit = self._entries.get(engine.id)
            if hit is not None and hit.engine == engine:
                self._entries.move_to_end(engine.id)
                return hit
            load_lock = self._load_locks.setdefault(engine.id, threading.Lock())
        with load_lock:
            with self._lock:
                hit = self._entries.get(engine.id)
                if hit is not None and hit.engine == engine:
                    self._entries.move_to_end(engine.id)
                    return hit
            started = time.perf_counter()
            loaded = self._loader(engine, self._settings)
            with self._lock:
                self._loads.append((engine.id, time.perf_counter() - started))
                self._entries[engine.id] = loaded
                self._entries.move_to_end(engine.id)
                self._evict_over_budget(keep=engine.id)
            return loaded

    def drain_loads(self) -> list[tuple[str, float]]:
        """The ``(engine_id, seconds)`` of every load since the last call (wall time of the
        loader: reading weights, building the pipeline, moving it to the device)."""
        with self._lock:
            loads, self._loads = self._loads, []
        return loads

    def evict(self, engine_id: str) -> bool:
        """Drop one engine; True when it was loaded."""
        with self._lock:
            gone = self._entries.pop(engine_id, None) is not None
        if gone:
            self._release_memory()
        return gone

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._entries.clear()
        self._release_memory()

    def _evict_over_budget(self, keep: str) -> None:
        if not self.budget:
            return
        dropped = False
        while sum(e.nbytes for e in self._entries.values()) > self.budget:
            victim = next((k for k in self._entries if k != keep), None)
            if victim is None:
                break
            del self._entries[victim]
            dropped = True
        if dropped:
            self._release_memory()

    @staticmethod
    def _release_memory() -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
