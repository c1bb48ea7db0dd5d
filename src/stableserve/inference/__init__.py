"""Model loading and image generation on the worker side (diffusers, spandrel)."""
