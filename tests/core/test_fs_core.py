"""Core tests of `Filesystem` (s3mount/fs.py) without FUSE, driven directly on trio.

The object graph is built as a mount builds it (`mount.build_filesystem`), over the real boto3
`S3Store` talking to the session's moto server; every result is checked in the bucket with a
separate boto3 client.  A test fails on any WARNING/ERROR logged by s3mount.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import os
import random
import re
import stat

import pytest
import trio
from helpers import REGION, bucket_objects
from memstore import MemoryStore

from s3mount import errors
from s3mount.config import MountConfig
from s3mount.fs import Filesystem
from s3mount.handles import FileHandle
from s3mount.inodes import ROOT_INODE, Inode
from s3mount.mount import build_filesystem
from s3mount.s3 import S3Store
from s3mount.s3client import build_client
from s3mount.workers import Background, Limiters

MIB = 1024 * 1024
PID, UID, GID = 4242, 1000, 1000
MTIME_RE = re.compile(r"^\d+\.\d{9}$")





@pytest.fixture
def make_fs(s3_server, bucket, tmp_path, aws_env, nursery):
    """Build a Filesystem over the test's bucket as a mount does, its background work (read-ahead,
    early part uploads) in the test's nursery; keyword arguments go to MountConfig."""
    count = 0

    def make(**overrides) -> Filesystem:
        nonlocal count
        count += 1
        settings = dict(bucket=bucket, prefix="", mountpoint=str(tmp_path),
                        endpoint_url=s3_server.endpoint, region=REGION,
                        cache_dir=str(tmp_path / f"cache-{count}"), uid=UID, gid=GID,
                        max_attempts=2)
        settings.update(overrides)
        config = MountConfig(**settings)
        limiters = Limiters(config.max_concurrency)
        store = S3Store(build_client(config), config.bucket, config.prefix, limiters.s3)
        background = Background()
        background.nursery = nursery
        return build_filesystem(config, store, limiters, background)

    return make


@pytest.fixture
def fs(make_fs) -> Filesystem:
    return make_fs()


