"""Two mounts of one bucket (two daemons, two cache directories), and changes made with boto3:
each mount sees the others' changes within the metadata TTL and never mixes two versions."""

from __future__ import annotations

import errno
import os
import time

import pytest

TTL = 1.0


def eventually(check, limit: float = TTL + 0.5, what: str = "") -> float:
    """Seconds until `check()` holds; fails when it does not within `limit`."""
    start = time.monotonic()
    while True:
        try:
            if check():
                took = time.monotonic() - start
                if what:
                    print(f"\nCOHERENCE {what}: visible after {took:.2f} s")
                return took
        except OSError:
            pass
        if time.monotonic() - start > limit:
            raise AssertionError(f"not visible within {limit} s")
        time.sleep(0.02)


@pytest.fixture
def two(make_mount, bucket):
    return make_mount(bucket, name="a"), make_mount(bucket, name="b")


def test_file_written_on_a_is_read_on_b(two):
    a, b = two
    assert not (b.path / "new.txt").exists()  # B has looked and cached "absent"
    (a.path / "new.txt").write_text("from A")
    eventually(lambda: (b.path / "new.txt").read_text() == "from A", what="new file (A->B)")
    (a.path / "new.txt").write_text("changed by A, longer")
    eventually(lambda: (b.path / "new.txt").read_text() == "changed by A, longer",
               what="changed file (A->B)")
    eventually(lambda: (b.path / "new.txt").stat().st_size == 20)


def test_rename_and_delete_on_a_seen_on_b(two):
    a, b = two
    (a.path / "x").write_text("x")
    eventually(lambda: "x" in os.listdir(b.path))
    (a.path / "x").rename(a.path / "y")
    eventually(lambda: sorted(os.listdir(b.path)) == ["y"], what="rename, in ls (A->B)")
    eventually(lambda: not (b.path / "x").exists(), what="rename, old name by stat (A->B)")
    (a.path / "y").unlink()
    eventually(lambda: os.listdir(b.path) == [] and not (b.path / "y").exists(),
               what="delete (A->B)")


def test_directory_made_on_a_appears_on_b(two):
    a, b = two
    (a.path / "d").mkdir()
    eventually(lambda: (b.path / "d").is_dir() and "d" in os.listdir(b.path),
               what="mkdir (A->B)")


def test_object_put_outside_appears_on_both(two, s3_client, bucket):
    a, b = two
    assert os.listdir(a.path) == [] and os.listdir(b.path) == []
    s3_client.put_object(Bucket=bucket, Key="ext/o.txt", Body=b"outside")
    for m in two:
        eventually(lambda m=m: (m.path / "ext/o.txt").read_bytes() == b"outside",
                   what="object put with boto3")
    s3_client.delete_object(Bucket=bucket, Key="ext/o.txt")
    for m in two:
        eventually(lambda m=m: not (m.path / "ext/o.txt").exists(),
                   what="object deleted with boto3")


def test_change_on_b_never_mixes_versions_in_a_reader(two, s3_client, bucket):
    a, b = two
    size = 24 * 1024 * 1024
    s3_client.put_object(Bucket=bucket, Key="v.bin", Body=b"1" * size)
    with open(a.path / "v.bin", "rb") as f:
        first = f.read(1024 * 1024)
        assert first == b"1" * len(first)
        with open(b.path / "v.bin", "r+b") as g:
            g.write(b"2" * size)
        assert s3_client.get_object(Bucket=bucket, Key="v.bin")["Body"].read(1) == b"2"
        stale = False
        try:
            f.seek(20 * 1024 * 1024)
            rest = f.read()
        except OSError as exc:
            assert exc.errno in (errno.ESTALE, errno.EIO)
            stale = True
        else:
            assert len(rest) == size - 20 * 1024 * 1024  # not an empty read
            assert rest == b"1" * len(rest)  # the old version in full, from cached blocks
    a.expect("read: GET v.bin: PreconditionFailed", at_least=1 if stale else 0)
    eventually(lambda: (a.path / "v.bin").read_bytes()[:1] == b"2")


def test_deleted_outside_while_open(make_mount, s3_client, bucket):
    m = make_mount(bucket)
    s3_client.put_object(Bucket=bucket, Key="d.bin", Body=b"z" * (20 * 1024 * 1024))
    gone = False
    with open(m.path / "d.bin", "rb") as f:
        assert f.read(10) == b"z" * 10
        s3_client.delete_object(Bucket=bucket, Key="d.bin")
        f.seek(16 * 1024 * 1024)
        try:
            data = f.read()
        except OSError as exc:
            assert exc.errno in (errno.ESTALE, errno.EIO)
            gone = True
        else:
            assert len(data) == 4 * 1024 * 1024  # not an empty read
            assert data == b"z" * len(data)
    m.expect("read: d.bin was deleted from the bucket while open", at_least=1 if gone else 0)
    eventually(lambda: not (m.path / "d.bin").exists())
