"""Jobs: events, the ``Executor`` seam, the in-process ``LocalExecutor`` and the ``JobClient``.

Importing this package is light (no torch, no diffusers, no database): worker processes
import ``stableserve.jobs.local`` and only load the inference stack inside themselves.
"""
