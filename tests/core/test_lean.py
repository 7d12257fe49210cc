"""The lean request path (s3mount/lean.py) answers as the boto3 `S3Store` does.

Each test runs against moto and against SeaweedFS, which verifies signatures: a request the lean
path signs wrongly fails there.  Answers are compared with the boto3 store's on the same objects.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from faultproxy import FaultProxy
from helpers import ACCESS_KEY, REGION, SECRET_KEY

from s3mount import errors
from s3mount.config import MountConfig
from s3mount.credentials import Keys
from s3mount.lean import SMALL_GET, LeanS3Store, lean_blockers, make_store, put_headers
from s3mount.requestargs import RequestArgs
from s3mount.s3 import S3Store
from s3mount.s3client import build_client
from s3mount.store import EXPECT_ABSENT
from s3mount.workers import Limiters

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from seaweed import SeaweedFS  # noqa: E402

# Keys that need encoding in a path or a query, and one that looks encoded already.
ODD_KEYS = ["a b", "plus+sign", "pct%20lit", "pct%2Fslash", "tilde~x", "eq=amp&q?h#",
            "ünïcødé/ñ", "deep/er/key", "star*(paren)!'", "semi;colon,comma:@$"]


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory):
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), ACCESS_KEY, SECRET_KEY)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["moto", "seaweedfs"])
def server(request, s3_server):
    if request.param == "moto":
        return s3_server
    return request.getfixturevalue("seaweedfs")


@pytest.fixture
def client(server, aws_env):
    import boto3
    return boto3.client("s3", endpoint_url=server.endpoint, region_name=REGION,
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


_buckets = iter(range(10**6))


@pytest.fixture
def bucket(client):
    name = f"lean-{os.getpid()}-{next(_buckets)}"
    client.create_bucket(Bucket=name)
    return name


def stores(server, bucket, prefix="", **overrides) -> tuple[S3Store, LeanS3Store]:
    config = MountConfig(bucket=bucket, prefix=prefix, mountpoint="/nonexistent",
                         endpoint_url=overrides.pop("endpoint_url", server.endpoint),
                         region=REGION, max_attempts=overrides.pop("max_attempts", 2),
                         **overrides)
    limiters = Limiters(4)
    boto = S3Store(build_client(config), bucket, prefix, limiters.s3, RequestArgs(config))
    lean = make_store(build_client(config), config, limiters)
    assert isinstance(lean, LeanS3Store), lean_blockers(config)
    return boto, lean


async def test_head_get_and_list_answer_as_boto3_does(server, client, bucket):
    for i, key in enumerate(ODD_KEYS):
        client.put_object(Bucket=bucket, Key=f"p/{key}", Body=bytes(range(i, i + 40)),
                          Metadata={"mode": "33261", "uid": str(i), "mtime": "1.000000002"})
    boto, lean = stores(server, bucket, prefix="p/")
    for key in ODD_KEYS:
        expected = await boto.head(key)
        assert expected is not None and expected.metadata["uid"]
        assert await lean.head(key) == expected
        assert await lean.get_range(key, 3, 17, expected.etag) == \
            await boto.get_range(key, 3, 17, expected.etag)
    for prefix, delimiter in (("", "/"), ("", None), ("deep/", "/"), ("ünïcødé/", "/")):
        assert await lean.list_page(prefix, delimiter) == await boto.list_page(prefix, delimiter)
    page = await lean.list_page("", "/")
    assert sorted(page.prefixes) == ["deep/", "ünïcødé/"]
    assert {o.key for o in page.objects} == {k for k in ODD_KEYS if "/" not in k}
    assert await lean.head("absent") is None
    assert lean.stats.requests["HEAD"] >= len(ODD_KEYS) + 1


def refuse_boto3(store: S3Store, operation: str) -> None:
    def refused(**kwargs):
        raise AssertionError(f"{operation} of {kwargs['Key']} went through boto3")
    setattr(store.client, operation, refused)


def refuse_boto3_puts(store: S3Store) -> None:
    refuse_boto3(store, "put_object")


async def test_small_gets_go_lean_and_return_bytes_as_stored(server, client, bucket):
    """A GET of up to SMALL_GET bytes is sent on the lean path: the same bytes as boto3's,
    gzip-encoded objects not decoded, past the end cut short, a stale version refused; a longer
    GET goes through boto3's resumable body reader."""
    import gzip
    data = os.urandom(SMALL_GET + 4096)
    packed = gzip.compress(b"text " * 1000)
    client.put_object(Bucket=bucket, Key="big", Body=data)
    client.put_object(Bucket=bucket, Key="packed.gz", Body=packed, ContentEncoding="gzip")
    boto, lean = stores(server, bucket)
    etag = (await boto.head("big")).etag
    refuse_boto3(lean, "get_object")
    assert await lean.get_range("big", 5, 4101, etag) == data[5:4101]
    assert await lean.get_range("big", 0, SMALL_GET, None) == data[:SMALL_GET]
    assert await lean.get_range("big", len(data) - 10, len(data) + 50, etag) == data[-10:]
    assert await lean.get_range("packed.gz", 0, len(packed), None) == packed
    with pytest.raises(errors.Stale):
        await lean.get_range("big", 0, 10, "0" * 32)
    with pytest.raises(AssertionError, match="went through boto3"):
        await lean.get_range("big", 0, SMALL_GET + 1, etag)
    assert await boto.get_range("big", 0, SMALL_GET + 1, etag) == data[:SMALL_GET + 1]


