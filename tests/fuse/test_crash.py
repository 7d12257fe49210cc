"""SIGKILL of the daemon: every byte a write(2) acknowledged is in the bucket after the next
mount of the same bucket and cache directory; a version changed meanwhile by someone else is
never overwritten (ours goes to a conflict key); no multipart upload of ours is left behind."""

from __future__ import annotations

import os
import time

import pytest
from helpers import (
    Mount,
    bucket_objects,
    check_log,
    close_quietly,
    crashable_mount,
    is_mounted,
    kill_and_wait,
)

MIB = 1024 * 1024


def kill_daemon(m: Mount) -> None:
    kill_and_wait(m.pid)  # type: ignore[attr-defined]
    assert is_mounted(m.path)  # dead, but still in the mount table: the next start copes


@pytest.fixture
def crashable(s3_server, bucket, tmp_path):
    with crashable_mount(s3_server.endpoint, bucket, tmp_path) as m:
        yield m
    failures = check_log(m)
    assert not failures, failures


def write_unclosed(path, data: bytes, offset: int | None = None):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.pwrite(fd, data, 0 if offset is None else offset)
    return fd  # never closed before the crash: no flush, no upload


def test_new_file_written_then_killed(crashable, s3_client, bucket):
    data = os.urandom(3 * MIB + 5)
    fd = write_unclosed(crashable.path / "new.bin", data)
    assert bucket_objects(s3_client, bucket) == {}
    kill_daemon(crashable)
    close_quietly(fd)
    assert bucket_objects(s3_client, bucket) == {}  # nothing was uploaded before the crash
    crashable.start()
    assert bucket_objects(s3_client, bucket) == {"new.bin": data}
    assert (crashable.path / "new.bin").read_bytes() == data
    assert "finished the interrupted upload of new.bin" in crashable.log_text()
    assert not list((crashable.cache_dir / "staging").glob("*.json"))


def test_overwrite_in_place_then_killed(crashable, s3_client, bucket):
    base = os.urandom(20 * MIB)
    s3_client.put_object(Bucket=bucket, Key="base.bin", Body=base)
    patch = b"P" * 4096
    fd = write_unclosed(crashable.path / "base.bin", patch, offset=9 * MIB)
    kill_daemon(crashable)
    close_quietly(fd)
    assert s3_client.get_object(Bucket=bucket, Key="base.bin")["Body"].read() == base
    crashable.start()
    expected = base[:9 * MIB] + patch + base[9 * MIB + 4096:]
    assert s3_client.get_object(Bucket=bucket, Key="base.bin")["Body"].read() == expected


def test_large_streaming_file_killed_leaves_no_multipart(crashable, s3_client, bucket):
    data = os.urandom(30 * MIB)
    fd = os.open(crashable.path / "big.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    for off in range(0, len(data), MIB):
        os.pwrite(fd, data[off:off + MIB], off)
    time.sleep(1)  # let some parts go up early
    kill_daemon(crashable)
    close_quietly(fd)
    crashable.start()
    assert s3_client.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == data
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_file_past_the_cache_budget_killed_is_rebuilt(s3_server, s3_client, bucket, tmp_path):
    """Past --cache-size, uploaded parts are dropped locally; a rewrite of one commits the file
    as it stands; more parts are dropped; then the daemon is killed.  The next mount completes
    the upload from the parts kept in it, the staging file and the committed version."""
    with crashable_mount(s3_server.endpoint, bucket, tmp_path, ["--cache-size", "64M"]) as m:
        data = bytearray(os.urandom(150 * MIB))
        fd = os.open(m.path / "big.bin", os.O_WRONLY | os.O_CREAT, 0o644)
        for off in range(0, len(data), MIB):
            os.pwrite(fd, data[off:off + MIB], off)
        patch = b"written over a dropped range, never closed"
        os.pwrite(fd, patch, 2 * MIB)  # commits the file as it stands first
        data[2 * MIB:2 * MIB + len(patch)] = patch
        more = os.urandom(100 * MIB)  # parts of these are dropped too, once uploaded
        for off in range(0, len(more), MIB):
            os.pwrite(fd, more[off:off + MIB], len(data) + off)
        data += more
        log = m.log_text()
        assert "committed as it stands" in log and "parts already uploaded dropped" in log
        kill_daemon(m)
        close_quietly(fd)
        m.start()
        body = s3_client.get_object(Bucket=bucket, Key="big.bin")["Body"].read()
        assert len(body) == len(data) and body == data
        assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_renamed_dirty_file_recovered_under_new_name(crashable, s3_client, bucket):
    fd = write_unclosed(crashable.path / "draft.txt", b"draft contents")
    os.rename(crashable.path / "draft.txt", crashable.path / "final.txt")
    kill_daemon(crashable)
    close_quietly(fd)
    assert bucket_objects(s3_client, bucket) == {}
    crashable.start()
    assert bucket_objects(s3_client, bucket) == {"final.txt": b"draft contents"}


def test_changed_meanwhile_goes_to_a_conflict_key(crashable, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="doc.txt", Body=b"version 1")
    fd = os.open(crashable.path / "doc.txt", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"ours, never uploaded")
    kill_daemon(crashable)
    close_quietly(fd)
    s3_client.put_object(Bucket=bucket, Key="doc.txt", Body=b"theirs, written meanwhile")
    crashable.expect("changed in the bucket", count=1)
    crashable.start()
    objects = bucket_objects(s3_client, bucket)
    assert objects["doc.txt"] == b"theirs, written meanwhile"
    conflicts = [k for k in objects if k.startswith("doc.txt.s3mount-conflict-")]
    assert len(conflicts) == 1
    assert objects[conflicts[0]] == b"ours, never uploaded"
    assert "doc.txt" in crashable.log_text() and conflicts[0] in crashable.log_text()


def test_second_mount_on_the_same_cache_dir_is_refused(crashable, tmp_path):
    other = Mount(crashable.endpoint, crashable.source, tmp_path / "mnt2", crashable.cache_dir)
    with pytest.raises(RuntimeError, match="in use by another s3mount"):
        other.start()