def pattern(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def body(s3_client, bucket: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def exists(s3_client, bucket: str, key: str) -> bool:
    try:
        s3_client.head_object(Bucket=bucket, Key=key)
    except s3_client.exceptions.ClientError:
        return False
    return True


async def lookup(fs: Filesystem, parent: int, name: bytes) -> Inode:
    """A lookup as the kernel makes it: the entry it is handed counts one lookup."""
    return fs.remember(await fs.lookup(parent, name))


async def create(fs: Filesystem, parent: int, name: bytes, mode: int, flags: int, pid: int,
                 uid: int, gid: int) -> tuple[FileHandle, Inode]:
    handle, inode = await fs.create(parent, name, mode, flags, pid, uid, gid)
    return handle, fs.remember(inode)


async def mkdir(fs: Filesystem, parent: int, name: bytes, mode: int, uid: int, gid: int,
                ) -> Inode:
    return fs.remember(await fs.mkdir(parent, name, mode, uid, gid))


async def write_file(fs: Filesystem, name: bytes, data: bytes, parent: int = ROOT_INODE,
                     mode: int = 0o644) -> Inode:
    handle, inode = await create(fs, parent, name, mode, os.O_WRONLY | os.O_CREAT, PID, UID, GID)
    try:
        await fs.write(handle.fh, 0, data)
        await fs.flush(handle.fh)
    finally:
        await fs.release(handle.fh)
    return inode


async def read_all(fs: Filesystem, ino: int, chunk: int = 3 * MIB) -> bytes:
    handle, _ = await fs.open(ino, os.O_RDONLY, PID)
    try:
        out = []
        offset = 0
        while True:
            data = await fs.read(handle.fh, offset, chunk)
            if not data:
                return b"".join(out)
            out.append(data)
            offset += len(data)
    finally:
        await fs.release(handle.fh)


async def lookup_path(fs: Filesystem, path: str) -> Inode:
    inode = fs.inode(ROOT_INODE)
    for part in path.split("/"):
        inode = await lookup(fs, inode.ino, part.encode())
    return inode


async def list_names(fs: Filesystem, ino: int = ROOT_INODE) -> list[str]:
    fh = await fs.opendir(ino)
    try:
        return [name for name, _ in await fs.readdir(fh, 0)]
    finally:
        fs.releasedir(fh)


# -- writing -----------------------------------------------------------------------------------


async def test_create_write_flush_lands_in_bucket(fs, s3_client, bucket):
    handle, inode = await create(fs, ROOT_INODE, b"hello.txt", 0o640, os.O_WRONLY | os.O_CREAT,
                                    PID, UID, GID)
    assert inode.name == "hello.txt" and stat.S_ISREG(inode.mode)
    assert await fs.write(handle.fh, 0, b"hello ") == 6
    assert await fs.write(handle.fh, 6, b"world\n") == 6
    assert not exists(s3_client, bucket, "hello.txt")  # nothing is uploaded before flush
    assert await fs.read(handle.fh, 0, 100) == b"hello world\n"
    await fs.flush(handle.fh)
    assert body(s3_client, bucket, "hello.txt") == b"hello world\n"
    head = s3_client.head_object(Bucket=bucket, Key="hello.txt")
    meta = head["Metadata"]
    assert int(meta["mode"]) == stat.S_IFREG | 0o640
    assert (meta["uid"], meta["gid"]) == (str(UID), str(GID))
    assert MTIME_RE.match(meta["mtime"])
    assert inode.etag == head["ETag"].strip('"')
    await fs.release(handle.fh)
    assert (await fs.getattr(inode.ino)).size == 12


async def test_flush_of_unchanged_file_does_not_upload(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"data")
    etag = s3_client.head_object(Bucket=bucket, Key="f")["ETag"]
    inode = await lookup(fs, ROOT_INODE, b"f")
    handle, _ = await fs.open(inode.ino, os.O_RDWR, PID)
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert s3_client.head_object(Bucket=bucket, Key="f")["ETag"] == etag


async def test_empty_file_is_created_on_flush(fs, s3_client, bucket):
    handle, _ = await create(fs, ROOT_INODE, b"empty", 0o644, os.O_WRONLY, PID, UID, GID)
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert body(s3_client, bucket, "empty") == b""


async def test_random_writes_into_existing_object_merge(fs, s3_client, bucket):
    size = 20 * MIB
    original = pattern(size)
    s3_client.put_object(Bucket=bucket, Key="big.bin", Body=original,
                         Metadata={"uid": "1234", "gid": "5678", "mode": str(0o100600)})
    inode = await lookup(fs, ROOT_INODE, b"big.bin")
    assert inode.size == size and (inode.uid, inode.gid) == (1234, 5678)
    handle, _ = await fs.open(inode.ino, os.O_RDWR, PID)
    edits = [(10 * MIB - 3, b"X" * 100), (1, b"hello"), (size - 2, b"tail!")]
    expected = bytearray(original)
    for offset, data in edits:
        assert await fs.write(handle.fh, offset, data) == len(data)
        expected[offset:offset + len(data)] = data
    expected = bytes(expected)
    assert inode.size == size + 3
    # Before the commit a read shows the written bytes over the base object.
    assert await fs.read(handle.fh, 10 * MIB - 10, 20) == expected[10 * MIB - 10:10 * MIB + 10]
    assert body(s3_client, bucket, "big.bin") == original
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert body(s3_client, bucket, "big.bin") == expected
    meta = s3_client.head_object(Bucket=bucket, Key="big.bin")["Metadata"]
    assert (meta["uid"], meta["gid"], meta["mode"]) == ("1234", "5678", str(0o100600))
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


async def test_reads_of_a_clean_file(fs, s3_client, bucket):
    data = pattern(3 * MIB + 17, seed=2)
    s3_client.put_object(Bucket=bucket, Key="r.bin", Body=data)
    inode = await lookup(fs, ROOT_INODE, b"r.bin")
    assert await read_all(fs, inode.ino, chunk=128 * 1024) == data
    handle, _ = await fs.open(inode.ino, os.O_RDONLY, PID)
    try:
        assert await fs.read(handle.fh, 2 * MIB, 10) == data[2 * MIB:2 * MIB + 10]
        assert await fs.read(handle.fh, 5, 10) == data[5:15]
        assert await fs.read(handle.fh, len(data) - 3, 100) == data[-3:]
        assert await fs.read(handle.fh, len(data) + 5, 100) == b""
    finally:
        await fs.release(handle.fh)


async def test_truncate_shrink_then_grow(fs, s3_client, bucket):
    original = pattern(1000, seed=3)
    s3_client.put_object(Bucket=bucket, Key="t", Body=original)
    inode = await lookup(fs, ROOT_INODE, b"t")
    await fs.setattr(inode.ino, size=100)  # truncate(2) by path commits at once
    assert body(s3_client, bucket, "t") == original[:100]
    await fs.setattr(inode.ino, size=300)
    assert body(s3_client, bucket, "t") == original[:100] + b"\0" * 200
    assert (await fs.getattr(inode.ino)).size == 300


async def test_truncate_through_handle_commits_on_flush(fs, s3_client, bucket):
    original = pattern(5000, seed=4)
    s3_client.put_object(Bucket=bucket, Key="t", Body=original)
    inode = await lookup(fs, ROOT_INODE, b"t")
    handle, _ = await fs.open(inode.ino, os.O_RDWR, PID)
    await fs.setattr(inode.ino, size=10, fh=handle.fh)
    await fs.setattr(inode.ino, size=20, fh=handle.fh)
    await fs.write(handle.fh, 15, b"ab")
    assert body(s3_client, bucket, "t") == original  # not before the flush
    assert await fs.read(handle.fh, 0, 100) == original[:10] + b"\0" * 5 + b"ab" + b"\0" * 3
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert body(s3_client, bucket, "t") == original[:10] + b"\0" * 5 + b"ab" + b"\0" * 3


async def test_open_with_o_trunc(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="t", Body=b"old contents")
    inode = await lookup(fs, ROOT_INODE, b"t")
    handle, _ = await fs.open(inode.ino, os.O_WRONLY | os.O_TRUNC, PID)
    await fs.write(handle.fh, 0, b"new")
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert body(s3_client, bucket, "t") == b"new"


async def test_large_file_goes_multipart(make_fs, s3_client, bucket):
    fs = make_fs(part_size=5 * MIB, single_put_limit=5 * MIB)
    data = pattern(12 * MIB + 123, seed=5)
    handle, _ = await create(fs, ROOT_INODE, b"large.bin", 0o600, os.O_WRONLY, PID, UID, GID)
    for offset in range(0, len(data), MIB):
        await fs.write(handle.fh, offset, data[offset:offset + MIB])
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    head = s3_client.head_object(Bucket=bucket, Key="large.bin")
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB
    assert head["ContentLength"] == len(data)
    assert int(head["Metadata"]["mode"]) == stat.S_IFREG | 0o600
    assert body(s3_client, bucket, "large.bin") == data
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    fresh = make_fs(part_size=5 * MIB, single_put_limit=5 * MIB)
    inode = await lookup(fresh, ROOT_INODE, b"large.bin")
    assert await read_all(fresh, inode.ino) == data


def no_pending_uploads(s3_client, bucket: str) -> bool:
    return not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


async def test_untouched_parts_of_existing_object_are_kept(fs, s3_client, bucket):
    size = 20 * MIB
    original = pattern(size, seed=9)
    s3_client.put_object(Bucket=bucket, Key="big.bin", Body=original)
    inode = await lookup(fs, ROOT_INODE, b"big.bin")
    handle, _ = await fs.open(inode.ino, os.O_WRONLY, PID)
    await fs.write(handle.fh, 17 * MIB, b"only the last part changes")
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    expected = original[:17 * MIB] + b"only the last part changes" + original[17 * MIB + 26:]
    assert body(s3_client, bucket, "big.bin") == expected
    meta = s3_client.head_object(Bucket=bucket, Key="big.bin")["Metadata"]
    assert int(meta["mode"]) == stat.S_IFREG | 0o644
    assert no_pending_uploads(s3_client, bucket)


async def test_append_to_small_object_past_the_put_limit(make_fs, s3_client, bucket):
    fs = make_fs(part_size=5 * MIB, single_put_limit=5 * MIB)
    original = pattern(MIB, seed=10)
    s3_client.put_object(Bucket=bucket, Key="grow", Body=original)
    inode = await lookup(fs, ROOT_INODE, b"grow")
    handle, _ = await fs.open(inode.ino, os.O_WRONLY | os.O_APPEND, PID)
    extra = pattern(11 * MIB, seed=11)
    for offset in range(0, len(extra), MIB):
        await fs.write(handle.fh, MIB + offset, extra[offset:offset + MIB])
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert body(s3_client, bucket, "grow") == original + extra
    assert no_pending_uploads(s3_client, bucket)


async def streamed_file(fs: Filesystem, name: bytes, data: bytes) -> tuple[FileHandle, Inode]:
    """A new file written sequentially past the single-PUT limit: parts go up before close."""
    handle, inode = await create(fs, ROOT_INODE, name, 0o644, os.O_RDWR, PID, UID, GID)
    for offset in range(0, len(data), MIB):
        await fs.write(handle.fh, offset, data[offset:offset + MIB])
    return handle, inode


async def test_rewrite_of_a_part_already_sent(make_fs, s3_client, bucket):
    fs = make_fs(part_size=5 * MIB, single_put_limit=5 * MIB)
    data = bytearray(pattern(12 * MIB, seed=12))
    handle, _ = await streamed_file(fs, b"f", bytes(data))
    await fs.write(handle.fh, 100, b"changed after its part went up")
    data[100:130] = b"changed after its part went up"
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert body(s3_client, bucket, "f") == bytes(data)
    assert no_pending_uploads(s3_client, bucket)


@pytest.mark.parametrize("new_size", [3 * MIB, 7 * MIB, 0])
async def test_truncate_of_a_streamed_file(make_fs, s3_client, bucket, new_size):
    fs = make_fs(part_size=5 * MIB, single_put_limit=5 * MIB)
    data = pattern(12 * MIB, seed=13)
    handle, inode = await streamed_file(fs, b"f", data)
    await fs.setattr(inode.ino, size=new_size, fh=handle.fh)
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert body(s3_client, bucket, "f") == data[:new_size]
    assert no_pending_uploads(s3_client, bucket)


async def test_rename_of_a_streamed_file(make_fs, s3_client, bucket):
    fs = make_fs(part_size=5 * MIB, single_put_limit=5 * MIB)
    data = pattern(12 * MIB, seed=14)
    handle, _ = await streamed_file(fs, b"tmp", data)
    await fs.rename(ROOT_INODE, b"tmp", ROOT_INODE, b"final", 0)
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert bucket_objects(s3_client, bucket) == {"final": data}
    assert no_pending_uploads(s3_client, bucket)


async def test_unlink_of_a_streamed_file_leaves_no_upload(make_fs, s3_client, bucket):
    fs = make_fs(part_size=5 * MIB, single_put_limit=5 * MIB)
    handle, _ = await streamed_file(fs, b"f", pattern(12 * MIB, seed=15))
    await fs.unlink(ROOT_INODE, b"f")
    await fs.release(handle.fh)
    assert bucket_objects(s3_client, bucket) == {}
    assert no_pending_uploads(s3_client, bucket)


async def test_streamed_file_metadata(make_fs, s3_client, bucket):
    fs = make_fs(part_size=5 * MIB, single_put_limit=5 * MIB)
    handle, inode = await streamed_file(fs, b"f", pattern(12 * MIB, seed=16))
    await fs.setattr(inode.ino, mode=stat.S_IFREG | 0o600, uid=1234, fh=handle.fh)
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    meta = s3_client.head_object(Bucket=bucket, Key="f")["Metadata"]
    assert (meta["mode"], meta["uid"], meta["gid"]) == (str(stat.S_IFREG | 0o600), "1234",
                                                        str(GID))


async def test_file_at_single_put_limit_is_one_put(make_fs, s3_client, bucket):
    fs = make_fs(part_size=5 * MIB, single_put_limit=5 * MIB)
    await write_file(fs, b"f", pattern(5 * MIB, seed=6))
    assert "-" not in s3_client.head_object(Bucket=bucket, Key="f")["ETag"]


async def test_prefix_mount_keys(make_fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="outside", Body=b"o")
    s3_client.put_object(Bucket=bucket, Key="pre/inside", Body=b"i")
    fs = make_fs(prefix="pre/")
    assert await list_names(fs) == ["inside"]
    await write_file(fs, b"new", b"n")
    await mkdir(fs, ROOT_INODE, b"d", 0o755, UID, GID)
    assert set(bucket_objects(s3_client, bucket)) == {"outside", "pre/inside", "pre/new",
                                                      "pre/d/"}


# -- names -------------------------------------------------------------------------------------


async def test_lookup_missing_raises_not_found(fs, s3_client, bucket):
    with pytest.raises(errors.NotFound) as exc:
        await lookup(fs, ROOT_INODE, b"missing")
    assert exc.value.errno == errno.ENOENT
    s3_client.put_object(Bucket=bucket, Key="file", Body=b"x")
    f = await lookup(fs, ROOT_INODE, b"file")
    with pytest.raises(errors.NotADirectory):
        await lookup(fs, f.ino, b"child")
    assert await lookup(fs, ROOT_INODE, b".") is fs.inode(ROOT_INODE)


async def test_lookup_finds_implicit_directories_and_symlinks(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="a/b/c.txt", Body=b"deep")
    a = await lookup(fs, ROOT_INODE, b"a")
    assert a.is_dir
    b = await lookup(fs, a.ino, b"b")
    assert b.is_dir and fs.table.key(b) == "a/b"
    assert await lookup(fs, b.ino, b"..") is a
    c = await lookup(fs, b.ino, b"c.txt")
    assert await read_all(fs, c.ino) == b"deep"


async def test_directory_shadows_file_of_same_name(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="x", Body=b"file")
    s3_client.put_object(Bucket=bucket, Key="x/y", Body=b"child")
    assert (await lookup(fs, ROOT_INODE, b"x")).is_dir
    assert await list_names(fs) == ["x"]


async def test_bad_names_get_clear_errno(fs, s3_client, bucket):
    with pytest.raises(errors.InvalidName):
        await create(fs, ROOT_INODE, b"bad\xff", 0o644, os.O_WRONLY, PID, UID, GID)
    with pytest.raises(errors.NameTooLong):
        await create(fs, ROOT_INODE, b"n" * 256, 0o644, os.O_WRONLY, PID, UID, GID)
    with pytest.raises(errors.NameTooLong):
        await mkdir(fs, ROOT_INODE, b"m" * 256, 0o755, UID, GID)
    d = await mkdir(fs, ROOT_INODE, b"d" * 250, 0o755, UID, GID)
    d2 = await mkdir(fs, d.ino, b"e" * 250, 0o755, UID, GID)
    d3 = await mkdir(fs, d2.ino, b"f" * 250, 0o755, UID, GID)
    d4 = await mkdir(fs, d3.ino, b"g" * 250, 0o755, UID, GID)
    with pytest.raises(errors.NameTooLong):  # the key would pass S3's 1024 bytes
        await create(fs, d4.ino, b"h" * 30, 0o644, os.O_WRONLY, PID, UID, GID)
    assert all(k.endswith("/") for k in bucket_objects(s3_client, bucket))


async def test_create_exclusive_on_existing_name(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"x")
    with pytest.raises(errors.Exists):
        await create(fs, ROOT_INODE, b"f", 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PID,
                        UID, GID)
    handle, inode = await create(fs, ROOT_INODE, b"f", 0o644, os.O_RDWR | os.O_CREAT, PID, UID,
                                    GID)
    assert await fs.read(handle.fh, 0, 10) == b"x"
    await fs.release(handle.fh)


async def test_mkdir_writes_marker(fs, s3_client, bucket):
    d = await mkdir(fs, ROOT_INODE, b"newdir", 0o750, UID, GID)
    assert d.is_dir and stat.S_IMODE(d.mode) == 0o750
    head = s3_client.head_object(Bucket=bucket, Key="newdir/")
    assert head["ContentLength"] == 0
    assert head["ContentType"] == "application/x-directory"
    assert int(head["Metadata"]["mode"]) == stat.S_IFDIR | 0o750
    assert MTIME_RE.match(head["Metadata"]["mtime"])
    sub = await mkdir(fs, d.ino, b"sub", 0o755, UID, GID)
    assert exists(s3_client, bucket, "newdir/sub/")
    assert fs.table.key(sub) == "newdir/sub"
    with pytest.raises(errors.Exists):
        await mkdir(fs, ROOT_INODE, b"newdir", 0o755, UID, GID)
    assert await list_names(fs, d.ino) == ["sub"]


async def test_rmdir(fs, s3_client, bucket):
    d = await mkdir(fs, ROOT_INODE, b"d", 0o755, UID, GID)
    await write_file(fs, b"f", b"x", parent=d.ino)
    with pytest.raises(errors.NotEmpty) as exc:
        await fs.rmdir(ROOT_INODE, b"d")
    assert exc.value.errno == errno.ENOTEMPTY
    await fs.unlink(d.ino, b"f")
    await fs.rmdir(ROOT_INODE, b"d")
    assert bucket_objects(s3_client, bucket) == {}
    with pytest.raises(errors.NotFound):
        await lookup(fs, ROOT_INODE, b"d")


async def test_rmdir_of_directory_with_only_remote_children(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="d/", Body=b"")
    s3_client.put_object(Bucket=bucket, Key="d/sub/deep", Body=b"x")
    with pytest.raises(errors.NotEmpty):
        await fs.rmdir(ROOT_INODE, b"d")
    assert set(bucket_objects(s3_client, bucket)) == {"d/", "d/sub/deep"}


async def test_rmdir_of_directory_with_unflushed_child(fs, s3_client, bucket):
    d = await mkdir(fs, ROOT_INODE, b"d", 0o755, UID, GID)
    handle, _ = await create(fs, d.ino, b"pending", 0o644, os.O_WRONLY, PID, UID, GID)
    with pytest.raises(errors.NotEmpty):
        await fs.rmdir(ROOT_INODE, b"d")
    await fs.release(handle.fh)
    assert set(bucket_objects(s3_client, bucket)) == {"d/", "d/pending"}


async def test_rmdir_of_file_and_unlink_of_directory(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="d/", Body=b"")
    with pytest.raises(errors.IsADirectory) as exc:
        await fs.unlink(ROOT_INODE, b"d")
    assert exc.value.errno == errno.EISDIR
    with pytest.raises(errors.NotADirectory):
        await fs.rmdir(ROOT_INODE, b"f")
    with pytest.raises(errors.NotFound):
        await fs.unlink(ROOT_INODE, b"nothing")
    assert set(bucket_objects(s3_client, bucket)) == {"f", "d/"}


async def test_unlink(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="gone", Body=b"bye")
    await fs.unlink(ROOT_INODE, b"gone")
    assert bucket_objects(s3_client, bucket) == {}
    with pytest.raises(errors.NotFound):
        await lookup(fs, ROOT_INODE, b"gone")


async def test_unlink_open_file_stays_readable(fs, s3_client, bucket):
    data = pattern(300_000, seed=7)
    s3_client.put_object(Bucket=bucket, Key="open.bin", Body=data)
    inode = await lookup(fs, ROOT_INODE, b"open.bin")
    handle, _ = await fs.open(inode.ino, os.O_RDONLY, PID)
    await fs.unlink(ROOT_INODE, b"open.bin")
    assert bucket_objects(s3_client, bucket) == {}
    assert await fs.read(handle.fh, 0, len(data) + 10) == data
    await fs.release(handle.fh)
    assert bucket_objects(s3_client, bucket) == {}


async def test_stale_lookups_in_a_big_directory_refresh_a_page_at_a_time(make_fs, s3_client,
                                                                       bucket):
    """ls -l that outlives the TTL: after a couple of HEADs, one LIST per thousand entries."""
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3_client.put_object(Bucket=bucket, Key=f"d/f{i:04d}", Body=b"x"),
                      range(1200)))
    s3_client.put_object(Bucket=bucket, Key="d/f0500-sub/inner", Body=b"y")
    fs = make_fs(trust_listings=True, metadata_ttl=1.0)
    d = await lookup_path(fs, "d")
    assert len(await list_names(fs, d.ino)) == 1201
    s3_client.delete_object(Bucket=bucket, Key="d/f0100")
    s3_client.put_object(Bucket=bucket, Key="d/f0101", Body=b"changed")
    await trio.sleep(0.6)  # past the freshness of half the TTL
    before = collections.Counter(fs.store.stats.requests)
    sizes = {}
    for name in sorted([f"f{i:04d}" for i in range(1200)] + ["f0500-sub"]):
        if name == "f0100":
            with pytest.raises(errors.NotFound):
                await lookup(fs, d.ino, name.encode())
            continue
        sizes[name] = (await lookup(fs, d.ino, name.encode())).size
    spent = collections.Counter(fs.store.stats.requests) - before
    assert sizes["f0101"] == len(b"changed") and sizes["f0102"] == 1
    assert dict(spent) == {"HEAD": 2, "LIST": 2}
    assert "f0100" not in await list_names(fs, d.ino)


