"""The provider options on the wire: each mount runs one workload through a recording proxy in
front of moto, and every request that needs an option must have carried it.

The workload makes every kind of request the options touch: a small file (PutObject), a large
one (CreateMultipartUpload, UploadPart, CompleteMultipartUpload), chmod and rename (CopyObject,
replacing the metadata or not), a partial rewrite of the large file (UploadPartCopy of the parts
left alone), and after a remount HEAD, LIST and GET.  Where moto keeps what it was sent (the
encryption, the storage class, the content type, the checksum), the bucket is checked as well.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import urllib.parse
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from faultproxy import FaultProxy, Seen
from helpers import ACCESS_KEY, SECRET_KEY, Mount, check_log, one_line_error, run_cli

MIB = 1024 * 1024
SSE_C_KEY = bytes(range(32))

MAKERS = {"PutObject", "CreateMultipartUpload", "CopyObject"}  # requests that make an object
BYTES = {"PutObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy",
         "CompleteMultipartUpload", "CopyObject", "GetObject", "HeadObject"}
COPIES = {"CopyObject", "UploadPartCopy"}


def operation(seen: Seen, bucket: str) -> str:
    """The S3 operation a recorded request was."""
    query = seen.path.partition("?")[2]
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    copy = seen.header("x-amz-copy-source") is not None
    if seen.method == "PUT":
        if "partNumber" in params:
            return "UploadPartCopy" if copy else "UploadPart"
        return "CopyObject" if copy else "PutObject"
    if seen.method == "POST":
        if "uploads" in params:
            return "CreateMultipartUpload"
        if "uploadId" in params:
            return "CompleteMultipartUpload"
        return "DeleteObjects" if "delete" in params else "POST"
    bucket_level = seen.path.split("?")[0].rstrip("/") == f"/{bucket}"
    if seen.method == "GET":
        return "ListObjectsV2" if bucket_level else "GetObject"
    if seen.method == "HEAD":
        return "HeadBucket" if bucket_level else "HeadObject"
    return "AbortMultipartUpload" if "uploadId" in params else "DeleteObject"


def query(seen: Seen) -> dict[str, str]:
    text = seen.path.partition("?")[2]
    return {k: urllib.parse.unquote(v) for k, _, v in (p.partition("=") for p in
                                                      text.split("&") if p)}


def by_operation(proxy: FaultProxy, bucket: str) -> dict[str, list[Seen]]:
    found: dict[str, list[Seen]] = {}
    for seen in proxy.seen:
        found.setdefault(operation(seen, bucket), []).append(seen)
    return found


def workload(m: Mount) -> bytes:
    """Every kind of request the options touch; returns the large file's final bytes."""
    (m.path / "a.txt").write_text("small")
    big = bytearray(os.urandom(20 * MIB))  # three parts of 8 MiB: a multipart upload
    (m.path / "big.bin").write_bytes(big)
    os.chmod(m.path / "a.txt", 0o600)  # CopyObject onto itself, replacing the metadata
    os.rename(m.path / "a.txt", m.path / "b.html")  # CopyObject to a new key
    with open(m.path / "big.bin", "r+b") as f:  # parts 2 and 3 are copied server-side
        f.write(b"changed")
    big[:7] = b"changed"
    m.remount()
    assert sorted(os.listdir(m.path)) == ["b.html", "big.bin"]
    assert (m.path / "b.html").read_text() == "small"
    assert (m.path / "big.bin").read_bytes() == big
    return bytes(big)


def run_workload(endpoint: str, bucket: str, tmp_path: Path, options: list[str]) -> bytes:
    """`workload` on a mount with these options, whose log must stay free of problems."""
    m = Mount(endpoint, bucket, tmp_path / "mnt", tmp_path / "cache", options)
    m.start()
    try:
        big = workload(m)
    finally:
        m.stop()
    assert not m.problems(), m.problems()
    return big


def run_recorded(s3_server, bucket: str, tmp_path: Path, *options: str,
                 endpoint: str | None = None) -> tuple[FaultProxy, dict[str, list[Seen]]]:
    proxy = FaultProxy(s3_server.endpoint)
    try:
        if endpoint is None:
            endpoint = proxy.endpoint
        run_workload(endpoint, bucket, tmp_path, list(options))
        ops = by_operation(proxy, bucket)
    finally:
        proxy.stop()
    for needed in ("PutObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy",
                   "CompleteMultipartUpload", "CopyObject", "GetObject", "HeadObject",
                   "ListObjectsV2"):
        assert ops.get(needed), f"the workload made no {needed}"
    return proxy, ops


