"""In the default mode, attribute changes to a closed, clean file are coalesced (metaqueue.py):
stat shows them at once, they are journaled, and one conditional copy carries them all after the
metadata TTL, or at once on fsync(2); a killed daemon's journaled changes are applied at the next
mount; another client's version met by the copy follows the rules of test_metadata_races.py."""

from __future__ import annotations

import errno
import io
import os
import stat
import subprocess
import sys
import tarfile

import pytest
from helpers import crashable_mount
from test_crash import kill_daemon
from test_faults import QUICK
from test_metadata_races import SecondWriter, changed_in
from test_writeback import status, wait_for

MTIME = 1_500_000_000


def kinds(m) -> dict[str, int]:
    return dict(status(m)["s3"]["by_kind"])


def settled(m) -> bool:
    return status(m)["metadata_pending"]["files"] == 0


def grew(before: dict[str, int], after: dict[str, int], kind: str) -> int:
    return after.get(kind, 0) - before.get(kind, 0)


def archive(count: int) -> bytes:
    """A tar of `count` small files, each with its own owner, mode and time."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(count):
            body = f"file {i}\n".encode()
            info = tarfile.TarInfo(f"f{i:02d}")
            info.size, info.mode = len(body), 0o600 + i % 8
            info.uid, info.gid, info.mtime = 2000 + i, 3000 + i, MTIME + i
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def expected_meta(i: int) -> tuple[int, int, int, int]:
    return stat.S_IFREG | (0o600 + i % 8), 2000 + i, 3000 + i, MTIME + i


# Python's tarfile closes each file, then chowns, chmods and sets its times (three copies a
# file before coalescing); GNU tar sets them through the open descriptor, before close.
UNTAR = {
    "gnu": lambda tar, dest: ["tar", "-x", "--same-owner", "-p", "-f", tar, "-C", dest],
    "python": lambda tar, dest: [sys.executable, "-c", "import sys, tarfile; tarfile.open("
                                 "sys.argv[1]).extractall(sys.argv[2], numeric_owner=True)",
                                 tar, dest],
}


@pytest.mark.parametrize("untar", sorted(UNTAR))
def test_untar_costs_one_put_and_at_most_one_copy_a_file(make_mount, s3_client, bucket,
                                                          tmp_path, untar):
    count = 12
    tar_path = tmp_path / "a.tar"
    tar_path.write_bytes(archive(count))
    m = make_mount(bucket)
    before = kinds(m)
    subprocess.run(UNTAR[untar](str(tar_path), str(m.path)), check=True)
    wait_for(lambda: settled(m))
    after = kinds(m)
    assert grew(before, after, "PUT") == count, (before, after)
    assert grew(before, after, "COPY") <= count, (before, after)
    for i in range(count):
        meta = s3_client.head_object(Bucket=bucket, Key=f"f{i:02d}")["Metadata"]
        mode, uid, gid, mtime = expected_meta(i)
        assert (int(meta["mode"]), int(meta["uid"]), int(meta["gid"])) == (mode, uid, gid)
        assert int(meta["mtime"].split(".")[0]) == mtime
    m.remount()
    for i in range(count):
        st = os.stat(m.path / f"f{i:02d}")
        assert (st.st_mode, st.st_uid, st.st_gid, int(st.st_mtime)) == expected_meta(i)
        assert (m.path / f"f{i:02d}").read_bytes() == f"file {i}\n".encode()


def test_chmod_chown_touch_make_one_copy(make_mount, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"data")
    m = make_mount(bucket)
    path = m.path / "f"
    assert os.stat(path).st_size == 4
    before = kinds(m)
    os.chmod(path, 0o640)
    os.chown(path, 1234, 5678)
    os.utime(path, ns=(MTIME * 10**9, MTIME * 10**9))
    st = os.stat(path)  # shown at once
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    wait_for(lambda: settled(m))
    after = kinds(m)
    assert grew(before, after, "COPY") == 1, (before, after)
    assert grew(before, after, "PUT") == 0, (before, after)
    meta = s3_client.head_object(Bucket=bucket, Key="f")["Metadata"]
    assert int(meta["mode"]) == stat.S_IFREG | 0o640
    assert (meta["uid"], meta["gid"]) == ("1234", "5678")
    assert meta["mtime"].startswith(str(MTIME))
    assert s3_client.get_object(Bucket=bucket, Key="f")["Body"].read() == b"data"


def fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def chmod_pending(make_mount, s3_client, bucket):  # type: ignore[no-untyped-def]
    """A mount whose existing file `f` was just chmod-ed to 0604, its copy ten minutes away
    (--metadata-ttl 600); with the request counts from before the chmod."""
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"data")
    m = make_mount(bucket, "--metadata-ttl", "600")
    path = m.path / "f"
    assert os.stat(path).st_size == 4
    before = kinds(m)
    os.chmod(path, 0o604)
    return m, path, before


def test_fsync_after_chmod_stores_it_at_once(make_mount, s3_client, bucket):
    m, path, _ = chmod_pending(make_mount, s3_client, bucket)
    assert status(m)["metadata_pending"]["files"] == 1
    meta = s3_client.head_object(Bucket=bucket, Key="f")["Metadata"]
    assert int(meta.get("mode", 0)) != stat.S_IFREG | 0o604  # not yet in the bucket
    fsync(path)
    meta = s3_client.head_object(Bucket=bucket, Key="f")["Metadata"]
    assert int(meta["mode"]) == stat.S_IFREG | 0o604
    assert status(m)["metadata_pending"]["files"] == 0


def test_unlink_drops_pending_changes(make_mount, s3_client, bucket):
    m, path, before = chmod_pending(make_mount, s3_client, bucket)
    os.unlink(path)
    assert status(m)["metadata_pending"]["files"] == 0
    assert not list((m.cache_dir / "attrs").glob("*.json"))
    assert grew(before, kinds(m), "COPY") == 0
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket)


def test_rename_carries_pending_changes(make_mount, s3_client, bucket):
    m, path, before = chmod_pending(make_mount, s3_client, bucket)
    os.rename(path, m.path / "g")
    assert status(m)["metadata_pending"]["files"] == 0
    assert grew(before, kinds(m), "COPY") == 1  # the rename's own copy
    meta = s3_client.head_object(Bucket=bucket, Key="g")["Metadata"]
    assert int(meta["mode"]) == stat.S_IFREG | 0o604


def test_write_after_chmod_puts_it_with_the_data(make_mount, s3_client, bucket):
    m, path, before = chmod_pending(make_mount, s3_client, bucket)
    with open(path, "ab") as f:
        f.write(b" more")
    fsync(path)  # sends nothing: the commit's PUT carried the change
    after = kinds(m)
    assert grew(before, after, "PUT") == 1 and grew(before, after, "COPY") == 0, (before, after)
    obj = s3_client.get_object(Bucket=bucket, Key="f")
    assert obj["Body"].read() == b"data more"
    assert int(obj["Metadata"]["mode"]) == stat.S_IFREG | 0o604


@pytest.fixture
def crashable(s3_server, bucket, tmp_path):
    with crashable_mount(s3_server.endpoint, bucket, tmp_path,
                         [*s3_server.mount_args, "--metadata-ttl", "600"]) as m:
        yield m


def test_chmod_then_killed_is_applied_at_the_next_mount(crashable, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"data")
    path = crashable.path / "f"
    assert os.stat(path).st_size == 4
    os.chmod(path, 0o612)
    os.chown(path, 4321, 8765)
    assert int(s3_client.head_object(Bucket=bucket, Key="f")["Metadata"].get("mode", 0)) != (
        stat.S_IFREG | 0o612)
    kill_daemon(crashable)
    crashable.start()
    meta = s3_client.head_object(Bucket=bucket, Key="f")["Metadata"]
    assert int(meta["mode"]) == stat.S_IFREG | 0o612
    assert (meta["uid"], meta["gid"]) == ("4321", "8765")
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o612, 4321, 8765)
    assert not list((crashable.cache_dir / "attrs").glob("*.json"))


def test_their_put_before_our_copy_is_never_shown_under_our_old_view(proxy, make_mount,
                                                                     s3_client, bucket):
    """The copy names the version the chmod applied to; theirs, written between, refuses it:
    the chmod goes onto their version once (as attrs.py does), their size and bytes are shown
    once the kernel's cached attributes expire (half the TTL)."""
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"v1")
    m = make_mount(bucket, "--metadata-ttl", "2", endpoint=proxy.endpoint)
    path = m.path / "f"
    assert os.stat(path).st_size == 2
    theirs = b"their version, longer"
    proxy.check = writer = SecondWriter(s3_client, bucket, "f", [theirs])
    os.chmod(path, 0o600)
    fsync(path)  # or the delay's copy, whichever comes first
    wait_for(lambda: settled(m))
    proxy.check = None
    assert writer.copies == 2 and writer.refused == 1
    obj = s3_client.get_object(Bucket=bucket, Key="f")
    assert obj["Body"].read() == theirs
    assert changed_in(obj["Metadata"], "chmod")
    assert status(m)["metadata_pending"]["conflicts"] == 1
    wait_for(lambda: os.stat(path).st_size == len(theirs))
    assert path.read_bytes() == theirs


