"""Running on servers, through the kernel: the systemd unit's command line with a test socket
standing in for systemd's, `s3mount status` and the metrics endpoint, mount(8) and fstab, a
restart after a crash, and a stop during a 500 MiB write."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    Mount,
    check_log,
    free_port,
    is_mounted,
    metric,
    prerequisite,
    test_env,
)

from s3mount import status
from s3mount.mounttable import find_mount

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "s3mount@.service"
S3MOUNT_PROGRAM = Path(sys.executable).parent / "s3mount"
MIB = 1024 * 1024


class NotifySocket:
    """A datagram socket in the abstract namespace, standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.name = f"s3mount-test-notify-{os.getpid()}-{time.monotonic_ns()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name.encode())
        self.messages: list[dict[str, str]] = []

    @property
    def address(self) -> str:
        return "@" + self.name

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        message = dict(line.partition("=")[::2] for line in data.decode().splitlines())
        self.messages.append(message)
        return message

    def drain(self, until: float) -> None:
        while time.monotonic() < until and self.receive(max(0.01, until - time.monotonic())):
            pass

    def close(self) -> None:
        self.sock.close()


def unit_command(conf: Path) -> list[str]:
    """The unit's ExecStart, with this checkout's s3mount and a test config file."""
    for line in UNIT.read_text().splitlines():
        if line.startswith("ExecStart="):
            words = shlex.split(line.partition("=")[2])
            break
    else:
        raise AssertionError("no ExecStart in the unit")
    assert words[0] == "@S3MOUNT@"
    return [sys.executable, "-m", "s3mount",
            *(str(conf) if w == "/etc/s3mount/%i.conf" else w for w in words[1:])]


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def notify_socket():
    sock = NotifySocket()
    yield sock
    sock.close()


