"""--write-back[=DELAY]: close(2) returns with the file staged and journaled, and the upload comes
DELAY seconds later in the background; fsync(2) is still durable at once; unmount and SIGTERM
upload the whole backlog; a crash loses nothing; an attribute change before the upload rides in
the same PUT; a conflict met in the background is told by the log and `s3mount status`."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request

from helpers import (
    Mount,
    bucket_objects,
    check_log,
    close_quietly,
    daemon_pid,
    free_port,
    is_mounted,
    metric,
    test_env,
)
from test_crash import kill_daemon
from test_faults import QUICK

CONFLICT = "was changed in the bucket by another client"  # files.py, as in the default mode
BACKGROUND_CONFLICT = "background upload met a change by another client"  # writeback.py


def status(m: Mount) -> dict:
    out = subprocess.run([sys.executable, "-m", "s3mount", "status", "--json", str(m.path)],
                         capture_output=True, text=True, env=test_env(), check=True).stdout
    return dict(json.loads(out))


def keys(client, bucket: str) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def wait_for(condition, timeout: float = 90.0):  # type: ignore[no-untyped-def]
    """Poll until `condition()` is true (its value is returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def wait_exit(pid: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"daemon {pid} did not exit"
        time.sleep(0.05)


def test_close_returns_before_the_upload_which_follows_the_delay(make_mount, s3_client,
                                                                 bucket):
    delay = 6.0
    port = free_port()
    m = make_mount(bucket, f"--write-back={delay:g}", "--metrics-port", str(port))
    data = os.urandom(100_000)
    with open(m.path / "a.bin", "wb") as f:
        f.write(data)
    closed = time.monotonic()
    assert "a.bin" not in keys(s3_client, bucket)  # close(2) returned before any upload
    assert (m.path / "a.bin").read_bytes() == data  # the mount serves it from staging
    backlog = status(m)["writeback"]
    assert backlog["files"] == 1 and backlog["bytes"] == len(data), backlog
    assert backlog["delay"] == delay
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    assert metric(metrics.decode(), "s3mount_writeback_files") == 1
    assert list((m.cache_dir / "staging").glob("*.json")), "journaled"
    wait_for(lambda: "a.bin" in keys(s3_client, bucket))
    assert time.monotonic() - closed >= delay - 0.5  # not before the delay
    assert s3_client.get_object(Bucket=bucket, Key="a.bin")["Body"].read() == data
    wait_for(lambda: status(m)["writeback"]["files"] == 0)
    assert not list((m.cache_dir / "staging").glob("*.json"))  # journal gone once uploaded
    m.remount()
    assert (m.path / "a.bin").read_bytes() == data


def test_default_mode_has_no_backlog_and_uploads_at_close(make_mount, s3_client, bucket):
    m = make_mount(bucket)
    (m.path / "f").write_bytes(b"at close")
    assert bucket_objects(s3_client, bucket) == {"f": b"at close"}
    assert "writeback" not in status(m)


def test_fsync_is_durable_at_once(make_mount, s3_client, bucket):
    m = make_mount(bucket, "-o", "write_back=600")
    with open(m.path / "synced.txt", "wb") as f:
        f.write(b"fsynced bytes")
        f.flush()
        assert "synced.txt" not in keys(s3_client, bucket)
        os.fsync(f.fileno())
        assert bucket_objects(s3_client, bucket) == {"synced.txt": b"fsynced bytes"}
    (m.path / "later.txt").write_bytes(b"queued")
    assert "later.txt" not in keys(s3_client, bucket)
    with open(m.path / "later.txt", "rb") as f:  # fsync on a reader's handle commits too
        os.fsync(f.fileno())
    assert bucket_objects(s3_client, bucket) == {"synced.txt": b"fsynced bytes",
                                                 "later.txt": b"queued"}
    wait_for(lambda: status(m)["writeback"]["files"] == 0)


def test_unmount_drains_the_backlog(make_mount, s3_client, bucket):
    m = make_mount(bucket, "--write-back=600")
    expected = {}
    (m.path / "d").mkdir()
    for i in range(20):
        body = os.urandom(1000 + i)
        (m.path / "d" / f"f{i:02d}").write_bytes(body)
        expected[f"d/f{i:02d}"] = body
    big = os.urandom(20 * 1024 * 1024)  # a multipart upload in the backlog too
    (m.path / "big.bin").write_bytes(big)
    expected["big.bin"] = big
    os.chmod(m.path / "d" / "f00", 0o600)
    assert keys(s3_client, bucket) <= {"d/"}  # nothing uploaded yet but the directory
    time.sleep(1.5)
    backlog = status(m)["writeback"]
    assert backlog["files"] == 21 and backlog["bytes"] >= len(big), backlog
    assert backlog["oldest_age"] >= 1.5, backlog
    m.stop()
    assert not is_mounted(m.path)
    objects = bucket_objects(s3_client, bucket)
    assert {k: v for k, v in objects.items() if k != "d/"} == expected
    mode = s3_client.head_object(Bucket=bucket, Key="d/f00")["Metadata"]["mode"]
    assert int(mode) == stat.S_IFREG | 0o600
    assert "write-back: uploading 21 queued files now" in m.log_text()
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    m.start()
    assert (m.path / "big.bin").read_bytes() == big
    assert (m.path / "d" / "f19").read_bytes() == expected["d/f19"]


def test_sigterm_drains_the_backlog(make_mount, s3_client, bucket):
    m = make_mount(bucket, "--write-back=600")
    pid = daemon_pid(m)
    expected = {f"f{i}": os.urandom(5000) for i in range(5)}
    for name, body in expected.items():
        (m.path / name).write_bytes(body)
    assert keys(s3_client, bucket) == set()
    os.kill(pid, signal.SIGTERM)
    wait_exit(pid)
    assert not is_mounted(m.path)
    assert bucket_objects(s3_client, bucket) == expected


def test_crash_with_a_backlog_loses_nothing(s3_server, s3_client, bucket, tmp_path):
    s3_client.put_object(Bucket=bucket, Key="old.txt", Body=b"old version, long enough")
    m = Mount(s3_server.endpoint, bucket, tmp_path / "mnt", tmp_path / "cache",
              ["--write-back=600"])
    m.start()
    m.pid = daemon_pid(m)  # type: ignore[attr-defined]  # before any file is open
    try:
        expected = {f"new{i}": os.urandom(3000 + i) for i in range(10)}
        for name, body in expected.items():
            (m.path / name).write_bytes(body)
        with open(m.path / "old.txt", "r+b") as f:
            f.write(b"NEW")
        expected["old.txt"] = b"NEW version, long enough"
        os.chmod(m.path / "new0", 0o640)
        fd = os.open(m.path / "new1", os.O_RDONLY)  # one still open at the crash
        assert bucket_objects(s3_client, bucket) == {"old.txt": b"old version, long enough"}
        kill_daemon(m)
        close_quietly(fd)
        assert bucket_objects(s3_client, bucket) == {"old.txt": b"old version, long enough"}
        m.start()  # recovery finishes every upload before the mount serves
        assert bucket_objects(s3_client, bucket) == expected
        mode = s3_client.head_object(Bucket=bucket, Key="new0")["Metadata"]["mode"]
        assert int(mode) == stat.S_IFREG | 0o640
        assert m.log_text().count("finished the interrupted upload of") >= 11
        assert not list((m.cache_dir / "staging").glob("*.json"))
        assert (m.path / "new9").read_bytes() == expected["new9"]
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
        m.stop()
    failures = check_log(m)
    assert not failures, failures


def test_attribute_changes_before_the_upload_ride_in_its_put(make_mount, s3_client, bucket):
    m = make_mount(bucket, "--write-back=3")
    before = status(m)["s3"]["by_kind"]
    with open(m.path / "tarred", "wb") as f:  # as tar does: close, then times, owner, mode
        f.write(b"extracted")
    os.utime(m.path / "tarred", ns=(1_500_000_000_123_456_789, 1_500_000_000_123_456_789))
    os.chown(m.path / "tarred", 1234, 5678)
    os.chmod(m.path / "tarred", 0o751)
    wait_for(lambda: "tarred" in keys(s3_client, bucket))
    wait_for(lambda: status(m)["writeback"]["files"] == 0)
    after = status(m)["s3"]["by_kind"]
    assert after.get("PUT", 0) - before.get("PUT", 0) == 1, (before, after)
    assert after.get("COPY", 0) - before.get("COPY", 0) == 0, (before, after)
    head = s3_client.head_object(Bucket=bucket, Key="tarred")
    assert int(head["Metadata"]["mode"]) == stat.S_IFREG | 0o751
    assert (head["Metadata"]["uid"], head["Metadata"]["gid"]) == ("1234", "5678")
    assert head["Metadata"]["mtime"].startswith("1500000000.123456789")
    assert s3_client.get_object(Bucket=bucket, Key="tarred")["Body"].read() == b"extracted"
    m.remount()
    st = os.stat(m.path / "tarred")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o751, 1234, 5678)
    assert st.st_mtime_ns == 1_500_000_000_123_456_789


def test_conflict_in_the_background_is_logged_and_shown(make_mount, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="doc.txt", Body=b"v1")
    m = make_mount(bucket, "--write-back=8")
    m.expect(CONFLICT, count=2)
    m.expect(BACKGROUND_CONFLICT, count=2)
    with open(m.path / "doc.txt", "r+b") as f:
        f.write(b"ours")
    (m.path / "new.txt").write_bytes(b"our new file")
    # Another client writes both during the delay; close(2) above returned without error.
    s3_client.put_object(Bucket=bucket, Key="doc.txt", Body=b"theirs")
    s3_client.put_object(Bucket=bucket, Key="new.txt", Body=b"their new file")
    shown = wait_for(lambda: (lambda w: w if w["conflicts"] == 2 else None)(
        status(m)["writeback"]))
    assert "doc.txt" in shown["last_conflict"] or "new.txt" in shown["last_conflict"]
    assert shown["files"] == 0
    objects = bucket_objects(s3_client, bucket)
    assert objects["doc.txt"] == b"theirs" and objects["new.txt"] == b"their new file"
    kept = {k.split(".s3mount-conflict-")[0]: v for k, v in objects.items()
            if ".s3mount-conflict-" in k}
    assert kept == {"doc.txt": b"ours", "new.txt": b"our new file"}  # no byte lost
    text = subprocess.run([sys.executable, "-m", "s3mount", "status", str(m.path)],
                          capture_output=True, text=True, env=test_env(), check=True).stdout
    assert "write-back: 0 files" in text and "2 conflicts" in text
    wait_for(lambda: (m.path / "doc.txt").read_bytes() == b"theirs", timeout=30)


def test_rename_of_a_queued_file_costs_one_put(make_mount, s3_client, bucket):
    """rsync's pattern (write a temporary name, close, rename over the target): the upload
    waiting goes under the final name, and a queued target it replaces is never uploaded."""
    m = make_mount(bucket, "--write-back=8")
    before = status(m)["s3"]["by_kind"]
    (m.path / "final").write_bytes(b"first, replaced before its upload")
    (m.path / ".final.tmp").write_bytes(b"second")
    os.rename(m.path / ".final.tmp", m.path / "final")
    assert status(m)["writeback"]["files"] == 1
    assert (m.path / "final").read_bytes() == b"second"
    wait_for(lambda: "final" in keys(s3_client, bucket))
    wait_for(lambda: status(m)["writeback"]["files"] == 0)
    after = status(m)["s3"]["by_kind"]
    assert bucket_objects(s3_client, bucket) == {"final": b"second"}
    assert after.get("PUT", 0) - before.get("PUT", 0) == 1, (before, after)
    for kind in ("COPY", "DELETE"):
        assert after.get(kind, 0) == before.get(kind, 0), (before, after)
    assert not list((m.cache_dir / "staging").glob("*.json"))  # the replaced one's too
    m.remount()
    assert os.listdir(m.path) == ["final"]


def test_a_failed_background_upload_is_logged_and_retried(proxy, make_mount, s3_client, bucket):
    m = make_mount(bucket, *QUICK, "--write-back=1", endpoint=proxy.endpoint)
    m.expect("its background upload failed", count=1)
    m.expect("still cannot upload f.bin", at_least=0)  # if the endpoint is still down
    data = os.urandom(50_000)
    f = open(m.path / "f.bin", "wb")  # noqa: SIM115 - closed with the endpoint down
    f.write(data)
    proxy.down()
    f.close()  # no error: the upload has not been tried yet
    wait_for(lambda: "its background upload failed" in m.log_text())
    assert "f.bin" not in keys(s3_client, bucket)
    assert list((m.cache_dir / "staging").glob("*.json"))  # still journaled
    proxy.up()
    wait_for(lambda: "f.bin" in keys(s3_client, bucket))
    assert s3_client.get_object(Bucket=bucket, Key="f.bin")["Body"].read() == data
    wait_for(lambda: "uploaded f.bin after an earlier failure" in m.log_text())
    proxy.clear()


def test_a_backlog_past_half_the_cache_budget_uploads_at_once(make_mount, s3_client, bucket):
    m = make_mount(bucket, "--write-back=600", "--cache-size", "64M")
    bodies = {f"f{i}": os.urandom(8 * 1024 * 1024) for i in range(5)}  # 40 MiB > 32 MiB
    for name, body in bodies.items():
        (m.path / name).write_bytes(body)
    wait_for(lambda: keys(s3_client, bucket) == set(bodies))  # long before the 600 s
    wait_for(lambda: status(m)["writeback"]["files"] == 0)
    assert bucket_objects(s3_client, bucket) == bodies
