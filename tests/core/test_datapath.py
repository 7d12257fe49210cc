"""The fast data path without FUSE: block cache, read-ahead, streaming multipart, server-side
copy of untouched ranges.  Real boto3 against the moto server; a counting wrapper around the
store records which requests were made (it forwards every call unchanged); faults come from
the HTTP fault proxy (tests/faultproxy.py) between boto3 and the server."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import trio
from helpers import REGION, append_through

from s3mount.blockcache import BlockCache, block_digest
from s3mount.config import MountConfig
from s3mount.errors import RemoteIO, Stale
from s3mount.mount import build_filesystem
from s3mount.s3 import S3Store, part_snapshot
from s3mount.s3client import build_client
from s3mount.workers import Background, Limiters

MIB = 1024 * 1024
PID, UID, GID = 77, 0, 0


class CountingStore:
    """Forwards to the real store; counts calls and bytes fetched."""

    def __init__(self, inner: S3Store) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.bytes_in = 0

    def __getattr__(self, name: str):
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        async def call(*args, **kwargs):
            self.calls[name] += 1
            result = await target(*args, **kwargs)
            if name == "get_range":
                self.bytes_in += len(result)
            return result

        return call

    def gets(self) -> int:
        return self.calls["get_range"]




def build_world(endpoint: str, bucket, tmp_path, nursery, max_attempts: int = 5):
    config = MountConfig(bucket=bucket, prefix="", mountpoint=str(tmp_path),
                         endpoint_url=endpoint, region=REGION,
                         cache_dir=str(tmp_path / "cache"), uid=UID, gid=GID,
                         cache_size=64 * MIB, max_attempts=max_attempts)
    limiters = Limiters(config.max_concurrency, reads=config.max_read_concurrency)
    store = CountingStore(S3Store(build_client(config), bucket, "", limiters.s3,
                                  read_limiter=limiters.reads))
    background = Background()
    background.nursery = nursery
    fs = build_filesystem(config, store, limiters, background)
    return fs, store


@pytest.fixture
async def world(s3_server, bucket, tmp_path, aws_env, nursery):
    return build_world(s3_server.endpoint, bucket, tmp_path, nursery)


@pytest.fixture
async def proxied_world(proxy, bucket, tmp_path, aws_env, nursery):
    """The world, its requests through the fault proxy, with two attempts per request."""
    return build_world(proxy.endpoint, bucket, tmp_path, nursery, max_attempts=2)


async def write_file(fs, name: bytes, data: bytes, chunk: int = MIB) -> int:
    handle, inode = await fs.create(1, name, 0o644, os.O_WRONLY, PID, UID, GID)
    for off in range(0, len(data), chunk):
        await fs.write(handle.fh, off, data[off:off + chunk])
    return handle.fh


async def open_new_object(fs, s3_client, bucket: str, key: str, size: int):  # type: ignore[no-untyped-def]
    """An object of `size` random bytes put with another client, then opened for reading
    through `fs`: (its bytes, the handle)."""
    body = os.urandom(size)
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    inode = fs.remember(await fs.lookup(1, key.encode()))
    handle, _ = await fs.open(inode.ino, os.O_RDONLY, PID)
    return body, handle


async def read_all(fs, ino: int, size: int, chunk: int = 128 * 1024) -> bytes:
    handle, _ = await fs.open(ino, os.O_RDONLY, PID)
    out = bytearray()
    for off in range(0, size, chunk):
        out += await fs.read(handle.fh, off, chunk)
    await fs.release(handle.fh)
    return bytes(out)


async def test_long_write_uploads_parts_before_close(world, s3_client, bucket):
    fs, store = world
    data = os.urandom(40 * MIB + 123)
    fh = await write_file(fs, b"stream.bin", data)
    for _ in range(200):  # parts go up in the background while the file is still open
        if store.calls["upload_part"] >= 3:
            break
        await trio.sleep(0.05)
    assert store.calls["create_multipart"] == 1
    assert store.calls["upload_part"] >= 3
    await fs.flush(fh)
    await fs.release(fh)
    assert s3_client.get_object(Bucket=bucket, Key="stream.bin")["Body"].read() == data
    assert store.calls["complete_multipart"] == 1
    assert store.inner.stats.bytes_out == len(data)  # no byte sent twice without a rewrite


async def test_rewrite_after_part_upload_is_sent_again(world, s3_client, bucket):
    fs, store = world
    data = bytearray(os.urandom(24 * MIB))
    fh = await write_file(fs, b"rewrite.bin", bytes(data))
    for _ in range(200):
        if store.calls["upload_part"] >= 2 and not any(
                i.staged and i.staged.upload and i.staged.upload.busy for i in fs.table.all()):
            break
        await trio.sleep(0.05)
    patch = b"PATCHED!" * 1000
    await fs.write(fh, 1000, patch)  # into part 1, already uploaded
    data[1000:1000 + len(patch)] = patch
    await fs.flush(fh)
    await fs.release(fh)
    assert s3_client.get_object(Bucket=bucket, Key="rewrite.bin")["Body"].read() == bytes(data)


def test_a_part_is_sent_from_a_copy_of_its_bytes_taken_when_it_starts(tmp_path):
    """The bytes of a part are copied aside, out of the daemon's memory, when its upload starts:
    a write or a truncate of the staging file while it is in flight changes nothing sent (that
    part is sent again), and the copy leaves no file behind."""
    staging = tmp_path / "staged"
    data = os.urandom(3 * MIB)
    staging.write_bytes(data)
    with part_snapshot(str(staging), MIB, 2 * MIB) as copy:
        with open(staging, "r+b") as f:
            f.seek(MIB)
            f.write(b"\0" * MIB)
            f.truncate(MIB + 10)
        assert copy.read() == data[MIB:3 * MIB]
    with part_snapshot(str(staging), MIB, 2 * MIB) as copy:  # taken after the truncate
        assert copy.read() == b"\0" * 10
    assert sorted(os.listdir(tmp_path)) == ["staged"]


async def test_append_copies_untouched_parts_server_side(world, s3_client, bucket):
    fs, store = world
    await append_through(fs, s3_client, bucket, "log.bin", 40 * MIB, PID)
    assert store.calls["upload_part_copy"] >= 1  # the old bytes stayed on the server:
    # at most the part that holds the new bytes is sent from here, never the whole file
    assert store.inner.stats.bytes_out <= fs.files.uploader.part_size + MIB  # 1 MiB appended
    assert store.bytes_in == 0  # nothing of the old object came down


async def test_staged_data_stays_within_the_cache_budget(world, s3_client, bucket):
    """A file written past the 64 MiB budget drops its parts once uploaded, at no extra request;
    a rewrite of dropped bytes commits the file as it stands first, and nothing is lost."""
    fs, store = world
    space = fs.files.space
    data = bytearray(os.urandom(160 * MIB + 4321))
    handle, inode = await fs.create(1, b"big.bin", 0o644, os.O_RDWR, PID, UID, GID)
    most = 0
    for off in range(0, len(data), MIB):
        await fs.write(handle.fh, off, bytes(data[off:off + MIB]))
        most = max(most, await space.staged_bytes())
    assert most <= space.budget
    assert store.calls["complete_multipart"] == 0  # parts were dropped, nothing committed
    assert store.inner.stats.bytes_out <= len(data)  # each part sent at most once
    patch = b"rewritten after its part was dropped" * 100
    await fs.write(handle.fh, MIB + 17, patch)
    data[MIB + 17:MIB + 17 + len(patch)] = patch
    assert store.calls["complete_multipart"] == 1  # committed as it stood, to read part 1
    assert await fs.read(handle.fh, 20 * MIB, 4096) == data[20 * MIB:20 * MIB + 4096]
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert store.calls["upload_part_copy"] > 0  # the dropped ranges were copied server-side
    assert s3_client.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == data
    assert await space.staged_bytes() == 0


async def test_a_sequential_write_past_the_budget_costs_no_extra_request(world, s3_client,
                                                                          bucket):
    fs, store = world
    data = os.urandom(200 * MIB)
    fh = await write_file(fs, b"seq.bin", data)
    assert await fs.files.space.staged_bytes() <= fs.files.space.budget
    await fs.flush(fh)
    await fs.release(fh)
    assert s3_client.get_object(Bucket=bucket, Key="seq.bin")["Body"].read() == data
    assert store.calls["complete_multipart"] == 1
    assert store.inner.stats.bytes_out == len(data)  # every part sent once, none again
    assert store.calls["upload_part_copy"] == 0


async def test_rename_and_unlink_of_a_file_whose_parts_were_dropped(world, s3_client, bucket):
    """Dropped parts belong to the upload under the old key: a rename or an unlink while the
    file is open commits it first, and its bytes stay readable."""
    fs, store = world
    first = os.urandom(100 * MIB)
    fh = await write_file(fs, b"moving.bin", first)
    await fs.rename(1, b"moving.bin", 1, b"moved.bin", 0)
    assert await fs.read(fh, 5 * MIB, 4096) == first[5 * MIB:5 * MIB + 4096]
    await fs.flush(fh)
    await fs.release(fh)
    assert s3_client.get_object(Bucket=bucket, Key="moved.bin")["Body"].read() == first
    second = os.urandom(100 * MIB)
    fh = await write_file(fs, b"doomed.bin", second)
    await fs.unlink(1, b"doomed.bin")
    assert await fs.read(fh, 7 * MIB, 4096) == second[7 * MIB:7 * MIB + 4096]
    await fs.release(fh)
    assert "doomed.bin" not in {o["Key"] for o in s3_client.list_objects_v2(
        Bucket=bucket).get("Contents", [])}
    third = os.urandom(100 * MIB)
    fh = await write_file(fs, b"replaced.bin", third)
    other = await write_file(fs, b"new.bin", b"the replacement")
    await fs.rename(1, b"new.bin", 1, b"replaced.bin", 0)
    assert await fs.read(fh, 9 * MIB, 4096) == third[9 * MIB:9 * MIB + 4096]
    await fs.release(fh)
    await fs.release(other)
    assert s3_client.get_object(Bucket=bucket, Key="replaced.bin")["Body"].read() == (
        b"the replacement")
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


async def test_a_write_into_a_part_dropped_to_make_room_for_it(world, s3_client, bucket):
    """The write that passes the budget may go into the very part dropped to make room."""
    fs, store = world
    data = bytearray(os.urandom(60 * MIB))
    fh = await write_file(fs, b"again.bin", bytes(data))
    for _ in range(200):  # the parts go up in the background
        if store.calls["upload_part"] >= 7:
            break
        await trio.sleep(0.05)
    for off in range(0, 56 * MIB, 8 * MIB):  # 1 MiB into each uploaded part: past the budget
        chunk = os.urandom(MIB)
        await fs.write(fh, off, chunk)
        data[off:off + MIB] = chunk
    await fs.flush(fh)
    await fs.release(fh)
    assert s3_client.get_object(Bucket=bucket, Key="again.bin")["Body"].read() == data


async def test_a_failed_commit_keeps_the_upload_that_holds_dropped_parts(proxied_world, proxy,
                                                                         s3_client, bucket):
    fs, store = proxied_world
    data = os.urandom(100 * MIB)
    fh = await write_file(fs, b"kept.bin", data)
    proxy.fail("500", times=100, method="POST", query="uploadId=")  # every try to complete
    with pytest.raises(RemoteIO):
        await fs.flush(fh)
    assert proxy.injected >= 2  # retried, then given up
    proxy.clear()
    assert len(s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    await fs.flush(fh)  # the same upload completes, with the parts sent before
    await fs.release(fh)
    assert s3_client.get_object(Bucket=bucket, Key="kept.bin")["Body"].read() == data
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


@pytest.mark.expected_log(r"was changed in the bucket by another client")
async def test_a_conflict_over_dropped_parts_keeps_both_versions(world, s3_client, bucket):
    """Ours cannot be set aside when part of it is only in its upload: theirs goes beside."""
    fs, store = world
    ours = os.urandom(100 * MIB)
    fh = await write_file(fs, b"contested.bin", ours)
    s3_client.put_object(Bucket=bucket, Key="contested.bin", Body=b"theirs, meanwhile")
    with pytest.raises(Stale):
        await fs.flush(fh)
    await fs.release(fh)
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    beside = [k for k in keys if k.startswith("contested.bin.s3mount-conflict-")]
    assert len(beside) == 1
    assert s3_client.get_object(Bucket=bucket, Key=beside[0])["Body"].read() == (
        b"theirs, meanwhile")
    assert s3_client.get_object(Bucket=bucket, Key="contested.bin")["Body"].read() == ours


async def test_etag_change_is_never_mixed(world, s3_client, bucket):
    fs, store = world
    s3_client.put_object(Bucket=bucket, Key="v.bin", Body=b"1" * (3 * MIB))
    inode = fs.remember(await fs.lookup(1, b"v.bin"))
    assert await read_all(fs, inode.ino, 3 * MIB) == b"1" * (3 * MIB)
    s3_client.put_object(Bucket=bucket, Key="v.bin", Body=b"2" * (3 * MIB))
    inode.fetched_at = 0.0  # as after the metadata TTL
    assert await read_all(fs, inode.ino, 3 * MIB) == b"2" * (3 * MIB)


async def test_reread_comes_from_the_cache(world, s3_client, bucket):
    fs, store = world
    body = os.urandom(20 * MIB)
    s3_client.put_object(Bucket=bucket, Key="r.bin", Body=body)
    inode = fs.remember(await fs.lookup(1, b"r.bin"))
    assert await read_all(fs, inode.ino, len(body)) == body
    fetched = store.gets()
    assert await read_all(fs, inode.ino, len(body)) == body
    assert store.gets() == fetched
    assert fs.files.cache.hits > 0


async def test_random_small_reads_fetch_only_what_is_asked(world, s3_client, bucket):
    fs, store = world
    body, handle = await open_new_object(fs, s3_client, bucket, "rand.bin", 32 * MIB)
    offsets = [(i * 7_777_777) % (32 * MIB - 4096) for i in range(1, 40)]
    for off in offsets:
        assert await fs.read(handle.fh, off, 4096) == body[off:off + 4096]
    await fs.release(handle.fh)
    assert store.bytes_in <= 40 * 4096 + 8 * MIB  # at most the first read's block


async def test_readahead_jump_returns_right_bytes(world, s3_client, bucket):
    fs, store = world
    body, handle = await open_new_object(fs, s3_client, bucket, "jump.bin", 48 * MIB)
    for off in range(0, 4 * MIB, 128 * 1024):  # sequential: the window opens
        assert await fs.read(handle.fh, off, 128 * 1024) == body[off:off + 128 * 1024]
    for off in (40 * MIB + 5, 17, 30 * MIB - 3, 47 * MIB):  # jumps
        assert await fs.read(handle.fh, off, 200_000) == body[off:off + 200_000]
    for off in range(47 * MIB, 48 * MIB, 128 * 1024):
        assert await fs.read(handle.fh, off, 128 * 1024) == body[off:off + 128 * 1024]
    await fs.release(handle.fh)


async def test_long_sequential_read_fetches_each_block_once(world, s3_client, bucket):
    fs, store = world
    body = os.urandom(200 * MIB + 5)  # 26 blocks of 8 MiB
    s3_client.put_object(Bucket=bucket, Key="seq.bin", Body=body)
    inode = fs.remember(await fs.lookup(1, b"seq.bin"))
    assert await read_all(fs, inode.ino, len(body), chunk=MIB) == body
    blocks = -(-len(body) // (8 * MIB))
    # Each block by a ranged GET of its own, once; besides them only the first read's bytes
    # (its answer after one round trip), not one GET per read (201).
    assert store.gets() <= blocks + 2
    assert store.bytes_in <= len(body) + 2 * MIB


async def test_a_reader_that_stops_early_costs_little_more_than_it_read(world, s3_client,
                                                                         bucket):
    fs, store = world
    body, handle = await open_new_object(fs, s3_client, bucket, "head.bin", 200 * MIB)
    for off in range(0, 3 * MIB, 128 * 1024):  # like head(1) or file(1): a little, in order
        assert await fs.read(handle.fh, off, 128 * 1024) == body[off:off + 128 * 1024]
    await trio.sleep(1)  # time enough for a window that would keep growing
    await fs.release(handle.fh)
    await trio.sleep(0.5)
    assert store.bytes_in <= 3 * MIB + 16 * MIB  # what it read, its block and the next
    assert fs.files.cache.in_flight() == 0


async def test_many_readers_of_one_block_fetch_it_once(tmp_path):
    cache = BlockCache(tmp_path / "blocks", 64 * MIB, MIB, trio.CapacityLimiter(4))
    fetches = 0

    async def fetch(begin: int, end: int) -> bytes:
        nonlocal fetches
        fetches += 1
        await trio.sleep(0.05)
        return bytes([7]) * (end - begin)

    results = []

    async def reader(i: int) -> None:
        results.append(await cache.read("k", "e1", 3 * MIB, 1, i, 10, fetch))

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(reader, i)
    assert fetches == 1
    assert results == [bytes([7]) * 10] * 20


async def test_eviction_keeps_the_cache_under_its_limit(tmp_path):
    cache = BlockCache(tmp_path / "blocks", 4 * MIB, MIB, trio.CapacityLimiter(4))

    async def fetch(begin: int, end: int) -> bytes:
        return b"x" * (end - begin)

    for index in range(10):
        await cache.read("big", "e", 10 * MIB, index, 0, 1, fetch)
    files = list((tmp_path / "blocks").iterdir())
    assert cache.used_bytes() <= 4 * MIB
    assert len(files) == 4
    assert sum(f.stat().st_size for f in files) <= 4 * MIB


async def test_leftovers_of_a_crash_are_dropped_not_served(tmp_path):
    blocks = tmp_path / "blocks"
    blocks.mkdir()
    digest = block_digest("k", "e")
    (blocks / f"{digest}-0.tmp").write_bytes(b"half")
    (blocks / f"{digest}-1").write_bytes(b"torn")  # wrong length for a 1 MiB block
    (blocks / f"{digest}-2").write_bytes(b"z" * MIB)  # whole: reused
    (blocks / "garbage").write_bytes(b"?")
    cache = BlockCache(blocks, 64 * MIB, MIB, trio.CapacityLimiter(4))
    assert not (blocks / f"{digest}-0.tmp").exists() and not (blocks / "garbage").exists()
    fetched = []

    async def fetch(begin: int, end: int) -> bytes:
        fetched.append(begin)
        return b"y" * (end - begin)

    assert await cache.read("k", "e", 4 * MIB, 1, 0, 4, fetch) == b"yyyy"
    assert await cache.read("k", "e", 4 * MIB, 2, 0, 4, fetch) == b"zzzz"
    assert fetched == [MIB]
