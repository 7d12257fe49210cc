"""Clean blocks of objects on local disk, keyed (key, ETag, block index).

A new version of an object has a new ETag and so new block names: old and new bytes are never
mixed.  The cache is a byte-weighted LRU (cachetools) bounded by the cache budget; evicting an entry
deletes its file.  Each block is fetched once however many readers wait for it (single flight);
fills are written to a temporary name and renamed, so a block file under its final name is whole.
At start-up the files left by an earlier mount are taken back in (temporaries, and files whose
length is wrong for their block, are dropped, never served).  A `Run` fills consecutive blocks
from one streamed request, holding in flight only the blocks near its position.

`read` awaits the disk through `run_blocking`; the LRU and in-flight tables are changed only on
the trio thread, between awaits, so each change is atomic under trio.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cachetools
import trio

from s3mount.blocking import run_blocking
from s3mount.errors import FsError, Stale

log = logging.getLogger(__name__)

BlockId = tuple[str, int]  # (digest of key and etag, block index)
MIN_CLEAN_BLOCKS = 4  # clean blocks kept however much of the budget staged data takes


@dataclass
class _Pending:
    """A block being fetched: readers wait for `done`; `error` when its request failed."""

    done: trio.Event = field(default_factory=trio.Event)
    error: FsError | None = None


class _RunEnds(Exception):
    """A streamed run reached a block someone else fetched: it stops there."""


class _FileLRU(cachetools.LRUCache):
    """An LRU of block sizes whose evictions delete the block files."""

    def __init__(self, maxsize: int, directory: Path) -> None:
        super().__init__(maxsize=maxsize, getsizeof=lambda size: max(int(size), 1))
        self.directory = directory

    def popitem(self):  # type: ignore[no-untyped-def]
        block, size = super().popitem()
        try:
            os.unlink(self.directory / f"{block[0]}-{block[1]}")
        except FileNotFoundError:
            pass
        return block, size


@functools.lru_cache(maxsize=1024)  # every read asks for it, often several times
def block_digest(key: str, etag: str) -> str:
    return hashlib.sha256(f"{key}\0{etag}".encode("utf-8", "surrogatepass")).hexdigest()[:40]


class BlockCache:
    def __init__(self, directory: Path, capacity: int, block_size: int,
                 limiter: trio.CapacityLimiter) -> None:
        self.directory = directory
        self.block_size = block_size
        self.limiter = limiter
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.lru = _FileLRU(max(capacity, block_size), directory)
        self.reserved = 0  # bytes of the budget staged data holds (see budget.py)
        self._inflight: dict[BlockId, _Pending] = {}
        self._wanted: Counter[BlockId] = Counter()  # readers waiting for blocks in flight
        self.hits = 0
        self.misses = 0
        self._adopt_leftovers()

    def _adopt_leftovers(self) -> None:
        """Take back whole blocks of an earlier mount, oldest first; drop temporaries."""
        found = []
        for entry in os.scandir(self.directory):
            name = entry.name
            digest, _, index = name.rpartition("-")
            if name.endswith(".tmp") or not index.isdigit() or len(digest) != 40:
                os.unlink(entry.path)
                continue
            st = entry.stat()
            found.append((st.st_mtime, (digest, int(index)), st.st_size))
        for _, block, size in sorted(found):
            self.lru[block] = size

    @property
    def capacity(self) -> int:
        return int(self.lru.maxsize)

    def _path(self, block: BlockId) -> Path:
        return self.directory / f"{block[0]}-{block[1]}"

    def expected_length(self, object_size: int, index: int) -> int:
        return max(0, min(self.block_size, object_size - index * self.block_size))

    def has(self, key: str, etag: str, index: int) -> bool:
        return (block_digest(key, etag), index) in self.lru

    def busy(self, key: str, etag: str, index: int) -> bool:
        block = (block_digest(key, etag), index)
        return block in self.lru or block in self._inflight

    def wanted(self, key: str, etag: str, indexes: range) -> bool:
        """Whether a reader is waiting for any of these blocks while they are in flight."""
        digest = block_digest(key, etag)
        return any(block[0] == digest and block[1] in indexes for block in self._wanted)

    async def read(self, key: str, etag: str, object_size: int, index: int, start: int,
                   length: int, fetch: Callable[[int, int], Awaitable[bytes]]) -> bytes:
        """Bytes [start, start+length) of block `index`, fetching the block if needed.

        `fetch(begin, end)` returns the object's bytes [begin, end) for this ETag.
        """
        block = (block_digest(key, etag), index)
        expected = self.expected_length(object_size, index)
        while True:
            if block in self.lru:
                data = await run_blocking(self.limiter, self._read_file, block, start, length,
                                          expected)
                if data is not None:
                    self.hits += 1
                    self.lru[block] = expected  # touch: most recently used
                    return data
                self.lru.pop(block, None)  # wrong length: a torn file, never served
            waiting = self._inflight.get(block)
            if waiting is None:
                break
            self._wanted[block] += 1
            try:
                await waiting.done.wait()
            finally:
                self._wanted[block] -= 1
                if not self._wanted[block]:
                    del self._wanted[block]
            if waiting.error is not None:  # its request failed after its retries: so would ours
                raise type(waiting.error)(str(waiting.error))
        self.misses += 1
        data = await self._fill(block, index, expected, fetch)
        return data[start:start + length]

    async def _fill(self, block: BlockId, index: int, expected: int,
                    fetch: Callable[[int, int], Awaitable[bytes]]) -> bytes:
        pending = self._inflight[block] = _Pending()
        try:
            begin = index * self.block_size
            data = await fetch(begin, begin + expected)
            if len(data) != expected:
                raise Stale(f"block {index}: got {len(data)} bytes, expected {expected}")
            await run_blocking(self.limiter, self._write_file, block, data)
            self._admit(block, expected)
            return data
        finally:
            del self._inflight[block]
            pending.done.set()

    def start_run(self, key: str, etag: str, object_size: int, first: int, count: int,
                  ahead: int) -> Run | None:
        """Claim a run of up to `count` blocks from `first`, to be fetched with one request by
        `Run.fetch`; None when block `first` is already held or in flight.

        The claim is made now, so no reader fetches the first blocks apart meanwhile.  The run
        holds in flight only the `ahead` blocks after the one it is receiving, so readers of
        later blocks fetch them themselves rather than wait for the stream; it ends before the
        first block that is already held or in flight.
        """
        run = Run(self, block_digest(key, etag), object_size, first,
                  min(first + count, -(-object_size // self.block_size)), ahead)
        run.claim(first + 1 + ahead)
        return run if run.events else None

    def _read_file(self, block: BlockId, start: int, length: int, expected: int) -> bytes | None:
        try:
            with open(self._path(block), "rb") as f:
                if os.fstat(f.fileno()).st_size != expected:
                    return None
                return os.pread(f.fileno(), length, start)
        except FileNotFoundError:
            return None

    def _write_file(self, block: BlockId, data: bytes) -> None:
        final = self._path(block)
        tmp = final.with_name(final.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, final)

    def used_bytes(self) -> int:
        return int(self.lru.currsize)

    def reserve(self, staged: int) -> None:
        """Leave `staged` bytes of the budget to staged data: clean blocks give way, down to
        MIN_CLEAN_BLOCKS (a block just fetched must outlive its reading)."""
        self.reserved = staged
        self._trim()

    def _trim(self) -> None:
        self.shrink(max(self.capacity - self.reserved, MIN_CLEAN_BLOCKS * self.block_size))

    def _admit(self, block: BlockId, length: int) -> None:
        self.lru[block] = length
        if self.reserved:
            self._trim()

    def shrink(self, target: int) -> None:
        """Evict least recently used blocks until at most `target` bytes are held."""
        while self.lru.currsize > target and len(self.lru):
            self.lru.popitem()


class Run:
    """Blocks [first, stop) of one object version, fetched in order by one streamed request.

    Each block is served as soon as its bytes are on disk; blocks the stream never delivered
    are released for their readers to fetch.
    """

    def __init__(self, cache: BlockCache, digest: str, object_size: int, first: int, stop: int,
                 ahead: int) -> None:
        self.cache = cache
        self.digest = digest
        self.object_size = object_size
        self.first = first
        self.stop = stop
        self.ahead = ahead
        self.events: dict[int, _Pending] = {}
        self.claimed = first  # blocks [first, claimed) were taken for this run
        self.delivered = 0
        self.over = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._writer: ThreadPoolExecutor | None = None  # writes a block while the next comes
        self._writing: Future[None] | None = None

    def claim(self, upto: int) -> None:
        cache = self.cache
        while self.claimed < min(upto, self.stop):
            block = (self.digest, self.claimed)
            if block in cache.lru or block in cache._inflight:
                self.stop = self.claimed  # someone else has it: the run ends before it
                break
            self.events[self.claimed] = cache._inflight[block] = _Pending()
            self.claimed += 1

    def _release(self, index: int, error: FsError | None = None) -> None:
        del self.cache._inflight[(self.digest, index)]
        pending = self.events.pop(index)
        pending.error = error
        pending.done.set()

    def abandon(self, error: FsError | None = None) -> None:
        """Release the blocks not delivered: their readers fetch them, or get `error`."""
        for index in list(self.events):
            self._release(index, error)

    def _deliver(self, offset: int, data: bytes) -> None:
        """Store one block; called in the stream's worker thread."""
        cache = self.cache
        index = offset // cache.block_size
        if index >= self.stop:
            raise _RunEnds
        expected = cache.expected_length(self.object_size, index)
        if offset % cache.block_size or len(data) != expected or index not in self.events:
            raise Stale(f"block {index}: got {len(data)} bytes at {offset}, "
                        f"expected {expected}")
        self._wait_for_writer()  # one block on its way to disk at a time: memory stays low
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="s3mount-run")
        self._writing = self._writer.submit(self._write, index, data, expected)

    def _write(self, index: int, data: bytes, length: int) -> None:
        """In the run's writer thread, while the stream's thread reads the next block."""
        self.cache._write_file((self.digest, index), data)
        trio.from_thread.run_sync(self._stored, index, length, trio_token=self._token)

    def _wait_for_writer(self, shut: bool = False) -> None:
        """Wait for the block being written (its error is raised here); `shut` ends the
        writer thread."""
        try:
            if self._writing is not None:
                writing, self._writing = self._writing, None
                writing.result()
        finally:
            if shut and self._writer is not None:
                self._writer.shutdown()
                self._writer = None

    def _stored(self, index: int, length: int) -> None:
        self.cache._admit((self.digest, index), length)
        if self.over:  # a write that outlived its run (cancelled): the block is whole, kept
            return
        self.delivered += 1
        self._release(index)
        self.claim(index + 2 + self.ahead)

    async def fetch(self, stream: Callable[[int, int, Callable[[int, bytes], None]],
                                           Awaitable[None]]) -> int:
        """Stream the run; returns how many blocks came.

        `stream(begin, end, deliver)` calls `deliver(offset, data)` in a worker thread with
        the object's bytes [begin, end) for this ETag, one block at a time, in order.
        """
        size = self.cache.block_size
        self._token = trio.lowlevel.current_trio_token()
        try:
            try:
                await stream(self.first * size, min(self.object_size, self.stop * size),
                             self._deliver)
            finally:
                await run_blocking(self.cache.limiter, self._wait_for_writer, True)
        except _RunEnds:
            pass
        except FsError as exc:
            if not self.delivered:  # the request itself failed: its readers are told so
                self.abandon(exc)
            raise
        finally:
            self.over = True
            self.abandon()
        return self.delivered
