"""``ArtifactStore``: where the images of finished jobs are kept for later fetching.

The ``JobClient`` writes the artifacts of an asynchronous job (v2beta ``/v2beta/results/{id}``)
here before it marks the job ``succeeded``, and reads them back when the client polls.

``FilesystemArtifactStore`` (the embedded default) keeps one folder per job::

    <root>/<id[:2]>/<id>/0.png        image bytes, named <index>.<ext> (png | jpg | webp)
    <root>/<id[:2]>/<id>/meta.json    {"job_id", "stored_at", "artifacts": [metadata without bytes]}
    <root>/.tmp/                      folders being written or deleted (never read)

A job folder is written completely under ``.tmp`` and then renamed into place, and deleted by
renaming it back under ``.tmp`` first, so a reader sees a job's artifacts entirely or not at
all. Job ids must be 64 lowercase hex chars (``ValueError`` otherwise); nothing outside
``root`` is ever read or written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from stableserve.core.types import Artifact

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"[0-9a-f]{64}")
_SHARD = re.compile(r"[0-9a-f]{2}")
#: File extension per artifact MIME type.
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
META_FILE = "meta.json"
TMP_DIR = ".tmp"
#: Leftover ``.tmp`` folders (a crash mid-write) younger than this are never purged.
_TMP_GRACE = timedelta(hours=1)


def is_job_id(value: object) -> bool:
    """True when ``value`` is a job id: a string of 64 lowercase hex chars."""
    return isinstance(value, str) and _JOB_ID.fullmatch(value) is not None


@runtime_checkable
class ArtifactStore(Protocol):
    """Keeps the artifacts (with bytes) of finished jobs, keyed by job id (64 lowercase hex).

    Contract (every implementation):
    - ``put`` stores all of a job's artifacts atomically (readers never see part of them) and
      replaces what was stored for that job before. It raises on failure (``OSError`` or
      another exception of the backend) and then stores nothing new.
    - ``get`` returns the artifacts in ``index`` order with their bytes, or ``None`` when
      nothing is stored for the job.
    - ``delete`` returns True when something was deleted.
    - ``purge(older_than)`` deletes every job stored before ``older_than`` (aware datetime)
      and returns how many.
    - A malformed job id raises ``ValueError``. Methods are blocking and thread-safe.
    """

    def put(self, job_id: str, artifacts: list[Artifact]) -> None:
        """Store ``artifacts`` (with bytes) as ``job_id``'s, replacing any stored before."""
        ...

    def get(self, job_id: str) -> list[Artifact] | None:
        """``job_id``'s artifacts in ``index`` order, or ``None`` when none are stored."""
        ...

    def delete(self, job_id: str) -> bool:
        """Delete ``job_id``'s artifacts; True when there were any."""
        ...

    def purge(self, older_than: datetime) -> int:
        """Delete every job's artifacts stored before ``older_than``; returns how many jobs."""
        ...


