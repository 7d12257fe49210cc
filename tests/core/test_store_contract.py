"""One contract for every `ObjectStore`: the in-memory model (tests/memstore.py), and `S3Store`
on moto and on SeaweedFS.  The model cannot drift from real servers while these pass.

Where a server is known to differ from S3 (TEST-SERVERS.md), the check stays as S3 has it and
that server's case is marked `xfail(strict=True)` with the reason: a server that starts to
follow S3 turns the mark into a failure, and the mark is removed.
"""

from __future__ import annotations

import hashlib
import itertools
import os

import pytest
from memstore import MemoryStore

from s3mount import errors
from s3mount.s3 import S3Store
from s3mount.store import EXPECT_ABSENT, USER_METADATA_LIMIT
from s3mount.uploader import multipart_etag

MIB = 1024 * 1024
STORES = ("memory", "moto", "seaweedfs")
_buckets = itertools.count()



@pytest.fixture(params=STORES)
def store(request, _servers):
    if request.param == "memory":
        yield MemoryStore()
        return
    import trio

    server = _servers.get(request.param)
    client = server.client()
    name = f"contract-{next(_buckets)}"
    client.create_bucket(Bucket=name)
    yield S3Store(client, name, "", trio.CapacityLimiter(4))
    if request.param == "seaweedfs":
        _servers.spent.append(name)


def differs(request, **servers: str) -> None:
    """Mark this case an expected failure on the servers named (with why)."""
    name = request.node.callspec.params["store"]
    if name in servers:
        request.applymarker(pytest.mark.xfail(strict=True, reason=servers[name]))


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def staged(tmp_path, data: bytes) -> str:
    path = tmp_path / f"body-{md5(data)}"
    path.write_bytes(data)
    return str(path)


async def test_put_head_and_etag(store):
    etag = await store.put("a/b", b"hello", {"Mode": "33188", "mtime": "1.000000000"})
    assert etag == md5(b"hello")
    info = await store.head("a/b")
    assert info is not None
    assert (info.key, info.size, info.etag) == ("a/b", 5, etag)
    assert info.metadata == {"mode": "33188", "mtime": "1.000000000"}  # names lowercased
    assert await store.head("a/missing") is None


async def test_ranged_get(store):
    etag = await store.put("k", b"0123456789", {})
    assert await store.get_range("k", 2, 5, etag) == b"234"
    assert await store.get_range("k", 8, 100, None) == b"89"  # clipped at the end
    with pytest.raises(errors.Stale):
        await store.get_range("k", 0, 3, md5(b"other"))
    with pytest.raises(errors.NotFound):
        await store.get_range("missing", 0, 3, None)
    with pytest.raises(errors.InvalidArgument):
        await store.get_range("k", 10, 20, None)


async def test_conditional_put_absent(store, tmp_path):
    path = staged(tmp_path, b"first")
    etag = await store.put_file("c", path, 5, {}, EXPECT_ABSENT)
    assert etag == md5(b"first")
    with pytest.raises(errors.Stale):
        await store.put_file("c", staged(tmp_path, b"second"), 6, {}, EXPECT_ABSENT)
    assert await store.get_range("c", 0, 10, None) == b"first"


async def test_conditional_put_if_match(store, tmp_path):
    etag = await store.put("c", b"v1", {})
    with pytest.raises(errors.Stale):
        await store.put_file("c", staged(tmp_path, b"v2"), 2, {}, md5(b"nope"))
    assert await store.put_file("c", staged(tmp_path, b"v3"), 2, {}, etag) == md5(b"v3")
    assert await store.get_range("c", 0, 10, None) == b"v3"


async def test_conditional_put_if_match_on_missing_key(store, tmp_path, request):
    # S3 answers 404 NoSuchKey when the key is missing, 412 only when its ETag differs.
    differs(request, seaweedfs="SeaweedFS answers 412 PreconditionFailed for a missing key")
    with pytest.raises(errors.NotFound):
        await store.put_file("gone", staged(tmp_path, b"v"), 1, {}, md5(b"v0"))
    assert await store.head("gone") is None


async def test_put_file_sends_first_bytes_only(store, tmp_path):
    assert await store.put_file("p", staged(tmp_path, b"abcdef"), 3, {"mode": "1"}) == md5(b"abc")
    assert await store.get_range("p", 0, 10, None) == b"abc"


async def test_copy_keeps_or_replaces_metadata(store):
    etag = await store.put("src", b"data", {"mode": "33188"})
    assert await store.copy("src", "dst1", 4, None) == etag
    assert (await store.head("dst1")).metadata == {"mode": "33188"}
    await store.copy("src", "dst2", 4, {"mode": "33261"})
    assert (await store.head("dst2")).metadata == {"mode": "33261"}
    await store.copy("src", "src", 4, {"mode": "33152"})  # in place: the metadata only
    info = await store.head("src")
    assert (info.etag, info.metadata) == (etag, {"mode": "33152"})
    with pytest.raises(errors.NotFound):
        await store.copy("missing", "dst3", 0, None)


async def test_conditional_copy(store, request):
    differs(request, moto="moto ignores CopySourceIfMatch (TEST-SERVERS.md)")
    etag = await store.put("src", b"data", {})
    assert await store.copy("src", "ok", 4, None, etag) == etag
    with pytest.raises(errors.Stale):
        await store.copy("src", "no", 4, None, md5(b"older"))
    assert await store.head("no") is None


