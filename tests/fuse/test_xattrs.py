"""Extended attributes: user.* stored with the object as s3fs-fuse stores them, surviving a
remount and a rename; other namespaces and oversize values get clear errors.  A change to a
closed file reaches the bucket within the metadata TTL (metaqueue.py): the bucket is polled."""

from __future__ import annotations

import base64
import errno
import json
import os
import urllib.parse

import pytest
from test_writeback import wait_for


def stored_xattrs(s3_client, bucket, key):
    meta = s3_client.head_object(Bucket=bucket, Key=key)["Metadata"]
    table = json.loads(urllib.parse.unquote(meta.get("xattr", "%7B%7D")))
    return {k: base64.b64decode(v) for k, v in table.items()}


def test_set_get_list_remove_persist(mounted, s3_client, bucket):
    p = mounted.path / "f.txt"
    p.write_text("data")
    os.setxattr(p, "user.color", b"blue")
    os.setxattr(p, "user.bin", bytes(range(256))[:100])
    assert os.getxattr(p, "user.color") == b"blue"
    assert sorted(os.listxattr(p)) == ["user.bin", "user.color"]
    wait_for(lambda: stored_xattrs(s3_client, bucket, "f.txt") == {
        "user.color": b"blue", "user.bin": bytes(range(100))})
    assert s3_client.get_object(Bucket=bucket, Key="f.txt")["Body"].read() == b"data"
    mounted.remount()
    assert os.getxattr(p, "user.color") == b"blue"
    os.removexattr(p, "user.color")
    assert os.listxattr(p) == ["user.bin"]
    with pytest.raises(OSError) as exc:
        os.getxattr(p, "user.color")
    assert exc.value.errno == errno.ENODATA
    mounted.remount()
    assert os.listxattr(p) == ["user.bin"]


def test_xattrs_survive_rename_and_write(mounted, s3_client, bucket):
    p = mounted.path / "a.txt"
    p.write_text("one")
    os.setxattr(p, "user.tag", b"kept")
    with open(p, "a") as f:
        f.write(" two")
    p.rename(mounted.path / "b.txt")
    assert stored_xattrs(s3_client, bucket, "b.txt") == {"user.tag": b"kept"}
    mounted.remount()
    assert os.getxattr(mounted.path / "b.txt", "user.tag") == b"kept"
    assert (mounted.path / "b.txt").read_text() == "one two"


def test_xattr_on_directory(mounted, s3_client, bucket):
    d = mounted.path / "d"
    d.mkdir()
    os.setxattr(d, "user.owner", b"team")
    assert stored_xattrs(s3_client, bucket, "d/") == {"user.owner": b"team"}
    mounted.remount()
    assert os.getxattr(d, "user.owner") == b"team"


def test_xattr_readable_from_s3fs_format_written_outside(mounted, s3_client, bucket):
    table = {"user.from": base64.b64encode(b"s3fs").decode()}
    s3_client.put_object(Bucket=bucket, Key="ext.txt", Body=b"x",
                         Metadata={"xattr": urllib.parse.quote(json.dumps(table))})
    assert os.getxattr(mounted.path / "ext.txt", "user.from") == b"s3fs"


def test_xattr_errors(mounted, s3_client, bucket):
    p = mounted.path / "f"
    p.write_text("x")
    with pytest.raises(OSError) as exc:
        os.setxattr(p, "trusted.thing", b"v")
    assert exc.value.errno in (errno.ENOTSUP, errno.EPERM)
    with pytest.raises(OSError) as exc:
        os.setxattr(p, "user.big", b"v" * 3000)
    assert exc.value.errno == errno.E2BIG
    os.setxattr(p, "user.small", b"ok")
    with pytest.raises(OSError) as exc:
        os.setxattr(p, "user.more", b"w" * 1900)
    assert exc.value.errno == errno.E2BIG
    wait_for(lambda: stored_xattrs(s3_client, bucket, "f") == {"user.small": b"ok"})
    assert os.listxattr(p) == ["user.small"]
