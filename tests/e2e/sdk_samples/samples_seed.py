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

# Three samples from one fixed seed: the images come back with seeds 42, 43 and 44.
answers = stability_api.generate(
    prompt="a lighthouse on a cliff at sunset, oil painting",
    seed=42,
    steps=10,
    width=512,
    height=512,
    samples=3,
)

for resp in answers:
    for artifact in resp.artifacts:
        if artifact.type == generation.ARTIFACT_IMAGE:
            img = Image.open(io.BytesIO(artifact.binary))
            img.save(f"sample-{artifact.seed}.png")
