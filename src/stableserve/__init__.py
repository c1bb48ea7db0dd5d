"""stableserve: a self-hosted image-generation server speaking the Stability AI Platform API.

See ``DESIGN.md`` in the shared folder for the architecture; the package layout is
``core`` (protocol-neutral domain, no torch), ``inference`` (worker side, torch and
diffusers) and ``cli``.
"""

__version__ = "0.1.0"
