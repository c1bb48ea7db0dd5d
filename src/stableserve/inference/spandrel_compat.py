"""Import spandrel on machines without a usable torchvision.

spandrel (the loader for ESRGAN-style upscaler weights) imports ``torchvision`` at module level
in two architectures unrelated to ESRGAN: LaMa (``rotate``, ``InterpolationMode``) and
RestoreFormer (``normalize``). Because ``spandrel/__init__.py`` imports every architecture,
``import spandrel`` fails outright without torchvision. On CPU machines torch comes from the
PyTorch CPU index, and PyPI's torchvision wheel (built against PyPI's CUDA torch) fails to
import beside it, so torchvision cannot simply be installed. ESRGAN-family models
(ESRGAN, Real-ESRGAN, BSRGAN, ...) never call torchvision.

``import_spandrel`` therefore imports spandrel behind a placeholder ``torchvision`` module tree
that exists only during the import: it offers exactly the names spandrel imports at import time
(checked against spandrel 0.4: ``grep -rn torchvision site-packages/spandrel``), each of which
raises ``RuntimeError`` when used, and it is removed from ``sys.modules`` right afterwards so
that no other library (transformers, diffusers) ever sees a fake torchvision.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import sys
import threading
import types

TORCHVISION_MISSING = "torchvision is not installed; this spandrel architecture needs it"
"""Message of the ``RuntimeError`` raised by every placeholder torchvision function."""

_PLACEHOLDER_MODULES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
_lock = threading.Lock()


def _torchvision_importable() -> bool:
    """True when a real torchvision imports cleanly (a broken wheel raises at import time)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision")
    except Exception:  # noqa: BLE001 - a mismatched wheel raises RuntimeError/OSError/ImportError
        sys.modules.pop("torchvision", None)
        return False
    return True


def _missing(name: str):
    def placeholder(*args, **kwargs):
        raise RuntimeError(f"{TORCHVISION_MISSING} (torchvision.transforms.functional.{name})")

    placeholder.__name__ = name
    placeholder.__qualname__ = name
    return placeholder


class _InterpolationMode(enum.Enum):
    """Stand-in for ``torchvision.transforms.functional.InterpolationMode`` (same member values)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _placeholder_tree() -> dict[str, types.ModuleType]:
    root = types.ModuleType("torchvision", "placeholder: torchvision is not installed")
    transforms = types.ModuleType("torchvision.transforms", "placeholder: torchvision is not installed")
    functional = types.ModuleType(
        "torchvision.transforms.functional", "placeholder: torchvision is not installed"
    )
    functional.InterpolationMode = _InterpolationMode
    for name in ("rotate", "normalize"):
        setattr(functional, name, _missing(name))
    transforms.functional = functional
    transforms.InterpolationMode = _InterpolationMode
    root.transforms = transforms
    root.__path__ = []  # a package, so that submodule imports resolve through sys.modules
    transforms.__path__ = []
    return {
        "torchvision": root,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    }


def import_spandrel() -> types.ModuleType:
    """Return the ``spandrel`` module, importing it even where torchvision is unusable.

    With an importable torchvision this is plain ``import spandrel``. Otherwise a placeholder
    ``torchvision`` / ``torchvision.transforms`` / ``torchvision.transforms.functional`` tree is
    put into ``sys.modules`` for the duration of the import only (``InterpolationMode``,
    ``rotate``, ``normalize``; calling a function raises ``RuntimeError`` with
    ``TORCHVISION_MISSING``), so LaMa and RestoreFormer load but fail if run, while ESRGAN and
    the other torchvision-free architectures work normally. Thread-safe; later calls return the
    already imported module. Raises ``ImportError`` when spandrel itself is not installed.
    """
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    with _lock:
        if "spandrel" in sys.modules:
            return sys.modules["spandrel"]
        if _torchvision_importable():
            return importlib.import_module("spandrel")
        installed = _placeholder_tree()
        sys.modules.update(installed)
        try:
            return importlib.import_module("spandrel")
        finally:
            for name in _PLACEHOLDER_MODULES:
                if sys.modules.get(name) is installed[name]:
                    del sys.modules[name]