async def test_creates_in_a_new_directory_ask_nothing_of_the_bucket(make_fs, s3_client, bucket):
    """mkdir showed the directory empty: until the TTL runs out no lookup in it asks S3, then one
    LIST answers for a while, and an object put there from outside is found."""
    fs = make_fs(metadata_ttl=10.0)
    d = await mkdir(fs, ROOT_INODE, b"new", 0o755, UID, GID)
    before = collections.Counter(fs.store.stats.requests)
    for i in range(20):
        await write_file(fs, f"f{i}".encode(), b"x" * i, parent=d.ino)
    spent = collections.Counter(fs.store.stats.requests) - before
    assert dict(spent) == {"PUT": 20}
    assert len(bucket_objects(s3_client, bucket)) == 21

    fs = make_fs(metadata_ttl=4.0)  # long enough for the creates below on a loaded machine
    d = await mkdir(fs, ROOT_INODE, b"other", 0o755, UID, GID)
    s3_client.put_object(Bucket=bucket, Key="other/outside", Body=b"o")
    await trio.sleep(2.1)  # past the freshness of half the TTL
    before = collections.Counter(fs.store.stats.requests)
    for i in range(5):
        await write_file(fs, f"g{i}".encode(), b"y", parent=d.ino)
    assert (await lookup(fs, d.ino, b"outside")).size == 1
    spent = collections.Counter(fs.store.stats.requests) - before
    assert spent["LIST"] == 1 and spent["PUT"] == 5, spent
    assert spent["HEAD"] <= 1, spent  # the outside object's metadata


