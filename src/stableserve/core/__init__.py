"""Protocol-neutral domain: request types, engine registry, validation, pricing, style presets.

Nothing here imports torch, diffusers, FastAPI or grpc.
"""
