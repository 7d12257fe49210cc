"""Finish the uploads a crashed mount left behind, before the filesystem is served again.

Each dirty staged file has a journal beside it (see `journal.py`).  For each: replay it, keeping
only the bytes provably on the disk; if the object already is the upload the crashed mount was
completing (the journal names its ETag), there is nothing to do; else abort the multipart upload
it had begun; if the object is still the version the file was based on (or still absent for a new
file), complete the file from that base and upload it under its key, conditionally on exactly
that; if someone else changed the object meanwhile, never overwrite it: upload ours under a
conflict key beside it and log both names.  A file that cannot be rebuilt (its base is gone and
bytes are missing) or cannot be uploaded now stays staged, for the next mount; one whose own
new bytes never reached the disk (a power cut) is set aside in `conflicts/`, the bucket left as
it was.  Nothing is deleted before it is in the bucket.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from s3mount.errors import FsError, Stale
from s3mount.journal import missing_ranges, replay, write_durably
from s3mount.keys import conflict_key
from s3mount.parts import plan_parts
from s3mount.staging import punch_hole
from s3mount.store import EXPECT_ABSENT, ObjectInfo, ObjectStore
from s3mount.uploader import Uploader, file_md5, multipart_etag

log = logging.getLogger(__name__)

FETCH_CHUNK = 8 * 1024 * 1024


@dataclass
class Outcome:
    recovered: int = 0
    conflicts: int = 0
    kept: int = 0


class SetAside(Exception):
    """The file's new bytes are not all on the disk: it was moved out of the way."""


class Recovery:
    def __init__(self, staging_dir: Path, store: ObjectStore, uploader: Uploader,
                 conditional: bool = True) -> None:
        self.staging_dir = staging_dir
        self.store = store
        self.uploader = uploader
        self.conditional = conditional  # If-Match / If-None-Match on its uploads

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
            log_path = journal_path.with_suffix(".log")
            if not data_path.exists():
                journal_path.unlink()
                log_path.unlink(missing_ok=True)
                continue
            try:
                conflict = await self._recover(state, str(data_path), str(journal_path))
            except SetAside:
                outcome.kept += 1
                continue
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
            log_path.unlink(missing_ok=True)
            data_path.unlink()
        for pattern in ("*.data", "*.log"):  # clean files of a crashed mount
            for leftover in self.staging_dir.glob(pattern):
                if not leftover.with_suffix(".json").exists():
                    leftover.unlink()
        return outcome

    def _set_aside(self, key: str, journal_path: str, lost: int) -> None:
        aside = self.staging_dir.parent / "conflicts"
        aside.mkdir(mode=0o700, exist_ok=True)
        for suffix in (".data", ".log", ".json"):
            path = Path(journal_path).with_suffix(suffix)
            if path.exists():
                os.replace(path, aside / path.name)
        log.error("%d bytes written to %s never reached the disk before the crash (a power cut?), "
                  "and the bucket never had them: the object is left as it was, and what is "
                  "left of ours is in %s", lost, key, aside)
        raise SetAside(key)

    def _prepare(self, state: dict[str, Any], data_path: str, journal_path: str) -> Any:
        """Replay the journal; the data file then holds the file's length, and zeros wherever
        the file has holes, whatever a power cut left there."""
        replayed = replay(state, str(Path(journal_path).with_suffix(".log")), data_path)
        lost = sum(min(e, replayed.size) - max(s, replayed.base_valid)
                   for s, e in replayed.lost if e > replayed.base_valid)
        if lost > 0:
            self._set_aside(state["key"], journal_path, lost)
        fd = os.open(data_path, os.O_RDWR)
        try:
            os.ftruncate(fd, replayed.size)
            for start, end in missing_ranges(replayed.present, replayed.base_valid,
                                             replayed.size):
                punch_hole(fd, start, end)
        finally:
            os.close(fd)
        return replayed

    def _expecting(self, state: dict[str, Any], journal_path: str):  # type: ignore[no-untyped-def]
        """What recovery's own upload records before it is sent (see `completing`)."""
        async def completing(etag: str) -> None:
            write_durably(journal_path, dict(state, completing={"etag": etag}))
        return completing

    async def _complete_sent(self, state: dict[str, Any], data_path: str, size: int,
                             metadata: dict[str, str], sent_parts: dict[int, str],
                             theirs: ObjectInfo | None, completing: Any) -> None:
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
        await completing(multipart_etag(parts))
        await self.store.complete_multipart(key, upload_id, parts)
        await self.store.copy(key, key, size, metadata)  # the metadata as at the crash
        log.info("finished the interrupted upload of %s (%d bytes, %d parts kept from before "
                 "the crash)", key, size, len(sent_parts))

    async def _recover(self, state: dict[str, Any], data_path: str,
                       journal_path: str) -> bool | None:
        """Upload one staged file; True if it went under a conflict key, None if kept."""
        key = state["key"]
        replayed = self._prepare(state, data_path, journal_path)
        size = replayed.size
        remote = await self.store.head(key)
        landed = state.get("completing") or {}
        if remote is not None and remote.etag == landed.get("etag"):
            if not (landed.get("earlier") or replayed.changed):
                log.info("%s was already uploaded before the crash", key)
                return False
            # An upload of ours landed with its answer lost, and the file changed after it:
            # that version is the base of the rest (see StagedFile.rebase), not theirs.
            state = dict(state, base_etag=remote.etag, expect=remote.etag, sent=[],
                         sent_parts={}, upload_id=None)
            replayed = replace(replayed, base_valid=min(remote.size, size))
        # Parts dropped locally to stay within the cache budget live only in the upload: it is
        # completed with them, never aborted.
        sent_parts = {int(n): etag for n, etag in (state.get("sent_parts") or {}).items()}
        if state.get("upload_id") and not sent_parts:
            try:
                await self.store.abort_multipart(key, state["upload_id"])
            except FsError:
                pass  # already gone
        base = state.get("base_etag")
        # The version ours replaces: the base, or for a file truncated to nothing the version
        # it was truncated from (journals of older mounts name only the base).
        replaces = state.get("expect", base or EXPECT_ABSENT)
        if replaces == EXPECT_ABSENT:
            changed = remote is not None and not (
                size <= self.uploader.single_put_limit
                and remote.etag == file_md5(data_path, size))
            if remote is not None and not changed:
                log.info("%s was already uploaded before the crash", key)
                return False
        else:
            changed = remote is None or remote.etag != replaces
        held = sorted(replayed.present + [tuple(e) for e in state.get("sent", [])])
        gaps = missing_ranges(held, 0, min(replayed.base_valid, size)) if base else []
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
        metadata = dict(state.get("metadata", {}))
        metadata["mtime"] = f"{mtime_ns // 10**9}.{mtime_ns % 10**9:09d}"
        completing = self._expecting(state, journal_path)
        if sent_parts:
            await self._complete_sent(state, data_path, size, metadata, sent_parts,
                                      remote if changed else None, completing)
            return changed
        if not changed:
            if size <= self.uploader.single_put_limit:
                await completing(file_md5(data_path, size))
            expect = replaces if self.conditional else None
            try:  # only over the version ours was based on: anything newer is someone else's
                await self.uploader.upload(key, data_path, size, metadata, expect, completing)
                log.info("finished the interrupted upload of %s (%d bytes)", key, size)
                return False
            except Stale:
                changed = True
        target = conflict_key(key)
        await self.uploader.upload(target, data_path, size, metadata)
        log.warning("%s changed in the bucket while our version waited to be uploaded: "
                    "ours is kept as %s", key, target)
        return True
