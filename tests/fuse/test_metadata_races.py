"""Attribute changes on a closed file (chmod, chown, utime, setxattr) are a copy of the object
onto itself, conditional on the version the mount knows (CopySourceIfMatch), sent after the
metadata TTL or at fsync(2) (metaqueue.py).  When another client replaced the object a moment
earlier, the mount refreshes its view and applies the change to the new version once; if the
object changes again, fsync(2) fails with ESTALE.  Their bytes are never adopted under a stale
size.

The second writer is real: the fault proxy's check runs a boto3 PUT straight to the server just
before the mount's copy request goes through.  The proxy also enforces the copy's
x-amz-copy-source-if-match as S3 does, because moto 5.2 ignores that header (SeaweedFS obeys it).
"""

from __future__ import annotations

import errno
import os
from urllib.parse import unquote, urlsplit

import pytest
from test_writeback import status, wait_for


class SecondWriter:
    """A fault-proxy check: before each of the mount's next CopyObject requests, another client
    writes the next of `bodies` over `key`; every copy condition is then checked against the
    bucket, as S3 checks it."""

    def __init__(self, client, bucket: str, key: str, bodies: list[bytes]) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.bodies = list(bodies)
        self.copies = 0
        self.refused = 0

    def __call__(self, method: str, path: str, headers) -> tuple[int, str] | None:
        source = headers.get("x-amz-copy-source")
        if method != "PUT" or not source:
            return None
        if "uploadId=" not in path:
            self.copies += 1
            if self.bodies:
                self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self.bodies.pop(0))
        wanted = headers.get("x-amz-copy-source-if-match")
        if wanted is None:
            return None
        bucket, _, key = unquote(urlsplit(source).path).lstrip("/").partition("/")
        etag = self.client.head_object(Bucket=bucket, Key=key)["ETag"]
        if etag.strip('"') != wanted.strip('"'):
            self.refused += 1
            return 412, "PreconditionFailed"
        return None


def change(path, how: str) -> None:
    if how == "chmod":
        os.chmod(path, 0o600)
    elif how == "chown":
        os.chown(path, 1234, 5678)
    elif how == "utime":
        os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    else:
        os.setxattr(path, "user.color", b"blue")


def changed_in(meta: dict[str, str], how: str) -> bool:
    """Whether the object's user metadata carries the change."""
    return {"chmod": meta.get("mode") == str(0o100600),
            "chown": (meta.get("uid"), meta.get("gid")) == ("1234", "5678"),
            "utime": meta.get("mtime", "").startswith("1600000000"),
            "setxattr": "user.color" in unquote(meta.get("xattr", ""))}[how]


@pytest.mark.parametrize("how", ["chmod", "chown", "utime", "setxattr"])
def test_change_after_another_writer_applies_to_their_version(proxy, make_mount, s3_client,
                                                              bucket, how):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"v1")
    # A short TTL: the kernel's cached size (half the TTL) is not refreshed by fsync(2).
    m = make_mount(bucket, "--metadata-ttl", "2", endpoint=proxy.endpoint)
    path = m.path / "f"
    assert os.stat(path).st_size == 2  # the mount (and the kernel) now know version 1
    theirs = b"their version, longer"
    proxy.check = writer = SecondWriter(s3_client, bucket, "f", [theirs])
    change(path, how)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # the copy goes now, unless the TTL's went first
    finally:
        os.close(fd)
    wait_for(lambda: status(m)["metadata_pending"]["files"] == 0)
    proxy.check = None
    obj = s3_client.get_object(Bucket=bucket, Key="f")
    assert obj["Body"].read() == theirs
    assert changed_in(obj["Metadata"], how)
    # never the old size beside the new ETag, once the kernel asks again
    wait_for(lambda: os.stat(path).st_size == len(theirs))
    assert path.read_bytes() == theirs
    assert writer.refused == 1  # the first copy named version 1 and was refused


def test_change_fails_with_estale_when_the_object_keeps_changing(proxy, make_mount, s3_client,
                                                                 bucket):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"v1")
    m = make_mount(bucket, "--metadata-ttl", "60", endpoint=proxy.endpoint)
    path = m.path / "f"
    assert os.stat(path).st_size == 2
    m.expect("fsync: COPY f -> f: PreconditionFailed", count=1)
    m.expect("its attribute change was not stored", count=1)
    proxy.check = writer = SecondWriter(s3_client, bucket, "f", [b"second", b"third one"])
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fchmod(fd, 0o600)  # journaled; the copy waits for the TTL or fsync(2)
        assert writer.copies == 0
        with pytest.raises(OSError) as exc:
            os.fsync(fd)
    finally:
        os.close(fd)
    proxy.check = None
    assert exc.value.errno == errno.ESTALE
    assert writer.copies == 2 and writer.refused == 2  # one retry, no more
    obj = s3_client.get_object(Bucket=bucket, Key="f")
    assert obj["Body"].read() == b"third one"
    assert not changed_in(obj["Metadata"], "chmod")