async def test_put_lands_as_boto3_puts_it(server, client, bucket, tmp_path):
    """A lean PUT (markers, small files) makes the object a boto3 PUT makes: same bytes, ETag,
    metadata and content type, at odd keys; its conditions fail as boto3's do."""
    boto, lean = stores(server, bucket, prefix="p/", content_type="auto")
    refuse_boto3_puts(lean)
    meta = {"mode": "33188", "uid": "0", "mtime": "1.000000002", "Mixed-Case": "a b"}
    for i, key in enumerate([*ODD_KEYS, "page.html", "dir/"]):
        body = bytes(range(i, i + 40)) if key != "dir/" else b""
        for store, where in ((boto, "b/"), (lean, "l/")):
            source = tmp_path / f"{i}{where[0]}"
            source.write_bytes(body + b"tail not sent")
            etag = await store.put_file(where + key, str(source), len(body), meta)
            assert etag == (await boto.head(where + key)).etag
        sent = client.head_object(Bucket=bucket, Key=f"p/l/{key}")
        made = client.head_object(Bucket=bucket, Key=f"p/b/{key}")
        for field in ("ETag", "ContentLength", "ContentType", "Metadata"):
            assert sent[field] == made[field], (key, field)
        assert client.get_object(Bucket=bucket, Key=f"p/l/{key}")["Body"].read() == body
    marker_etag = await lean.put("l/m/", b"", {"mode": "16877"})
    assert (await boto.head("l/m/")).etag == marker_etag

    source = tmp_path / "v2"
    source.write_bytes(b"second version")
    for store in (boto, lean):
        with pytest.raises(errors.Stale):  # 412: the key exists
            await store.put_file("l/page.html", str(source), 14, {}, expect=EXPECT_ABSENT)
        with pytest.raises(errors.Stale):  # 412: not that version
            await store.put_file("l/page.html", str(source), 14, {}, expect="0" * 32)
    current = (await boto.head("l/page.html")).etag
    etag = await lean.put_file("l/page.html", str(source), 14, {}, expect=current)
    assert (await boto.head("l/page.html")).etag == etag != current
    assert lean.stats.requests["PUT"] == len(ODD_KEYS) + 6


