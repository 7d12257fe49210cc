"""Attributes that ride on objects as user metadata: modes, owners, times and `user.*` xattrs.

A change goes up with the next commit of the file's data when one is due anyway (a dirty, new or
unlinked file: the crash journal keeps it meanwhile); otherwise it is a copy of the object onto
itself with the new metadata, never a download, or a new marker object for a directory; for a
file, several changes in a row make one copy, a moment later (`metaqueue.py`).
That copy names the version the mount knows (`CopySourceIfMatch`): when another client replaced
the object meanwhile, the inode is refreshed from the bucket and the change applied to the new
version, once; a second replacement fails it with `Stale` (ESTALE).  Their bytes are never taken
on under our old size and attributes.
Extended attributes are stored as s3fs-fuse stores them (see `store.encode_xattrs`), within
S3's 2 KiB of user metadata.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from s3mount import errors
from s3mount.files import FileData
from s3mount.inodes import ROOT_INODE, Inode, InodeTable
from s3mount.metaqueue import MetaQueue, defers
from s3mount.namespace import Namespace
from s3mount.store import DIRECTORY_CONTENT_TYPE, USER_METADATA_LIMIT, ObjectStore, metadata_size

log = logging.getLogger(__name__)

# A change of attributes, applied to an inode: again after a refresh if the object was replaced.
Change = Callable[[Inode], None]


class Metadata:
    def __init__(self, store: ObjectStore, table: InodeTable, namespace: Namespace,
                 files: FileData, queue: MetaQueue | None = None) -> None:
        self.store = store
        self.table = table
        self.ns = namespace
        self.files = files
        self.queue = queue  # None: every change is stored at once

    async def known(self, inode: Inode) -> Inode:
        """The inode, its user metadata (owner, times, xattrs) read from the bucket if unknown."""
        if not inode.meta_known and inode.staged is None and not inode.local_only:
            await self.ns.revalidate(inode)
        return inode

    @staticmethod
    def rides_with_data(inode: Inode) -> bool:
        """Whether changed attributes will go up with the next commit of the data anyway."""
        return inode.unlinked or inode.local_only or inode.dirty

    async def change(self, inode: Inode, apply: Change) -> None:
        """Apply a change to the inode's attributes and persist it, now or with its data."""
        apply(inode)
        if self.rides_with_data(inode):
            await self.files.journal(inode)
            return
        if self.queue is not None and defers(inode):
            if await self.queue.defer(inode, apply):
                return
            if self.rides_with_data(inode):  # written while the change waited for the lock
                await self.files.journal(inode)
                return
        try:
            await self.store_now(inode)
        except errors.Stale:
            # Replaced by another client since we looked: the change goes onto their version.
            log.info("%s changed in the bucket; applying the attribute change to the new "
                     "version", self.table.key(inode))
            try:
                await self.ns.revalidate(inode)
                apply(inode)
                await self.store_now(inode)
            except BaseException:
                # What we hold is neither the bucket's nor ours: ask the bucket again.
                inode.meta_known = False
                inode.fetched_at = 0.0
                raise

    async def store_now(self, inode: Inode) -> None:
        """A copy of the object onto itself with the new metadata, conditional on the version
        we know; never a download."""
        meta = self.files.metadata(inode)
        if inode.ino == ROOT_INODE:
            return
        key = self.table.key(inode)
        if inode.is_dir:
            await self.store.put(key + "/", b"", meta, DIRECTORY_CONTENT_TYPE)
            inode.has_marker = True
        elif inode.etag is not None:
            inode.etag = await self.store.copy(key, key, inode.size, meta, inode.etag)
            if inode.staged is not None:  # open and clean: its base is the new version
                inode.staged.repin(inode.etag)
        inode.fetched_at = time.monotonic()
        inode.meta_known = True

    # -- extended attributes -------------------------------------------------------------------

    async def getxattr(self, inode: Inode, name: bytes) -> bytes:
        await self.known(inode)
        value = inode.xattrs.get(name.decode("utf-8", "surrogateescape"))
        if value is None:
            raise errors.NoAttribute(name.decode("utf-8", "replace"))
        return value

    async def listxattr(self, inode: Inode) -> list[bytes]:
        await self.known(inode)
        return [n.encode("utf-8", "surrogateescape") for n in sorted(inode.xattrs)]

    async def setxattr(self, inode: Inode, raw: bytes, value: bytes) -> None:
        name = raw.decode("utf-8", "surrogateescape")
        if not name.startswith("user."):
            raise errors.NotSupported(f"only user.* attributes can be stored in S3, not {name}")
        if len(raw) > 255:
            raise errors.OutOfRange("an attribute name is at most 255 bytes")
        await self.known(inode)
        value = bytes(value)

        def apply(target: Inode) -> None:
            target.xattrs[name] = value
            if metadata_size(self.files.metadata(target)) > USER_METADATA_LIMIT:
                del target.xattrs[name]
                raise errors.TooBig("the attributes would exceed S3's 2 KiB of user metadata")

        await self._persist_xattrs(inode, apply)

    async def removexattr(self, inode: Inode, raw: bytes) -> None:
        await self.known(inode)
        name = raw.decode("utf-8", "surrogateescape")

        def apply(target: Inode) -> None:
            if name not in target.xattrs:
                raise errors.NoAttribute(name)
            del target.xattrs[name]

        await self._persist_xattrs(inode, apply)

    async def _persist_xattrs(self, inode: Inode, apply: Change) -> None:
        before = dict(inode.xattrs)
        try:
            await self.change(inode, apply)
        except BaseException:
            if inode.meta_known:  # else refreshed, and to be read from the bucket again
                inode.xattrs = before
            raise