async def test_a_directory_we_just_wrote_under_needs_no_list_to_be_looked_up(make_fs, s3_client,
                                                                             bucket):
    """Past the TTL a directory's lookup asks the bucket whether it is still one (a LIST); a
    key of ours that landed under it within the TTL already says so (untar: tar looks its
    directories up again for each file).  Once nothing lands, the LIST comes back, and finds
    a directory emptied from outside gone."""
    fs = make_fs(metadata_ttl=2.0)
    a = await mkdir(fs, ROOT_INODE, b"a", 0o755, UID, GID)
    b = await mkdir(fs, a.ino, b"b", 0o755, UID, GID)
    await trio.sleep(1.1)  # past the freshness (half the TTL) of what mkdir knew
    await write_file(fs, b"f", b"x", parent=b.ino)
    before = collections.Counter(fs.store.stats.requests)
    assert (await lookup_path(fs, "a/b")) is b
    await fs.getattr(b.ino)  # the kernel's, once the lookup's attributes time out
    spent = collections.Counter(fs.store.stats.requests) - before
    assert not spent, spent

    await trio.sleep(1.1)
    s3_client.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": k} for k in ("a/", "a/b/", "a/b/f")]})
    before = collections.Counter(fs.store.stats.requests)
    with pytest.raises(errors.NotFound):
        await lookup_path(fs, "a")
    assert (collections.Counter(fs.store.stats.requests) - before)["LIST"] >= 1


