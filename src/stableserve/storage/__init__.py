"""Storage of generated artifacts: the ``ArtifactStore`` seam and its filesystem default.

``stableserve.storage.artifacts``: ``ArtifactStore`` (protocol) and
``FilesystemArtifactStore`` (one folder per job under a root directory). An S3-compatible
store may follow behind the same protocol.
"""

from stableserve.storage.artifacts import ArtifactStore, FilesystemArtifactStore, is_job_id

__all__ = ["ArtifactStore", "FilesystemArtifactStore", "is_job_id"]