class FilesystemArtifactStore:
    """``ArtifactStore`` in a local directory (see the module docstring for the layout).

    ``root`` is created on the first ``put``. ``fsync``: flush files and folders to disk
    before a ``put`` returns (durable across a power loss; on by default).
    """

    def __init__(self, root: Path | str, *, fsync: bool = True):
        self.root = Path(root)
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"FilesystemArtifactStore({str(self.root)!r})"

    # -- ArtifactStore -----------------------------------------------------------------------
    def put(self, job_id: str, artifacts: list[Artifact]) -> None:
        """Write ``artifacts`` under ``root/<id[:2]>/<id>/`` atomically (see the class docstring).

        Raises ``ValueError`` for a malformed job id, an unknown ``mime`` or two artifacts
        with the same ``index``; ``OSError`` when the disk write fails (nothing new is stored).
        """
        final = self.folder(job_id)
        names = self._file_names(artifacts)
        tmp_root = self._tmp_root()
        tmp = tmp_root / f"{job_id}.put.{secrets.token_hex(4)}"
        old: Path | None = None
        tmp.mkdir()
        try:
            entries = []
            for artifact, name in zip(artifacts, names, strict=True):
                self._write(tmp / name, artifact.data)
                entries.append(artifact.model_dump(mode="json", exclude={"data"}))
            meta = {"job_id": job_id, "stored_at": datetime.now(UTC).isoformat(), "artifacts": entries}
            self._write(tmp / META_FILE, json.dumps(meta, indent=1).encode())
            self._sync_dir(tmp)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.exists():
                    raise
                # A folder for this job exists: move it aside, then put the new one in place.
                old = tmp_root / f"{job_id}.old.{secrets.token_hex(4)}"
                os.rename(final, old)
                os.rename(tmp, final)
            self._sync_dir(final.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)

    def get(self, job_id: str) -> list[Artifact] | None:
        """The stored artifacts of ``job_id`` (``index`` order), or ``None`` when none are stored.

        Raises ``ValueError`` for a malformed job id or a corrupt ``meta.json``; ``OSError`` for
        read errors other than a missing folder or file.
        """
        folder = self.folder(job_id)
        try:
            meta = json.loads((folder / META_FILE).read_bytes())
            artifacts = []
            for entry in meta["artifacts"]:
                metadata = Artifact.model_validate({**entry, "data": b""})
                name = self._file_name(metadata)  # from validated fields, never a stored path
                artifacts.append(metadata.model_copy(update={"data": (folder / name).read_bytes()}))
        except (FileNotFoundError, NotADirectoryError):
            return None  # never stored, deleted, or deleted while being read
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"corrupt {META_FILE} for job {job_id}: {exc}") from exc
        return sorted(artifacts, key=lambda a: a.index)

    def delete(self, job_id: str) -> bool:
        """Delete ``job_id``'s folder; True when it existed. ``ValueError`` for a malformed id."""
        folder = self.folder(job_id)
        if not folder.is_dir():
            return False
        trash = self._tmp_root() / f"{job_id}.del.{secrets.token_hex(4)}"
        try:
            os.rename(folder, trash)  # readers now see nothing, never half a folder
        except FileNotFoundError:
            return False  # deleted meanwhile by someone else
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def purge(self, older_than: datetime) -> int:
        """Delete every job folder stored before ``older_than`` (an aware datetime; ``ValueError``
        when naive); returns how many. A folder without a readable ``stored_at`` counts from its
        modification time. Also removes ``.tmp`` leftovers of interrupted writes that are older
        than both ``older_than`` and one hour."""
        if older_than.tzinfo is None:
            raise ValueError("older_than must be timezone-aware")
        deleted = 0
        for folder in self._job_folders():
            stored_at = self._stored_at(folder)
            if stored_at is not None and stored_at < older_than and self.delete(folder.name):
                deleted += 1
        tmp_cutoff = min(older_than, datetime.now(UTC) - _TMP_GRACE).timestamp()
        tmp_root = self.root / TMP_DIR
        if tmp_root.is_dir():
            for entry in tmp_root.iterdir():
                with _suppress_missing():
                    if entry.stat().st_mtime < tmp_cutoff:
                        shutil.rmtree(entry, ignore_errors=True)
        return deleted

    # -- helpers -----------------------------------------------------------------------------
    def folder(self, job_id: str) -> Path:
        """``root/<id[:2]>/<id>``; ``ValueError`` unless ``job_id`` is 64 lowercase hex chars."""
        if not is_job_id(job_id):
            raise ValueError(f"not a job id (64 lowercase hex chars): {job_id!r}"[:120])
        return self.root / job_id[:2] / job_id

    def _tmp_root(self) -> Path:
        tmp_root = self.root / TMP_DIR
        tmp_root.mkdir(parents=True, exist_ok=True)
        return tmp_root

    @staticmethod
    def _file_name(artifact: Artifact) -> str:
        ext = EXTENSIONS.get(artifact.mime)
        if ext is None:
            raise ValueError(f"unsupported artifact mime type {artifact.mime!r}")
        if artifact.index < 0:
            raise ValueError(f"negative artifact index {artifact.index}")
        return f"{artifact.index}.{ext}"

    def _file_names(self, artifacts: Iterable[Artifact]) -> list[str]:
        names, indexes = [], set()
        for artifact in artifacts:
            if artifact.index in indexes:
                raise ValueError(f"two artifacts with index {artifact.index}")
            indexes.add(artifact.index)
            names.append(self._file_name(artifact))
        return names

    def _write(self, path: Path, data: bytes) -> None:
        with open(path, "xb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())

    def _sync_dir(self, path: Path) -> None:
        if not self.fsync or os.name != "posix":
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _job_folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        folders = []
        for shard in self.root.iterdir():
            if not (_SHARD.fullmatch(shard.name) and shard.is_dir()):
                continue
            with _suppress_missing():
                folders.extend(f for f in shard.iterdir() if is_job_id(f.name) and f.name[:2] == shard.name)
        return folders

    @staticmethod
    def _stored_at(folder: Path) -> datetime | None:
        """When ``folder`` was stored: ``meta.json``'s ``stored_at``, else its mtime; None if gone."""
        try:
            value: Any = json.loads((folder / META_FILE).read_bytes())["stored_at"]
            stored_at = datetime.fromisoformat(value)
            if stored_at.tzinfo is not None:
                return stored_at
        except FileNotFoundError:
            pass
        except (KeyError, TypeError, ValueError, OSError):
            log.warning("unreadable %s in %s; using the folder's modification time", META_FILE, folder)
        try:
            return datetime.fromtimestamp(folder.stat().st_mtime, UTC)
        except FileNotFoundError:
            return None


def _suppress_missing() -> contextlib.suppress:
    """Ignore a file or folder that disappeared meanwhile (a concurrent delete)."""
    return contextlib.suppress(FileNotFoundError, NotADirectoryError)