async def test_lookups_in_listing_order_read_metadata_ahead(make_fs, s3_client, bucket):
    """ls -l without --trust-listings: each entry needs a HEAD for its mode, and once entries
    are looked up in order, the HEADs of those that follow run ahead in parallel."""
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3_client.put_object(
            Bucket=bucket, Key=f"d/f{i:03d}", Body=b"x",
            Metadata={"mode": str(stat.S_IFREG | (0o755 if i % 2 else 0o600))}), range(120)))
    fs = make_fs(metadata_ttl=30.0)
    d = await lookup_path(fs, "d")
    names = await list_names(fs, d.ino)
    before = collections.Counter(fs.store.stats.requests)
    for name in names[:3]:
        await lookup(fs, d.ino, name.encode())
    with trio.fail_after(30):  # let what runs ahead finish
        while fs.ns._completing:
            await trio.sleep(0.05)
    ahead = [fs.table.child(d.ino, n) for n in names[3:]]
    read_ahead = sum(c.meta_known for c in ahead)
    # Entries that follow are read ahead (a window, not the whole directory of 120).
    assert 3 <= read_ahead < len(ahead), read_ahead
    assert all(c.meta_known for c in ahead[:read_ahead])  # the next ones, in order
    for i, name in enumerate(names):
        inode = await lookup(fs, d.ino, name.encode())
        assert stat.S_IMODE(inode.mode) == (0o755 if i % 2 else 0o600), name
    spent = collections.Counter(fs.store.stats.requests) - before
    assert dict(spent) == {"HEAD": 120}  # each entry read once, none beyond the listing


async def test_lookups_out_of_order_read_no_metadata_ahead(make_fs, s3_client, bucket):
    for i in range(40):
        s3_client.put_object(Bucket=bucket, Key=f"d/f{i:03d}", Body=b"x")
    fs = make_fs(metadata_ttl=30.0)
    d = await lookup_path(fs, "d")
    names = await list_names(fs, d.ino)
    before = collections.Counter(fs.store.stats.requests)
    for name in [names[30], names[2], names[20], names[5], names[9], names[1]]:
        await lookup(fs, d.ino, name.encode())
    await trio.sleep(0.5)
    spent = collections.Counter(fs.store.stats.requests) - before
    assert dict(spent) == {"HEAD": 6}


async def test_stat_of_many_new_names_lists_a_page_instead_of_probing(make_fs, s3_client,
                                                                      bucket):
    """stat of files one after another, never listed: after a couple of probes (HEAD + LIST
    each), one LIST from the name on answers for the names that follow, absent ones too."""
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3_client.put_object(Bucket=bucket, Key=f"d/f{i:04d}", Body=b"x"),
                      range(0, 1400, 2)))  # even numbers only
    s3_client.put_object(Bucket=bucket, Key="d/f0101/inner", Body=b"a directory")
    fs = make_fs(metadata_ttl=30.0, trust_listings=True)
    d = await lookup_path(fs, "d")
    before = collections.Counter(fs.store.stats.requests)
    for i in range(1400):
        name = f"f{i:04d}".encode()
        if i % 2 == 0:
            assert (await lookup(fs, d.ino, name)).size == 1
        elif i == 101:
            assert (await lookup(fs, d.ino, name)).is_dir
        else:
            with pytest.raises(errors.NotFound):
                await lookup(fs, d.ino, name)
    spent = collections.Counter(fs.store.stats.requests) - before
    assert spent["HEAD"] == 2 and spent["LIST"] <= 2 + 3, spent  # 2 probes, pages of 1000


