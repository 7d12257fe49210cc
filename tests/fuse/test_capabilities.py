"""Capability probing at mount (probing.py), on each server: what it finds, that it leaves
nothing behind nor anything visible, that a read-only mount writes no probe, and that a server
without conditional writes is mounted with a warning instead of refused."""

from __future__ import annotations

import errno
import os
import re

import pytest
from helpers import NO_CONDITIONAL_WRITES, Mount, S3rver, bucket_objects, s3rver_script

# What each server was seen to support (SeaweedFS 4.48, moto 5).  moto accepts
# x-amz-copy-source-if-match on CopyObject and copies anyway; SeaweedFS drops metadata on markers.
EXPECTED = {
    "moto": {"conditional-put": "yes", "marker-metadata": "yes", "copy-source-if-match": "no",
             "upload-part-copy": "yes", "list-v2": "yes", "checksums": "yes"},
    "seaweedfs": {"conditional-put": "yes", "marker-metadata": "no",
                  "copy-source-if-match": "yes", "upload-part-copy": "yes", "list-v2": "yes",
                  "checksums": "yes"},
}


def capabilities(m: Mount) -> dict[str, str]:
    lines = [line for line in m.log_text().splitlines() if "endpoint capabilities:" in line]
    assert len(lines) == 1, lines  # once per mount
    found = lines[0].split("endpoint capabilities:", 1)[1].split(" (", 1)[0]
    return dict(item.strip().split(": ", 1) for item in found.split(","))


def test_probe_finds_what_the_server_supports(make_mount, s3_server, s3_client, bucket):
    m = make_mount(bucket)
    assert capabilities(m) == EXPECTED[s3_server.name]
    assert bucket_objects(s3_client, bucket) == {}  # the scratch keys are gone
    if s3_server.name == "seaweedfs":
        assert "directory attributes are kept in a hidden .s3mount-meta" in m.log_text()


def test_probe_under_a_prefix_and_read_only(make_mount, s3_server, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="pre/file", Body=b"x")
    m = make_mount(f"{bucket}:pre", name="rw")
    assert capabilities(m) == EXPECTED[s3_server.name]
    ro = make_mount(bucket, "--read-only", name="ro")
    found = capabilities(ro)
    assert found["list-v2"] == "yes"
    assert {v for k, v in found.items() if k != "list-v2"} == {"not probed"}
    assert "a read-only mount writes no probes" in ro.log_text()
    assert set(bucket_objects(s3_client, bucket)) == {"pre/file"}
    assert os.listdir(ro.path) == ["pre"] and os.listdir(m.path) == ["file"]


def test_scratch_and_attribute_keys_never_show(mounted, s3_client, bucket):
    """Left behind (a delete that failed) or written on purpose, s3mount's own keys are not
    entries: not listed, not found, not creatable."""
    for key in (".s3mount-meta/probe-0123456789ab/object", "d/.s3mount-meta", "d/f"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"")
    assert os.listdir(mounted.path) == ["d"]
    assert os.listdir(mounted.path / "d") == ["f"]
    for path in (mounted.path / ".s3mount-meta", mounted.path / "d/.s3mount-meta"):
        with pytest.raises(FileNotFoundError):
            os.stat(path)
    for make in (lambda p: p.write_text("x"), lambda p: p.mkdir(),
                 lambda p: (mounted.path / "d/f").rename(p)):
        with pytest.raises(OSError) as exc:
            make(mounted.path / "d/.s3mount-meta")
        assert exc.value.errno == errno.EINVAL
    assert (mounted.path / "d/f").exists()


@pytest.fixture
def s3rver(tmp_path):
    server = S3rver(s3rver_script(), tmp_path / "s3rver-data")
    yield server
    server.stop()


def test_server_without_conditional_writes_mounts_with_one_warning(s3rver, tmp_path):
    client = s3rver.client()
    client.create_bucket(Bucket="noconditions")
    passwd = tmp_path / "passwd"
    passwd.write_text("S3RVER:S3RVER\n")
    passwd.chmod(0o600)
    m = Mount(s3rver.endpoint, "noconditions", tmp_path / "mnt", tmp_path / "cache",
              ["--passwd-file", str(passwd)])
    m.start()
    try:
        found = capabilities(m)
        assert (found["conditional-put"], found["upload-part-copy"]) == ("no", "no")
        (m.path / "f.txt").write_text("written without conditions")
        (m.path / "f.txt").write_text("and overwritten")
        assert client.get_object(Bucket="noconditions", Key="f.txt")["Body"].read() == \
            b"and overwritten"
        # No UploadPartCopy: the untouched parts of a large file are fetched and sent again.
        big = os.urandom(17 * 1024 * 1024)
        (m.path / "big.bin").write_bytes(big)
        m.remount()
        with open(m.path / "big.bin", "ab") as f:
            f.write(b"tail")
        assert client.get_object(Bucket="noconditions", Key="big.bin")["Body"].read() == \
            big + b"tail"
        assert (m.path / "f.txt").read_text() == "and overwritten"
    finally:
        m.stop()
    problems = m.problems()
    assert len(problems) == 2 and all(NO_CONDITIONAL_WRITES in p for p in problems), problems
    assert re.search(r"WARNING.*writing as with --no-conditional-writes", problems[0])