def test_a_put_the_lean_path_cannot_carry_goes_through_boto3():
    plain = {"Bucket": "b", "Key": "k", "Body": b"", "Metadata": {"uid": "0"}}
    assert put_headers(plain) == {"x-amz-meta-uid": "0"}
    assert put_headers({**plain, "ChecksumSHA256": "x", "ChecksumAlgorithm": "SHA256"}) is None
    assert put_headers({**plain, "SSECustomerKey": bytes(32)}) is None
    assert put_headers({**plain, "Metadata": {"name": "ünï"}}) is None
    assert put_headers({**plain, "Metadata": {"name": "line\nbreak"}}) is None
    assert put_headers({**plain, "IfNoneMatch": "*", "StorageClass": "STANDARD_IA"}) == {
        "x-amz-meta-uid": "0", "If-None-Match": "*", "x-amz-storage-class": "STANDARD_IA"}


async def test_a_head_made_ahead_takes_the_read_budget(server, client, bucket):
    """ls -l's sweep looks entries up ahead of the program: those HEADs wait for read slots,
    as read-ahead GETs do, never for the slots a stat or an upload needs (with 10 of those
    shared, a 3,000-entry ls -l through a 20 ms link took 9.5 s; on its own budget 6.6 s)."""
    client.put_object(Bucket=bucket, Key="f", Body=b"x")
    config = MountConfig(bucket=bucket, prefix="", mountpoint="/nonexistent",
                         endpoint_url=server.endpoint, region=REGION, max_attempts=2)
    limiters = Limiters(1, reads=1)
    boto = S3Store(build_client(config), bucket, "", limiters.s3, read_limiter=limiters.reads)
    for store in (boto, make_store(build_client(config), config, limiters)):
        async with limiters.s3:  # every metadata slot taken
            with trio.fail_after(10):
                found = await store.head("f", ahead=True)
            assert found is not None and found.size == 1
            with trio.move_on_after(0.3) as waited:
                await store.head("f")
            assert waited.cancelled_caught  # an ordinary HEAD waits for a metadata slot


async def test_listing_pages_and_start_after_as_boto3_does(server, client, bucket):
    keys = [f"k{i:02d} +%" for i in range(23)]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    boto, lean = stores(server, bucket)
    seen, token, pages = [], None, 0
    while True:
        page = await lean.list_page("", "/", token, max_keys=10)
        assert page == await boto.list_page("", "/", token, max_keys=10)
        seen += [o.key for o in page.objects]
        token, pages = page.next_token, pages + 1
        if token is None:
            break
    assert seen == keys and pages == 3
    after = await lean.list_page("", "/", start_after=keys[19])
    assert [o.key for o in after.objects] == keys[20:]
    assert after == await boto.list_page("", "/", start_after=keys[19])


async def test_errors_map_through_the_one_table(server, client, bucket):
    client.put_object(Bucket=bucket, Key="f", Body=b"0123456789")
    boto, lean = stores(server, bucket)
    with pytest.raises(errors.NotFound):
        await lean.get_range("missing", 0, 4, None)
    with pytest.raises(errors.Stale):  # 412: the object is no longer that version
        await lean.get_range("f", 0, 4, "0" * 32)
    with pytest.raises(errors.NotFound):
        await stores(server, bucket + "-absent")[1].list_page("", "/")
    assert lean.stats.errors["GET"] == 1  # a missing key is an answer, a stale one an error


SIGNATURES_CHECKED = pytest.mark.parametrize("server", ["seaweedfs"], indirect=True)


@SIGNATURES_CHECKED
async def test_wrong_secret_is_access_denied(server, client, bucket, aws_env):
    client.put_object(Bucket=bucket, Key="f", Body=b"x")
    _, lean = stores(server, bucket, keys=Keys(ACCESS_KEY, "wrong-secret"))
    with pytest.raises(errors.AccessDenied):
        await lean.head("f")
    with pytest.raises(errors.AccessDenied):
        await lean.list_page("", "/")


