"""Coalesced attribute changes: a chmod, chown, utime or setxattr of a closed, clean file.

Such a change is a copy of the object onto itself (`attrs.py`).  Programs make several in a row
(tar: close, then utimensat, chown, chmod), so here the first one is applied to the inode at once,
journaled, and one copy carrying all of them goes `delay` seconds later (the metadata TTL: other
mounts see a change within the time their own cached attributes may be old anyway).

`MetaQueue` owns `pending`, one entry a file, with the version the changes apply to (`etag`) and
the changes themselves, to apply again to another client's version.  While an entry is pending
the inode's `meta_pending` is set: refreshes from the bucket leave its attributes and ETag alone
(`Namespace.refresh_from`), so a change made elsewhere is found by the copy's condition, and the
inode stays in the table (`InodeTable`) however the kernel forgets it.

The copy goes at once on fsync(2), drain (unmount, SIGTERM) and a directory rename; none is sent
when something else carries the changes: a commit of the file's data (its PUT takes the inode's
metadata, and its data journal holds them until then), a file rename (its copy takes them), an
unlink (they are dropped).  Every send, and every new change, holds the file's lock, so a commit
or a change never interleaves with a copy; `pending` is changed only between awaits.

Durability: each entry has a record, written durably (`journal.write_durably`) before the
change returns: the key, the version, and the whole metadata.  `recover` applies the records a
killed mount left, before the next mount serves.  A copy that gets no answer leaves its entry
pending, tried again after the delay; at unmount its record stays for the next mount.  Records
are written and removed through `run_blocking`, never on the trio loop.  A conflict (the object
replaced by another client) follows `attrs.py`: the changes go onto their version once, logged; a
second replacement fails with `Stale`, raised to fsync(2) or logged, and their object is left as
it is.  Recovery, which no longer has the changes, never copies our metadata onto their version:
it logs and drops them.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from s3mount import errors
from s3mount.files import FileData
from s3mount.inodes import Inode, InodeTable
from s3mount.journal import write_durably
from s3mount.namespace import Namespace
from s3mount.store import ObjectStore
from s3mount.workers import Background, run_blocking

log = logging.getLogger(__name__)

Change = Callable[[Inode], None]


class Unsent(errors.RemoteIO):
    """The copy failed for want of an answer: its changes stay pending."""

    def __init__(self, cause: errors.FsError) -> None:
        super().__init__(str(cause))
        self.errno = cause.errno


@dataclass
class Entry:
    inode: Inode
    etag: str  # the version the changes apply to
    record: Path
    changes: list[Change] = field(default_factory=list)  # to apply again to another version


def defers(inode: Inode) -> bool:
    """Whether a change of this inode's attributes can wait: a clean file in the bucket."""
    return (not inode.is_dir and inode.etag is not None and not inode.unlinked
            and not inode.dirty)