def test_object_that_keeps_changing_fails_fsync_with_estale(proxy, make_mount, s3_client,
                                                            bucket):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"v1")
    m = make_mount(bucket, "--metadata-ttl", "600", endpoint=proxy.endpoint)
    m.expect("attribute change was not stored", count=1)
    m.expect("fsync: COPY f -> f: PreconditionFailed", count=1)
    path = m.path / "f"
    assert os.stat(path).st_size == 2
    proxy.check = writer = SecondWriter(s3_client, bucket, "f", [b"second", b"third one"])
    os.chmod(path, 0o600)
    with pytest.raises(OSError) as exc:
        fsync(path)
    proxy.check = None
    assert exc.value.errno == errno.ESTALE
    assert writer.copies == 2 and writer.refused == 2
    obj = s3_client.get_object(Bucket=bucket, Key="f")
    assert obj["Body"].read() == b"third one"
    assert not changed_in(obj["Metadata"], "chmod")  # their object is left as it is
    assert status(m)["metadata_pending"] == {"files": 0, "sent": 0, "conflicts": 1}


def test_copy_without_answer_stays_journaled_and_is_sent_later(proxy, make_mount, s3_client,
                                                               bucket):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"data")
    m = make_mount(bucket, *QUICK, "--metadata-ttl", "600", endpoint=proxy.endpoint)
    m.expect("could not be stored yet", count=1)
    m.expect("fsync: ", count=1)
    path = m.path / "f"
    assert os.stat(path).st_size == 4
    os.chmod(path, 0o604)
    proxy.check = lambda method, url, headers: (
        (503, "SlowDown") if headers.get("x-amz-copy-source") else None)
    with pytest.raises(OSError) as exc:
        fsync(path)
    proxy.check = None
    assert exc.value.errno == errno.EIO
    assert status(m)["metadata_pending"]["files"] == 1  # still pending, its record kept
    assert len(list((m.cache_dir / "attrs").glob("*.json"))) == 1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o604
    fsync(path)
    meta = s3_client.head_object(Bucket=bucket, Key="f")["Metadata"]
    assert int(meta["mode"]) == stat.S_IFREG | 0o604
    assert not list((m.cache_dir / "attrs").glob("*.json"))
