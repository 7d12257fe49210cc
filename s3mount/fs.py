"""The filesystem in plain terms, with no FUSE in it: every operation the kernel can ask for.

Operations take and return `Inode` records and plain values; `fuse_ops` converts them.  The
namespace (what exists) is `Namespace`'s job, file contents are `FileData`'s; this module decides
what each POSIX call means on S3 and enforces the rules (errno for names S3 cannot hold, EROFS on
a read-only mount, ENOTEMPTY, EISDIR...).  Lookup counts are the kernel's: `remember` adds one each
time an entry is handed to it, `forget` takes them back.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from contextlib import nullcontext

from s3mount import errors
from s3mount.attrs import Metadata
from s3mount.config import MountConfig
from s3mount.files import FileData
from s3mount.handles import FileHandle, HandleTable
from s3mount.inodes import ROOT_INODE, Inode, InodeTable
from s3mount.keys import (
    check_key_length,
    check_not_reserved,
    decode_name,
    join,
)
from s3mount.metaqueue import MetaQueue
from s3mount.namespace import Namespace
from s3mount.renaming import Renamer
from s3mount.store import (
    DIRECTORY_CONTENT_TYPE,
    SPECIAL_KINDS,
    ObjectStore,
    PosixAttrs,
    encode_attrs,
)
from s3mount.writeback import WriteBack

log = logging.getLogger(__name__)

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


class Filesystem:
    def __init__(self, config: MountConfig, store: ObjectStore, table: InodeTable,
                 namespace: Namespace, files: FileData, handles: HandleTable) -> None:
        self.config = config
        self.store = store
        self.table = table
        self.ns = namespace
        self.files = files
        self.handles = handles
        self.renames = Renamer(config, store, table, files, handles)
        self.metaq = MetaQueue(store, table, namespace, files, files.background,
                               files.staging_dir.parent / "attrs", config.metadata_ttl)
        self.meta = Metadata(store, table, namespace, files, self.metaq)
        self.writeback = None if config.write_back is None else WriteBack(
            files, table, files.background, config.write_back, files.uploader.concurrency)

    # -- helpers -------------------------------------------------------------------------------

    def inode(self, ino: int) -> Inode:
        inode = self.table.get(ino)
        if inode is None:
            raise errors.Stale(f"inode {ino} is no longer known")
        return inode

    def directory(self, ino: int) -> Inode:
        inode = self.inode(ino)
        if not inode.is_dir:
            raise errors.NotADirectory(self.table.key(inode))
        return inode

    def writable(self) -> None:
        if self.config.read_only:
            raise errors.ReadOnly("the mount is read-only")

    def new_name(self, parent: Inode, raw: bytes) -> str:
        name = decode_name(raw)
        check_not_reserved(name)
        check_key_length(join(self.table.key(parent), name), self.config.prefix)
        return name

    def remember(self, inode: Inode) -> Inode:
        inode.lookups += 1
        return inode

    def forget(self, ino: int, count: int) -> None:
        self.table.forget(ino, count)

    async def _exists(self, parent: Inode, name: str) -> Inode | None:
        try:
            return await self.ns.lookup(parent, name)
        except errors.NotFound:
            return None

    # -- names ---------------------------------------------------------------------------------

    async def lookup(self, parent_ino: int, raw: bytes) -> Inode:
        parent = self.directory(parent_ino)
        if raw == b".":
            return parent
        if raw == b"..":
            return self.inode(parent.parent)
        return await self.ns.lookup(parent, decode_name(raw))

    async def getattr(self, ino: int) -> Inode:
        inode = self.inode(ino)
        if (ino == ROOT_INODE or inode.unlinked or inode.staged is not None or inode.local_only
                or inode.meta_pending or (inode.fresh(self.ns.freshness) and inode.meta_known)):
            return inode
        try:
            await self.ns.revalidate(inode)
        except errors.NotFound:
            if inode.opens:
                return inode  # deleted elsewhere; the open handle still answers
            self.table.detach(inode)
            raise
        return inode

    async def mkdir(self, parent_ino: int, raw: bytes, mode: int, uid: int, gid: int) -> Inode:
        self.writable()
        parent = self.directory(parent_ino)
        name = self.new_name(parent, raw)
        if await self._exists(parent, name) is not None:
            raise errors.Exists(name)
        key = join(self.table.key(parent), name)
        now = time.time_ns()
        attrs = PosixAttrs(stat.S_IFDIR | (mode & 0o7777), uid, gid, now)
        await self.store.put(key + "/", b"", encode_attrs(attrs), DIRECTORY_CONTENT_TYPE)
        inode = self.table.add(parent.ino, name, attrs.mode, uid, gid, mtime_ns=now,
                               ctime_ns=now, etag="", has_marker=True,
                               fetched_at=time.monotonic(), complete_at=time.monotonic())
        self.ns.forget_negative(parent, name)  # nothing was under it: a new, empty directory
        self.ns.landed_under(inode)
        return inode

    async def rmdir(self, parent_ino: int, raw: bytes) -> None:
        self.writable()
        parent = self.directory(parent_ino)
        inode = await self.ns.lookup(parent, decode_name(raw))
        if not inode.is_dir:
            raise errors.NotADirectory(inode.name)
        if not await self.ns.is_empty(inode):
            raise errors.NotEmpty(inode.name)
        await self.store.delete(self.table.key(inode) + "/")
        for child in self.table.children(inode.ino):
            self.table.detach(child)
        self.table.detach(inode)

    async def unlink(self, parent_ino: int, raw: bytes) -> None:
        self.writable()
        parent = self.directory(parent_ino)
        inode = await self.ns.lookup(parent, decode_name(raw))
        if inode.is_dir:
            raise errors.IsADirectory(inode.name)
        # Under the file's lock: a commit in flight lands first, and the DELETE after it (else
        # the PUT could land after the DELETE, and the deleted file come back); a commit
        # waiting behind this finds the file unlinked.  Out of the namespace, with no await
        # after `keep_readable` looked at its opens, before the DELETE is awaited: an open(2)
        # racing this unlink either made it keep the file readable or fails with ENOENT.
        async with self.files.lock(inode):
            await self.files.adopt_landed(inode)  # an upload that got no answer is deleted too
            await self.files.keep_readable(inode, locked=True)
            key = self.table.key(inode)
            replaced = self.files.replaces_object(inode)
            self.table.detach(inode)
            # Its crash journal goes too: a recovery must not bring back an unlinked file.
            await self.files.journal(inode)
            if inode.etag is not None or replaced:
                try:
                    await self.store.delete(key)
                except errors.FsError:
                    if not await self._gone(key):  # else it landed, its answer lost
                        await self._relink(parent, inode)
                        raise
        await self.metaq.forget(inode)
        if not inode.opens:  # a closed file waiting for write-back: its journal goes too
            await self.files.drop_clean(inode)

    async def _gone(self, key: str) -> bool:
        try:
            return await self.store.head(key) is None
        except errors.FsError:
            return False

    async def _relink(self, parent: Inode, inode: Inode) -> None:
        """Undo the unlink whose DELETE failed: the name stays, and so does the file its open
        handles write to (else their writes went to a detached inode and were lost), with its
        crash journal, written anew from the data now on the disk."""
        if self.table.get(inode.ino) is inode and self.table.child(parent.ino,
                                                                   inode.name) is None:
            self.table.move(inode, parent.ino, inode.name)
            inode.unlinked = False
            await self.files.journal(inode)
            if inode.staged is not None and inode.staged.journal is not None:
                await self.files.sync_now(inode.staged)

    async def symlink(self, parent_ino: int, raw: bytes, target: bytes, uid: int,
                      gid: int) -> Inode:
        try:
            text = target.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.InvalidName("a symlink target must be UTF-8") from None
        attrs = PosixAttrs(stat.S_IFLNK | 0o777, uid, gid, time.time_ns())
        return await self._make_object(parent_ino, raw, attrs, target, target=text)

    async def _make_object(self, parent_ino: int, raw: bytes, attrs: PosixAttrs, body: bytes,
                           **fields: object) -> Inode:
        """A new symlink, FIFO, socket or device: one PUT of its body with its attributes."""
        self.writable()
        parent = self.directory(parent_ino)
        name = self.new_name(parent, raw)
        if await self._exists(parent, name) is not None:
            raise errors.Exists(name)
        etag = await self.store.put(join(self.table.key(parent), name), body,
                                    encode_attrs(attrs))
        inode = self.table.add(parent.ino, name, attrs.mode, attrs.uid, attrs.gid,
                               size=len(body), mtime_ns=attrs.mtime_ns, ctime_ns=attrs.mtime_ns,
                               etag=etag, rdev=attrs.rdev, fetched_at=time.monotonic(),
                               **fields)
        self.ns.forget_negative(parent, name)
        return inode

    async def readlink(self, ino: int) -> bytes:
        inode = self.inode(ino)
        if inode.kind != stat.S_IFLNK:
            raise errors.InvalidArgument("not a symlink")
        if inode.target is None:
            data = await self.store.get_range(self.table.key(inode), 0, inode.size, inode.etag)
            inode.target = data.decode("utf-8", "surrogateescape")
        return inode.target.encode("utf-8", "surrogateescape")

    async def link(self) -> Inode:
        raise errors.NotPermitted("hard links cannot be stored in S3")

    async def mknod(self, parent_ino: int, raw: bytes, mode: int, rdev: int, uid: int,
                    gid: int) -> Inode:
        """A FIFO, socket or device is an empty object whose mode (and rdev) say what it is,
        as s3fs-fuse stores them; a regular file is created as by open(O_CREAT)."""
        kind = stat.S_IFMT(mode)
        if kind in SPECIAL_KINDS:
            device = rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
            attrs = PosixAttrs(kind | (mode & 0o7777), uid, gid, time.time_ns(), device)
            return await self._make_object(parent_ino, raw, attrs, b"")
        if kind != stat.S_IFREG:
            raise errors.NotSupported(f"file type {kind:o} cannot be stored")
        handle, inode = await self.create(parent_ino, raw, mode, os.O_WRONLY, 0, uid, gid)
        try:
            await self.flush(handle.fh)
        finally:
            await self.release(handle.fh)
        return inode

    # -- attributes ----------------------------------------------------------------------------

    async def setattr(self, ino: int, *, size: int | None = None, mode: int | None = None,
                      uid: int | None = None, gid: int | None = None,
                      mtime_ns: int | None = None, fh: int | None = None) -> Inode:
        self.writable()
        inode = await self.meta.known(self.inode(ino))  # keep the owner, times not seen yet
        if size is not None:
            if inode.is_dir:
                raise errors.IsADirectory(inode.name)
            await self.files.truncate(inode, size)
            if fh is not None:
                self.handles.file(fh).wrote = True  # ftruncate: its close commits
        uid = None if uid in (None, -1, 0xFFFFFFFF) else uid
        gid = None if gid in (None, -1, 0xFFFFFFFF) else gid

        def apply(target: Inode) -> None:  # again onto a refreshed inode, if it was replaced
            if mode is not None:
                target.mode = target.kind | stat.S_IMODE(mode)
            target.uid = target.uid if uid is None else uid
            target.gid = target.gid if gid is None else gid
            target.mtime_ns = target.mtime_ns if mtime_ns is None else mtime_ns
            target.ctime_ns = time.time_ns()

        if size is not None and fh is None:
            apply(inode)
            await self.files.commit(inode)  # truncate(2) by path: no close(2) will commit it
            if not inode.opens:
                await self.files.drop_clean(inode)
        elif (mode, uid, gid, mtime_ns) != (None, None, None, None):
            await self.meta.change(inode, apply)
        else:
            inode.ctime_ns = time.time_ns()
        return inode

    # -- extended attributes -------------------------------------------------------------------

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return await self.meta.getxattr(self.inode(ino), name)

    async def listxattr(self, ino: int) -> list[bytes]:
        return await self.meta.listxattr(self.inode(ino))

    async def setxattr(self, ino: int, raw: bytes, value: bytes) -> None:
        self.writable()
        await self.meta.setxattr(self.inode(ino), raw, value)

    async def removexattr(self, ino: int, raw: bytes) -> None:
        self.writable()
        await self.meta.removexattr(self.inode(ino), raw)

    def statfs(self) -> dict[str, int]:
        blocks = 1 << 40
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": blocks, "f_bfree": blocks,
                "f_bavail": blocks, "f_files": 1 << 32, "f_ffree": 1 << 32,
                "f_favail": 1 << 32, "f_namemax": 255}

    # -- directories ---------------------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        self.directory(ino)
        return self.handles.open_dir(ino).fh

    async def readdir(self, fh: int, start: int) -> list[tuple[str, Inode]]:
        """Entries from index `start` of the snapshot taken when the listing began."""
        handle = self.handles.dir(fh)
        if not handle.loaded or start == 0:
            handle.entries = await self.ns.list_dir(self.directory(handle.ino))
            handle.loaded = True
        return handle.entries[start:]

    def releasedir(self, fh: int) -> None:
        self.handles.close(fh)

    # -- rename --------------------------------------------------------------------------------

    async def rename(self, old_parent: int, old_raw: bytes, new_parent: int, new_raw: bytes,
                     flags: int) -> None:
        self.writable()
        src_dir, dst_dir = self.directory(old_parent), self.directory(new_parent)
        src = await self.ns.lookup(src_dir, decode_name(old_raw))
        new_name = self.new_name(dst_dir, new_raw)
        if flags & 2:  # RENAME_EXCHANGE: S3 cannot swap two keys atomically
            raise errors.InvalidArgument("RENAME_EXCHANGE is not supported")
        dst = await self._exists(dst_dir, new_name)
        if dst is src:
            return
        if dst is not None:
            if flags & 1:  # RENAME_NOREPLACE
                raise errors.Exists(new_name)
            if src.is_dir and not dst.is_dir:
                raise errors.NotADirectory(new_name)
            if dst.is_dir and not src.is_dir:
                raise errors.IsADirectory(new_name)
            if dst.is_dir and not await self.ns.is_empty(dst):
                raise errors.NotEmpty(new_name)
        new_key = join(self.table.key(dst_dir), new_name)
        await self.renames.settle_tree(src)
        if src.is_dir:  # the copies of its objects keep the metadata they have in the bucket
            await self.metaq.flush_tree(src)
        # The files under a directory hold still while it moves: a commit in flight lands
        # before the LIST, so it is copied; one waiting starts after the move, under the new key.
        async with self.renames.lock_tree(src) if src.is_dir else nullcontext():
            if src.is_dir:
                await self.renames.rename_tree(src, new_key)
            else:
                await self.renames.rename_file(src, dst, new_key)
            if dst is not None and dst.is_dir and dst.has_marker and not src.has_marker:
                await self.store.delete(new_key + "/")
            self.table.move(src, dst_dir.ino, new_name)
        await self.metaq.forget(src)  # its copy carried them
        if dst is not None:
            await self.metaq.forget(dst)
            await self.files.journal(dst)  # replaced: a crash must not bring it back
        if dst is not None and not dst.opens:  # as for unlink
            await self.files.drop_clean(dst)
        self.ns.forget_negative(dst_dir, new_name)
        await self.renames.journal_tree(src)

    # -- files ---------------------------------------------------------------------------------

    async def open(self, ino: int, flags: int, pid: int) -> tuple[FileHandle, bool]:
        """A new handle, and whether the kernel may keep the pages it cached of this file."""
        inode = self.inode(ino)
        if inode.is_dir:
            raise errors.IsADirectory(inode.name)
        if inode.unlinked and inode.staged is None:
            raise errors.NotFound(f"{inode.name} was deleted")
        if flags & WRITE_FLAGS:
            self.writable()
        if inode.staged is None:
            await self.getattr(ino)  # close-to-open: revalidate when older than the TTL
        handle = self.handles.open_file(ino, flags, pid)
        handle.etag, handle.size = inode.etag, inode.size
        inode.opens += 1
        try:
            if flags & os.O_TRUNC and inode.size:
                await self.files.truncate(inode, 0)
                handle.wrote = True
        except BaseException:
            self.handles.close(handle.fh)
            inode.opens -= 1
            self.table.settle(inode)
            raise
        keep = inode.kernel_etag == inode.etag and inode.staged is None and inode.etag is not None
        inode.kernel_etag = inode.etag
        return handle, keep

    async def create(self, parent_ino: int, raw: bytes, mode: int, flags: int, pid: int,
                     uid: int, gid: int) -> tuple[FileHandle, Inode]:
        self.writable()
        parent = self.directory(parent_ino)
        name = self.new_name(parent, raw)
        existing = await self._exists(parent, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise errors.Exists(name)
            handle, _ = await self.open(existing.ino, flags, pid)
            return handle, existing
        now = time.time_ns()
        inode = self.table.add(parent.ino, name, stat.S_IFREG | (mode & 0o7777), uid, gid,
                               mtime_ns=now, ctime_ns=now, fetched_at=time.monotonic())
        await self.files.stage(inode)
        await self.files.journal(inode)
        self.ns.forget_negative(parent, name)
        handle = self.handles.open_file(inode.ino, flags, pid)
        handle.wrote = True  # a new file exists in the bucket once it is closed, even empty
        inode.opens += 1
        return handle, inode

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.handles.file(fh)
        return await self.files.read(self.inode(handle.ino), handle, offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        self.writable()
        handle = self.handles.file(fh)
        handle.wrote = True
        return await self.files.write(self.inode(handle.ino), offset, data)

    def _upload_later(self, inode: Inode) -> bool:
        """With --write-back, queue the file's upload instead of committing it now."""
        return self.writeback is not None and self.writeback.schedule(inode)

    async def flush(self, fh: int) -> None:
        """The commit point of close(2): the data is in the bucket when this returns (with
        --write-back: staged and journaled, its upload queued)."""
        handle = self.handles.file(fh)
        if handle.wrote and not self._upload_later(self.inode(handle.ino)):
            await self.files.commit(self.inode(handle.ino))  # a reader's close never fails

    async def fsync(self, fh: int) -> None:
        """fsync(2) on any handle puts the file's data and attributes in the bucket."""
        inode = self.inode(self.handles.file(fh).ino)
        await self.files.commit(inode)
        await self.metaq.flush(inode)

    async def release(self, fh: int) -> None:
        handle = self.handles.file(fh)
        self.handles.close(fh)
        inode = self.inode(handle.ino)
        inode.opens -= 1
        if inode.opens == 0:
            try:
                if not self._upload_later(inode):
                    await self.files.commit(inode)
            except errors.Stale:
                pass  # another client's change: ours went to a conflict key, already logged
            except errors.FsError as exc:
                log.error("%s stays staged, its upload failed: %s; retrying in the background",
                          self.table.key(inode), exc)
                self.files.retry_later(inode)
            await self.files.drop_clean(inode)
        self.table.settle(inode)

    async def commit_all(self) -> int:
        """Upload every dirty file (unmount, SIGTERM); returns how many could not be."""
        if self.writeback is not None:
            await self.writeback.drain()  # in parallel; what fails is tried once more below
        await self.metaq.drain()
        failed = await self.files.commit_all(self.table.all())
        for inode, exc in failed:
            log.error("could not upload %s: %s", self.table.key(inode), exc)
        return len(failed)