async def test_readdir_merges_local_only_files(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="remote.txt", Body=b"r")
    s3_client.put_object(Bucket=bucket, Key="d/x", Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="a//b", Body=b"odd")  # not a POSIX name
    handle, local = await create(fs, ROOT_INODE, b"local.txt", 0o644, os.O_WRONLY, PID, UID,
                                    GID)
    await fs.write(handle.fh, 0, b"not yet uploaded")
    fh = await fs.opendir(ROOT_INODE)
    entries = await fs.readdir(fh, 0)
    assert [name for name, _ in entries] == ["a", "d", "local.txt", "remote.txt"]
    kinds = {name: inode for name, inode in entries}
    assert kinds["local.txt"] is local and kinds["local.txt"].size == 16
    assert kinds["d"].is_dir and kinds["a"].is_dir and not kinds["remote.txt"].is_dir
    assert [name for name, _ in await fs.readdir(fh, 2)] == ["local.txt", "remote.txt"]
    assert await fs.readdir(fh, 4) == []
    fs.releasedir(fh)
    assert await list_names(fs, kinds["a"].ino) == []  # "a//b" has an empty segment
    await fs.release(handle.fh)
    assert body(s3_client, bucket, "local.txt") == b"not yet uploaded"


async def test_symlink_and_readlink(make_fs, fs, s3_client, bucket):
    link = await fs.symlink(ROOT_INODE, b"link", b"target/file.txt", UID, GID)
    assert stat.S_ISLNK(link.mode)
    assert await fs.readlink(link.ino) == b"target/file.txt"
    assert body(s3_client, bucket, "link") == b"target/file.txt"
    meta = s3_client.head_object(Bucket=bucket, Key="link")["Metadata"]
    assert stat.S_ISLNK(int(meta["mode"]))
    fresh = make_fs()
    again = await lookup(fresh, ROOT_INODE, b"link")
    assert stat.S_ISLNK(again.mode)
    assert await fresh.readlink(again.ino) == b"target/file.txt"
    with pytest.raises(errors.Exists):
        await fs.symlink(ROOT_INODE, b"link", b"x", UID, GID)


# -- rename ------------------------------------------------------------------------------------


async def test_rename_file_over_existing(fs, s3_client, bucket):
    a = await write_file(fs, b"a.txt", b"AAA", mode=0o600)
    s3_client.put_object(Bucket=bucket, Key="b.txt", Body=b"BBB")
    b = await lookup(fs, ROOT_INODE, b"b.txt")
    await fs.rename(ROOT_INODE, b"a.txt", ROOT_INODE, b"b.txt", 0)
    assert bucket_objects(s3_client, bucket) == {"b.txt": b"AAA"}
    meta = s3_client.head_object(Bucket=bucket, Key="b.txt")["Metadata"]
    assert int(meta["mode"]) == stat.S_IFREG | 0o600  # the metadata moves with the data
    with pytest.raises(errors.NotFound):
        await lookup(fs, ROOT_INODE, b"a.txt")
    moved = await lookup(fs, ROOT_INODE, b"b.txt")
    assert moved is a and b.unlinked
    assert await read_all(fs, moved.ino) == b"AAA"


async def test_rename_noreplace_and_exchange(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="a", Body=b"A")
    s3_client.put_object(Bucket=bucket, Key="b", Body=b"B")
    with pytest.raises(errors.Exists):
        await fs.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", 1)  # RENAME_NOREPLACE
    with pytest.raises(errors.InvalidArgument):
        await fs.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", 2)  # RENAME_EXCHANGE
    assert bucket_objects(s3_client, bucket) == {"a": b"A", "b": b"B"}


async def test_rename_kind_mismatch_and_non_empty_target(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"F")
    s3_client.put_object(Bucket=bucket, Key="d/x", Body=b"X")
    s3_client.put_object(Bucket=bucket, Key="e/", Body=b"")
    with pytest.raises(errors.IsADirectory):
        await fs.rename(ROOT_INODE, b"f", ROOT_INODE, b"d", 0)
    with pytest.raises(errors.NotADirectory):
        await fs.rename(ROOT_INODE, b"d", ROOT_INODE, b"f", 0)
    with pytest.raises(errors.NotEmpty):
        await fs.rename(ROOT_INODE, b"e", ROOT_INODE, b"d", 0)
    with pytest.raises(errors.NotFound):
        await fs.rename(ROOT_INODE, b"nothing", ROOT_INODE, b"z", 0)
    assert set(bucket_objects(s3_client, bucket)) == {"f", "d/x", "e/"}
    await fs.rename(ROOT_INODE, b"d", ROOT_INODE, b"e", 0)  # over an empty directory
    assert set(bucket_objects(s3_client, bucket)) == {"f", "e/x"}


async def test_rename_directory_with_nested_keys(make_fs, fs, s3_client, bucket):
    for key, data in [("src/", b""), ("src/one", b"1"), ("src/sub/two", b"2"),
                      ("src/sub/deeper/three", b"3"), ("srcfile", b"s"), ("src2/x", b"x")]:
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)
    two = await lookup_path(fs, "src/sub/two")  # a cached descendant gets re-keyed
    await fs.rename(ROOT_INODE, b"src", ROOT_INODE, b"dst", 0)
    assert bucket_objects(s3_client, bucket) == {
        "dst/": b"", "dst/one": b"1", "dst/sub/two": b"2", "dst/sub/deeper/three": b"3",
        "srcfile": b"s", "src2/x": b"x"}
    assert fs.table.key(two) == "dst/sub/two"
    assert await read_all(fs, two.ino) == b"2"
    with pytest.raises(errors.NotFound):
        await lookup(fs, ROOT_INODE, b"src")
    fresh = make_fs()
    three = await lookup_path(fresh, "dst/sub/deeper/three")
    assert await read_all(fresh, three.ino) == b"3"


async def test_rename_directory_writes_each_marker_before_what_is_under_it(tmp_path):
    """SeaweedFS can lose a `dir/` marker PUT that races the creation of a key under it (seen
    in CI: `dst/sub/` missing after `mv src dst`), so a tree's copies go a depth at a time."""
    store = MemoryStore()
    config = MountConfig(bucket="b", prefix="", mountpoint=str(tmp_path),
                         cache_dir=str(tmp_path / "cache"), uid=UID, gid=GID)
    fs = build_filesystem(config, store, Limiters(4), Background())
    for key in ("src/", "src/sub/", "src/one", "src/sub/two", "src/sub/deep/three"):
        store.put_now(key, b"" if key.endswith("/") else key.encode())
    held = store.faults.hold("put", "dst/sub/")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.rename, ROOT_INODE, b"src", ROOT_INODE, b"dst", 0)
        await held.reached.wait()
        await trio.sleep(0.05)  # what would go side by side with the held PUT starts now
        written = {key for op, key in store.calls if op in ("put", "copy")}
        assert written == {"dst/", "dst/sub/"}  # nothing under a marker not yet written
        held.release()
    assert {k: store.body(k) for k in store.objects} == {
        "dst/": b"", "dst/sub/": b"", "dst/one": b"src/one", "dst/sub/two": b"src/sub/two",
        "dst/sub/deep/three": b"src/sub/deep/three"}


