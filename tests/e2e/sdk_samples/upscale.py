import io
import os
import warnings

from PIL import Image
from stability_sdk import client
import stability_sdk.interfaces.gooseai.generation.generation_pb2 as generation

# Set up our connection to the API.
stability_api = client.StabilityInference(
    host=os.environ['STABILITY_HOST'],
    key=os.environ['STABILITY_KEY'],  # API Key reference.
    upscale_engine="esrgan-v1-x2plus",  # The name of the upscaling model we want to use.
    verbose=True,  # Print debug messages.
)

# Import our local image to use as a reference for our upscaled image.
img = Image.open("init_image.png")

answers = stability_api.upscale(
    init_image=img  # Pass our image to the API and call the upscaling process.
)

# Set up our warning to print to the console if the adult content classifier is tripped.
# If adult content classifier is not tripped, save our image.
for resp in answers:
    for artifact in resp.artifacts:
        if artifact.finish_reason == generation.FILTER:
            warnings.warn(
                "Your request activated the API's safety filters and could not be processed."
                "Please submit a different image and try again.")
        if artifact.type == generation.ARTIFACT_IMAGE:
            big_img = Image.open(io.BytesIO(artifact.binary))
            big_img.save("imageupscaled" + ".png")  # Save our image to a local file.