@pytest.fixture
def foreground(tmp_path):
    """Start `s3mount` in the foreground as the unit does; stops whatever is left afterwards."""
    procs: list[tuple[subprocess.Popen, Path]] = []

    def start(command: list[str], path: Path, env: dict[str, str], **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        proc = subprocess.Popen(command, env=env, **kwargs)
        procs.append((proc, path))
        return proc

    yield start
    for proc, path in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if is_mounted(path):
            subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


def write_conf(tmp_path: Path, endpoint: str, bucket: str, mnt: Path, *extra: str) -> Path:
    conf = tmp_path / "unit.conf"
    conf.write_text("\n".join([
        "# as /etc/s3mount/NAME.conf", f"bucket = {bucket}", f"mountpoint = {mnt}",
        f"endpoint-url = {endpoint}", f"cache-dir = {tmp_path / 'cache'}", "log-level = debug",
        *extra]) + "\n")
    return conf


def test_unit_command_line_ready_only_once_mounted(s3_server, s3_client, bucket, tmp_path,
                                                   notify_socket, foreground):
    """ExecStart of s3mount@.service, with NOTIFY_SOCKET and JOURNAL_STREAM as systemd sets
    them: READY=1 comes once the mount answers, STATUS= says what it serves, SIGTERM brings
    STOPPING=1, and the log lines carry journald priorities."""
    s3_client.put_object(Bucket=bucket, Key="hello.txt", Body=b"hi")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    conf = write_conf(tmp_path, s3_server.endpoint, bucket, mnt)
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    env = {**test_env(), "NOTIFY_SOCKET": notify_socket.address,
           "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    started = time.monotonic()
    proc = foreground(unit_command(conf), mnt, env, stderr=write_end)
    os.close(write_end)
    first = notify_socket.receive(60)
    # At the moment READY=1 arrives the mount is listed and answers.
    mounted_then = is_mounted(mnt)
    listing_then = os.listdir(mnt)
    assert first is not None, "no READY=1 within 60 s"
    assert first.get("READY") == "1", first
    assert mounted_then and listing_then == ["hello.txt"]
    assert first["STATUS"] == f"Mounted s3://{bucket} on {mnt}"
    assert first["MAINPID"] == str(proc.pid)
    assert time.monotonic() - started < 60

    (mnt / "new.txt").write_text("written under the unit")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    notify_socket.drain(time.monotonic() + 0.5)
    assert any(m.get("STOPPING") == "1" for m in notify_socket.messages)
    assert notify_socket.messages[-1]["STATUS"] == f"Unmounted {mnt}"
    assert not is_mounted(mnt)
    with os.fdopen(read_end) as pipe:
        log = pipe.read().splitlines()
    assert f"<6>INFO s3mount.mount: mounted s3://{bucket} on {mnt}" in log
    assert all(re.match(r"<[0-7]>", line) for line in log), log[:5]
    assert not [line for line in log if line.startswith(("<3>", "<4>", "<2>"))], log
    assert s3_client.get_object(Bucket=bucket, Key="new.txt")["Body"].read() == \
        b"written under the unit"


def test_no_ready_when_the_mount_fails(s3_server, tmp_path, notify_socket, foreground):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    conf = write_conf(tmp_path, s3_server.endpoint, "no-such-bucket", mnt)
    env = {**test_env(), "NOTIFY_SOCKET": notify_socket.address}
    proc = foreground(unit_command(conf), mnt, env, stderr=subprocess.PIPE, text=True)
    assert proc.wait(60) == 1
    assert "does not exist" in proc.stderr.read()
    assert notify_socket.receive(0.5) is None


def test_status_command_and_metrics(make_mount, s3_client, bucket, tmp_path):
    port = free_port()
    m = make_mount(bucket, "--metrics-port", str(port))
    (m.path / "a.bin").write_bytes(os.urandom(3 * MIB))
    for _ in range(2):
        assert len((m.path / "a.bin").read_bytes()) == 3 * MIB
    result = subprocess.run([sys.executable, "-m", "s3mount", "status", str(m.path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"{m.path}: s3://{bucket} at {m.endpoint}" in text
    assert "state:      running" in text and "files:      0 dirty (0 B), 0 open" in text
    assert "hit rate" in text and "errors:     0" in text
    result = subprocess.run([sys.executable, "-m", "s3mount", "status", "--json", str(m.path)],
                            capture_output=True, text=True, timeout=30)
    snap = json.loads(result.stdout)
    assert snap["s3"]["requests"] > 0 and snap["s3"]["by_kind"]["PUT"] >= 1
    assert snap["s3"]["bytes_out"] >= 3 * MIB and snap["s3"]["errors"] == 0
    assert snap["cache"]["hits"] > 0 and snap["cache"]["used_bytes"] > 0
    assert 0 < snap["cache"]["hit_rate"] <= 1
    everything = subprocess.run([sys.executable, "-m", "s3mount", "status"],
                                capture_output=True, text=True, timeout=60)
    assert f"{m.path}: s3://{bucket}" in everything.stdout

    # Every close of a descriptor flushes (and commits) a FUSE file, including the copy a
    # fork + exec closes: while the file is held dirty, ask in-process, without forking.
    held = open(m.path / "dirty.txt", "wb")  # noqa: SIM115 - written, not closed: dirty
    try:
        held.write(b"x" * 1000)
        held.flush()
        snap = status.query(str(m.path))
        assert snap["files"]["dirty"] == 1 and snap["files"]["dirty_bytes"] == 1000
        assert snap["files"]["open"] == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            metrics = r.read().decode()
        assert metric(metrics, "s3mount_dirty_files", bucket=bucket, mountpoint=str(m.path)) == 1
        assert 's3mount_requests_total{' in metrics
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        assert exc.value.code == 404
    finally:
        held.close()
    assert s3_client.get_object(Bucket=bucket, Key="dirty.txt")["Body"].read() == b"x" * 1000


def test_status_refuses_a_plain_directory(tmp_path):
    result = subprocess.run([sys.executable, "-m", "s3mount", "status", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip() == f"s3mount status: {tmp_path} is not an s3mount mount point"


def test_restart_after_a_crash_takes_the_dead_mount_down(s3_server, s3_client, bucket,
                                                         tmp_path, foreground):
    """Restart=on-failure after SIGKILL: the dead mount (ENOTCONN) must not block the start."""
    m = Mount(s3_server.endpoint, bucket, tmp_path / "mnt", tmp_path / "cache", ["-f"])
    m.path.mkdir()
    proc = foreground(m.command(), m.path, test_env())
    wait_for(lambda: is_mounted(m.path) and os.path.exists(m.path / "."), 30, "the mount")
    proc.kill()
    proc.wait(10)
    with pytest.raises(OSError):
        os.listdir(m.path)  # the kernel still holds the mount; its daemon is gone
    again = Mount(s3_server.endpoint, bucket, m.path, tmp_path / "cache")
    again.start()
    try:
        (again.path / "after.txt").write_text("back")
        assert s3_client.get_object(Bucket=bucket, Key="after.txt")["Body"].read() == b"back"
    finally:
        again.stop()
    assert not check_log(again)


# -- mount(8) and fstab ------------------------------------------------------------------------

HELPER = Path("/sbin/mount.fuse.s3mount")


@pytest.fixture
def mount_helper():
    """/sbin/mount.fuse.s3mount -> this venv's s3mount, as scripts/install-systemd makes it."""
    if os.geteuid() != 0:
        prerequisite("root", "mount(8) of a FUSE type needs root here")
    if not S3MOUNT_PROGRAM.exists():
        pytest.skip(f"{S3MOUNT_PROGRAM} is not installed")
    made = False
    if not HELPER.exists():
        HELPER.symlink_to(S3MOUNT_PROGRAM)
        made = True
    elif HELPER.resolve() != S3MOUNT_PROGRAM.resolve():
        pytest.skip(f"{HELPER} belongs to another s3mount")
    yield HELPER
    if made:
        HELPER.unlink()


def mount_env() -> dict[str, str]:
    env = test_env()
    env["PATH"] = f"{S3MOUNT_PROGRAM.parent}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def umount_and_wait(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=True, capture_output=True, timeout=60)
    wait_for(lambda: not is_mounted(path), 30, "the unmount")


def check_mount_works(path: Path, s3_client, bucket: str, name: str) -> None:  # type: ignore[no-untyped-def]
    assert is_mounted(path)
    (path / name).write_text(f"through {name}")
    assert s3_client.get_object(Bucket=bucket, Key=name)["Body"].read() == \
        f"through {name}".encode()
    entry = find_mount(str(path))
    assert entry is not None
    assert entry.source == f"s3mount:{bucket}" and entry.fstype == "fuse.s3mount"


def test_mount_t_fuse_s3mount(s3_server, s3_client, bucket, tmp_path, mount_helper):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    options = (f"_netdev,rw,nofail,x-systemd.automount,endpoint_url={s3_server.endpoint},"
               f"cache_dir={tmp_path / 'cache'}")
    result = subprocess.run(["mount", "-t", "fuse.s3mount", bucket, str(mnt), "-o", options],
                            env=mount_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    try:
        check_mount_works(mnt, s3_client, bucket, "by-mount-t.txt")
    finally:
        umount_and_wait(mnt)


def test_fstab_line(s3_server, s3_client, bucket, tmp_path, mount_helper):
    """`mount /mnt/x` with the line in fstab (here a private fstab given with -T)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    conf = tmp_path / "x.conf"
    conf.write_text(f"endpoint-url = {s3_server.endpoint}\ncache-dir = {tmp_path / 'cache'}\n")
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{bucket}:sub  {mnt}  fuse.s3mount  _netdev,noauto,"
                     f"x-systemd.idle-timeout=60,config={conf}  0 0\n")
    result = subprocess.run(["mount", "-T", str(fstab), str(mnt)], env=mount_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    try:
        assert is_mounted(mnt)
        (mnt / "f.txt").write_text("prefixed")
        assert s3_client.get_object(Bucket=bucket, Key="sub/f.txt")["Body"].read() == b"prefixed"
    finally:
        umount_and_wait(mnt)


def test_mount_fuse3_runs_s3mount_from_path(s3_server, s3_client, bucket, tmp_path):
    """Without our helper, Debian's mount.fuse3 runs `s3mount SOURCE DIR -o OPTS,dev,suid`."""
    if os.geteuid() != 0:
        prerequisite("root", "needs root")
    if not Path("/sbin/mount.fuse3").exists() or not S3MOUNT_PROGRAM.exists():
        pytest.skip("mount.fuse3 (Debian's fuse3) or the venv's s3mount is missing")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    options = f"_netdev,endpoint_url={s3_server.endpoint},cache_dir={tmp_path / 'cache'}"
    result = subprocess.run(["/sbin/mount.fuse3", bucket, str(mnt), "-o", options, "-t",
                             "fuse.s3mount"], env=mount_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    try:
        check_mount_works(mnt, s3_client, bucket, "by-mount-fuse3.txt")
    finally:
        umount_and_wait(mnt)


# -- a stop during a large write ---------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_during_500_mib_write_uploads_it_all(s3_server, s3_client, bucket, tmp_path,
                                                    notify_socket, foreground):
    """The file is held open while 500 MiB are written; SIGTERM comes before close.  Every byte
    must be in the bucket, and the stop reports its progress in STATUS= and the log."""
    size = 500 * MIB
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    conf = write_conf(tmp_path, s3_server.endpoint, bucket, mnt)
    env = {**test_env(), "NOTIFY_SOCKET": notify_socket.address}
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log_file:
        proc = foreground(unit_command(conf), mnt, env, stderr=log_file)
    ready = notify_socket.receive(60)
    assert ready is not None and ready.get("READY") == "1"
    digest = hashlib.sha256()
    rng = random.Random(500)
    chunk = 8 * MIB
    started = time.monotonic()
    f = open(mnt / "big.bin", "wb", buffering=0)  # noqa: SIM115 - held open across the stop
    try:
        for _ in range(size // chunk + 1):
            data = rng.randbytes(min(chunk, size - f.tell()))
            if not data:
                break
            digest.update(data)
            f.write(data)
        assert f.tell() == size
        written = time.monotonic() - started
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(600) == 0
    finally:
        try:
            f.close()
        except OSError:
            pass  # the mount is gone: close has nothing to say
    stopped = time.monotonic() - started - written
    notify_socket.drain(time.monotonic() + 0.5)
    head = s3_client.head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == size
    body = s3_client.get_object(Bucket=bucket, Key="big.bin")["Body"]
    in_bucket = hashlib.sha256()
    for part in iter(lambda: body.read(chunk), b""):
        in_bucket.update(part)
    assert in_bucket.hexdigest() == digest.hexdigest()
    statuses = [m["STATUS"] for m in notify_socket.messages if "STATUS" in m]
    # Parts may have gone up while the file was written: what is left at the stop is less.
    progress = [s for s in statuses if re.fullmatch(r"Stopping: uploading 1 file, "
                                                    r"[\d.]+ (B|KiB|MiB) left", s)]
    assert progress, statuses
    assert any(m.get("STOPPING") == "1" for m in notify_socket.messages)
    log = log_path.read_text()
    assert re.search(r"uploading 1 dirty files \([\d.]+ (B|KiB|MiB)\) before unmounting", log)
    assert "uploads done: 1 of 1 files uploaded" in log
    print(f"wrote 500 MiB in {written:.1f} s, stop took {stopped:.1f} s; "
          f"STATUS lines: {statuses}")
