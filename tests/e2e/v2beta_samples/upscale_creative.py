import requests

response = requests.post(
    f"https://api.stability.ai/v2beta/stable-image/upscale/creative",
    headers={
        "authorization": f"Bearer sk-MYAPIKEY",
        "accept": "image/*"
    },
    files={
        "image": open("./a-beautiful-image.png", "rb")
    },
    data={
        "prompt": "Cute fluffy white kitten floating in space, pastel colors",
        "output_format": "webp",
    },
)

print("Generation ID:", response.json().get('id'))