class MetaQueue:
    def __init__(self, store: ObjectStore, table: InodeTable, namespace: Namespace,
                 files: FileData, background: Background, records: Path, delay: float) -> None:
        self.store = store
        self.table = table
        self.ns = namespace
        self.files = files
        self.background = background
        self.records = records
        self.delay = delay
        self.pending: dict[int, Entry] = {}
        self.sent = 0  # copies that carried coalesced changes
        self.conflicts = 0

    async def defer(self, inode: Inode, change: Change) -> bool:
        """Journal a change already applied to the inode; False if it cannot wait (no
        background nursery yet): the caller stores it now."""
        async with self.files.lock(inode):
            if not defers(inode):
                return False  # became dirty meanwhile: its commit carries the change
            entry = self.pending.get(inode.ino)
            if entry is None:
                record = self.records / f"{uuid.uuid4().hex}.json"
                entry = Entry(inode, str(inode.etag), record)
                if not self.background.start(self._send_later, entry):
                    return False
                self.pending[inode.ino] = entry
                inode.meta_pending = True
            entry.changes.append(change)
            state = {"key": self.table.key(inode), "etag": entry.etag, "size": inode.size,
                     "metadata": self.files.metadata(inode)}
            await run_blocking(self.files.limiters.disk, self._write, entry.record, state)
        return True

    def _write(self, path: Path, state: dict) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_durably(str(path), state)

    async def _send_later(self, entry: Entry) -> None:
        await trio.sleep(self.delay)
        if self.pending.get(entry.inode.ino) is entry:
            try:
                await self.flush(entry.inode)
            except errors.FsError:
                pass  # logged by flush; nobody to tell

    async def flush(self, inode: Inode) -> None:
        """Send the inode's pending changes now, or drop them if something carried them."""
        if inode.ino not in self.pending:
            return
        with trio.CancelScope(shield=True):  # a copy cut off would meet itself as a conflict
            async with self.files.lock(inode):
                entry = self.pending.pop(inode.ino, None)
                if entry is None:
                    return
                carried, inode.meta_pending = not inode.meta_pending, False
                try:
                    if not carried:
                        await self._send(entry)
                except Unsent:
                    raise  # kept, and tried again
                except BaseException:
                    await self._forget(inode, entry)
                    raise
                await self._forget(inode, entry)

    async def _send(self, entry: Entry) -> None:
        inode = entry.inode
        if inode.unlinked or inode.dirty or inode.etag != entry.etag:
            return  # dropped, or carried by a commit of the data (`defers`)
        key = self.table.key(inode)
        try:
            await self._copy(inode, key, entry.etag)
            return
        except (errors.Stale, errors.NotFound):
            self.conflicts += 1
            log.info("%s changed in the bucket; applying the attribute change to the new "
                     "version", key)
        except errors.FsError as exc:
            self._keep(entry, exc)
        try:
            await self.ns.revalidate(inode)
            for change in entry.changes:
                change(inode)
            await self._copy(inode, key, str(inode.etag))
        except errors.FsError as exc:
            inode.meta_known = False  # neither the bucket's nor ours: ask the bucket again
            inode.fetched_at = 0.0
            log.warning("%s: its attribute change was not stored (%s); the bucket's version "
                        "is left as it is", key, exc)
            raise

    async def _copy(self, inode: Inode, key: str, etag: str) -> None:
        inode.etag = await self.store.copy(key, key, inode.size, self.files.metadata(inode), etag)
        if inode.staged is not None:  # open and clean: its base is the new version
            inode.staged.repin(inode.etag)
        self.sent += 1

    def _keep(self, entry: Entry, exc: errors.FsError) -> None:
        """The bucket did not answer: the changes stay pending, tried again after the delay
        (or, when the mount is going, by the next mount's recovery)."""
        inode = entry.inode
        if inode.ino not in self.pending and self.background.start(self._send_later, entry):
            self.pending[inode.ino] = entry
            inode.meta_pending = True
            log.warning("%s: its attribute change could not be stored yet (%s); trying again",
                        self.table.key(inode), exc)
        else:
            log.error("%s: its attribute change could not be stored (%s); the next mount "
                      "applies it from %s", self.table.key(inode), exc, entry.record)
        raise Unsent(exc)

    async def forget(self, inode: Inode) -> None:
        """Drop the pending changes: the file was unlinked, or a rename's copy carried them."""
        entry = self.pending.pop(inode.ino, None)
        if entry is not None:
            await self._forget(inode, entry)

    async def _forget(self, inode: Inode, entry: Entry) -> None:
        inode.meta_pending = False
        await run_blocking(self.files.limiters.disk, entry.record.unlink, True)
        self.table.settle(inode)  # an inode kept only for its pending changes may go

    async def flush_tree(self, top: Inode) -> None:
        """Send the changes pending under a directory, before its objects are copied away."""
        for inode in list(self.table.subtree(top)):
            await self.flush(inode)

    async def drain(self) -> None:
        """Send everything pending (unmount, SIGTERM); failures are logged."""
        async with trio.open_nursery() as nursery:
            for entry in list(self.pending.values()):
                nursery.start_soon(self._flush_quietly, entry.inode)

    async def _flush_quietly(self, inode: Inode) -> None:
        try:
            await self.flush(inode)
        except errors.FsError:
            pass  # logged by flush

    def stats(self) -> dict[str, int]:
        return {"files": len(self.pending), "sent": self.sent, "conflicts": self.conflicts}


def without_mtime(meta: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in meta.items() if k != "mtime"}


async def recover(records: Path, store: ObjectStore) -> int:
    """Apply the attribute changes a killed mount had journaled: one conditional copy each."""
    done = 0
    for path in sorted(records.glob("*.json")) if records.is_dir() else []:
        try:
            state = json.loads(path.read_text())
            key, meta = state["key"], state["metadata"]
        except (OSError, ValueError, KeyError):
            log.error("unreadable attribute journal %s: left in place", path)
            continue
        try:
            await store.copy(key, key, int(state["size"]), meta, state["etag"])
            done += 1
        except errors.Stale:
            # Already ours when the data's recovery uploaded the file (its mtime is the data's).
            now = await store.head(key)
            if now is None or without_mtime(now.metadata or {}) != without_mtime(meta):
                log.warning("%s changed in the bucket before its attribute change was stored "
                            "(chmod, chown, utime or xattr before a crash): theirs is kept", key)
        except errors.NotFound:
            log.info("%s is gone: its journaled attribute change is dropped", key)
        except errors.FsError as exc:
            log.error("could not apply the journaled attribute change of %s (%s); kept in %s",
                      key, exc, path)
            continue
        os.unlink(path)
    return done
