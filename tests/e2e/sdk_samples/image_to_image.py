import io
import os
import warnings

from PIL import Image
from stability_sdk import client
import stability_sdk.interfaces.gooseai.generation.generation_pb2 as generation

stability_api = client.StabilityInference(
    host=os.environ['STABILITY_HOST'],
    key=os.environ['STABILITY_KEY'],
    verbose=True,
    engine="stable-diffusion-v1-5",
)

img = Image.open("init_image.png")

# Set up our initial generation parameters.
answers = stability_api.generate(
    prompt="crayon drawing of rocket ship launching from forest",
    init_image=img,  # Assign our previously generated img as our Initial Image for transformation.
    start_schedule=0.6,  # Set the strength of our prompt in relation to our initial image.
    seed=123463446,  # Initial images benefit from having their own distinct seed.
    steps=10,  # Amount of inference steps performed on image generation.
    cfg_scale=8.0,  # Influences how strongly your generation is guided to match your prompt.
    width=512,  # Generation width.
    height=512,  # Generation height.
    sampler=generation.SAMPLER_K_DPMPP_2M  # Choose which sampler we want to denoise our generation with.
)

for resp in answers:
    for artifact in resp.artifacts:
        if artifact.finish_reason == generation.FILTER:
            warnings.warn(
                "Your request activated the API's safety filters and could not be processed."
                "Please modify the prompt and try again.")
        if artifact.type == generation.ARTIFACT_IMAGE:
            img2 = Image.open(io.BytesIO(artifact.binary))
            img2.save(str(artifact.seed) + "-img2img.png")  # Save our generated image with its seed number as the filename and the img2img suffix.
