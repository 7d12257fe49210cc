"""Reading objects as they are in the bucket: through the block cache, with read-ahead.

`ObjectReader` serves a clean file's reads, pinned to the ETag seen at open (`If-Match`, so
bytes of two versions are never mixed).  A sequential reader's blocks come from one streamed GET
that stays a growing window ahead of it (paced: it waits for its reader); a random reader
fetches just the bytes it asked for.  It owns the pacing state of the streamed runs; everything
is changed on the trio thread, between awaits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from s3mount.blockcache import BlockCache, Run
from s3mount.blocking import Background
from s3mount.errors import FsError, NotFound, Stale
from s3mount.handles import FileHandle
from s3mount.store import ObjectStore

log = logging.getLogger(__name__)

RUN_BLOCKS = 128  # blocks a streamed run asks for (1 GiB of 8 MiB blocks)
RUN_PAUSE = 10.0  # seconds a streamed run waits for a reader that stopped reading
RUN_STREAMS = 2  # streamed runs per handle at once: the next starts before the last ends


class KeyGone(Stale):
    """The object an open handle reads was deleted (ESTALE unless it moved here)."""


@contextmanager
def _gone_means_stale(key: str) -> Iterator[None]:
    try:
        yield
    except NotFound:
        raise KeyGone(f"{key} was deleted from the bucket while open") from None


class RunStopped(Exception):
    """A streamed read-ahead run ends early: its reader went elsewhere."""


class ObjectReader:
    def __init__(self, store: ObjectStore, cache: BlockCache, background: Background,
                 max_readahead: int) -> None:
        self.store = store
        self.cache = cache
        self.background = background
        # Read ahead at most half the cache: blocks fetched ahead must outlive their reading.
        self.max_window = max(1, min(max_readahead, cache.capacity // 2) // cache.block_size)
        self._moved = trio.Event()  # set (and replaced) by a read while runs wait for one
        self._pacing = 0  # runs waiting for their reader

    async def read(self, key: str, handle: FileHandle, offset: int,
                           size: int) -> bytes:
        size = max(0, min(size, handle.size - offset))
        if size == 0 or handle.etag is None:
            return b""
        etag, object_size = handle.etag, handle.size
        cache = self.cache
        first, last = offset // cache.block_size, (offset + size - 1) // cache.block_size

        async def fetch(begin: int, end: int) -> bytes:
            with _gone_means_stale(key):
                return await self.store.get_range(key, begin, end, etag)

        async def stream(begin: int, end: int, deliver) -> None:  # type: ignore[no-untyped-def]
            run = range(begin // cache.block_size, -(-end // cache.block_size))

            async def pace(offset: int) -> None:
                await self._pace(handle, key, etag, offset, run)

            with _gone_means_stale(key):
                await self.store.get_stream(key, begin, end, etag, cache.block_size, deliver,
                                            pace)

        sequential = handle.note_read(offset, size, self.max_window, cache.block_size)
        if self._pacing:  # paced read-ahead runs look again
            self._moved.set()
            self._moved = trio.Event()
        blocks = range(first, last + 1)
        if not sequential and not all(cache.has(key, etag, i) for i in blocks):
            return await fetch(offset, offset + size)  # random: never pull whole blocks
        self._read_ahead(handle, key, etag, object_size, first, last, stream)
        parts = []
        for index in blocks:
            base = index * cache.block_size
            start = max(offset, base) - base
            end = min(offset + size, base + cache.block_size) - base
            parts.append(await cache.read(key, etag, object_size, index, start, end - start,
                                          fetch))
        return b"".join(parts)

    def _read_ahead(self, handle: FileHandle, key: str, etag: str, object_size: int,
                    first: int, last: int, stream) -> None:  # type: ignore[no-untyped-def]
        """Keep a sequential reader's blocks coming, from its own block `first` on.

        One GET streams a run of up to RUN_BLOCKS blocks in order, paced so it stays within
        the handle's window ahead of the reader (twice what the reader has read in order so
        far, up to --max-readahead): a reader that stops costs little more than its window.  The
        next run starts when the reader comes within a window of the end of the current one,
        so its first byte is not waited for.  A long sequential read thus costs a few
        requests, not one per block: every request has a price, in latency and money, and
        some servers (moto among them) spend as much on a ranged GET as on the whole object.
        """
        cache = self.cache
        reach = min(last + handle.window, (object_size - 1) // cache.block_size)
        start = max(handle.run_end, first)
        while start <= reach and cache.busy(key, etag, start):
            start += 1
        if start > reach or handle.streams >= RUN_STREAMS:
            return
        run = cache.start_run(key, etag, object_size, start, RUN_BLOCKS, self.max_window)
        if run is None:
            return
        handle.run_end = run.stop
        if self.background.start(self._prefetch_run, handle, key, run, stream, run.stop):
            handle.streams += 1
        else:
            run.abandon()

    async def _pace(self, handle: FileHandle, key: str, etag: str, offset: int,
                    run: range) -> None:
        """Hold a streamed block until its reader is within its window of it, or another
        reader waits for the run; end the run when the reader jumps away, closes, or stops
        reading for RUN_PAUSE seconds."""
        size = self.cache.block_size
        deadline = trio.current_time() + RUN_PAUSE
        rest = range(offset // size, run.stop)
        while not self.cache.wanted(key, etag, rest):
            if handle.closed or handle.window == 0 or trio.current_time() >= deadline:
                raise RunStopped(f"the reader left at {handle.next_offset}")
            if offset < handle.next_offset + handle.window * size:
                return
            self._pacing += 1
            try:
                with trio.move_on_at(deadline):
                    await self._moved.wait()
            finally:
                self._pacing -= 1

    async def _prefetch_run(self, handle: FileHandle, key: str, run: Run, stream,  # type: ignore[no-untyped-def]
                            planned: int) -> None:
        try:
            await run.fetch(stream)
        except (FsError, OSError, RunStopped) as exc:  # the rest is left to its readers
            log.debug("read-ahead of %s from block %d ended: %s", key, run.first, exc)
        finally:
            handle.streams -= 1
            if handle.run_end == planned:  # the latest run: the next one starts where it got
                handle.run_end = run.first + run.delivered