async def test_delete(store):
    await store.put("d1", b"", {})
    await store.put("d2", b"", {})
    await store.delete("d1")
    await store.delete("d1")  # a missing key is no error
    await store.delete_many(["d2", "never"])
    assert await store.head("d1") is None and await store.head("d2") is None


async def list_all(store, prefix, delimiter, max_keys):
    objects, prefixes, token = [], [], None
    while True:
        page = await store.list_page(prefix, delimiter, token, max_keys)
        assert len(page.objects) + len(page.prefixes) <= max_keys
        objects += [o.key for o in page.objects]
        prefixes += page.prefixes
        token = page.next_token
        if token is None:
            return objects, prefixes


async def test_listing_with_delimiter_and_paging(store):
    keys = ["d/a", "d/b/1", "d/b/2", "d/c/", "d/c/x", "d/e", "d/f/g/h", "dz", "e"]
    for key in keys:
        await store.put(key, b"x" * len(key), {})
    for max_keys in (1, 2, 1000):
        assert await list_all(store, "d/", "/", max_keys) == (
            ["d/a", "d/e"], ["d/b/", "d/c/", "d/f/"])
        assert await list_all(store, "d/", None, max_keys) == (
            [k for k in keys if k.startswith("d/")], [])
    page = await store.list_page("d", "/", None, 1000)
    assert ([o.key for o in page.objects], page.prefixes) == (["dz"], ["d/"])
    info = (await store.list_page("d/a", None)).objects[0]
    assert (info.size, info.etag, info.metadata) == (3, md5(b"xxx"), None)


async def test_listing_start_after(store):
    for key in ("s/a", "s/b", "s/c"):
        await store.put(key, b"", {})
    page = await store.list_page("s/", "/", None, 1000, start_after="s/a")
    assert [o.key for o in page.objects] == ["s/b", "s/c"]


async def test_multipart_with_part_copy(store, tmp_path):
    source = os.urandom(MIB)
    source_etag = await store.put("source", source, {})
    first = os.urandom(5 * MIB)
    upload = await store.create_multipart("big", {"mode": "33188"})
    path = staged(tmp_path, b"pad" + first)
    e1 = await store.upload_part("big", upload, 1, path, 3, len(first))
    e2 = await store.upload_part_copy("big", upload, 2, "source", 100, 300, source_etag)
    assert e1 == md5(first)
    etag = await store.complete_multipart("big", upload, [(1, e1), (2, e2)])
    assert etag == multipart_etag([(1, e1), (2, e2)])
    info = await store.head("big")
    assert (info.size, info.etag, info.metadata) == (5 * MIB + 200, etag, {"mode": "33188"})
    assert await store.get_range("big", 5 * MIB - 2, 5 * MIB + 2, etag) == (
        first[-2:] + source[100:102])


async def test_part_copy_etag_is_md5_of_the_range(store, request):
    differs(request, seaweedfs="SeaweedFS gives a copied part an ETag that is not its MD5")
    source = b"0123456789" * 100
    await store.put("source", source, {})
    upload = await store.create_multipart("big", {})
    try:
        etag = await store.upload_part_copy("big", upload, 1, "source", 10, 500, None)
        assert etag == md5(source[10:500])
    finally:
        await store.abort_multipart("big", upload)


async def test_part_copy_from_changed_source(store, request):
    differs(request, moto="moto ignores CopySourceIfMatch on UploadPartCopy too")
    await store.put("source", b"x" * 1000, {})
    upload = await store.create_multipart("big", {})
    try:
        with pytest.raises(errors.Stale):
            await store.upload_part_copy("big", upload, 1, "source", 0, 10, md5(b"older"))
    finally:
        await store.abort_multipart("big", upload)


async def test_conditional_complete(store, tmp_path, request):
    await store.put("taken", b"theirs", {})
    upload = await store.create_multipart("taken", {})
    etag = await store.upload_part("taken", upload, 1, staged(tmp_path, b"ours"), 0, 4)
    try:
        with pytest.raises(errors.Stale):
            await store.complete_multipart("taken", upload, [(1, etag)], EXPECT_ABSENT)
    finally:
        await store.abort_multipart("taken", upload)
    assert await store.get_range("taken", 0, 10, None) == b"theirs"


async def test_small_part_before_the_last_is_refused(store, tmp_path):
    upload = await store.create_multipart("small", {})
    path = staged(tmp_path, b"abcdef")
    parts = [(1, await store.upload_part("small", upload, 1, path, 0, 3)),
             (2, await store.upload_part("small", upload, 2, path, 3, 3))]
    try:
        with pytest.raises(errors.FsError):
            await store.complete_multipart("small", upload, parts)
    finally:
        await store.abort_multipart("small", upload)
    assert await store.head("small") is None


async def test_aborted_upload_is_gone(store, tmp_path, request):
    differs(request, moto="moto answers a part of an aborted upload with 500 InternalError")
    upload = await store.create_multipart("ab", {})
    await store.abort_multipart("ab", upload)
    with pytest.raises(errors.NotFound):
        await store.upload_part("ab", upload, 1, staged(tmp_path, b"x"), 0, 1)


async def test_user_metadata_limit(store, request):
    differs(request, moto="moto does not enforce the 2 KiB user-metadata limit",
            seaweedfs="SeaweedFS does not enforce the 2 KiB user-metadata limit")
    fits = {"a": "x" * (USER_METADATA_LIMIT - 1)}
    await store.put("fits", b"", fits)
    assert (await store.head("fits")).metadata == fits
    with pytest.raises(errors.FsError):
        await store.put("over", b"", {"a": "x" * USER_METADATA_LIMIT, "b": "y"})
