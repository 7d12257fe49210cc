"""Conflicting writers: a commit over an object checks the version it started from (If-Match),
a new file checks that nobody created it meanwhile (If-None-Match: *). The loser's close(2)
fails with ESTALE and its data is kept under a conflict key; nothing is silently lost."""

from __future__ import annotations

import errno
import os
import threading

import pytest
from helpers import Expected, bucket_objects, log_failures


def conflicts_of(objects: dict[str, bytes], key: str) -> list[bytes]:
    return [v for k, v in objects.items() if k.startswith(f"{key}.s3mount-conflict-")]


def close_after_their_put(f, s3_client, bucket: str, key: str, body: bytes) -> int:
    """Another client PUTs `key` while `f`, written and flushed to the mount, is still open:
    our close(2) must fail; returns its errno."""
    f.flush()
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    with pytest.raises(OSError) as exc:
        f.close()
    return exc.value.errno


def test_lost_update_is_detected(mounted, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="doc.txt", Body=b"v1")
    mounted.expect("changed in the bucket", count=1)
    mounted.expect("PreconditionFailed", count=1)
    f = open(mounted.path / "doc.txt", "r+b")  # noqa: SIM115
    f.write(b"ours")
    assert close_after_their_put(f, s3_client, bucket, "doc.txt", b"theirs") == errno.ESTALE
    objects = bucket_objects(s3_client, bucket)
    assert objects["doc.txt"] == b"theirs"
    assert conflicts_of(objects, "doc.txt") == [b"ours"]


def concurrent_create(mounted, s3_client, bucket) -> None:
    f = open(mounted.path / "new.txt", "wb")  # noqa: SIM115
    f.write(b"mine")
    assert close_after_their_put(f, s3_client, bucket, "new.txt", b"someone else's") == \
        errno.ESTALE


def test_concurrent_create_is_detected(mounted, s3_client, bucket):
    mounted.expect("changed in the bucket", count=1)
    mounted.expect("PreconditionFailed", count=1)
    concurrent_create(mounted, s3_client, bucket)
    objects = bucket_objects(s3_client, bucket)
    assert objects["new.txt"] == b"someone else's"
    assert conflicts_of(objects, "new.txt") == [b"mine"]


def test_concurrent_create_is_set_aside_once(mounted, s3_client, bucket):
    concurrent_create(mounted, s3_client, bucket)
    mounted.stop()
    problems = mounted.problems()
    for text in ("changed in the bucket", "PreconditionFailed", "could not upload"):
        mounted.expect(text, at_least=0)  # judged here, not again by the fixture
    assert log_failures(problems, [Expected("changed in the bucket", 1, 1),
                                   Expected("flush: PUT new.txt: PreconditionFailed", 1, 1)]) == []
    objects = bucket_objects(s3_client, bucket)
    assert objects["new.txt"] == b"someone else's"
    assert conflicts_of(objects, "new.txt") == [b"mine"]


def test_large_file_lost_update_is_detected(mounted, s3_client, bucket):
    base = os.urandom(20 * 1024 * 1024)
    s3_client.put_object(Bucket=bucket, Key="big.bin", Body=base)
    mounted.expect("changed in the bucket", count=1)
    mounted.expect("PreconditionFailed", count=1)
    f = open(mounted.path / "big.bin", "r+b")  # noqa: SIM115
    f.write(b"X" * 1000)
    f.read(10)  # bytes of the old version come local before it changes
    f.seek(0)
    f.write(b"Y" * 1000)
    assert close_after_their_put(f, s3_client, bucket, "big.bin", b"replaced") in (
        errno.ESTALE, errno.EIO)
    objects = bucket_objects(s3_client, bucket)
    assert objects == {"big.bin": b"replaced"}  # never overwritten
    kept = list((mounted.cache_dir / "conflicts").glob("*.data"))
    assert len(kept) == 1  # our writes, kept for a person to look at
    with open(kept[0], "rb") as data:
        assert data.read(1000) == b"Y" * 1000
    assert not list((mounted.cache_dir / "staging").glob("*.json"))  # nothing to re-upload


def test_rename_of_unflushed_file_over_existing_is_no_conflict(mounted, s3_client, bucket):
    (mounted.path / "target.txt").write_text("old")
    with open(mounted.path / ".target.tmp", "w") as f:
        f.write("new")
        f.flush()
        os.rename(mounted.path / ".target.tmp", mounted.path / "target.txt")
    assert bucket_objects(s3_client, bucket) == {"target.txt": b"new"}


def test_without_conditional_writes_the_last_writer_wins(make_mount, s3_client, bucket):
    m = make_mount(bucket, "--no-conditional-writes")
    s3_client.put_object(Bucket=bucket, Key="doc.txt", Body=b"v1")
    with open(m.path / "doc.txt", "r+b") as f:
        f.write(b"ours")
        f.flush()
        s3_client.put_object(Bucket=bucket, Key="doc.txt", Body=b"theirs")
    assert bucket_objects(s3_client, bucket) == {"doc.txt": b"ours"}


@pytest.mark.parametrize("size", [100_000, 20 * 1024 * 1024], ids=["put", "multipart"])
def test_two_mounts_writing_one_file_at_once_lose_nothing(make_mount, request, size):
    """Two daemons commit the same file at the same moment: one wins the key, the other's
    close(2) fails with ESTALE and its bytes go to a conflict key; both versions survive.
    Multipart commits run on SeaweedFS: moto 5.2 ignores If-Match on CompleteMultipartUpload,
    so there the later commit silently replaces the earlier one."""
    if size > 16 * 1024 * 1024:
        server = request.getfixturevalue("seaweed")
        client, bucket = server.client(), request.getfixturevalue("seaweed_bucket")
    else:
        server = request.getfixturevalue("s3_server")
        client, bucket = request.getfixturevalue("s3_client"), request.getfixturevalue("bucket")
    client.put_object(Bucket=bucket, Key="shared.bin", Body=b"v1")
    mounts = [make_mount(bucket, name=n, endpoint=server.endpoint) for n in ("a", "b")]
    bodies = [os.urandom(size), os.urandom(size)]
    files = []
    for m, body in zip(mounts, bodies, strict=True):
        f = open(m.path / "shared.bin", "r+b")  # noqa: SIM115 - closed below, at once
        f.write(body)
        f.flush()  # in the daemon, not yet committed
        files.append(f)
    outcome: list[int | None] = [None, None]
    ready = threading.Barrier(2)

    def close(i: int) -> None:
        ready.wait()
        try:
            files[i].close()
            outcome[i] = 0
        except OSError as exc:
            outcome[i] = exc.errno

    threads = [threading.Thread(target=close, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(outcome, key=str) == sorted([0, errno.ESTALE], key=str), outcome
    winner, loser = (0, 1) if outcome[0] == 0 else (1, 0)
    mounts[loser].expect("changed in the bucket", count=1)
    mounts[loser].expect("PreconditionFailed", count=1)
    objects = bucket_objects(client, bucket)
    assert objects["shared.bin"] == bodies[winner]
    assert conflicts_of(objects, "shared.bin") == [bodies[loser]]
    assert len(objects) == 2
