"""Renaming and chmod-ing a file over 5 GiB, on SeaweedFS (a real object store): past
CopyObject's 5 GiB the copy is a multipart upload of UploadPartCopy parts, which starts with no
user metadata, so the mount must carry it all (mode, owner, mtime, xattrs), and the copy onto
itself must stay conditional on the version the mount knows.

The 5.5 GiB object is built server-side from one 512 MiB object (UploadPartCopy), so nothing of
it crosses the test's connection; SeaweedFS still writes every byte, so this test is slow (a few
minutes on a loaded 2-core machine, ~18 GB written): it is marked `huge`, left out of a plain
`scripts/test` run and run with `scripts/test -m huge tests/fuse/test_large_copy.py`.
"""

from __future__ import annotations

import os
import stat
import urllib.parse

import pytest
from faultproxy import FaultProxy
from test_metacoalesce import fsync
from test_writeback import wait_for

MIB = 1024 * 1024
SEED = 512 * MIB
BIG = 11 * SEED  # 5.5 GiB
META = {"mode": str(stat.S_IFREG | 0o640), "uid": "1234", "gid": "5678",
        "mtime": "1600000000.123456789",
        "xattr": urllib.parse.quote('{"user.color":"Ymx1ZQ=="}', safe="")}


@pytest.fixture
def proxy(seaweed):
    p = FaultProxy(seaweed.endpoint)
    yield p
    p.stop()


def build_big(client, bucket: str, key: str) -> None:
    """A 5.5 GiB object with s3fs-style metadata, made server-side from a 512 MiB one."""
    client.put_object(Bucket=bucket, Key="seed", Body=b"\0" * SEED)
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, Metadata=META)["UploadId"]
    parts = []
    for number in range(1, BIG // SEED + 1):
        done = client.upload_part_copy(Bucket=bucket, Key=key, UploadId=upload,
                                       PartNumber=number,
                                       CopySource={"Bucket": bucket, "Key": "seed"})
        parts.append({"PartNumber": number, "ETag": done["CopyPartResult"]["ETag"]})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                     MultipartUpload={"Parts": parts})
    client.delete_object(Bucket=bucket, Key="seed")


class ReplaceBeforeMultipartCopy:
    """Fault-proxy check: when the mount starts a multipart upload of `key`, another client
    first replaces the object with `body` (SeaweedFS enforces the copy's conditions itself)."""

    def __init__(self, client, bucket: str, key: str, body: bytes) -> None:
        self.client, self.bucket, self.key, self.body = client, bucket, key, body
        self.done = False

    def __call__(self, method: str, path: str, headers) -> None:
        if (method == "POST" and path.split("?")[0].endswith(f"/{self.key}")
                and "uploads" in path and not self.done):
            self.done = True
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self.body)


@pytest.mark.huge
def test_rename_and_chmod_over_5_gib_keep_every_attribute(seaweed, seaweed_bucket, proxy,
                                                          make_mount):
    client = seaweed.client()
    build_big(client, seaweed_bucket, "big")
    m = make_mount(seaweed_bucket, "--metadata-ttl", "60", endpoint=proxy.endpoint)
    os.rename(m.path / "big", m.path / "moved")
    head = client.head_object(Bucket=seaweed_bucket, Key="moved")
    assert head["ContentLength"] == BIG
    assert head["Metadata"] == META  # the multipart copy carried every attribute
    assert "Contents" not in client.list_objects_v2(Bucket=seaweed_bucket, Prefix="big")

    os.chmod(m.path / "moved", 0o600)
    fsync(m.path / "moved")  # the coalesced copy (metaqueue.py) goes now
    head = client.head_object(Bucket=seaweed_bucket, Key="moved")
    assert head["ContentLength"] == BIG
    assert head["Metadata"] == {**META, "mode": str(stat.S_IFREG | 0o600)}
    st = os.stat(m.path / "moved")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1234, 5678)
    assert os.getxattr(m.path / "moved", "user.color") == b"blue"

    # Another client replaces it just before the mount's next multipart copy starts: the
    # copy's parts name the version the mount knew, SeaweedFS refuses them, and the chmod
    # lands on the new version instead of adopting it under the old size.
    proxy.check = ReplaceBeforeMultipartCopy(client, seaweed_bucket, "moved", b"small now")
    os.chmod(m.path / "moved", 0o644)
    fsync(m.path / "moved")
    proxy.check = None
    obj = client.get_object(Bucket=seaweed_bucket, Key="moved")
    assert obj["Body"].read() == b"small now"
    assert obj["Metadata"]["mode"] == str(stat.S_IFREG | 0o644)
    # once the kernel's cached size expires (half the TTL): fsync(2) does not refresh it
    wait_for(lambda: os.stat(m.path / "moved").st_size == len(b"small now"))
    assert not client.list_multipart_uploads(Bucket=seaweed_bucket).get("Uploads")
