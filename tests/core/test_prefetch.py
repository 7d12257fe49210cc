"""Read-ahead's behaviour (prefetch.py through reading.ObjectReader): the window of parallel
ranged GETs grows while the reader reads on, stops when it jumps, is cancelled when it closes,
and never mixes two versions of an object.

The store here is an in-memory `ObjectStore` that answers `get_range` as S3 does (If-Match:
a replaced object fails with `Stale`), after a short sleep standing in for the round trip, and
records every request; it makes concurrency observable and faults exact.  The same paths run
through boto3 against a server in test_datapath.py and in the FUSE tier.
"""

from __future__ import annotations

import os

import pytest
import trio

from s3mount.blockcache import BlockCache
from s3mount.errors import RemoteIO, Stale
from s3mount.handles import HandleTable
from s3mount.reading import ObjectReader
from s3mount.workers import Background

MIB = 1024 * 1024
BLOCK = MIB
READ = 128 * 1024


class MemoryStore:
    """One object, replaceable; `get_range` honours If-Match, as S3's 412 does."""

    def __init__(self, body: bytes, etag: str = "v1", delay: float = 0.005) -> None:
        self.body, self.etag = body, etag
        self.delay = delay
        self.requests: list[tuple[int, int]] = []  # (start, end) of each GET, in order
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate: trio.Event | None = None  # when set, block-sized GETs wait for it
        self.slots = trio.CapacityLimiter(64)  # the store's read budget

    def replace(self, body: bytes, etag: str) -> None:
        self.body, self.etag = body, etag

    async def get_range(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        async with self.slots:
            self.requests.append((start, end))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await trio.sleep(self.delay)
                if self.gate is not None and end - start == BLOCK:
                    await self.gate.wait()
                if etag is not None and etag != self.etag:
                    raise Stale(f"GET {key}: 412 PreconditionFailed")
                return self.body[start:end]
            finally:
                self.in_flight -= 1

    def blocks_requested(self) -> list[int]:
        return [start // BLOCK for start, end in self.requests if end - start == BLOCK]


def make_reader(tmp_path, store, nursery, max_readahead=16 * MIB):
    cache = BlockCache(tmp_path / "blocks", 256 * MIB, BLOCK, trio.CapacityLimiter(4))
    background = Background()
    background.nursery = nursery
    return ObjectReader(store, cache, background, max_readahead), cache


def open_handle(table: HandleTable, store: MemoryStore):
    handle = table.open_file(2, os.O_RDONLY, 1)
    handle.etag, handle.size = store.etag, len(store.body)
    return handle


async def settled(cache: BlockCache) -> None:
    """Wait until no block is claimed: a fill hands its bytes to the readers waiting for them
    before it writes them to disk, so claims may outlive the last read.  One never released
    fails the test."""
    with trio.fail_after(10):
        while cache.in_flight():
            await trio.sleep(0.01)


async def test_the_window_grows_while_the_reader_reads_on(tmp_path, nursery):
    body = os.urandom(48 * MIB)
    store = MemoryStore(body)
    reader, cache = make_reader(tmp_path, store, nursery, max_readahead=16 * MIB)
    handle = open_handle(HandleTable(), store)
    ahead_at = {}  # reader's block -> blocks requested past it just after the read
    for off in range(0, len(body), READ):
        assert await reader.read("k", handle, off, READ) == body[off:off + READ]
        requested = store.blocks_requested()
        ahead_at.setdefault(off // BLOCK, max(requested, default=0) - off // BLOCK)
    assert store.requests[0] == (0, READ)  # the first answer after one small GET
    assert ahead_at[0] <= 2  # starts small: a reader may stop early
    assert max(ahead_at.values()) >= 8  # ... and opens up as the reader goes on
    assert max(ahead_at.values()) <= 16  # never past --max-readahead (16 blocks)
    assert 4 <= store.most_in_flight <= 17  # parallel ranged GETs, bounded
    blocks = store.blocks_requested()
    assert sorted(blocks) == list(range(48))  # every block once, each its own ranged GET
    # Past the blocks, only reads' own GETs: the run's first, and any read that overtook a
    # window whose fills were all still going (under load a few of 384 did; each is one read).
    own = [end - start for start, end in store.requests if end - start != BLOCK]
    assert set(own) == {READ} and len(own) <= 8
    await settled(cache)


async def test_a_jump_stops_the_window(tmp_path, nursery):
    body = os.urandom(64 * MIB)
    store = MemoryStore(body)
    reader, cache = make_reader(tmp_path, store, nursery)
    handle = open_handle(HandleTable(), store)
    for off in range(0, 12 * MIB, READ):
        assert await reader.read("k", handle, off, READ) == body[off:off + READ]
    await trio.sleep(0.1)  # what was in flight lands
    before = len(store.requests)
    assert before > 12  # the window had opened
    jumps = [40 * MIB + 5, 50 * MIB - 3, 62 * MIB, 33 * MIB + 777]  # past the window
    for off in jumps:
        assert await reader.read("k", handle, off, 4096) == body[off:off + 4096]
    await trio.sleep(0.1)
    after = store.requests[before:]
    assert after == [(off, off + 4096) for off in jumps]  # just the bytes asked, no blocks
    await settled(cache)


async def test_closing_the_handle_cancels_its_read_ahead(tmp_path, nursery):
    body = os.urandom(64 * MIB)
    store = MemoryStore(body)
    store.slots = trio.CapacityLimiter(2)  # most fills wait for a request slot
    reader, cache = make_reader(tmp_path, store, nursery, max_readahead=32 * MIB)
    table = HandleTable()
    handle = open_handle(table, store)
    for off in range(0, 4 * MIB, READ):
        assert await reader.read("k", handle, off, READ) == body[off:off + READ]
    await trio.sleep(0.2)  # the window's blocks land
    store.gate = trio.Event()  # from now on block GETs hang on the wire
    for off in range(4 * MIB, 8 * MIB, READ):  # cached blocks; the window moves on
        assert await reader.read("k", handle, off, READ) == body[off:off + READ]
    await trio.sleep(0.05)
    assert cache.in_flight() >= 3  # two on the wire, the rest waiting for a slot
    sent = len(store.requests)
    table.close(handle.fh)
    await trio.sleep(0.05)
    store.gate.set()  # the two on the wire get their answers
    await trio.sleep(0.2)
    await settled(cache)  # nothing left claimed
    assert len(store.requests) == sent  # those waiting for a slot never sent one
    assert not handle.readahead.fills  # every fill task ended
    # A new handle reads every byte right: nothing half-filled was kept.
    again = open_handle(table, store)
    for off in range(0, 64 * MIB, 4 * MIB):
        assert await reader.read("k", again, off, READ) == body[off:off + READ]


async def test_a_new_version_in_the_middle_of_the_window_is_never_mixed_in(tmp_path, nursery):
    old, new = os.urandom(40 * MIB), os.urandom(40 * MIB)
    store = MemoryStore(old, "v1")
    reader, cache = make_reader(tmp_path, store, nursery)
    handle = open_handle(HandleTable(), store)
    for off in range(0, 8 * MIB, READ):
        assert await reader.read("k", handle, off, READ) == old[off:off + READ]
    store.replace(new, "v2")  # another writer: the window's next GETs get 412
    stale = 0
    for off in range(8 * MIB, 40 * MIB, READ):
        try:
            got = await reader.read("k", handle, off, READ)
        except Stale:
            stale += 1
            continue
        assert got == old[off:off + READ]  # fetched before the change: the old bytes, whole
    assert stale > 0  # the rest of the old version is gone: ESTALE, not the new bytes
    await trio.sleep(0.1)
    await settled(cache)
    # Opened again (close-to-open), the handle reads the new version.
    again = open_handle(HandleTable(), store)
    for off in range(0, 40 * MIB, 2 * MIB):
        assert await reader.read("k", again, off, READ) == new[off:off + READ]


async def test_readers_waiting_for_a_failed_fill_get_its_error(tmp_path):
    cache = BlockCache(tmp_path / "blocks", 64 * MIB, MIB, trio.CapacityLimiter(4))
    started = trio.Event()

    async def failing(begin: int, end: int) -> bytes:
        started.set()
        await trio.sleep(0.05)
        raise RemoteIO("GET k: read timeout, after 3 attempts")

    async def fetch(begin: int, end: int) -> bytes:
        raise AssertionError("the failed request was made again")

    block = cache.claim("k", "e", 0)
    assert block is not None and cache.claim("k", "e", 0) is None  # single flight

    async def fill() -> None:
        with pytest.raises(RemoteIO):
            await cache.fill(block, 4 * MIB, failing)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fill)
        await started.wait()
        with pytest.raises(RemoteIO, match="read timeout"):
            await cache.read("k", "e", 4 * MIB, 0, 0, 10, fetch)
    assert not cache.busy("k", "e", 0)


async def test_a_cancelled_fill_leaves_the_block_to_its_readers(tmp_path):
    cache = BlockCache(tmp_path / "blocks", 64 * MIB, MIB, trio.CapacityLimiter(4))
    body = os.urandom(2 * MIB)

    async def hanging(begin: int, end: int) -> bytes:
        await trio.sleep_forever()
        raise AssertionError

    async def fetch(begin: int, end: int) -> bytes:
        return body[begin:end]

    block = cache.claim("k", "e", 1)
    got = []
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def fill() -> None:
            with scope:
                await cache.fill(block, len(body), hanging)

        async def read() -> None:
            got.append(await cache.read("k", "e", len(body), 1, 0, MIB, fetch))

        nursery.start_soon(fill)
        nursery.start_soon(read)
        await trio.sleep(0.05)
        assert not got  # waiting for the fill
        scope.cancel()
    assert got == [body[MIB:]]  # fetched by the reader itself once the fill gave up
    assert cache.has("k", "e", 1) and not cache.in_flight()


def test_the_kernels_reordered_reads_keep_the_window_but_strides_never_open_it():
    from s3mount.prefetch import ReadPattern

    kernel = ReadPattern(limit=16)
    # cat through the kernel's read-ahead: 1 MiB reads, some sent a few MiB ahead of the rest
    order = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 23, 24, 16, 17, 25, 18]
    assert all([kernel.note(n * MIB, MIB, 8 * MIB) for n in order])
    assert kernel.ahead >= 8  # it kept growing through the reordering
    strided = ReadPattern(limit=16)
    assert not any([strided.note(n * 7_777_777, 4096, 8 * MIB) for n in range(1, 20)])
    assert strided.ahead == 0
