"""Mount options as users pass them: a prefix, read-only, default owners and modes, `-o` lists,
foreground mode and SIGTERM."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import time

import pytest
from helpers import Mount, bucket_objects, is_mounted, log_failures, problem_lines, test_env


def test_prefix_mount(make_mount, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="outside.txt", Body=b"no")
    s3_client.put_object(Bucket=bucket, Key="team/a/inside.txt", Body=b"yes")
    m = make_mount(f"{bucket}:team/a")
    assert os.listdir(m.path) == ["inside.txt"]
    (m.path / "new").mkdir()
    (m.path / "new/f.txt").write_text("f")
    keys = set(bucket_objects(s3_client, bucket))
    assert {"team/a/new/", "team/a/new/f.txt", "outside.txt"} <= keys
    m.remount()
    assert (m.path / "new/f.txt").read_text() == "f"


def test_read_only(make_mount, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="f.txt", Body=b"data")
    m = make_mount(bucket, "--read-only")
    assert (m.path / "f.txt").read_bytes() == b"data"
    for action in (lambda: (m.path / "g").write_text("x"),
                   lambda: (m.path / "d").mkdir(),
                   lambda: (m.path / "f.txt").unlink(),
                   lambda: os.chmod(m.path / "f.txt", 0o600),
                   lambda: open(m.path / "f.txt", "r+b")):
        with pytest.raises(OSError) as exc:
            action()
        assert exc.value.errno == errno.EROFS
    assert bucket_objects(s3_client, bucket) == {"f.txt": b"data"}


def test_defaults_for_objects_without_metadata(make_mount, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="plain", Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="dir/inner", Body=b"y")
    m = make_mount(bucket, "-o", "uid=4321,gid=8765,file_mode=600,dir_mode=700,_netdev")
    st = os.stat(m.path / "plain")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 8765, 0o600)
    st = os.stat(m.path / "dir")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700


def test_foreground_sigterm_uploads_open_dirty_file(s3_server, s3_client, bucket, tmp_path):
    m = Mount(s3_server.endpoint, bucket, tmp_path / "fg", tmp_path / "fg-cache", ["-f"])
    m.path.mkdir()
    proc = subprocess.Popen(m.command(), env=test_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(m.path):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        f = open(m.path / "open.txt", "wb")  # noqa: SIM115 - held open across the stop
        f.write(b"written, not closed")
        f.flush()  # in the kernel now: no close yet
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert not is_mounted(m.path)
        assert bucket_objects(s3_client, bucket) == {"open.txt": b"written, not closed"}
        assert not log_failures(problem_lines(proc.stderr.read()), [])
        try:
            f.close()
        except OSError:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)


def test_umount_as_root(make_mount, s3_client, bucket):
    m = make_mount(bucket)
    (m.path / "f").write_text("before umount")
    subprocess.run(["umount", str(m.path)], check=True)
    assert not is_mounted(m.path)
    assert bucket_objects(s3_client, bucket) == {"f": b"before umount"}


def read_ahead_kb(path) -> int:
    dev = os.stat(path).st_dev
    with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb") as f:
        return int(f.read())


def test_kernel_readahead_is_raised_and_reads_stay_exact(make_mount, s3_client, bucket):
    data = os.urandom(9 * 1024 * 1024 + 123)
    s3_client.put_object(Bucket=bucket, Key="big", Body=data)
    m = make_mount(bucket)
    assert read_ahead_kb(m.path) == 4096  # the default, as root
    assert (m.path / "big").read_bytes() == data
    with open(m.path / "big", "rb") as f:  # a reader that jumps about still gets its bytes
        for offset in (5_000_000, 17, 9 * 1024 * 1024, 1_048_575):
            f.seek(offset)
            assert f.read(70_000) == data[offset:offset + 70_000]
    other = make_mount(bucket, "-o", "kernel_readahead=1M", name="other")
    assert read_ahead_kb(other.path) == 1024
    kept = make_mount(bucket, "--kernel-readahead", "0", name="kept")
    assert read_ahead_kb(kept.path) not in (1024, 4096)  # the kernel's own choice
