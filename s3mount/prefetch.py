"""Read-ahead for sequential readers: a window of parallel ranged GETs, one block each.

S3 serves one connection at about 85-90 MB/s, with 10-30 ms before the first byte, so a reader
served by one request at a time is capped by it.  Here a sequential reader gets a window of
blocks requested ahead of it, each by a ranged GET of its own, landing in the block cache:

- `ReadPattern` (per open handle, pure) tells sequential reads from jumps and sizes the window:
  it starts at `FIRST_AHEAD` blocks past the reader's own and grows to `GROWTH` times what the
  run has read so far, up to the handle's limit (`--max-readahead`, at most half the cache); a
  jump closes it, and a new run starts small again.
- `Prefetcher` keeps the window filled: for each block of it that is neither cached nor in
  flight it claims the block and starts a fill (`BlockCache.fill`, via the store's `get_range`,
  pinned to the handle's ETag) in the mount's background nursery.  A handle never has more
  fills going than its limit, so the memory of GETs in flight is bounded by `--max-readahead`;
  the store runs them on the read budget, apart from the slots metadata requests and uploads use.

A reader that jumps stops the window: no new fills, those going on finish into the cache.  A
handle that closes cancels its fills: those still waiting for a request slot never send one,
those on the wire are dropped when their response ends.  Everything here changes on the trio
thread between awaits.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from s3mount.blockcache import BlockCache
from s3mount.errors import FsError
from s3mount.workers import Background

log = logging.getLogger(__name__)

SLACK = 8 * 1024 * 1024  # how far the kernel's own read-ahead runs ahead of its reader
FIRST_AHEAD = 1  # blocks requested past the reader's own when a window opens
GROWTH = 4  # the window covers this many times what the run has read, in blocks


@dataclass
class ReadPattern:
    """Where a handle's reads go: a sequential run and its read-ahead window, or jumps.

    The kernel's read-ahead sends a sequential reader's reads out of order, some up to a few
    MiB ahead of the others, so a read counts as part of the run when it lands anywhere from
    the run's start to `SLACK` past the furthest byte read.  A window opens at the run's
    second read (at once for a run that starts at offset 0, as cat, cp and head do) if the
    run has read at least half the bytes it spans, so random reads that happen to land near
    each other, or strided ones, cost no blocks.
    """

    limit: int  # most blocks ahead of the reader (and most fills going on)
    run_from: int = 0  # where the current sequential run began
    next_offset: int = 0  # the furthest byte the run has read
    reads: int = 0  # reads in the run so far
    read: int = 0  # bytes they asked for
    ahead: int = 0  # blocks kept requested past the reader's; 0 while reads jump
    fills: set[trio.CancelScope] = field(default_factory=set)
    stopped: bool = False

    def note(self, offset: int, size: int, block_size: int) -> bool:
        """Record a read; whether it belongs to a sequential run with its window open."""
        if self.reads and self.run_from <= offset <= self.next_offset + SLACK:
            self.reads += 1
            self.read += size
            self.next_offset = max(self.next_offset, offset + size)
        else:  # a jump: a new run starts here
            self.run_from, self.next_offset, self.reads, self.read = offset, offset + size, 1, size
        dense = 2 * self.read >= self.next_offset - self.run_from
        if not dense or (self.reads < 2 and offset != 0):
            self.ahead = 0
            return False
        self.ahead = min(self.limit, max(FIRST_AHEAD, GROWTH * self.read // block_size))
        return True

    def stop(self) -> None:
        """The handle closed: cancel its fills, start no more."""
        self.stopped = True
        self.ahead = 0
        for scope in self.fills:
            scope.cancel()


class Prefetcher:
    def __init__(self, cache: BlockCache, background: Background, limit: int) -> None:
        self.cache = cache
        self.background = background
        self.limit = limit  # blocks ahead of one reader, and fills per handle

    def pattern(self) -> ReadPattern:
        return ReadPattern(self.limit)

    def top_up(self, pattern: ReadPattern, key: str, etag: str, object_size: int, first: int,
               last: int, fetch: Callable[[int, int], Awaitable[bytes]]) -> int:
        """Start fills for the window's blocks from the reader's block `first`: those neither
        cached nor in flight, as long as the handle has fills to spare.  Returns how many."""
        cache = self.cache
        reach = min(last + pattern.ahead, (object_size - 1) // cache.block_size)
        started = 0
        for index in range(first, reach + 1):
            if pattern.stopped or len(pattern.fills) >= self.limit:
                break
            block = cache.claim(key, etag, index)
            if block is None:
                continue
            scope = trio.CancelScope()
            if not self.background.start(self._fill, pattern, scope, key, block, object_size,
                                         fetch):
                cache.release(block)
                break
            pattern.fills.add(scope)
            started += 1
        return started

    async def _fill(self, pattern: ReadPattern, scope: trio.CancelScope, key: str,
                    block: tuple[str, int], object_size: int,
                    fetch: Callable[[int, int], Awaitable[bytes]]) -> None:
        try:
            with scope:
                await self.cache.fill(block, object_size, fetch)
        except FsError as exc:  # its readers got the error; the prefetch itself is optional
            log.debug("read-ahead of %s block %d failed: %s", key, block[1], exc)
        except Exception:  # never the mount's end: its readers fetch the block themselves
            log.exception("read-ahead of %s block %d failed", key, block[1])
        finally:
            pattern.fills.discard(scope)
