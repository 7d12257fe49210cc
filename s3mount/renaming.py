"""Renaming in the bucket, which has no rename: a file is copied then deleted, a directory key by
key.  The source is never lost before its copy is complete; neither move is atomic.

`Renamer` does the moving for `Filesystem.rename`, which decides whether a rename is allowed.
While a directory moves, the files known under it hold still (their locks are held, in inode
order): a commit in flight lands before the listing, so it is copied; one waiting starts after
the move, under the new key.  Staged files under a moved directory are re-pointed at the copies
of their base objects, and their crash journals at their new keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from s3mount import errors
from s3mount.config import MountConfig
from s3mount.files import FileData
from s3mount.handles import HandleTable
from s3mount.inodes import Inode, InodeTable
from s3mount.keys import check_key_length, creation_rounds, deletion_order, dir_prefix
from s3mount.store import EXPECT_ABSENT, ObjectStore


class Renamer:
    """Moves a file or a directory tree to a new key, for `Filesystem.rename`."""

    def __init__(self, config: MountConfig, store: ObjectStore, table: InodeTable,
                 files: FileData, handles: HandleTable) -> None:
        self.config = config
        self.store = store
        self.table = table
        self.files = files
        self.handles = handles

    @asynccontextmanager
    async def lock_tree(self, top: Inode) -> AsyncIterator[None]:
        """Hold the lock of every file known under `top` (in inode order: no deadlock)."""
        files = [node for node in self.table.subtree(top) if node is not top and not node.is_dir]
        async with AsyncExitStack() as held:
            for node in sorted(files, key=lambda n: n.ino):
                await held.enter_async_context(self.files.lock(node))
            yield

    async def settle_tree(self, top: Inode) -> None:
        """Commit the files under `top` whose bytes are partly only in an unfinished upload:
        that upload belongs to the old key."""
        for node in self.table.subtree(top):
            if node.staged is not None and node.staged.sent:
                await self.files.settle(node)

    async def journal_tree(self, top: Inode) -> None:
        """After a rename, point the crash journals of staged files at their new keys."""
        for node in self.table.subtree(top):
            if node.staged is not None:
                await self.files.journal(node)

    async def rename_file(self, src: Inode, dst: Inode | None, new_key: str) -> None:
        if dst is not None:
            await self.files.keep_readable(dst)
        async with self.files.lock(src):
            await self.files.adopt_landed(src)  # an upload that got no answer moves too
            if src.etag is None:  # not in the bucket yet: the commit will write the new key,
                if self.files.replaces_object(src):  # over what is there now; what it
                    await self.store.delete(self.table.key(src))  # replaced here goes
                if src.staged is not None:
                    src.staged.expect = dst.etag if dst is not None and dst.etag else EXPECT_ABSENT
                return
            old_key = self.table.key(src)
            # Attribute changes still pending (metaqueue.py) ride with this copy.
            meta = self.files.metadata(src) if src.meta_pending else None
            etag = await self.store.copy(old_key, new_key, src.size, meta)
            src.meta_pending = False
            await self.store.delete(old_key)
            self._repin(src, etag)

    async def rename_tree(self, src: Inode, new_key: str) -> None:
        """Copy every key under the directory, then delete the old ones: the source is never
        lost before the copy is complete (S3 has no atomic rename)."""
        old_prefix = dir_prefix(self.table.key(src))
        new_prefix = dir_prefix(new_key)
        for node in self.table.subtree(src):  # their locks are held (lock_tree)
            if not node.is_dir:
                await self.files.adopt_landed(node)  # then re-pinned to its copy, as others
        objects = []
        token = None
        while True:
            page = await self.store.list_page(old_prefix, None, token)
            objects.extend(page.objects)
            token = page.next_token
            if token is None:
                break
        for obj in objects:  # refuse before copying anything, not halfway through
            check_key_length(new_prefix + obj.key[len(old_prefix):], self.config.prefix)
        new_etags: dict[str, str] = {}
        slots = trio.Semaphore(self.config.max_concurrency)

        async def copy_one(key: str, size: int) -> None:
            async with slots:
                dest = new_prefix + key[len(old_prefix):]
                new_etags[dest] = await self.store.copy(key, dest, size, None)

        sizes = {obj.key: obj.size for obj in objects}
        try:
            for keys in creation_rounds(list(sizes)):  # each marker before what is under it
                async with trio.open_nursery() as nursery:
                    for key in keys:
                        nursery.start_soon(copy_one, key, sizes[key])
        except* errors.FsError as failed:
            raise failed.exceptions[0] from None  # callers catch an FsError, not a group
        await self.store.delete_many(deletion_order(old_prefix, [obj.key for obj in objects]))
        self._rebase_staged(src, old_prefix, new_prefix, new_etags)

    def _rebase_staged(self, src: Inode, old_prefix: str, new_prefix: str,
                       new_etags: dict[str, str]) -> None:
        """Point staged descendants at the copies of their base objects."""
        for node in self.table.subtree(src):
            if node is not src and node.etag and not node.is_dir:
                etag = new_etags.get(new_prefix + self.table.key(node)[len(old_prefix):])
                if etag is not None:
                    self._repin(node, etag)

    def _repin(self, inode: Inode, etag: str) -> None:
        """A renamed file's object is a copy, with the same bytes but maybe a new ETag (always
        for multipart objects): its open handles and staged base now read that copy."""
        for handle in self.handles.files_of(inode.ino):
            if handle.etag == inode.etag:
                handle.etag = etag
        inode.etag = etag
        if inode.staged is not None:
            inode.staged.repin(etag)
