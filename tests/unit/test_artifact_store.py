"""FilesystemArtifactStore: round trip, replace, delete, purge, id validation, atomic writes."""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stableserve.core.types import Artifact, FinishReason
from stableserve.storage import ArtifactStore, FilesystemArtifactStore
from stableserve.storage.artifacts import META_FILE, TMP_DIR


def _id() -> str:
    return secrets.token_hex(32)


def _artifacts() -> list[Artifact]:
    return [
        Artifact(index=1, seed=8, mime="image/jpeg", width=64, height=32, data=b"\xff\xd8 jpeg"),
        Artifact(index=0, seed=7, width=64, height=32, data=b"\x89PNG png"),
        Artifact(
            index=2,
            seed=9,
            mime="image/webp",
            width=8,
            height=8,
            finish_reason=FinishReason.CONTENT_FILTERED,
            data=b"RIFF webp",
        ),
    ]


@pytest.fixture
def store(tmp_path: Path) -> FilesystemArtifactStore:
    return FilesystemArtifactStore(tmp_path / "results")


def test_put_get_roundtrip_layout_and_delete(store: FilesystemArtifactStore) -> None:
    assert isinstance(store, ArtifactStore)
    job_id = _id()
    assert store.get(job_id) is None and store.delete(job_id) is False
    store.put(job_id, _artifacts())
    folder = store.root / job_id[:2] / job_id
    assert sorted(p.name for p in folder.iterdir()) == ["0.png", "1.jpg", "2.webp", META_FILE]
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["job_id"] == job_id and datetime.fromisoformat(meta["stored_at"]).tzinfo is not None
    assert all("data" not in entry for entry in meta["artifacts"])
    got = store.get(job_id)
    assert got == sorted(_artifacts(), key=lambda a: a.index)
    assert store.get(job_id) == got  # reading does not consume
    assert [p.name for p in (store.root / TMP_DIR).iterdir()] == []  # no leftovers
    # put again replaces the whole folder
    store.put(job_id, [Artifact(index=0, seed=1, width=1, height=1, data=b"new")])
    assert [a.data for a in store.get(job_id) or []] == [b"new"]
    assert sorted(p.name for p in folder.iterdir()) == ["0.png", META_FILE]
    assert store.delete(job_id) is True
    assert store.get(job_id) is None and not folder.exists() and store.delete(job_id) is False
    # an empty result is a result
    store.put(job_id, [])
    assert store.get(job_id) == []


@pytest.mark.parametrize(
    "bad",
    ["../" + "a" * 61, "A" * 64, "a" * 63, "a" * 65, "/" + "a" * 63, "..", "", "a" * 62 + "/.", "g" * 64],
)
def test_malformed_job_ids_are_rejected(store: FilesystemArtifactStore, tmp_path: Path, bad: str) -> None:
    art = [Artifact(index=0, seed=1, width=1, height=1, data=b"x")]
    for call in (lambda: store.put(bad, art), lambda: store.get(bad), lambda: store.delete(bad)):
        with pytest.raises(ValueError):
            call()
    assert not store.root.exists()  # nothing written anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_invalid_artifacts_store_nothing(store: FilesystemArtifactStore) -> None:
    job_id = _id()
    with pytest.raises(ValueError):
        store.put(job_id, [Artifact(index=0, seed=1, width=1, height=1, mime="image/gif", data=b"x")])
    twice = [Artifact(index=0, seed=1, width=1, height=1, data=b"x")] * 2
    with pytest.raises(ValueError):
        store.put(job_id, twice)
    assert store.get(job_id) is None


def test_a_failed_write_leaves_the_previous_result_and_no_leftovers(
    store: FilesystemArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, other = _id(), _id()
    store.put(job_id, _artifacts())
    real_write = FilesystemArtifactStore._write
    calls = []

    def failing_write(self, path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write(self, path, data)

    monkeypatch.setattr(FilesystemArtifactStore, "_write", failing_write)
    with pytest.raises(OSError):
        store.put(job_id, [Artifact(index=0, seed=1, width=1, height=1, data=b"new")] + _artifacts()[:1])
    calls.clear()
    with pytest.raises(OSError):
        store.put(other, _artifacts())
    monkeypatch.undo()
    assert store.get(job_id) == sorted(_artifacts(), key=lambda a: a.index)  # untouched
    assert store.get(other) is None and not (store.root / other[:2] / other).exists()
    assert list((store.root / TMP_DIR).iterdir()) == []


def test_a_folder_without_meta_or_a_file_reads_as_missing(store: FilesystemArtifactStore) -> None:
    job_id = _id()
    store.put(job_id, _artifacts())
    (store.root / job_id[:2] / job_id / "1.jpg").unlink()
    assert store.get(job_id) is None
    (store.root / job_id[:2] / job_id / META_FILE).unlink()
    assert store.get(job_id) is None
    # meta pointing elsewhere cannot make the store read outside the folder
    evil = _id()
    store.put(evil, [Artifact(index=0, seed=1, width=1, height=1, data=b"x")])
    meta_path = store.root / evil[:2] / evil / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["artifacts"][0]["index"] = "../../x"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError):
        store.get(evil)


def test_purge_deletes_only_older_results_and_stale_temp_folders(store: FilesystemArtifactStore) -> None:
    old, new, no_meta = _id(), _id(), _id()
    for job_id in (old, new, no_meta):
        store.put(job_id, _artifacts())
    now = datetime.now(UTC)
    meta_path = store.root / old[:2] / old / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["stored_at"] = (now - timedelta(days=2)).isoformat()
    meta_path.write_text(json.dumps(meta))
    folder = store.root / no_meta[:2] / no_meta
    (folder / META_FILE).unlink()
    two_days_ago = (now - timedelta(days=2)).timestamp()
    os.utime(folder, (two_days_ago, two_days_ago))  # counts from the folder's mtime
    stale = store.root / TMP_DIR / f"{_id()}.put.dead"
    fresh = store.root / TMP_DIR / f"{_id()}.put.busy"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (two_days_ago, two_days_ago))
    (store.root / "not-a-shard").mkdir()  # foreign entries are left alone

    with pytest.raises(ValueError):
        store.purge(datetime.now())  # naive
    assert store.purge(now - timedelta(days=1)) == 2
    assert store.get(old) is None and not folder.exists()
    assert store.get(new) is not None
    assert not stale.exists() and fresh.exists() and (store.root / "not-a-shard").exists()
    assert store.purge(now + timedelta(minutes=1)) == 1
    assert store.get(new) is None
    assert fresh.exists()  # a temp folder younger than an hour may be a write in progress
    assert FilesystemArtifactStore(store.root / "absent").purge(now) == 0
