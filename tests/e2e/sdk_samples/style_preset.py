import io
import os

from PIL import Image
from stability_sdk import client
import stability_sdk.interfaces.gooseai.generation.generation_pb2 as generation

stability_api = client.StabilityInference(
    host=os.environ['STABILITY_HOST'],
    key=os.environ['STABILITY_KEY'],
    verbose=True,
    engine="stable-diffusion-v1-5",
)

answers = stability_api.generate(
    prompt="a cat samurai standing in the rain",
    seed=1234,
    steps=10,
    width=512,
    height=512,
    style_preset="anime",  # One of the style presets (anime, photographic, pixel-art, ...).
)

for resp in answers:
    for artifact in resp.artifacts:
        if artifact.type == generation.ARTIFACT_IMAGE:
            img = Image.open(io.BytesIO(artifact.binary))
            img.save(f"anime-{artifact.seed}.png")
