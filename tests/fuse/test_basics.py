"""Core file and directory operations on a real mount, checked through the mount, in the bucket
with a separate client, and after an unmount + mount."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from helpers import bucket_objects, objects_but_attributes


def test_write_read_and_persist(mounted, s3_client, bucket):
    p = mounted.path / "hello.txt"
    p.write_bytes(b"hello world\n")
    assert p.read_bytes() == b"hello world\n"
    assert s3_client.get_object(Bucket=bucket, Key="hello.txt")["Body"].read() == b"hello world\n"
    mounted.remount()
    assert p.read_bytes() == b"hello world\n"
    assert p.stat().st_size == 12


def test_objects_put_outside_are_visible(mounted, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="a/b/c.txt", Body=b"deep")
    s3_client.put_object(Bucket=bucket, Key="top.txt", Body=b"top")
    assert sorted(os.listdir(mounted.path)) == ["a", "top.txt"]
    assert (mounted.path / "a").is_dir()
    assert os.listdir(mounted.path / "a") == ["b"]
    assert (mounted.path / "a/b/c.txt").read_bytes() == b"deep"


def test_mkdir_persists_empty_directory(mounted, s3_client, bucket):
    (mounted.path / "empty").mkdir()
    assert "empty/" in bucket_objects(s3_client, bucket)
    mounted.remount()
    assert (mounted.path / "empty").is_dir()
    assert os.listdir(mounted.path / "empty") == []


def test_rmdir(mounted, s3_client, bucket):
    d = mounted.path / "d"
    d.mkdir()
    (d / "f").write_text("x")
    with pytest.raises(OSError) as exc:
        d.rmdir()
    assert exc.value.errno == errno.ENOTEMPTY
    (d / "f").unlink()
    d.rmdir()
    assert not d.exists()
    assert bucket_objects(s3_client, bucket) == {}
    mounted.remount()
    assert not d.exists()


def test_unlink(mounted, s3_client, bucket):
    p = mounted.path / "gone.txt"
    p.write_text("bye")
    p.unlink()
    assert not p.exists()
    assert "gone.txt" not in bucket_objects(s3_client, bucket)
    with pytest.raises(FileNotFoundError):
        p.unlink()


def test_unlink_open_file_stays_readable(mounted, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="open.bin", Body=b"x" * 300_000)
    p = mounted.path / "open.bin"
    with open(p, "rb") as f:
        assert f.read(10) == b"x" * 10
        p.unlink()
        assert not p.exists()
        assert "open.bin" not in bucket_objects(s3_client, bucket)
        f.seek(0)
        assert f.read() == b"x" * 300_000


def test_rename_file_and_over_existing(mounted, s3_client, bucket):
    a, b = mounted.path / "a.txt", mounted.path / "b.txt"
    a.write_text("A")
    b.write_text("B")
    a.rename(b)
    assert not a.exists()
    assert b.read_text() == "A"
    assert bucket_objects(s3_client, bucket) == {"b.txt": b"A"}
    mounted.remount()
    assert b.read_text() == "A"
    assert not a.exists()


def test_rename_directory(mounted, s3_client, bucket):
    src = mounted.path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "one").write_text("1")
    (src / "sub/two").write_text("2")
    src.rename(mounted.path / "dst")
    assert not src.exists()
    assert (mounted.path / "dst/one").read_text() == "1"
    assert (mounted.path / "dst/sub/two").read_text() == "2"
    keys = set(objects_but_attributes(s3_client, bucket))
    assert keys == {"dst/", "dst/one", "dst/sub/", "dst/sub/two"}
    mounted.remount()
    assert (mounted.path / "dst/sub/two").read_text() == "2"
    assert not src.exists()


def test_symlink(mounted, s3_client, bucket):
    (mounted.path / "target.txt").write_text("t")
    os.symlink("target.txt", mounted.path / "link")
    assert os.readlink(mounted.path / "link") == "target.txt"
    assert (mounted.path / "link").read_text() == "t"
    head = s3_client.head_object(Bucket=bucket, Key="link")
    assert stat.S_ISLNK(int(head["Metadata"]["mode"]))
    mounted.remount()
    assert os.readlink(mounted.path / "link") == "target.txt"
    assert os.path.islink(mounted.path / "link")


def test_chmod_chown_utime_persist(mounted, s3_client, bucket):
    p = mounted.path / "f.sh"
    p.write_text("#!/bin/sh\n")
    os.chmod(p, 0o750)
    os.chown(p, 1234, 5678)
    os.utime(p, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    mounted.remount()  # the unmount sends the coalesced copy, if the TTL did not already
    meta = s3_client.head_object(Bucket=bucket, Key="f.sh")["Metadata"]
    assert int(meta["mode"]) == stat.S_IFREG | 0o750
    assert meta["uid"] == "1234" and meta["gid"] == "5678"
    assert meta["mtime"] == "1600000000.123456789"
    st = p.stat()
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert st.st_mtime_ns == 1_600_000_000_123_456_789


def test_hard_link_fails_clearly_and_mkfifo_works(mounted):
    (mounted.path / "f").write_text("x")
    with pytest.raises(OSError) as exc:
        os.link(mounted.path / "f", mounted.path / "g")
    assert exc.value.errno == errno.EPERM
    os.mkfifo(mounted.path / "fifo")  # stored as s3fs-fuse does: see test_file_types.py
    assert stat.S_ISFIFO(os.lstat(mounted.path / "fifo").st_mode)


def test_names_with_spaces_and_unicode(mounted, s3_client, bucket):
    names = ["with space.txt", "ünïcødé — 日本.txt", "emoji 🎉"]
    for n in names:
        (mounted.path / n).write_text(n)
    assert sorted(os.listdir(mounted.path)) == sorted(names)
    assert set(bucket_objects(s3_client, bucket)) == set(names)
    mounted.remount()
    for n in names:
        assert (mounted.path / n).read_text() == n


def test_bad_names_get_clear_errno(mounted, s3_client, bucket):
    with pytest.raises(OSError) as exc:
        open(os.fsencode(str(mounted.path)) + b"/bad\xff", "w").close()
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError) as exc:
        (mounted.path / ("n" * 256)).write_text("x")
    assert exc.value.errno == errno.ENAMETOOLONG
    assert bucket_objects(s3_client, bucket) == {}


def test_unrepresentable_keys_do_not_break_listing(mounted, s3_server, s3_client, bucket):
    for key in ["ok.txt", "a//b", "./dot", "x/../y", "long/" + "z" * 300]:
        try:
            s3_client.put_object(Bucket=bucket, Key=key, Body=b"1")
        except s3_client.exceptions.ClientError:
            # SeaweedFS refuses `.`/`..` segments and long ones (and folds `a//b` into `a/b`)
            assert s3_server.name == "seaweedfs" and key != "ok.txt"
    names = os.listdir(mounted.path)
    assert "ok.txt" in names
    assert all(n not in ("", ".", "..") for n in names)


def test_statfs(mounted):
    st = os.statvfs(mounted.path)
    assert st.f_namemax == 255 and st.f_bavail > 0

