"""Crash windows beyond SIGKILL: a power cut (the page cache lost), and a daemon killed right after
the bucket took its upload but before it knew.

A power cut is simulated after SIGKILL by zeroing or truncating the staging files behind the
journal's back, as if nothing had reached the disk since the last fdatasync (the daemon syncs on a
timer of a few seconds, and these tests kill it sooner).  The next mount must then never upload
zeros: every byte it cannot prove local comes from the version the file was based on.

A kill right after CompleteMultipartUpload (or the single PUT) is made with the fault proxy: the
server does the request, the daemon is killed before it sees the answer.  The next mount must
recognise its own upload: no conflict copy, no warning, and the journal gone for good.
"""

from __future__ import annotations

import os

import pytest
from helpers import bucket_objects, close_quietly, crashable_mount, kill_and_wait

MIB = 1024 * 1024


@pytest.fixture
def crashable(proxy, bucket, tmp_path):
    """A mount through the fault proxy (see `crashable_mount`)."""
    with crashable_mount(proxy.endpoint, bucket, tmp_path) as m:
        yield m
        proxy.clear()


def lose_page_cache(cache_dir, how: str) -> int:
    """What a power cut does to data never synced: gone (zeros), or the file never grew."""
    staged = list((cache_dir / "staging").glob("*.data"))
    for path in staged:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            if how == "truncate":
                f.truncate(0)
            else:
                f.write(bytes(size))
    return len(staged)


@pytest.mark.parametrize("how", ["zero", "truncate"])
def test_power_cut_never_uploads_zeros(crashable, s3_client, bucket, how):
    base = os.urandom(MIB)
    s3_client.put_object(Bucket=bucket, Key="base.bin", Body=base)
    fd = os.open(crashable.path / "base.bin", os.O_RDWR)
    os.pwrite(fd, b"1" * 4096, 512 * 1024)
    assert os.pread(fd, 65536, 0) == base[:65536]  # base bytes fetched into the staging file
    os.pwrite(fd, b"2" * 4096, 900 * 1024)  # after the fetch: the journal is written again
    kill_and_wait(crashable.pid)  # type: ignore[attr-defined]
    close_quietly(fd)
    assert lose_page_cache(crashable.cache_dir, how) == 1
    crashable.expected_problems = []
    crashable.start()
    body = s3_client.get_object(Bucket=bucket, Key="base.bin")["Body"].read()
    # Nothing was synced before the cut, so nothing of ours is provably local: the object
    # keeps its old bytes everywhere (and is never zeros, never shorter).
    zeros = sum(1 for i in range(0, len(body), 4096) if body[i:i + 4096] == bytes(4096))
    print(f"\nFAULT power cut ({how}): acknowledged 8192 B (never synced) over a {len(base)} B "
          f"object; in bucket {len(body)} B, the old bytes, {zeros} zero pages")
    assert len(body) == len(base) and zeros == 0
    assert body == base
    assert list(bucket_objects(s3_client, bucket)) == ["base.bin"]
    assert not list((crashable.cache_dir / "staging").glob("*.json"))


def test_power_cut_on_a_new_file_leaves_the_bucket_alone(crashable, s3_client, bucket):
    fd = os.open(crashable.path / "new.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, os.urandom(100_000))
    kill_and_wait(crashable.pid)  # type: ignore[attr-defined]
    close_quietly(fd)
    assert lose_page_cache(crashable.cache_dir, "zero") == 1
    crashable.expected_problems = ["never reached the disk"]
    crashable.start()
    assert bucket_objects(s3_client, bucket) == {}  # no file of zeros
    assert "never reached the disk" in crashable.log_text()
    assert not list((crashable.cache_dir / "staging").glob("*.json"))  # set aside, once


def test_synced_data_survives_a_power_cut(crashable, s3_client, bucket):
    """fsync(2) puts the data in the bucket; a power cut after it loses nothing."""
    base = os.urandom(MIB)
    s3_client.put_object(Bucket=bucket, Key="base.bin", Body=base)
    fd = os.open(crashable.path / "base.bin", os.O_RDWR)
    os.pwrite(fd, b"S" * 4096, 4096)
    os.fsync(fd)
    os.pwrite(fd, b"U" * 4096, 8192)  # never synced: lost with the page cache
    kill_and_wait(crashable.pid)  # type: ignore[attr-defined]
    close_quietly(fd)
    lose_page_cache(crashable.cache_dir, "zero")
    crashable.start()
    body = s3_client.get_object(Bucket=bucket, Key="base.bin")["Body"].read()
    assert body == base[:4096] + b"S" * 4096 + base[8192:]


@pytest.mark.parametrize("size", [100_000, 20 * MIB], ids=["put", "multipart"])
def test_killed_right_after_the_upload_completed(crashable, proxy, s3_client, bucket, size):
    s3_client.put_object(Bucket=bucket, Key="doc.bin", Body=b"version 1")
    data = os.urandom(size)
    fd = os.open(crashable.path / "doc.bin", os.O_WRONLY)  # over the old version: it has a base
    os.write(fd, data)
    if size > 8 * MIB:  # the CompleteMultipartUpload request
        proxy.after(lambda: kill_and_wait(crashable.pid), method="POST", query="uploadId=")
    else:
        proxy.after(lambda: kill_and_wait(crashable.pid), method="PUT", query="doc.bin")
    close_quietly(fd)  # the commit: done in the bucket, the daemon killed before it knew
    assert proxy.injected == 1
    assert bucket_objects(s3_client, bucket) == {"doc.bin": data}
    crashable.start()
    assert bucket_objects(s3_client, bucket) == {"doc.bin": data}  # no conflict copy
    assert not crashable.problems(), crashable.problems()
    assert not list((crashable.cache_dir / "staging").glob("*.json"))
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    crashable.remount()  # and the next mount has nothing left to do
    assert bucket_objects(s3_client, bucket) == {"doc.bin": data}
    assert (crashable.path / "doc.bin").read_bytes() == data
    print(f"\nFAULT killed right after the commit completed ({size} B): acknowledged 0 B "
          f"(close failed), in bucket {len(data)} B, no conflict copy")
