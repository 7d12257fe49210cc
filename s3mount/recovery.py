"""Finish the uploads a crashed mount left behind, before the filesystem is served again.

Each dirty staged file has a journal beside it (see `staging.py`).  For each: abort the multipart
upload it had begun; if the object is still the version the file was based on (or still absent
for a new file), complete the file from that base and upload it under its key; if someone else
changed the object meanwhile, never overwrite it: upload ours under a conflict key beside it and
log both names.  A file that cannot be rebuilt (its base is gone and bytes are missing) or cannot
be uploaded now stays staged, for the next mount; nothing is deleted before it is in the bucket.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3mount.errors import FsError
from s3mount.keys import conflict_key
from s3mount.parts import plan_parts
from s3mount.staging import missing_ranges
from s3mount.store import ObjectInfo, ObjectStore
from s3mount.uploader import Uploader

log = logging.getLogger(__name__)

FETCH_CHUNK = 8 * 1024 * 1024


@dataclass
class Outcome:
    recovered: int = 0
    conflicts: int = 0
    kept: int = 0


def _md5(path: str, size: int) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        remaining = size
        while remaining > 0:
            chunk = f.read(min(remaining, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


class Recovery:
    def __init__(self, staging_dir: Path, store: ObjectStore, uploader: Uploader) -> None:
        self.staging_dir = staging_dir
        self.store = store
        self.uploader = uploader

    async def run(self) -> Outcome:
        outcome = Outcome()
        if not self.staging_dir.is_dir():
            return outcome
        for journal_path in sorted(self.staging_dir.glob("*.json")):
            data_path = journal_path.with_suffix(".data")
            try:
                state = json.loads(journal_path.read_text())
            except (OSError, ValueError):
                log.error("unreadable journal %s: left in place", journal_path)
                outcome.kept += 1
                continue
            if not data_path.exists():
                journal_path.unlink()
                continue
            try:
                conflict = await self._recover(state, str(data_path))
            except FsError as exc:
                log.error("could not finish the upload of %s yet (%s); staged data kept in %s",
                          state.get("key"), exc, data_path)
                outcome.kept += 1
                continue
            if conflict is None:
                outcome.kept += 1
                continue
            outcome.recovered += 1
            outcome.conflicts += conflict
            journal_path.unlink()
            data_path.unlink()
        for leftover in self.staging_dir.glob("*.data"):  # clean files of a crashed mount
            if not leftover.with_suffix(".json").exists():
                leftover.unlink()
        return outcome

    async def _complete_sent(self, state: dict[str, Any], data_path: str, size: int,
                             metadata: dict[str, str], sent_parts: dict[int, str],
                             theirs: ObjectInfo | None) -> None:
        """Complete the crashed mount's upload: its sent parts as they are, the rest from the
        staging file.  Ours cannot be set aside (part of it is only in the upload), so a
        version someone else wrote meanwhile is copied beside it first."""
        key, upload_id = state["key"], state["upload_id"]
        if theirs is not None:
            target = conflict_key(key)
            await self.store.copy(key, target, theirs.size, None)
            log.warning("%s changed in the bucket while ours waited to be uploaded, and part of "
                        "ours was only in its unfinished upload: theirs is kept as %s, ours is "
                        "at %s", key, target, key)
        parts = []
        for number, offset, length in plan_parts(size, int(state["part_size"])):
            etag = sent_parts.get(number)
            if etag is None:
                etag = await self.store.upload_part(key, upload_id, number, data_path, offset,
                                                    length)
            parts.append((number, etag))
        await self.store.complete_multipart(key, upload_id, parts)
        await self.store.copy(key, key, size, metadata)  # the metadata as at the crash
        log.info("finished the interrupted upload of %s (%d bytes, %d parts kept from before "
                 "the crash)", key, size, len(sent_parts))

    async def _recover(self, state: dict[str, Any], data_path: str) -> bool | None:
        """Upload one staged file; True if it went under a conflict key, None if kept."""
        # The staging file always has the file's length (truncates shrink it, writes extend it).
        key, size = state["key"], os.path.getsize(data_path)
        # Parts dropped locally to stay within the cache budget live only in the upload: it is
        # completed with them, never aborted.
        sent_parts = {int(n): etag for n, etag in (state.get("sent_parts") or {}).items()}
        if state.get("upload_id") and not sent_parts:
            try:
                await self.store.abort_multipart(key, state["upload_id"])
            except FsError:
                pass  # already gone
        base = state.get("base_etag")
        remote = await self.store.head(key)
        if base is None:
            changed = remote is not None and not (
                size <= self.uploader.single_put_limit and remote.etag == _md5(data_path, size))
            if remote is not None and not changed:
                log.info("%s was already uploaded before the crash", key)
                return False
        else:
            changed = remote is None or remote.etag != base
        held = sorted(tuple(e) for e in state.get("present", []) + state.get("sent", []))
        gaps = missing_ranges(held, 0, min(int(state.get("base_valid", 0)), size)) if base else []
        if gaps and changed:
            log.error("cannot rebuild %s: its base version changed in the bucket and %d ranges "
                      "were never local; staged data kept in %s", key, len(gaps), data_path)
            return None
        mtime_ns = os.stat(data_path).st_mtime_ns  # the last write's time, before any fill
        with open(data_path, "r+b") as f:
            for start, end in gaps:  # a chunk at a time: a gap can be gigabytes
                for chunk in range(start, end, FETCH_CHUNK):
                    f.seek(chunk)
                    f.write(await self.store.get_range(key, chunk, min(chunk + FETCH_CHUNK, end),
                                                       base))
            f.truncate(size)
        metadata = dict(state.get("metadata", {}))
        metadata["mtime"] = f"{mtime_ns // 10**9}.{mtime_ns % 10**9:09d}"
        if sent_parts:
            await self._complete_sent(state, data_path, size, metadata, sent_parts,
                                      remote if changed else None)
            return changed
        target = conflict_key(key) if changed else key
        await self.uploader.upload(target, data_path, size, metadata)
        if changed:
            log.warning("%s changed in the bucket while our version waited to be uploaded: "
                        "ours is kept as %s", key, target)
        else:
            log.info("finished the interrupted upload of %s (%d bytes)", key, size)
        return changed