@SIGNATURES_CHECKED
async def test_every_request_is_signed_with_the_credentials_of_the_moment(
        server, client, bucket, aws_env, tmp_path, monkeypatch):
    """Credentials that refresh (here a credential_process whose keys expire within minutes,
    so botocore asks again on every use) are read for each request, never a stale signature."""
    client.put_object(Bucket=bucket, Key="f", Body=b"x")
    secret = tmp_path / "secret"
    secret.write_text("wrong-secret")
    script = tmp_path / "creds.py"
    script.write_text(textwrap.dedent(f"""\
        import datetime, json, pathlib
        soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=2)
        print(json.dumps({{"Version": 1, "AccessKeyId": "{ACCESS_KEY}",
                          "SecretAccessKey": pathlib.Path("{secret}").read_text(),
                          "Expiration": soon.isoformat()}}))
        """))
    config_file = tmp_path / "config"
    config_file.write_text(f"[profile refreshing]\ncredential_process = {sys.executable} "
                           f"{script}\nregion = {REGION}\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config_file))
    _, lean = stores(server, bucket, profile="refreshing")
    with pytest.raises(errors.AccessDenied):
        await lean.head("f")
    secret.write_text(SECRET_KEY)  # the keys were rotated
    info = await lean.head("f")
    assert info is not None and info.size == 1


async def test_transient_failures_are_retried_within_max_attempts(server, client, bucket):
    client.put_object(Bucket=bucket, Key="f", Body=b"x")
    proxy = FaultProxy(server.endpoint)
    try:
        _, lean = stores(server, bucket, endpoint_url=proxy.endpoint, max_attempts=3)
        proxy.fail("503", times=2, method="HEAD")
        assert (await lean.head("f")).size == 1
        proxy.fail("500", times=2, method="GET")
        assert await lean.get_range("f", 0, 1, None) == b"x"
        client.put_object(Bucket=bucket, Key="h", Body=bytes(range(100)))
        refuse_boto3(lean, "get_object")
        proxy.fail("cut", times=1, method="GET", after=10)  # the answer breaks off mid-body
        assert await lean.get_range("h", 0, 100, None) == bytes(range(100))
        proxy.fail("cut", times=3, method="GET", after=10)
        with pytest.raises(errors.RemoteIO, match="broke off on each of 3 attempts"):
            await lean.get_range("h", 0, 100, None)
        proxy.fail("reset", times=2, method="GET")
        assert (await lean.list_page("", "/")).objects[0].key == "f"
        refuse_boto3_puts(lean)
        proxy.fail("reset", times=1, method="PUT")
        proxy.fail("503", times=1, method="PUT")
        assert await lean.put("g", b"sent again", {}) == \
            client.head_object(Bucket=bucket, Key="g")["ETag"].strip('"')
        proxy.fail("503", times=3, method="HEAD")
        with pytest.raises(errors.RemoteIO):
            await lean.head("f")
        assert proxy.injected == 15
    finally:
        proxy.stop()


def test_every_option_is_either_understood_or_a_known_reason_for_boto3():
    """A new option must be placed: in UNDERSTOOD_FIELDS when the lean path sends what it
    needs, else here, as a reason the lean path steps aside."""
    import dataclasses

    from s3mount.lean import UNDERSTOOD_FIELDS
    fields = {f.name for f in dataclasses.fields(MountConfig)}
    assert fields - UNDERSTOOD_FIELDS == {"proxy", "requester_pays", "sse_customer_key"}


def test_options_the_lean_path_lacks_route_to_boto3():
    base = dict(bucket="b", prefix="", mountpoint="/m")
    assert lean_blockers(MountConfig(**base)) == []
    assert lean_blockers(MountConfig(**base, storage_class="STANDARD_IA", checksum="sha256")) == []
    # Options that change when requests go, not what they carry (--write-back once sent every
    # request through boto3, unnoticed: about 2 ms more CPU a file created).
    assert lean_blockers(MountConfig(**base, write_back=0.0, metadata_ttl=5.0, trust_listings=True,
                                     max_read_concurrency=8, cache_size=1 << 30)) == []
    for config in (MountConfig(**base, signature_version="v2"),
                   MountConfig(**base, addressing_style="virtual"),
                   MountConfig(**base, request_path="boto3"),
                   MountConfig(**base, requester_pays=True),
                   MountConfig(**base, sse_customer_key=bytes(32)),
                   MountConfig(**base, proxy="http://127.0.0.1:3128")):
        assert lean_blockers(config)
        store = make_store(None, config, Limiters(4))
        assert type(store) is S3Store
