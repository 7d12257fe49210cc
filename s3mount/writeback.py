"""Write-back (`--write-back[=DELAY]`): close(2) returns once a file is staged and journaled, and
its upload runs in the background DELAY seconds later.

`WriteBack` owns the backlog: each closed file whose upload is still to come, with when it was
first closed.  Each entry has one task in the mount's background nursery that sleeps until the
entry is due (or is woken early: `drain`, or a backlog passing half the cache budget), then
commits the file with `FileData.commit`, the very commit close(2) makes in the default mode
(one conditional PUT, or a multipart upload; conflict handling; the journal removed).  At most
`concurrency` files upload at once, the uploader's limit; their requests share the S3 limiter.
A chmod, chown or utime that comes before the upload rides with the data
(`Metadata.rides_with_data`): one PUT carries it, no COPY follows.

Durability: a staged file and its journal outlive a crash of the daemon, and the next mount
uploads them (`recovery.py`); fsync(2) still commits at once; `drain` (unmount, SIGTERM)
uploads the whole backlog, in parallel, before the mount goes.  Each commit is shielded from
cancellation: a PUT cut off after S3 took it would meet its own object as a conflict next time.

A conflict found by a background upload (another client changed the object) cannot reach the
program, whose close(2) returned long ago: `FileData` keeps our version aside as in the default
mode and logs where; this module adds a WARNING saying no program was told, and counts it for
`s3mount status`.  `backlog` is read and changed only between awaits, so it is consistent
under trio.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from s3mount.errors import FsError, Stale
from s3mount.files import FileData
from s3mount.inodes import Inode, InodeTable
from s3mount.workers import Background

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """One file in the backlog."""

    inode: Inode
    since: float  # time.monotonic() of the close that queued it
    due: float  # trio time at which its upload starts
    size: int  # its size when queued (for the budget check only)
    wake: trio.Event = field(default_factory=trio.Event)  # start before `due`
    started: bool = False  # its upload was taken on (by its task or by `drain`)


def needs_upload(inode: Inode) -> bool:
    staged = inode.staged
    return staged is not None and not inode.unlinked and (staged.dirty or inode.local_only)


class WriteBack:
    def __init__(self, files: FileData, table: InodeTable, background: Background,
                 delay: float, concurrency: int) -> None:
        self.files = files
        self.table = table
        self.background = background
        self.delay = delay
        self.slots = trio.Semaphore(max(1, concurrency))
        self.backlog: dict[int, Pending] = {}
        self.queued_bytes = 0
        self.conflicts = 0  # conflicts found by background uploads
        self.last_conflict: str | None = None
        self.draining = False  # the background nursery may be gone: no retries started

    def schedule(self, inode: Inode) -> bool:
        """Queue the upload of a file just closed.  False when it cannot wait (no background
        nursery yet): the caller commits it now."""
        if not needs_upload(inode):
            return True
        entry = self.backlog.get(inode.ino)
        if entry is not None and not entry.started:
            return True  # already queued: the first close sets the time
        new = Pending(inode, time.monotonic(), trio.current_time() + self.delay,
                      int(inode.staged.size))
        if not self.background.start(self._upload_later, new):
            return False
        if entry is not None:  # its upload runs; what was written since needs one more
            self.queued_bytes -= entry.size
        self.backlog[inode.ino] = new
        self.queued_bytes += new.size
        if self.queued_bytes > self.files.space.budget // 2:
            # Staged data waiting would crowd out new writes (budget.py): upload it all now.
            for waiting in self.backlog.values():
                waiting.wake.set()
        return True

    async def _upload_later(self, entry: Pending) -> None:
        with trio.move_on_at(entry.due):
            await entry.wake.wait()
        if not entry.started:
            entry.started = True
            await self._upload(entry)

    async def drain(self) -> None:
        """Upload the whole backlog now, in parallel within the limit (unmount, SIGTERM)."""
        entries = list(self.backlog.values())
        if not entries:
            return
        log.info("write-back: uploading %d queued files now", len(entries))
        self.draining = True
        for entry in entries:
            entry.started = True  # their own tasks, if still alive, leave them to us
            entry.wake.set()
        try:
            async with trio.open_nursery() as nursery:
                for entry in entries:
                    nursery.start_soon(self._upload, entry)
        finally:
            self.draining = False

    async def _upload(self, entry: Pending) -> None:
        async with self.slots:
            with trio.CancelScope(shield=True):
                try:
                    await self._commit(entry.inode)
                finally:
                    if self.backlog.get(entry.inode.ino) is entry:
                        del self.backlog[entry.inode.ino]
                        self.queued_bytes -= entry.size

    async def _commit(self, inode: Inode) -> None:
        key = self.table.key(inode) if not inode.unlinked else inode.name
        try:
            await self.files.commit(inode)
        except Stale as exc:
            self.conflicts += 1
            self.last_conflict = f"{key}: {exc}"
            log.warning("%s: its background upload met a change by another client (%s); close(2) "
                        "had returned, so no program was told", key, exc)
        except FsError as exc:
            if self.draining:  # the caller (`Filesystem.commit_all`) tries once more, and says
                log.info("%s: its upload failed: %s", key, exc)
                return
            log.error("%s stays staged, its background upload failed: %s; retrying in the "
                      "background", key, exc)
            self.files.retry_later(inode)
            return
        if inode.opens == 0:
            await self.files.drop_clean(inode)  # also forgets the journal of an unlinked file
        self.table.settle(inode)

    def stats(self) -> dict[str, Any]:
        """The backlog for `s3mount status` and the metrics: files, bytes, oldest age."""
        waiting = [e for e in self.backlog.values() if needs_upload(e.inode)]
        now = time.monotonic()
        return {"delay": self.delay, "files": len(waiting),
                "bytes": sum(int(e.inode.staged.size) - e.inode.staged.remote_bytes()
                             for e in waiting),
                "oldest_age": round(max((now - e.since for e in waiting), default=0.0), 1),
                "conflicts": self.conflicts, "last_conflict": self.last_conflict}
