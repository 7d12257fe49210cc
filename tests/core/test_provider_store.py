"""`S3Store` with provider options against moto: what a multipart completion needs when the
parts were sent by an earlier run of the mount (a crash between the parts and the completion):
their checksums come from ListParts, since this run never saw them.  S3 lists them; moto and
SeaweedFS 4.48 do not (SeaweedFS does check those a completion names), so here the completion
goes without them, and only the asking is checked."""

from __future__ import annotations

import os

from helpers import REGION

from s3mount.config import MountConfig
from s3mount.requestargs import RequestArgs
from s3mount.s3 import S3Store
from s3mount.s3client import build_client
from s3mount.workers import Limiters

MIB = 1024 * 1024


def make_store(s3_server, bucket: str, tmp_path, **options) -> S3Store:  # type: ignore[no-untyped-def]
    config = MountConfig(bucket=bucket, prefix="", mountpoint=str(tmp_path),
                         endpoint_url=s3_server.endpoint, region=REGION, **options)
    return S3Store(build_client(config), bucket, "", Limiters(4).s3, RequestArgs(config))


async def test_completion_after_a_restart_lists_the_parts_checksums(s3_server, s3_client,
                                                                   bucket, tmp_path, aws_env):
    data = os.urandom(11 * MIB)
    path = tmp_path / "data"
    path.write_bytes(data)
    first = make_store(s3_server, bucket, tmp_path, checksum="sha256")
    upload_id = await first.create_multipart("k", {"mode": "33188"})
    parts = [(1, await first.upload_part("k", upload_id, 1, str(path), 0, 6 * MIB)),
             (2, await first.upload_part("k", upload_id, 2, str(path), 6 * MIB, 5 * MIB))]
    second = make_store(s3_server, bucket, tmp_path, checksum="sha256")  # after a restart
    await second.complete_multipart("k", upload_id, parts)
    assert second.stats.requests["LIST-PARTS"] == 1
    assert s3_client.get_object(Bucket=bucket, Key="k")["Body"].read() == data
    # The first store knew its parts' checksums: no listing needed.
    upload_id = await first.create_multipart("j", {})
    parts = [(1, await first.upload_part("j", upload_id, 1, str(path), 0, 6 * MIB))]
    await first.complete_multipart("j", upload_id, parts)
    assert first.stats.requests["LIST-PARTS"] == 0
