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
    engine="stable-inpainting-512-v2-0",  # Set the engine to use for generation.
)

img = Image.open("init_image.png")
mask_i = Image.open("mask_image.png")

answers = stability_api.generate(
    prompt="crayon drawing of rocket ship launching from forest",
    init_image=img,
    mask_image=mask_i,
    start_schedule=1,
    seed=44332211,  # If attempting to transform an image that was previously generated with our API,
                    # initial images benefit from having their own distinct seed rather than using the seed of the original image generation.
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
            global img2
            img2 = Image.open(io.BytesIO(artifact.binary))
            img2.save(str(artifact.seed) + "-inpainted.png")
