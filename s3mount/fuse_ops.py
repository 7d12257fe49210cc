"""The pyfuse3 adapter: converts arguments and results, and is the one error boundary.

Every handler runs inside `boundary`: an `FsError` becomes `FUSEError(errno)` (logged at the level
its class carries), trio cancellation passes through, and anything else becomes EIO with its
traceback logged once, so no request can end the mount.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from s3mount.errors import FsError, unwrap_group
from s3mount.fs import Filesystem
from s3mount.inodes import Inode

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class LateReplyFilter(logging.Filter):
    """pyfuse3 logs an ERROR when a reply finds its request gone.  For release and forget that
    is normal at unmount (the kernel sends them without waiting); the work was already done."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "fuse_reply_" in message and ("fuse_release()" in message
                                         or "fuse_forget" in message):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger("pyfuse3").isEnabledFor(logging.DEBUG)
        return True


def boundary(fn: F) -> F:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except trio.Cancelled:
            raise
        except BaseException as exc:  # noqa: BLE001 - this is the boundary
            exc = unwrap_group(exc)
            if isinstance(exc, FsError):
                log.log(exc.level, "%s: %s", fn.__name__, exc)
                raise pyfuse3.FUSEError(exc.errno) from None
            if isinstance(exc, (KeyboardInterrupt, SystemExit, trio.Cancelled)):
                raise
            log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


class FuseOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    # Off.  Not for close(2): the kernel's fuse_flush writes dirty pages back before FLUSH, so a
    # close still commits every byte (measured: 64 MiB by dd, whole in the bucket at close), and
    # 4 KiB writes would arrive coalesced to 1 MiB (a tenth of the daemon's CPU).  But with it
    # the kernel trusts its own size and mtime of a cached regular file over our attributes, so
    # another client's change of a file would stay hidden: close-to-open consistency breaks.
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: Filesystem, attr_timeout: float, entry_timeout: float) -> None:
        super().__init__()
        logging.getLogger("pyfuse3").addFilter(LateReplyFilter())
        self.fs = fs
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self.on_init: Callable[[], None] | None = None  # told when the kernel's INIT arrives

    def init(self) -> None:
        """The kernel's INIT request: from here on the mount answers."""
        if self.on_init is not None:
            self.on_init()

    def entry(self, inode: Inode) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode.ino
        attr.generation = 0
        attr.st_mode = inode.mode
        attr.st_nlink = 2 if inode.is_dir else 1
        attr.st_uid = inode.uid
        attr.st_gid = inode.gid
        attr.st_rdev = inode.rdev
        attr.st_size = 0 if inode.is_dir else inode.size
        attr.st_blksize = 512 * 1024
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.st_atime_ns = inode.mtime_ns
        attr.st_mtime_ns = inode.mtime_ns
        attr.st_ctime_ns = inode.ctime_ns or inode.mtime_ns
        # Attributes from a bare listing lack the user metadata (mode, owner, symlink type):
        # the kernel must ask again before trusting them.
        timeout = self.attr_timeout if inode.meta_known else 0
        attr.attr_timeout = timeout
        attr.entry_timeout = self.entry_timeout if inode.meta_known else 0
        return attr

    def remembered(self, inode: Inode) -> pyfuse3.EntryAttributes:
        return self.entry(self.fs.remember(inode))

    @boundary
    async def lookup(self, parent_inode, name, ctx):
        return self.remembered(await self.fs.lookup(parent_inode, name))

    @boundary
    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.fs.forget(ino, count)

    @boundary
    async def getattr(self, inode, ctx):
        return self.entry(await self.fs.getattr(inode))

    @boundary
    async def setattr(self, inode, attr, fields, fh, ctx):
        kwargs: dict[str, Any] = {"fh": fh}
        if fields.update_size:
            kwargs["size"] = attr.st_size
        if fields.update_mode:
            kwargs["mode"] = attr.st_mode
        if fields.update_uid:
            kwargs["uid"] = attr.st_uid
        if fields.update_gid:
            kwargs["gid"] = attr.st_gid
        if fields.update_mtime:
            kwargs["mtime_ns"] = attr.st_mtime_ns
        return self.entry(await self.fs.setattr(inode, **kwargs))

    @boundary
    async def readlink(self, inode, ctx):
        return await self.fs.readlink(inode)

    @boundary
    async def opendir(self, inode, ctx):
        return await self.fs.opendir(inode)

    @boundary
    async def readdir(self, fh, start_id, token):
        for index, (name, inode) in enumerate(await self.fs.readdir(fh, start_id), start_id):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self.entry(inode), index + 1):
                break
            self.fs.remember(inode)

    @boundary
    async def releasedir(self, fh):
        self.fs.releasedir(fh)

    @boundary
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self.remembered(await self.fs.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid))

    @boundary
    async def rmdir(self, parent_inode, name, ctx):
        await self.fs.rmdir(parent_inode, name)

    @boundary
    async def unlink(self, parent_inode, name, ctx):
        await self.fs.unlink(parent_inode, name)

    @boundary
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @boundary
    async def symlink(self, parent_inode, name, target, ctx):
        return self.remembered(
            await self.fs.symlink(parent_inode, name, target, ctx.uid, ctx.gid))

    @boundary
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self.remembered(await self.fs.link())

    @boundary
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self.remembered(
            await self.fs.mknod(parent_inode, name, mode, rdev, ctx.uid, ctx.gid))

    @boundary
    async def statfs(self, ctx):
        data = pyfuse3.StatvfsData()
        for field, value in self.fs.statfs().items():
            setattr(data, field, value)
        return data

    @boundary
    async def open(self, inode, flags, ctx):
        handle, keep_cache = await self.fs.open(inode, flags, ctx.pid)
        return pyfuse3.FileInfo(fh=handle.fh, keep_cache=keep_cache)

    @boundary
    async def create(self, parent_inode, name, mode, flags, ctx):
        handle, inode = await self.fs.create(parent_inode, name, mode, flags, ctx.pid, ctx.uid,
                                             ctx.gid)
        return pyfuse3.FileInfo(fh=handle.fh, keep_cache=False), self.remembered(inode)

    @boundary
    async def read(self, fh, off, size):
        return await self.fs.read(fh, off, size)

    @boundary
    async def write(self, fh, off, buf):
        return await self.fs.write(fh, off, buf)

    @boundary
    async def flush(self, fh):
        await self.fs.flush(fh)

    @boundary
    async def fsync(self, fh, datasync):
        await self.fs.fsync(fh)

    @boundary
    async def release(self, fh):
        await self.fs.release(fh)

    @boundary
    async def getxattr(self, inode, name, ctx):
        return await self.fs.getxattr(inode, name)

    @boundary
    async def listxattr(self, inode, ctx):
        return await self.fs.listxattr(inode)

    @boundary
    async def setxattr(self, inode, name, value, ctx):
        await self.fs.setxattr(inode, name, value)

    @boundary
    async def removexattr(self, inode, name, ctx):
        await self.fs.removexattr(inode, name)
