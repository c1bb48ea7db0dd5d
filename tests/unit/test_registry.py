"""Engine registry: the shipped registries, the demo profile and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from stableserve.core.engines import Family, load_registry
from stableserve.core.types import Task
from stableserve.errors import NotFound, RegistryError

V1_ENGINE_IDS = {
    "stable-diffusion-v1",
    "stable-diffusion-v1-5",
    "stable-diffusion-512-v2-0",
    "stable-diffusion-768-v2-0",
    "stable-diffusion-512-v2-1",
    "stable-diffusion-768-v2-1",
    "stable-diffusion-xl-1024-v0-9",
    "stable-diffusion-xl-1024-v1-0",
    "stable-diffusion-xl-beta-v2-2-2",
    "stable-inpainting-v1-0",
    "stable-inpainting-512-v2-0",
    "esrgan-v1-x2plus",
    "stable-diffusion-x4-latent-upscaler",
}


def test_public_registry_maps_every_v1_engine_to_real_weights():
    reg = load_registry("public")
    assert set(reg.ids()) >= V1_ENGINE_IDS
    for e in reg.engines:
        assert e.type == "PICTURE"
        assert e.source.kind in ("hf", "url"), e.id
        assert not e.is_demo
    assert reg.get("stable-diffusion-v1-5").source.repo == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert reg.get("esrgan-v1-x2plus").source.url.endswith("RealESRGAN_x2plus.pth")
    assert {e.family for e in reg.engines} == set(Family)


def test_demo_registry_has_the_same_ids_and_says_it_is_demo():
    public, demo = load_registry("public"), load_registry("demo")
    assert public.ids() == demo.ids()
    for p, d in zip(public.engines, demo.engines, strict=True):
        assert d.is_demo and d.source.kind == "demo"
        assert "DEMO" in d.description and "(demo)" in d.name
        assert (d.family, d.tasks, d.dimensions, d.price) == (p.family, p.tasks, p.dimensions, p.price)


def test_unknown_engine_is_not_found_with_contract_message():
    with pytest.raises(NotFound) as exc:
        load_registry("demo").get("some-fake-engine")
    assert str(exc.value) == "The specified engine (ID some-fake-engine) was not found."


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "engines.yaml"
    path.write_text(text)
    return str(path)


GOOD = """
engines:
  - id: my-engine
    name: Mine
    description: a local SD 1.5 folder
    family: sd1
    source: {kind: local, path: /models/sd15}
    tasks: [text-to-image]
    dimensions: {kind: pixel_range, min_pixels: 262144, max_pixels: 1048576}
    price: {per_image: 0.5}
"""


def test_custom_registry_file_loads(tmp_path):
    reg = load_registry(_write(tmp_path, GOOD))
    e = reg.get("my-engine")
    assert e.family == Family.SD1 and e.tasks == (Task.TEXT_TO_IMAGE,)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (("family: sd1", "family: sd9"), "field family"),
        (("price: {per_image: 0.5}", "price: {per_image: -1}"), "field price.per_image"),
        (("source: {kind: local, path: /models/sd15}", "source: {kind: hf}"), "field source"),
        (("tasks: [text-to-image]", "tasks: [paint]"), "field tasks.0"),
        (("    name: Mine\n", ""), "field name"),
    ],
)
def test_invalid_registry_names_file_engine_and_field(tmp_path, change, fragment):
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(RegistryError) as exc:
        load_registry(path)
    msg = str(exc.value)
    assert path in msg and "engine my-engine" in msg and fragment in msg


def test_registry_yaml_errors_and_missing_file(tmp_path):
    with pytest.raises(RegistryError, match="not valid YAML"):
        load_registry(_write(tmp_path, "engines: [\n"))
    with pytest.raises(RegistryError, match="neither"):
        load_registry(str(tmp_path / "missing.yaml"))
    dup = GOOD + GOOD.split("engines:\n", 1)[1]
    with pytest.raises(RegistryError, match="duplicate engine id"):
        load_registry(_write(tmp_path, dup))
