"""Clean blocks of objects on local disk, keyed (key, ETag, block index).

A new version of an object has a new ETag and so new block names: old and new bytes are never
mixed.  The cache is a byte-weighted LRU (cachetools) bounded by the cache budget; evicting an entry
deletes its file.  Each block is fetched once however many readers wait for it (single flight);
fills are written to a temporary name and renamed, so a block file under its final name is whole.
At start-up the files left by an earlier mount are taken back in (temporaries, and files whose
length is wrong for their block, are dropped, never served).  Read-ahead (prefetch.py) `claim`s a
block at once, then `fill`s it in a task of its own: readers that come meanwhile wait for it.
A fill whose request fails hands its error to the readers waiting for it (their own request
would fail the same way); a fill that is cancelled leaves the block for them to fetch.

`read` awaits the disk through `run_blocking`; the LRU and in-flight tables are changed only on
the trio thread, between awaits, so each change is atomic under trio.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import cachetools
import trio

from s3mount.errors import FsError, Stale
from s3mount.workers import run_blocking

log = logging.getLogger(__name__)

BlockId = tuple[str, int]  # (digest of key and etag, block index)
MIN_CLEAN_BLOCKS = 4  # clean blocks kept however much of the budget staged data takes


@dataclass
class _Pending:
    """A block being fetched.  Readers wait for `done`, set once its bytes are in `data` (they
    need not wait for the disk), or its request failed (`error`), or was given up (neither)."""

    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: FsError | None = None


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

    def in_flight(self) -> int:
        return len(self._inflight)

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
            await waiting.done.wait()
            if waiting.data is not None:
                self.hits += 1
                return waiting.data[start:start + length]
            if waiting.error is not None:  # its request failed after its retries: so would ours
                raise type(waiting.error)(str(waiting.error))
        self.misses += 1
        self._inflight[block] = _Pending()
        data = await self._fill(block, expected, fetch)
        return data[start:start + length]

    def claim(self, key: str, etag: str, index: int) -> BlockId | None:
        """Take block `index` for a fill to come (see `fill`); None when it is already held or
        in flight.  Readers that come meanwhile wait for the fill."""
        block = (block_digest(key, etag), index)
        if block in self.lru or block in self._inflight:
            return None
        self._inflight[block] = _Pending()
        return block

    def release(self, block: BlockId) -> None:
        """Give back a claim that will not be filled: its readers fetch the block themselves."""
        self._inflight.pop(block).done.set()

    async def fill(self, block: BlockId, object_size: int,
                   fetch: Callable[[int, int], Awaitable[bytes]]) -> None:
        """Fetch and store a block taken with `claim`."""
        await self._fill(block, self.expected_length(object_size, block[1]), fetch)

    async def _fill(self, block: BlockId, expected: int,
                    fetch: Callable[[int, int], Awaitable[bytes]]) -> bytes:
        pending = self._inflight[block]
        try:
            begin = block[1] * self.block_size
            data = await fetch(begin, begin + expected)
            if len(data) != expected:
                raise Stale(f"block {block[1]}: got {len(data)} bytes, expected {expected}")
            pending.data = data
            pending.done.set()  # its readers go on while it is written
            await run_blocking(self.limiter, self._write_file, block, data)
            self._admit(block, expected)
            return data
        except FsError as exc:
            pending.error = exc
            raise
        finally:
            del self._inflight[block]
            pending.done.set()

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
