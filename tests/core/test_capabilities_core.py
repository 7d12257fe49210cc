"""What s3mount does where the endpoint lacks a feature, driven without FUSE on moto by telling
the store what the probe would have found (`Capabilities`): ListObjects V1 instead of V2, parts
fetched and sent instead of UploadPartCopy, directory attributes in hidden attribute objects
instead of marker metadata (and read back by a mount that did not probe).  The order of a
marker's writes is checked on the in-memory store (tests/memstore.py), which can hold a call."""

from __future__ import annotations

import stat

import pytest
import trio
from helpers import REGION, append_through, bucket_objects
from memstore import MemoryStore

from s3mount.capabilities import Capabilities
from s3mount.config import MountConfig
from s3mount.markers import MarkerStore
from s3mount.mount import build_filesystem
from s3mount.s3 import S3Store
from s3mount.s3client import build_client
from s3mount.workers import Background, Limiters

MIB = 1024 * 1024
PID, UID, GID = 77, 0, 0


@pytest.fixture
def make_world(s3_server, bucket, tmp_path, aws_env, nursery):
    count = 0

    def make(capabilities: Capabilities):  # type: ignore[no-untyped-def]
        nonlocal count
        count += 1
        config = MountConfig(bucket=bucket, prefix="", mountpoint=str(tmp_path),
                             endpoint_url=s3_server.endpoint, region=REGION,
                             cache_dir=str(tmp_path / f"cache-{count}"), uid=UID, gid=GID,
                             cache_size=64 * MIB)
        limiters = Limiters(config.max_concurrency)
        store = S3Store(build_client(config), bucket, "", limiters.s3, capabilities=capabilities)
        background = Background()
        background.nursery = nursery
        return build_filesystem(config, store, limiters, background, capabilities), store

    return make


async def test_listing_with_v1_pages_as_v2_does(make_world, s3_client, bucket):
    for key in ["a", "b/x", "b/y", "c", "d/", "e/f/g", "h"]:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"")
    _, v1 = make_world(Capabilities(list_v2=False))
    _, v2 = make_world(Capabilities())
    for delimiter in ("/", None):
        pages = {}
        for name, store in (("v1", v1), ("v2", v2)):
            seen, token = [], None
            while True:
                page = await store.list_page("", delimiter, token, max_keys=2)
                seen.append(([o.key for o in page.objects], page.prefixes))
                token = page.next_token
                if token is None:
                    break
            pages[name] = seen
        # moto's V1 pages hold more than MaxKeys once common prefixes count, and repeat the
        # prefixes on every page: compare the entries.
        objects = {n: [k for keys, _ in seen for k in keys] for n, seen in pages.items()}
        prefixes = {n: {p for _, ps in seen for p in ps} for n, seen in pages.items()}
        assert objects["v1"] == objects["v2"] and prefixes["v1"] == prefixes["v2"], delimiter
        assert len(pages["v1"]) >= 2, pages
    page = await v1.list_page("", "/", start_after="b")
    assert [o.key for o in page.objects] == ["c", "h"] and page.prefixes == ["b/", "d/", "e/"]
    assert v1.stats.requests["LIST"] >= 4 and v1.capabilities.list_v2 is False


async def test_without_upload_part_copy_untouched_parts_are_fetched(make_world, s3_client,
                                                                     bucket):
    fs, store = make_world(Capabilities(upload_part_copy=False))
    await append_through(fs, s3_client, bucket, "log.bin", 20 * MIB, PID)
    assert store.stats.requests["PART-COPY"] == 0
    assert store.stats.bytes_in >= 16 * MIB  # the untouched parts came down and went up again


async def test_directory_attributes_in_attribute_objects(make_world, s3_client, bucket):
    fs, _ = make_world(Capabilities(marker_metadata=False))
    d = fs.remember(await fs.mkdir(1, b"d", 0o755, UID, GID))
    sub = fs.remember(await fs.mkdir(d.ino, b"sub", 0o755, UID, GID))
    await fs.setattr(sub.ino, mode=0o700, uid=5, gid=6, mtime_ns=1_234_567_890_123_456_789)
    await fs.setxattr(sub.ino, b"user.k", b"v")
    assert set(bucket_objects(s3_client, bucket)) == {
        "d/", "d/.s3mount-meta", "d/sub/", "d/sub/.s3mount-meta"}
    # The markers as such a server would keep them: without metadata.
    for marker in ("d/", "d/sub/"):
        s3_client.put_object(Bucket=bucket, Key=marker, Body=b"")
    await fs.rename(1, b"d", 1, b"moved", 0)
    assert set(bucket_objects(s3_client, bucket)) == {
        "moved/", "moved/.s3mount-meta", "moved/sub/", "moved/sub/.s3mount-meta"}
    for capabilities in (Capabilities(marker_metadata=False), Capabilities(marker_metadata=None)):
        again, store = make_world(capabilities)  # a new mount: nothing cached
        moved = await again.lookup(1, b"moved")
        assert [name for name, _ in await again.ns.list_dir(moved)] == ["sub"]
        found = await again.getattr((await again.lookup(moved.ino, b"sub")).ino)
        assert (found.mode, found.uid, found.gid, found.mtime_ns) == (
            stat.S_IFDIR | 0o700, 5, 6, 1_234_567_890_123_456_789)
        assert await again.getxattr(found.ino, b"user.k") == b"v"
    await again.rmdir(moved.ino, b"sub")
    await again.rmdir(1, b"moved")
    assert bucket_objects(s3_client, bucket) == {}


async def test_directory_marker_rename_never_copies(make_world, s3_client, bucket):
    fs, store = make_world(Capabilities())
    d = fs.remember(await fs.mkdir(1, b"d", 0o755, UID, GID))
    await fs.setattr(d.ino, mode=0o711)
    await fs.rename(1, b"d", 1, b"e", 0)
    await trio.sleep(0)
    assert store.stats.requests["COPY"] == 0
    head = s3_client.head_object(Bucket=bucket, Key="e/")
    assert int(head["Metadata"]["mode"]) == stat.S_IFDIR | 0o711
    assert set(bucket_objects(s3_client, bucket)) == {"e/"}


async def test_a_marker_is_written_before_its_attribute_object():
    """SeaweedFS lost a marker whose PUT went side by side with its attribute object's: the
    folder stayed, listed without its `dir/` key (3 `mkdir -p src/sub` in 60), and a tree
    rename, which copies what is listed, then lost the marker at the new name too."""
    store = MemoryStore()
    markers = MarkerStore(store, Capabilities(marker_metadata=False))
    held = store.faults.hold("put", "d/")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(markers.put, "d/", b"", {"mode": "16877"})
        await held.reached.wait()
        await trio.sleep(0.05)  # what would go side by side with the held PUT starts now
        assert store.calls == [("put", "d/")]
        held.release()
    assert store.calls == [("put", "d/"), ("put", "d/.s3mount-meta")]
    assert store.objects["d/.s3mount-meta"].metadata == {"mode": "16877"}
