"""unlink(2) and a directory's rename(2) while a commit of a file under it is still on its way to
the bucket (the fault proxy holds the PUT back): afterwards the bucket holds what the user did,
never a deleted file come back, never a file left under a directory's old name."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest
from helpers import Mount, bucket_objects

STALL = 2.0  # the commit's PUT waits this long in the proxy


@pytest.fixture
def slow_mount(proxy, bucket, tmp_path):
    m = Mount(proxy.endpoint, bucket, tmp_path / "mnt", tmp_path / "cache")
    m.start()
    yield m
    proxy.clear()
    m.stop()
    assert not m.problems(), m.problems()


def while_committing(proxy, fd: int, name: str, action: Callable[[], object]) -> None:
    """close(2) `fd`, which commits the file, while the proxy holds its PUT back; do `action`
    meanwhile; then the close must finish."""
    proxy.fail("stall", times=1, method="PUT", query=name, stall=STALL)
    closing = threading.Thread(target=os.close, args=(fd,))
    closing.start()
    time.sleep(STALL / 3)  # the PUT is on its way, not yet in the bucket
    action()
    closing.join(60)
    assert not closing.is_alive()


def test_unlink_during_commit_stays_deleted(slow_mount, proxy, s3_client, bucket):
    path = slow_mount.path / "gone.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"written, closed, then deleted")
    while_committing(proxy, fd, "gone.txt", lambda: os.unlink(path))
    print(f"\nFAULT unlink during commit: acknowledged 0 B (deleted), in bucket "
          f"{sum(map(len, bucket_objects(s3_client, bucket).values()))} B")
    assert "gone.txt" not in bucket_objects(s3_client, bucket)
    assert not path.exists()
    slow_mount.remount()
    assert not (slow_mount.path / "gone.txt").exists()


def test_unlink_during_commit_of_an_existing_object(slow_mount, proxy, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="old.txt", Body=b"old version")
    path = slow_mount.path / "old.txt"
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new version, then deleted")
    while_committing(proxy, fd, "old.txt", lambda: os.unlink(path))
    assert bucket_objects(s3_client, bucket) == {}  # no conflict copy either: ours was deleted


def test_directory_renamed_during_commit_moves_the_file(slow_mount, proxy, s3_client, bucket):
    (slow_mount.path / "d").mkdir()
    fd = os.open(slow_mount.path / "d" / "f.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"committed while its directory moved")
    while_committing(proxy, fd, "f.txt",
                     lambda: os.rename(slow_mount.path / "d", slow_mount.path / "e"))
    objects = bucket_objects(s3_client, bucket)
    print(f"\nFAULT directory rename during commit: acknowledged 35 B, in bucket under the new "
          f"name {len(objects.get('e/f.txt', b''))} B")
    assert objects.get("e/f.txt") == b"committed while its directory moved"
    assert not [k for k in objects if k.startswith("d/")], objects
    assert os.listdir(slow_mount.path) == ["e"]
    assert (slow_mount.path / "e" / "f.txt").read_bytes() == objects["e/f.txt"]
