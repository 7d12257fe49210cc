"""Reading objects as they are in the bucket: through the block cache, with read-ahead.

`ObjectReader` serves a clean file's reads, pinned to the ETag seen at open (`If-Match`, so
bytes of two versions are never mixed; a new version makes the handle's reads fail with ESTALE).
A read whose blocks are cached or on their way (read-ahead, see prefetch.py) is served from
them; any other read, random or the first of a sequential run, fetches just the bytes it asked
for, so its answer comes after one round trip, while a sequential run's window of blocks is
requested behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from s3mount.blockcache import BlockCache
from s3mount.errors import NotFound, Stale
from s3mount.handles import FileHandle
from s3mount.prefetch import Prefetcher, ReadPattern
from s3mount.store import ObjectStore
from s3mount.workers import Background

log = logging.getLogger(__name__)


class KeyGone(Stale):
    """The object an open handle reads was deleted (ESTALE unless it moved here)."""


@contextmanager
def _gone_means_stale(key: str) -> Iterator[None]:
    try:
        yield
    except NotFound:
        raise KeyGone(f"{key} was deleted from the bucket while open") from None


class ObjectReader:
    def __init__(self, store: ObjectStore, cache: BlockCache, background: Background,
                 max_readahead: int) -> None:
        self.store = store
        self.cache = cache
        # Read ahead at most half the cache: blocks fetched ahead must outlive their reading.
        self.max_window = max(1, min(max_readahead, cache.capacity // 2) // cache.block_size)
        self.prefetcher = Prefetcher(cache, background, self.max_window)

    async def read(self, key: str, handle: FileHandle, offset: int, size: int) -> bytes:
        size = max(0, min(size, handle.size - offset))
        if size == 0 or handle.etag is None:
            return b""
        etag, object_size = handle.etag, handle.size
        cache = self.cache
        first, last = offset // cache.block_size, (offset + size - 1) // cache.block_size
        blocks = range(first, last + 1)

        async def fetch(begin: int, end: int) -> bytes:
            with _gone_means_stale(key):
                return await self.store.get_range(key, begin, end, etag)

        pattern = handle.readahead
        if not isinstance(pattern, ReadPattern):
            pattern = handle.readahead = self.prefetcher.pattern()
        coming = all(cache.busy(key, etag, index) for index in blocks)
        if pattern.note(offset, size, cache.block_size):
            self.prefetcher.top_up(pattern, key, etag, object_size, first, last, fetch)
        if not coming:  # random, or a run's first read: just these bytes, one round trip
            return await fetch(offset, offset + size)
        parts = []
        for index in blocks:
            base = index * cache.block_size
            start = max(offset, base) - base
            end = min(offset + size, base + cache.block_size) - base
            parts.append(await cache.read(key, etag, object_size, index, start, end - start,
                                          fetch))
        return b"".join(parts)