def assert_header(ops: dict[str, list[Seen]], names: set[str], header: str,
                  value: str | None) -> None:
    """Every request of these operations carried `header` (with `value`, when given)."""
    for name in names:
        for seen in ops.get(name, []):
            got = seen.header(header)
            assert got is not None, f"{name} {seen.path} lacks {header}"
            assert value is None or got == value, f"{name}: {header}: {got!r}"


def assert_no_header(ops: dict[str, list[Seen]], names: set[str], header: str) -> None:
    for name in names:
        for seen in ops.get(name, []):
            assert seen.header(header) is None, f"{name} {seen.path} has {header}"


# -- each option, on the wire ------------------------------------------------------------------


def test_sse_s3(s3_server, s3_client, bucket, tmp_path):
    _, ops = run_recorded(s3_server, bucket, tmp_path, "--sse", "AES256")
    assert_header(ops, MAKERS, "x-amz-server-side-encryption", "AES256")
    # S3 refuses the header on parts and completion: they inherit it from the creation.
    assert_no_header(ops, {"UploadPart", "UploadPartCopy", "CompleteMultipartUpload"},
                     "x-amz-server-side-encryption")
    for key in ("b.html", "big.bin"):
        assert s3_client.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"


def test_sse_kms_with_key_id(s3_server, bucket, tmp_path):
    _, ops = run_recorded(s3_server, bucket, tmp_path, "-o", "sse=aws:kms,sse_kms_key_id=k-1")
    assert_header(ops, MAKERS, "x-amz-server-side-encryption", "aws:kms")
    assert_header(ops, MAKERS, "x-amz-server-side-encryption-aws-kms-key-id", "k-1")


def test_sse_c_on_every_request_with_bytes(s3_server, bucket, tmp_path):
    key_file = tmp_path / "sse-c.key"
    key_file.write_text(base64.b64encode(SSE_C_KEY).decode() + "\n")
    key_file.chmod(0o600)
    _, ops = run_recorded(s3_server, bucket, tmp_path, "--sse-c-key-file", str(key_file))
    b64 = base64.b64encode(SSE_C_KEY).decode()
    md5 = base64.b64encode(hashlib.md5(SSE_C_KEY).digest()).decode()
    prefix = "x-amz-server-side-encryption-customer-"
    assert_header(ops, BYTES, prefix + "algorithm", "AES256")
    assert_header(ops, BYTES, prefix + "key", b64)
    assert_header(ops, BYTES, prefix + "key-MD5", md5)
    copy_prefix = "x-amz-copy-source-server-side-encryption-customer-"
    assert_header(ops, COPIES, copy_prefix + "algorithm", "AES256")
    assert_header(ops, COPIES, copy_prefix + "key", b64)
    assert_no_header(ops, {"ListObjectsV2", "DeleteObject"}, prefix + "key")


def test_storage_class_kept_across_copies(s3_server, s3_client, bucket, tmp_path):
    conf = tmp_path / "s3mount.conf"
    conf.write_text("storage_class = STANDARD_IA\n")
    _, ops = run_recorded(s3_server, bucket, tmp_path, "--config", str(conf))
    assert_header(ops, MAKERS, "x-amz-storage-class", "STANDARD_IA")
    for key in ("b.html", "big.bin"):  # after chmod, rename and a partial rewrite
        assert s3_client.head_object(Bucket=bucket, Key=key)["StorageClass"] == "STANDARD_IA"


def test_requester_pays_on_every_request(s3_server, bucket, tmp_path):
    proxy, ops = run_recorded(s3_server, bucket, tmp_path, "--requester-pays")
    assert ops.get("HeadBucket")  # the start-up check
    assert_header(ops, set(ops), "x-amz-request-payer", "requester")
    assert len(proxy.seen) > 20


def test_content_type_auto(s3_server, s3_client, bucket, tmp_path):
    _, ops = run_recorded(s3_server, bucket, tmp_path, "--content-type", "auto")
    put = [s for s in ops["PutObject"] if s.path.split("?")[0].endswith("/a.txt")]
    assert put and put[0].header("Content-Type") == "text/plain"
    create = ops["CreateMultipartUpload"]
    assert {s.header("Content-Type") for s in create} == {"application/octet-stream"}
    renamed = [s for s in ops["CopyObject"] if s.path.split("?")[0].endswith("/b.html")]
    assert renamed and renamed[0].header("Content-Type") == "text/html"
    assert renamed[0].header("x-amz-metadata-directive") == "REPLACE"
    head = s3_client.head_object(Bucket=bucket, Key="b.html")
    assert head["ContentType"] == "text/html"
    assert int(head["Metadata"]["mode"]) & 0o777 == 0o600  # the metadata survived the retype
    assert s3_client.head_object(Bucket=bucket, Key="big.bin")["ContentType"] == \
        "application/octet-stream"