async def test_rename_directory_into_another(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="a/f", Body=b"f")
    s3_client.put_object(Bucket=bucket, Key="b/", Body=b"")
    b = await lookup(fs, ROOT_INODE, b"b")
    await fs.rename(ROOT_INODE, b"a", b.ino, b"a2", 0)
    assert set(bucket_objects(s3_client, bucket)) == {"b/", "b/a2/f"}
    assert await list_names(fs, b.ino) == ["a2"]


async def test_rename_directory_with_open_staged_children(fs, s3_client, bucket):
    original = pattern(1000, seed=8)
    s3_client.put_object(Bucket=bucket, Key="src/old", Body=original)
    src = await lookup(fs, ROOT_INODE, b"src")
    old = await lookup(fs, src.ino, b"old")
    h_old, _ = await fs.open(old.ino, os.O_RDWR, PID)
    await fs.write(h_old.fh, 500, b"EDIT")  # the rest still lives only in the bucket
    h_new, _ = await create(fs, src.ino, b"new", 0o644, os.O_WRONLY, PID, UID, GID)
    await fs.write(h_new.fh, 0, b"fresh")
    await fs.rename(ROOT_INODE, b"src", ROOT_INODE, b"dst", 0)
    for handle in (h_old, h_new):
        await fs.flush(handle.fh)
        await fs.release(handle.fh)
    assert bucket_objects(s3_client, bucket) == {
        "dst/old": original[:500] + b"EDIT" + original[504:], "dst/new": b"fresh"}


async def test_rename_of_unflushed_file(fs, s3_client, bucket):
    handle, _ = await create(fs, ROOT_INODE, b"tmp", 0o644, os.O_WRONLY, PID, UID, GID)
    await fs.write(handle.fh, 0, b"payload")
    await fs.rename(ROOT_INODE, b"tmp", ROOT_INODE, b"final", 0)
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert bucket_objects(s3_client, bucket) == {"final": b"payload"}


# -- attributes --------------------------------------------------------------------------------


async def test_setattr_persists_as_s3fs_metadata(make_fs, fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="f.sh", Body=b"#!/bin/sh\n")
    inode = await lookup(fs, ROOT_INODE, b"f.sh")
    mtime = 1_600_000_000_123_456_789
    await fs.setattr(inode.ino, mode=stat.S_IFREG | 0o750)
    await fs.setattr(inode.ino, uid=1234, gid=5678)
    await fs.setattr(inode.ino, mtime_ns=mtime)
    assert fs.metaq.stats()["files"] == 1  # journaled; one copy to come (metaqueue.py)
    assert await fs.commit_all() == 0  # as at unmount
    assert fs.metaq.stats() == {"files": 0, "sent": 1, "conflicts": 0}
    head = s3_client.head_object(Bucket=bucket, Key="f.sh")
    assert head["Metadata"] == {"mode": str(stat.S_IFREG | 0o750), "uid": "1234",
                                "gid": "5678", "mtime": "1600000000.123456789"}
    assert body(s3_client, bucket, "f.sh") == b"#!/bin/sh\n"
    fresh = make_fs()
    again = await lookup(fresh, ROOT_INODE, b"f.sh")
    assert again.mode == stat.S_IFREG | 0o750
    assert (again.uid, again.gid, again.mtime_ns) == (1234, 5678, mtime)


async def test_setattr_minus_one_owner_is_unchanged(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"x",
                         Metadata={"uid": "7", "gid": "8", "mode": str(0o100644)})
    inode = await lookup(fs, ROOT_INODE, b"f")
    await fs.setattr(inode.ino, uid=0xFFFFFFFF, gid=9)  # chown(f, -1, 9)
    assert await fs.commit_all() == 0  # sends the coalesced copy (metaqueue.py)
    meta = s3_client.head_object(Bucket=bucket, Key="f")["Metadata"]
    assert (meta["uid"], meta["gid"]) == ("7", "9")


async def test_setattr_on_directories(make_fs, fs, s3_client, bucket):
    await mkdir(fs, ROOT_INODE, b"marked", 0o755, UID, GID)
    s3_client.put_object(Bucket=bucket, Key="implicit/child", Body=b"c")
    for name in (b"marked", b"implicit"):
        inode = await lookup(fs, ROOT_INODE, name)
        await fs.setattr(inode.ino, mode=stat.S_IFDIR | 0o700, uid=11, gid=12)
        meta = s3_client.head_object(Bucket=bucket, Key=name.decode() + "/")["Metadata"]
        assert int(meta["mode"]) == stat.S_IFDIR | 0o700
        assert (meta["uid"], meta["gid"]) == ("11", "12")
    fresh = make_fs()
    again = await lookup(fresh, ROOT_INODE, b"implicit")
    assert again.mode == stat.S_IFDIR | 0o700 and again.uid == 11


async def test_setattr_size_of_directory_is_refused(fs):
    d = await mkdir(fs, ROOT_INODE, b"d", 0o755, UID, GID)
    with pytest.raises(errors.IsADirectory):
        await fs.setattr(d.ino, size=0)


async def test_setattr_after_readdir_keeps_other_metadata(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"x",
                         Metadata={"uid": "1234", "gid": "5678", "mode": str(0o100640),
                                   "mtime": "1600000000.000000001"})
    assert await list_names(fs) == ["f"]
    # The entry came by readdirplus with entry_timeout 0: the kernel looks it up, then chmods.
    inode = await lookup(fs, ROOT_INODE, b"f")
    await fs.setattr(inode.ino, mode=stat.S_IFREG | 0o600)
    assert await fs.commit_all() == 0  # sends the coalesced copy (metaqueue.py)
    meta = s3_client.head_object(Bucket=bucket, Key="f")["Metadata"]
    assert meta == {"uid": "1234", "gid": "5678", "mode": str(0o100600),
                    "mtime": "1600000000.000000001"}


