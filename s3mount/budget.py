"""The cache budget on disk: clean blocks and staged (written, not yet dropped) data together.

`--cache-size` bounds what the mount keeps on the cache disk.  Clean blocks give way first (the
block cache's LRU is told how much staged data holds).  When staged data alone would pass the
budget, the writer's own file makes room (`FileData._spill`): the local copy of its parts
already uploaded is dropped, or else the file is committed as it stands and its local copy
dropped.  A writer that cannot make room that way gets ENOSPC, and so does any write that would
take the disk below MIN_FREE, whoever filled it.  Nothing already written is ever dropped before
it is in the bucket (in an object, or in a part of the file's open multipart upload).

`admit` runs on the trio thread with the writer's inode lock held; it measures the disk only
every `check_every` bytes written, so a write usually costs one addition here.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from s3mount.blockcache import BlockCache
from s3mount.errors import NoSpace
from s3mount.staging import StagedFile
from s3mount.workers import Limiters, run_blocking

MIB = 1024 * 1024
SPACE_CHECK_EVERY = 32 * MIB  # bytes written between looks at the disk, at most
MIN_FREE = 256 * MIB  # staging never takes the cache disk below this

# Commit an inode's staged file and drop its local copy; returns the bytes freed.
Spill = Callable[[Any], Awaitable[int]]


class SpaceGuard:
    def __init__(self, directory: Path, cache: BlockCache, limiters: Limiters) -> None:
        self.directory = directory
        self.cache = cache
        self.limiters = limiters
        self.budget = cache.capacity
        self.check_every = max(1, min(SPACE_CHECK_EVERY, self.budget // 16))
        self._since_check = self.check_every
        self.live: dict[int, Any] = {}  # ino -> inode, for every inode with a staged file

    async def _disk(self, fn, *args):  # type: ignore[no-untyped-def]
        return await run_blocking(self.limiters.disk, fn, *args)

    async def staged_bytes(self) -> int:
        files: list[StagedFile] = [i.staged for i in self.live.values() if i.staged is not None]
        return int(await self._disk(lambda: sum(f.local_bytes() for f in files)))

    async def admit(self, inode: Any, incoming: int, spill: Spill) -> None:
        """Make room for `incoming` bytes written to `inode`, or refuse them with ENOSPC."""
        self._since_check += incoming
        if self._since_check < self.check_every:
            return
        self._since_check = 0
        try:
            await self._keep_budget(inode, incoming, spill)
            await self._keep_free(incoming)
        except NoSpace:
            self._since_check = self.check_every  # look again at the next write
            raise

    async def _keep_budget(self, inode: Any, incoming: int, spill: Spill) -> None:
        staged = await self.staged_bytes() + incoming + self.check_every
        if staged > self.budget:
            staged -= await spill(inode)
        self.cache.reserve(min(staged, self.budget))  # clean blocks give way first
        if staged > self.budget:
            raise NoSpace(f"staged data of files being written fills the {self.budget // MIB} "
                          "MiB cache budget; close files so their data can be uploaded, or "
                          "mount with a larger --cache-size")

    async def _keep_free(self, incoming: int) -> None:
        st = await self._disk(os.statvfs, self.directory)
        free = st.f_bavail * st.f_frsize
        if free - incoming >= MIN_FREE + self.check_every:
            return
        want = MIN_FREE + self.check_every + incoming - free
        self.cache.shrink(max(0, self.cache.used_bytes() - want))
        st = await self._disk(os.statvfs, self.directory)
        if st.f_bavail * st.f_frsize - incoming < MIN_FREE:
            raise NoSpace("the cache directory's disk is nearly full; close files so their "
                          "data can be uploaded, or mount with a --cache-dir on a bigger disk")