def crc32c(data: bytes) -> bytes:
    from awscrt import checksums

    return checksums.crc32c(data).to_bytes(4, "big")


DIGESTS = {"sha256": lambda data: hashlib.sha256(data).digest(), "crc32c": crc32c}


@pytest.mark.parametrize("algorithm", ["sha256", "crc32c"])
def test_checksum(s3_server, s3_client, bucket, tmp_path, algorithm):
    if algorithm == "crc32c":
        pytest.importorskip("awscrt", reason="--checksum crc32c needs awscrt")
    digest = DIGESTS[algorithm]
    header = f"x-amz-checksum-{algorithm}"
    tag = f"Checksum{algorithm.upper()}".encode()
    _, ops = run_recorded(s3_server, bucket, tmp_path, "--checksum", algorithm)
    for name in ("PutObject", "UploadPart"):
        for seen in ops[name]:
            got = seen.header(header)
            assert got is not None, f"{name} {seen.path} has no checksum"
            if len(seen.body) < 65536:  # the proxy keeps the first 64 KiB of a body
                assert got == base64.b64encode(digest(seen.body)).decode()
    assert_header(ops, {"CreateMultipartUpload"}, "x-amz-checksum-algorithm", algorithm.upper())
    # Each part sent has its checksum in the completion.  A part copied server-side has the
    # one the server computed, when it reports one (S3 does; moto does not).
    copied = {(q["uploadId"], q["partNumber"]) for q in map(query, ops["UploadPartCopy"])}
    for seen in ops["CompleteMultipartUpload"]:
        upload_id = query(seen)["uploadId"]
        parts = re.findall(rb"<PartNumber>(\d+)</PartNumber>.*?</Part>", seen.body, re.S)
        whole = re.findall(rb"<Part>(.*?)</Part>", seen.body, re.S)
        assert parts
        for number, text in zip(parts, whole, strict=True):
            if (upload_id, number.decode()) not in copied:
                assert b"<" + tag + b">" in text, seen.body
    if algorithm == "sha256":  # moto computes a copy's CRC32C as a CRC32 without `crc32c`
        head = s3_client.head_object(Bucket=bucket, Key="b.html", ChecksumMode="ENABLED")
        assert head[tag.decode()] == base64.b64encode(digest(b"small")).decode()


def test_proxy(s3_server, s3_client, bucket, tmp_path):
    """--proxy: every request goes through the proxy, in a forward proxy's absolute form."""
    proxy = FaultProxy(s3_server.endpoint)
    try:
        m = Mount(s3_server.endpoint, bucket, tmp_path / "mnt", tmp_path / "cache",
                  ["-o", f"proxy={proxy.endpoint}"])
        m.start()
        try:
            (m.path / "f").write_text("via the proxy")
            assert (m.path / "f").read_text() == "via the proxy"
        finally:
            m.stop()
        assert not check_log(m)
        assert len(proxy.seen) >= 3
        assert all(s.absolute for s in proxy.seen)
    finally:
        proxy.stop()
    assert s3_client.get_object(Bucket=bucket, Key="f")["Body"].read() == b"via the proxy"


# -- bad values: one clear line at start -------------------------------------------------------


@pytest.mark.parametrize(("args", "needle"), [
    (["--sse", "DES"], "sse"),
    (["-o", "sse=none"], "sse"),
    (["--sse-kms-key-id", "k"], "needs --sse aws:kms"),
    (["--sse", "AES256", "--sse-kms-key-id", "k"], "needs --sse aws:kms"),
    (["--storage-class", "standard"], "storage class"),
    (["--storage-class", "GLACIER"], "restore"),
    (["--content-type", "html"], "auto"),
    (["--proxy", "ftp://proxy"], "proxy url"),
    (["-o", "proxy=nothing"], "proxy url"),
    (["--checksum", "md5"], "checksum"),
    (["-o", "requester_pays=yes"], "takes no value"),
])
def test_bad_provider_options(s3_server, bucket, tmp_path, args, needle):
    (tmp_path / "mnt").mkdir()
    result = run_cli("--endpoint-url", s3_server.endpoint, "--cache-dir", str(tmp_path / "c"),
                     *args, bucket, str(tmp_path / "mnt"))
    assert needle in one_line_error(result, status=2)