async def test_symlink_is_a_symlink_after_readdir(fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="link", Body=b"target",
                         Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    assert await list_names(fs) == ["link"]
    inode = await fs.getattr((await lookup(fs, ROOT_INODE, b"link")).ino)
    assert stat.S_ISLNK(inode.mode)
    assert await fs.readlink(inode.ino) == b"target"


async def test_fchmod_after_fsync_persists(make_fs, fs, s3_client, bucket):
    handle, inode = await create(fs, ROOT_INODE, b"f", 0o644, os.O_RDWR, PID, UID, GID)
    await fs.write(handle.fh, 0, b"data")
    await fs.fsync(handle.fh)
    await fs.setattr(inode.ino, mode=stat.S_IFREG | 0o600, fh=handle.fh)
    await fs.setattr(inode.ino, mtime_ns=1_600_000_000_000_000_000, fh=handle.fh)
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    # A clean file's changes wait for the TTL, fsync or unmount (metaqueue.py): one copy.
    assert fs.metaq.stats()["files"] == 1
    assert await fs.commit_all() == 0
    assert fs.metaq.stats()["sent"] == 1
    meta = s3_client.head_object(Bucket=bucket, Key="f")["Metadata"]
    assert meta["mode"] == str(stat.S_IFREG | 0o600)
    assert meta["mtime"] == "1600000000.000000000"


async def test_getattr_after_remote_delete(make_fs, s3_client, bucket):
    fs = make_fs(metadata_ttl=0)  # every getattr asks the bucket
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"x")
    inode = await lookup(fs, ROOT_INODE, b"f")
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"longer")
    assert (await fs.getattr(inode.ino)).size == 6
    s3_client.delete_object(Bucket=bucket, Key="f")
    with pytest.raises(errors.NotFound):
        await fs.getattr(inode.ino)
    with pytest.raises(errors.NotFound):
        await lookup(fs, ROOT_INODE, b"f")


async def test_link_and_mknod(fs, s3_client, bucket):
    with pytest.raises(errors.NotPermitted) as exc:
        await fs.link()
    assert exc.value.errno == errno.EPERM
    with pytest.raises(errors.NotSupported) as exc:  # no such file type
        await fs.mknod(ROOT_INODE, b"node", 0o170000 | 0o644, 0, UID, GID)
    assert exc.value.errno == errno.ENOTSUP
    assert bucket_objects(s3_client, bucket) == {}
    inode = await fs.mknod(ROOT_INODE, b"regular", stat.S_IFREG | 0o600, 0, UID, GID)
    assert stat.S_ISREG(inode.mode)
    assert bucket_objects(s3_client, bucket) == {"regular": b""}
    # FIFOs, sockets and devices: empty objects whose mode and rdev say what they are.
    kinds = {b"fifo": (stat.S_IFIFO, 0), b"sock": (stat.S_IFSOCK, 0),
             b"chr": (stat.S_IFCHR, os.makedev(1, 3)), b"blk": (stat.S_IFBLK, os.makedev(8, 1))}
    for name, (kind, rdev) in kinds.items():
        inode = await fs.mknod(ROOT_INODE, name, kind | 0o640, rdev, UID, GID)
        assert (inode.mode, inode.rdev) == (kind | 0o640, rdev)
        head = s3_client.head_object(Bucket=bucket, Key=name.decode())
        assert head["ContentLength"] == 0
        assert head["Metadata"]["mode"] == str(kind | 0o640)
        assert head["Metadata"]["rdev"] == str(rdev)


# -- read-only ---------------------------------------------------------------------------------


async def test_read_only_refuses_every_mutation(make_fs, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"data")
    s3_client.put_object(Bucket=bucket, Key="d/x", Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="e/", Body=b"")
    before = bucket_objects(s3_client, bucket)
    fs = make_fs(read_only=True)
    f = await lookup(fs, ROOT_INODE, b"f")
    await lookup(fs, ROOT_INODE, b"e")
    calls = {
        "mkdir": lambda: fs.mkdir(ROOT_INODE, b"new", 0o755, UID, GID),
        "rmdir": lambda: fs.rmdir(ROOT_INODE, b"e"),
        "unlink": lambda: fs.unlink(ROOT_INODE, b"f"),
        "symlink": lambda: fs.symlink(ROOT_INODE, b"l", b"f", UID, GID),
        "create": lambda: fs.create(ROOT_INODE, b"c", 0o644, os.O_WRONLY | os.O_CREAT, PID,
                                    UID, GID),
        "create existing": lambda: fs.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY, PID, UID, GID),
        "mknod": lambda: fs.mknod(ROOT_INODE, b"n", stat.S_IFREG | 0o644, 0, UID, GID),
        "mkfifo": lambda: fs.mknod(ROOT_INODE, b"p", stat.S_IFIFO | 0o644, 0, UID, GID),
        "rename": lambda: fs.rename(ROOT_INODE, b"f", ROOT_INODE, b"g", 0),
        "rename dir": lambda: fs.rename(ROOT_INODE, b"d", ROOT_INODE, b"d2", 0),
        "chmod": lambda: fs.setattr(f.ino, mode=stat.S_IFREG | 0o600),
        "chown": lambda: fs.setattr(f.ino, uid=1, gid=1),
        "utime": lambda: fs.setattr(f.ino, mtime_ns=1),
        "truncate": lambda: fs.setattr(f.ino, size=0),
        "open O_WRONLY": lambda: fs.open(f.ino, os.O_WRONLY, PID),
        "open O_RDWR": lambda: fs.open(f.ino, os.O_RDWR, PID),
        "open O_TRUNC": lambda: fs.open(f.ino, os.O_RDONLY | os.O_TRUNC, PID),
        "open O_APPEND": lambda: fs.open(f.ino, os.O_WRONLY | os.O_APPEND, PID),
    }
    for what, call in calls.items():
        with pytest.raises(errors.ReadOnly) as exc:
            await call()
        assert exc.value.errno == errno.EROFS, what
    handle, _ = await fs.open(f.ino, os.O_RDONLY, PID)
    with pytest.raises(errors.ReadOnly):
        await fs.write(handle.fh, 0, b"x")
    assert await fs.read(handle.fh, 0, 10) == b"data"
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert await list_names(fs) == ["d", "e", "f"]
    assert bucket_objects(s3_client, bucket) == before


# -- unmount ----------------------------------------------------------------------------------


async def test_commit_all_uploads_every_dirty_file(fs, s3_client, bucket):
    handles = []
    for i in range(3):
        handle, _ = await create(fs, ROOT_INODE, f"f{i}".encode(), 0o644, os.O_WRONLY, PID, UID,
                                    GID)
        await fs.write(handle.fh, 0, f"data {i}".encode())
        handles.append(handle)
    assert bucket_objects(s3_client, bucket) == {}
    assert await fs.commit_all() == 0
    assert bucket_objects(s3_client, bucket) == {f"f{i}": f"data {i}".encode() for i in range(3)}
    for handle in handles:
        await fs.release(handle.fh)
