"""Dirty data of one file, staged in a sparse local file under the cache directory.

A staged file is a sparse file plus the extents it holds for sure (`present`).  A byte below
`base_valid` that is not present still lives only in the bucket's version `base_etag`; every other
byte is in the local file (holes read as zeros).  `base_valid` only ever shrinks (truncate), so a
byte once cut off is never read back from the old object.

Crash safety: while a staged file is dirty, a checkpoint beside it (`NAME.json`) names its key,
its metadata, its base version and the extents that were on the disk at the last `sync`, and a
log (`NAME.log`) what changed since, with checksums (see `journal.py`).  Together they let the next
mount finish the upload after SIGKILL with every acknowledged byte, and after a power cut with
every byte it can prove, the rest from the base version (see `recovery.py`).  A write appends one
log line; the checkpoint is written only by `sync` (the owner calls it at commit, before parts are
dropped, and on a timer) and when the key or metadata change.

All methods here block on the local disk: call them through `run_blocking` on the `disk` limiter.
The file's owner (`files.py`) serialises mutations per inode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import uuid
from pathlib import Path
from typing import Any

from s3mount.journal import (  # noqa: F401  (the extent helpers are staging's vocabulary)
    BLOCK,
    ChangeLog,
    Extent,
    add_extent,
    block_crcs,
    clip_extents,
    missing_ranges,
    remove_range,
    write_durably,
)
from s3mount.parts import parts_within

_FALLOC_PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE (linux/falloc.h)
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def punch_hole(fd: int, start: int, end: int) -> None:
    """Give the disk blocks of [start, end) back; the range reads as zeros (the file keeps its
    size).  The standard library has no fallocate with a mode, hence ctypes."""
    if end > start and _libc.fallocate(fd, _FALLOC_PUNCH, start, end - start) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot free staged bytes: {os.strerror(err)}")


class StagedFile:
    """One file's local copy: written ranges plus a lazily fetched base object."""

    def __init__(self, directory: Path, size: int, base_etag: str | None,
                 part_size: int = 8 * 1024 * 1024) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        self.path = str(directory / f"{name}.data")
        self.journal_path = str(directory / f"{name}.json")
        self.log = ChangeLog(str(directory / f"{name}.log"))
        self.journal: dict[str, Any] | None = None  # key, metadata, upload id, while dirty
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.fd = fd
        os.ftruncate(fd, size)
        self.size = size
        self.base_etag = base_etag
        self.base_valid = size if base_etag is not None else 0
        self.present: list[Extent] = []
        self.dirty = False
        self.part_size = part_size
        self.versions: dict[int, int] = {}  # multipart part number -> times it was changed
        self.upload: Any = None  # uploader.Multipart streaming this file's parts, if any
        self.written_ns = 0  # mtime the last write set (a different mtime was set explicitly)
        # What the object in the bucket must still be when we commit over it: its ETag, or
        # EXPECT_ABSENT ("*") for a file that did not exist (conditional writes).
        self.expect: str | None = base_etag
        self.kept = False  # moved aside after a conflict: close must not delete it
        self.drops = 0  # bumped when local bytes are dropped: a read in flight must look again
        # Ranges dropped locally whose bytes are only in parts of `upload` (uploaded, not yet
        # committed): whole parts, disjoint from `present`; `sent_parts` has their ETags.
        self.sent: list[Extent] = []
        self.sent_parts: dict[int, str] = {}
        # The ETag our upload will give the object, from just before its last request until
        # its answer; still set after a failure with no answer (a timeout): it may have landed.
        self.landing: str | None = None
        # The data as of the last sync: all a checkpoint may name (see journal.py).
        self.synced: dict[str, Any] = self._state()
        self.unsynced = False  # changed since the last sync

    def _state(self) -> dict[str, Any]:
        return {"size": self.size, "base_etag": self.base_etag, "base_valid": self.base_valid,
                "present": list(self.present), "sent": list(self.sent),
                "sent_parts": dict(self.sent_parts), "part_size": self.part_size,
                "seq": self.log.seq}

    def set_journal(self, **fields: Any) -> None:
        """Record what the next mount needs to finish this file's upload after a crash."""
        self.journal = fields
        self._save_journal()

    def _save_journal(self) -> None:
        write_durably(self.journal_path, dict(self.journal or {}, **self.synced))

    def sync(self, **completing: Any) -> None:
        """Put the data on the disk, then a checkpoint naming it.  `completing` records the
        upload about to be sent (its expected ETag), so a mount after a crash recognises it.
        Without it, an earlier upload that got no answer is recorded as `earlier`: the object
        may be that version of ours, which the data here has since moved on from."""
        state = self._state()
        os.fdatasync(self.fd)
        self.synced, self.unsynced = state, False
        if self.journal is not None:
            self.journal = {k: v for k, v in self.journal.items() if k != "completing"}
            if completing:
                self.journal["completing"] = completing
            elif self.landing is not None:
                self.journal["completing"] = {"etag": self.landing, "earlier": True}
            self._save_journal()
            self.log.reset()

    def move_to(self, directory: Path) -> str:
        """Move the data and its journal to `directory` (kept for a person to look at)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = os.path.basename(self.path)
        new_path = str(directory / name)
        os.fdatasync(self.fd)
        self.synced = self._state()
        os.replace(self.path, new_path)
        self.forget_journal()
        self.path = new_path
        self.journal_path = str(directory / name.replace(".data", ".json"))
        self._save_journal()
        self.journal = None  # the kept journal is not ours to rewrite or delete
        self.journal_path += ".kept"
        self.kept = True
        return new_path

    def forget_journal(self) -> None:
        """The data is in the bucket: nothing to recover any more."""
        self.journal = None
        try:
            os.unlink(self.journal_path)
        except FileNotFoundError:
            pass
        self.log.remove()

    def _touch(self, start: int, end: int) -> None:
        for number in parts_within(start, end, self.part_size):
            self.versions[number] = self.versions.get(number, 0) + 1

    def version(self, number: int) -> int:
        return self.versions.get(number, 0)

    def _held(self) -> list[Extent]:
        """Bytes that are ours, not the base object's: local, or sent in upload parts."""
        return sorted(self.present + self.sent) if self.sent else self.present

    def untouched(self, start: int, end: int) -> bool:
        """Whether [start, end) is still exactly the base object's bytes, none of them local."""
        return end <= self.base_valid and missing_ranges(self._held(), start, end) == [
            (start, end)]

    def complete(self, start: int, end: int) -> bool:
        """Whether every byte of [start, end) is in the local file."""
        return end <= self.size and not self.remote_gaps(start, end) and not self.sent_within(
            start, end)

    def sent_within(self, start: int, end: int) -> bool:
        """Whether any byte of [start, end) exists only in an uploaded part."""
        return any(s < end and start < e for s, e in self.sent)

    def write(self, offset: int, data: bytes) -> int:
        written = os.pwrite(self.fd, data, offset)
        end = offset + written
        self._touch(offset, end)
        self.present = add_extent(self.present, offset, end)
        if end > self.size:
            self.size = end
        self.dirty = self.unsynced = True
        self.log.append({"w": [offset, end], "c": block_crcs(self.fd, offset, end, self.size)})
        return written

    def fill(self, offset: int, data: bytes) -> None:
        """Store base-object bytes fetched for a range that was missing (does not dirty)."""
        end = min(offset + len(data), self.base_valid)  # never past a truncate since
        gaps = missing_ranges(self._held(), offset, end) if offset < end else []
        for s, e in gaps:  # never overwrite bytes written since the fetch began
            os.pwrite(self.fd, data[s - offset:e - offset], s)
            self.present = add_extent(self.present, s, e)
            if self.dirty:  # the blocks around logged writes changed
                self.log.append({"c": block_crcs(self.fd, s, e, self.size)})

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        self._touch(min(size, self.size), max(size, self.size) + 1)
        if size < self.size:
            self.present = clip_extents(self.present, size)
            self.base_valid = min(self.base_valid, size)
        else:
            self.present = add_extent(self.present, self.size, size)
        self.size = size
        self.dirty = self.unsynced = True
        self.log.append({"t": size, "c": block_crcs(self.fd, size - 1, size, size)
                         if size % BLOCK else []})

    def remote_gaps(self, start: int, end: int) -> list[Extent]:
        """Ranges of [start, end) that must still come from the base object."""
        end = min(end, self.base_valid)
        return missing_ranges(self._held(), start, end) if start < end else []

    def local_bytes(self) -> int:
        """Disk space the staging file takes now."""
        return os.fstat(self.fd).st_blocks * 512 if self.fd >= 0 else 0

    def remote_bytes(self) -> int:
        """Bytes that are still only in the base object."""
        return sum(e - s for s, e in self.remote_gaps(0, self.size))

    def drop_local(self, end: int) -> None:
        """Free the local copy of [0, end): the base object holds those bytes (the file is
        clean, just committed), and they are fetched again if asked for."""
        assert not self.dirty and end <= self.base_valid, "only committed bytes can be dropped"
        self.drops += 1
        self.present = remove_range(self.present, 0, end)
        self.synced["present"] = remove_range(self.synced["present"], 0, end)
        punch_hole(self.fd, 0, end)

    def drop_sent(self, parts: dict[int, Extent], etags: dict[int, str]) -> None:
        """Free the local copy of whole parts already uploaded (part number -> its span), whose
        bytes now live only in the open multipart upload.  The journal says so before the
        bytes go, so a crash in between never uploads holes."""
        self.drops += 1
        for start, end in parts.values():
            self.present = remove_range(self.present, start, end)
            self.sent = add_extent(self.sent, start, end)
        self.sent_parts.update(etags)
        self.sync()
        for start, end in parts.values():
            punch_hole(self.fd, start, end)

    def committed(self, etag: str) -> None:
        """The bucket's version `etag` now holds every byte: sent parts became its bytes."""
        self.dirty = False
        self.expect = self.base_etag = etag
        self.base_valid = self.size
        self.sent, self.sent_parts = [], {}
        self.landing = None
        self.versions.clear()
        # The local bytes are now copies of that version: none needs proving after a crash.
        self.synced = dict(self._state(), present=[])
        self.log.reset()

    def repin(self, etag: str) -> None:
        """The base object's bytes are now under the ETag `etag` (a copy: a rename, or new
        metadata); the next checkpoint names it too, else recovery would read a version gone
        (the caller rewrites the journal, `FileData.journal`, as its expectation changed)."""
        self.expect = self.base_etag = self.synced["base_etag"] = etag

    def rebase(self, etag: str, size: int) -> None:
        """An earlier upload of ours landed though its answer was lost: the bucket's version
        `etag` (`size` bytes) is the base from now on.  Every byte not held here is the same in
        it as in the file now (held bytes only grow, and a truncate since lowered `base_valid`),
        and the bytes only in that upload's parts are its bytes."""
        self.expect = self.base_etag = etag
        self.base_valid = min(size, self.size)
        self.sent, self.sent_parts = [], {}
        self.upload = None  # completed: nothing left to add to or abort
        self.landing = None
        self.synced = dict(self.synced, base_etag=etag, sent=[], sent_parts={},
                           base_valid=min(size, self.synced["size"]))

    def read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        return os.pread(self.fd, size, offset) if size else b""

    def close(self) -> None:
        self.forget_journal()
        fd, self.fd = self.fd, -1
        try:
            os.close(fd)
        finally:
            try:
                if not self.kept:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
