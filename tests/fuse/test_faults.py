"""Faults between s3mount and the endpoint (a fault-injecting proxy on loopback): errors and
resets are retried with backoff; a commit that still fails returns EIO to close(2), keeps the
data staged and finishes in the background once the endpoint is back; a stalled read fails
within a bounded time; the mount never dies.  Each test prints bytes acknowledged, bytes in the
bucket and the time to recover (run with -s to see them)."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest
from helpers import bucket_objects

from s3mount import status

MIB = 1024 * 1024
QUICK = ["--max-attempts", "3", "--read-timeout", "2", "--connect-timeout", "2"]


@pytest.fixture
def via_proxy(proxy, make_mount, bucket):
    yield make_mount(bucket, *QUICK, endpoint=proxy.endpoint)
    proxy.clear()  # before make_mount takes the mount down and checks its log


def report(name: str, acknowledged: int, stored: int, seconds: float) -> None:
    print(f"\nFAULT {name}: acknowledged {acknowledged} B, in bucket {stored} B, "
          f"recovered in {seconds:.1f} s")


def read_fails_with_eio(path: Path, within: float) -> float:
    """Reading `path` fails with EIO, in less than `within` seconds; returns how long it took."""
    started = time.monotonic()
    with pytest.raises(OSError) as exc:
        path.read_bytes()
    took = time.monotonic() - started
    assert exc.value.errno == errno.EIO
    assert took < within
    return took


def requests_settle(path: Path, within: float = 30) -> None:
    """Wait until the mount at `path` has no request in flight: a read-ahead GET that started
    during a fault may still be on its last attempt, and a read that joins it shares its
    failure (blockcache: a joined fetch's error is not retried again)."""
    deadline = time.monotonic() + within
    while status.query(str(path))["s3"]["in_flight"]:
        assert time.monotonic() < deadline, "requests still in flight"
        time.sleep(0.1)


@pytest.mark.parametrize("action", ["500", "503", "reset"])
def test_transient_errors_are_retried(via_proxy, proxy, s3_client, bucket, action):
    data = os.urandom(100_000)
    proxy.fail(action, times=2, method="PUT")
    start = time.monotonic()
    (via_proxy.path / "f.bin").write_bytes(data)
    stored = bucket_objects(s3_client, bucket)["f.bin"]
    assert stored == data
    report(f"{action} x2 on PUT", len(data), len(stored), time.monotonic() - start)
    assert proxy.injected == 2


def test_part_failures_in_a_multipart_upload_are_retried(via_proxy, proxy, s3_client, bucket):
    data = os.urandom(20 * MIB)
    proxy.fail("500", times=2, method="PUT", query="partNumber")
    proxy.fail("reset", times=1, method="PUT", query="partNumber")
    start = time.monotonic()
    (via_proxy.path / "big.bin").write_bytes(data)
    stored = s3_client.get_object(Bucket=bucket, Key="big.bin")["Body"].read()
    assert stored == data
    report("500 x2 + reset on UploadPart", len(data), len(stored), time.monotonic() - start)
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_endpoint_down_at_close_then_back(via_proxy, proxy, s3_client, bucket):
    via_proxy.expect("flush: PUT late.bin: Connection was closed", count=1)
    data = os.urandom(2 * MIB)
    f = open(via_proxy.path / "late.bin", "wb")  # noqa: SIM115
    f.write(data)
    proxy.down()
    started = time.monotonic()
    with pytest.raises(OSError) as exc:
        f.close()
    failed_after = time.monotonic() - started
    assert exc.value.errno == errno.EIO
    assert failed_after < 30  # bounded retries, not hours
    assert list((via_proxy.cache_dir / "staging").glob("*.json"))  # kept, journaled
    assert (via_proxy.path / "late.bin").stat().st_size == len(data)  # staged, still served
    assert (via_proxy.path / "late.bin").read_bytes() == data
    proxy.up()
    back = time.monotonic()
    deadline = back + 60
    stored = b""
    while time.monotonic() < deadline:
        stored = bucket_objects(s3_client, bucket).get("late.bin", b"")
        if stored == data:
            break
        time.sleep(0.5)
    assert stored == data
    assert os.listdir(via_proxy.path) == ["late.bin"]
    report("endpoint down at close, back later", len(data), len(stored),
           time.monotonic() - back)
    print(f"FAULT close failed with EIO after {failed_after:.1f} s")


def test_stalled_read_fails_in_bounded_time(via_proxy, proxy, s3_client, bucket):
    via_proxy.expect("read: GET slow.bin: Read timeout", at_least=1)
    s3_client.put_object(Bucket=bucket, Key="slow.bin", Body=b"s" * MIB)
    assert os.listdir(via_proxy.path) == ["slow.bin"]
    proxy.fail("stall", times=100, method="GET", stall=20)
    took = read_fails_with_eio(via_proxy.path / "slow.bin", within=30)
    print(f"\nFAULT stalled GET: EIO after {took:.1f} s")
    proxy.clear()
    requests_settle(via_proxy.path)
    assert (via_proxy.path / "slow.bin").read_bytes() == b"s" * MIB  # the mount lives


def test_a_get_cut_in_the_middle_of_its_body_is_resumed(via_proxy, proxy, s3_client, bucket):
    data = os.urandom(20 * MIB)
    s3_client.put_object(Bucket=bucket, Key="cut.bin", Body=data)
    assert os.listdir(via_proxy.path) == ["cut.bin"]
    # The next two GETs of it are reset after 10,000 bytes of body: after their headers, so
    # botocore's own retries do not cover them.
    proxy.fail("cut", times=2, method="GET", query=f"{bucket}/cut.bin", after=10_000)
    start = time.monotonic()
    assert (via_proxy.path / "cut.bin").read_bytes() == data
    assert proxy.injected == 2
    # Resumed, not failed: no read returned EIO, even one the kernel then asked again.
    assert not via_proxy.problems(), via_proxy.problems()[:3]
    report("reset in the middle of 2 GET bodies", len(data), len(data),
           time.monotonic() - start)


def test_a_get_cut_on_every_attempt_fails_with_eio_in_bounded_time(via_proxy, proxy, s3_client,
                                                                  bucket):
    via_proxy.expect("broke off", at_least=1)
    s3_client.put_object(Bucket=bucket, Key="cut.bin", Body=b"c" * MIB)
    assert os.listdir(via_proxy.path) == ["cut.bin"]
    proxy.fail("cut", times=1000, method="GET", query=f"{bucket}/cut.bin", after=1000)
    took = read_fails_with_eio(via_proxy.path / "cut.bin", within=30)
    assert 2 <= proxy.injected <= 3 * 8  # --max-attempts 3 per request, never endless
    print(f"\nFAULT GET cut on every attempt: EIO after {took:.1f} s, "
          f"{proxy.injected} attempts")
    proxy.clear()
    requests_settle(via_proxy.path)
    assert (via_proxy.path / "cut.bin").read_bytes() == b"c" * MIB  # the mount lives


def test_reads_on_the_wire_leave_metadata_and_uploads_their_slots(proxy, s3_client, bucket,
                                                                  make_mount):
    # One request slot for metadata and uploads; the reader's GETs have a budget of their own.
    m = make_mount(bucket, "--max-concurrency", "1", "--read-timeout", "30",
                   endpoint=proxy.endpoint)
    try:
        data = os.urandom(48 * MIB)
        s3_client.put_object(Bucket=bucket, Key="big.bin", Body=data)
        s3_client.put_object(Bucket=bucket, Key="other.txt", Body=b"x")
        assert sorted(os.listdir(m.path)) == ["big.bin", "other.txt"]
        proxy.fail("stall", times=1000, method="GET", query=f"{bucket}/big.bin", stall=6)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append((m.path / "big.bin").read_bytes()))
        reader.start()
        time.sleep(1.5)  # its first GETs and the window's are stalled on the wire
        started = time.monotonic()
        (m.path / "new.txt").write_bytes(b"written meanwhile")  # lookup, PUT
        assert (m.path / "other.txt").stat().st_size == 1  # HEAD after the TTL
        took = time.monotonic() - started
        assert took < 4, f"metadata and upload waited {took:.1f} s behind stalled reads"
        assert reader.is_alive()  # the reads were still waiting
        reader.join(120)
        assert got == [data]
        assert s3_client.get_object(Bucket=bucket, Key="new.txt")["Body"].read() == \
            b"written meanwhile"
    finally:
        proxy.clear()


def test_listing_while_endpoint_down_fails_cleanly(via_proxy, proxy):
    # The lookup's LIST of d/ or its HEAD of d, whichever fails first (they go side by side).
    via_proxy.expect("Connection was closed", at_least=1)
    (via_proxy.path / "d").mkdir()
    proxy.down()
    time.sleep(1.1)  # past the metadata TTL
    with pytest.raises(OSError) as exc:
        os.listdir(via_proxy.path / "d")
    assert exc.value.errno == errno.EIO
    proxy.up()
    assert os.listdir(via_proxy.path / "d") == []