@pytest.mark.parametrize(("content", "mode", "needle", "status"), [
    (b"short", 0o600, "32-byte", 2),
    (b"x" * 33, 0o600, "32-byte", 2),
    (SSE_C_KEY, 0o644, "chmod 600", 1),
])
def test_bad_sse_c_key_file(s3_server, bucket, tmp_path, content, mode, needle, status):
    key_file = tmp_path / "key"
    key_file.write_bytes(content)
    key_file.chmod(mode)
    (tmp_path / "mnt").mkdir()
    result = run_cli("--endpoint-url", s3_server.endpoint, "--cache-dir", str(tmp_path / "c"),
                     "--sse-c-key-file", str(key_file), bucket, str(tmp_path / "mnt"))
    assert needle in one_line_error(result, status=status)


def test_sse_and_sse_c_contradict(s3_server, bucket, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_bytes(SSE_C_KEY)
    key_file.chmod(0o600)
    (tmp_path / "mnt").mkdir()
    result = run_cli("--endpoint-url", s3_server.endpoint, "--cache-dir", str(tmp_path / "c"),
                     "--sse", "AES256", "--sse-c-key-file", str(key_file), bucket,
                     str(tmp_path / "mnt"))
    assert "contradict" in one_line_error(result, status=2)


def test_checksum_crc32c_without_awscrt(s3_server, bucket, tmp_path):
    try:
        import awscrt  # noqa: F401
        pytest.skip("awscrt is installed: --checksum crc32c works here")
    except ImportError:
        pass
    (tmp_path / "mnt").mkdir()
    result = run_cli("--endpoint-url", s3_server.endpoint, "--cache-dir", str(tmp_path / "c"),
                     "--checksum", "crc32c", bucket, str(tmp_path / "mnt"))
    assert "awscrt" in one_line_error(result, status=2)


# -- on a server that checks them: SeaweedFS ---------------------------------------------------
# SeaweedFS 4.48 refuses a GET or HEAD of an SSE-C object without its key (and with a wrong
# one), and a body whose x-amz-checksum-sha256 does not match (BadDigest).  It cannot copy a
# part of an SSE-C object (UploadPartCopy: NotImplemented): the mount then reads the part and
# sends it again.


def seaweed_bucket(server) -> tuple[object, str]:  # type: ignore[no-untyped-def]
    client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"},
                                        retries={"max_attempts": 1}))
    name = f"opts-{os.getpid()}-{next(_seaweed_buckets)}"
    client.create_bucket(Bucket=name)
    return client, name


_seaweed_buckets = iter(range(10**6))


def test_sse_c_on_seaweedfs(seaweed, tmp_path):
    client, bucket = seaweed_bucket(seaweed)
    key_file = tmp_path / "sse-c.key"
    key_file.write_bytes(SSE_C_KEY)
    key_file.chmod(0o600)
    big = run_workload(seaweed.endpoint, bucket, tmp_path, ["--sse-c-key-file", str(key_file)])
    sse = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": SSE_C_KEY}
    assert client.get_object(Bucket=bucket, Key="big.bin", **sse)["Body"].read() == big
    for key in ("b.html", "big.bin"):
        with pytest.raises(ClientError):  # the server holds them encrypted with our key
            client.get_object(Bucket=bucket, Key=key)
        with pytest.raises(ClientError):
            client.get_object(Bucket=bucket, Key=key, SSECustomerAlgorithm="AES256",
                              SSECustomerKey=bytes(32))


@pytest.mark.parametrize("algorithm", ["sha256", "crc32c"])
def test_checksum_on_seaweedfs(seaweed, tmp_path, algorithm):
    if algorithm == "crc32c":
        pytest.importorskip("awscrt", reason="--checksum crc32c needs awscrt")
    client, bucket = seaweed_bucket(seaweed)
    run_workload(seaweed.endpoint, bucket, tmp_path, ["--checksum", algorithm])
    head = client.head_object(Bucket=bucket, Key="b.html", ChecksumMode="ENABLED")
    assert head[f"Checksum{algorithm.upper()}"] == \
        base64.b64encode(DIGESTS[algorithm](b"small")).decode()
