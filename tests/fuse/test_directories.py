"""Directories on every server: rename without CopyObject of markers, and attributes (mode,
owner, times, xattrs) that persist across a remount even where the server drops metadata on
`dir/` markers (SeaweedFS), through the hidden attribute object of markers.py."""

from __future__ import annotations

import os

import pytest
from helpers import bucket_objects

ATTRS = ".s3mount-meta"


def attributes(path) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    st = os.stat(path)
    return st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns


def change(path, mode: int, owner: int, mtime: int) -> None:  # type: ignore[no-untyped-def]
    os.chmod(path, mode)
    os.chown(path, owner, owner + 1)
    os.utime(path, ns=(mtime, mtime))


def test_directory_attributes_persist(mounted, s3_server, s3_client, bucket):
    d = mounted.path / "d"
    d.mkdir()
    sub = d / "sub"
    sub.mkdir()
    change(d, 0o750, 1234, 1_600_000_000_123_456_789)
    change(sub, 0o701, 4321, 1_500_000_000_000_000_000)
    os.setxattr(d, "user.color", b"blue")
    before = attributes(d), attributes(sub)
    keys = set(bucket_objects(s3_client, bucket))
    expected = {"d/", "d/sub/"}
    if s3_server.name == "seaweedfs":
        expected |= {"d/" + ATTRS, "d/sub/" + ATTRS}
    assert keys == expected
    mounted.remount()
    assert (attributes(d), attributes(sub)) == before
    assert os.getxattr(d, "user.color") == b"blue"
    assert os.listdir(mounted.path) == ["d"] and os.listdir(d) == ["sub"]


def test_directory_rename_keeps_tree_and_attributes(mounted, s3_server, s3_client, bucket):
    top = mounted.path / "proj"
    (top / "a/b").mkdir(parents=True)
    (top / "a/b/f.txt").write_text("deep")
    (top / "empty").mkdir()
    change(top / "a", 0o711, 77, 1_400_000_000_000_000_000)
    change(top / "empty", 0o700, 88, 1_300_000_000_000_000_000)
    os.setxattr(top / "empty", "user.k", b"v")
    before = {p: attributes(top / p) for p in ("a", "a/b", "empty")}
    os.rename(top, mounted.path / "moved")
    keys = set(bucket_objects(s3_client, bucket))
    assert not any(k.startswith("proj/") for k in keys), keys
    assert {"moved/", "moved/a/", "moved/a/b/", "moved/a/b/f.txt", "moved/empty/"} <= keys
    for step in ("renamed", "remounted"):
        moved = mounted.path / "moved"
        assert not (mounted.path / "proj").exists(), step
        assert {p: attributes(moved / p) for p in before} == before, step
        assert os.getxattr(moved / "empty", "user.k") == b"v", step
        assert (moved / "a/b/f.txt").read_text() == "deep", step
        assert sorted(os.listdir(moved)) == ["a", "empty"], step
        mounted.remount()


def test_directory_known_only_as_a_prefix(mounted, s3_server, s3_client, bucket):
    """A directory with no marker (its files were put by another tool): its attributes,
    once changed, persist; removing it leaves nothing of s3mount's behind."""
    s3_client.put_object(Bucket=bucket, Key="p/q/file", Body=b"x")
    change(mounted.path / "p", 0o705, 55, 1_200_000_000_000_000_000)
    before = attributes(mounted.path / "p")
    mounted.remount()
    assert attributes(mounted.path / "p") == before
    (mounted.path / "p/q/file").unlink()
    (mounted.path / "p/q").rmdir()
    assert os.listdir(mounted.path / "p") == []
    (mounted.path / "p").rmdir()
    assert bucket_objects(s3_client, bucket) == {}


def test_rename_onto_an_empty_directory_with_attributes(mounted, s3_server, s3_client, bucket):
    (mounted.path / "src").mkdir()
    (mounted.path / "dst").mkdir()
    change(mounted.path / "src", 0o710, 11, 1_100_000_000_000_000_000)
    change(mounted.path / "dst", 0o777, 22, 1_000_000_000_000_000_000)
    before = attributes(mounted.path / "src")
    os.rename(mounted.path / "src", mounted.path / "dst")
    assert attributes(mounted.path / "dst") == before
    mounted.remount()
    assert attributes(mounted.path / "dst") == before
    assert os.listdir(mounted.path) == ["dst"]


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_rmdir_and_unlink_leave_no_attribute_object(mounted, s3_client, bucket, kind):
    path = mounted.path / "x"
    if kind == "dir":
        path.mkdir()
        os.chmod(path, 0o700)
        path.rmdir()
    else:
        path.write_text("x")
        os.chmod(path, 0o600)
        path.unlink()
    assert bucket_objects(s3_client, bucket) == {}
    mounted.remount()
    assert os.listdir(mounted.path) == []
