"""The command line's start-up checks, run as a user runs them: `python -m s3mount ...`.

Every start-up problem must be a non-zero exit with exactly one clear line on stderr and no
traceback.  A successful background mount must return only once the mount answers, and
`fusermount3 -u` must end the daemon.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import Mount, free_port, is_mounted, one_line_error, run_cli, test_env

QUICK = 15.0  # seconds a start-up failure may take at most





@pytest.fixture
def cli_args(s3_server, tmp_path):
    """Common arguments: the moto endpoint and a private cache directory."""
    return ["--endpoint-url", s3_server.endpoint, "--cache-dir", str(tmp_path / "cache")]


# -- local checks ------------------------------------------------------------------------------


def test_mount_point_missing(cli_args, bucket, tmp_path):
    line = one_line_error(run_cli(*cli_args, bucket, str(tmp_path / "nowhere")), status=1)
    assert "does not exist" in line and "nowhere" in line


def test_mount_point_is_a_file(cli_args, bucket, tmp_path):
    (tmp_path / "file").write_text("x")
    line = one_line_error(run_cli(*cli_args, bucket, str(tmp_path / "file")), status=1)
    assert "not a directory" in line


@pytest.mark.parametrize(("args", "needle"), [
    (["--file-mode", "999"], "octal"),
    (["--dir-mode", "abc"], "octal"),
    (["--addressing-style", "foo"], "foo"),
    (["-o", "nosuchoption"], "nosuchoption"),
    (["-o", "ro,file_mode=999"], "octal"),
    (["-o", "addressing_style=foo"], "foo"),
    (["--max-concurrency", "0"], "max-concurrency"),
    (["--no-such-flag"], "no-such-flag"),
])
def test_bad_option_values(cli_args, bucket, mountpoint, args, needle):
    line = one_line_error(run_cli(*cli_args, *args, bucket, str(mountpoint)), status=2)
    assert needle in line


@pytest.mark.parametrize("source", ["bad bucket!", "a", "_under", "ok-bucket:a//b"])
def test_bad_bucket_name(cli_args, mountpoint, source):
    line = one_line_error(run_cli(*cli_args, source, str(mountpoint)), status=2)
    assert "bucket" in line or "prefix" in line


def test_missing_arguments(cli_args):
    one_line_error(run_cli(*cli_args), status=2)


# -- checks against the endpoint ---------------------------------------------------------------


def test_bucket_missing(cli_args, mountpoint):
    line = one_line_error(run_cli(*cli_args, "no-such-bucket", str(mountpoint)), status=1)
    assert "no-such-bucket" in line and "does not exist" in line
    assert not is_mounted(mountpoint)


def test_endpoint_unreachable(tmp_path, mountpoint):
    port = free_port()  # nothing listens there once the probe socket is closed
    started = time.monotonic()
    result = run_cli("--endpoint-url", f"http://127.0.0.1:{port}", "--cache-dir",
                     str(tmp_path / "cache"), "bkt", str(mountpoint), timeout=120)
    elapsed = time.monotonic() - started
    line = one_line_error(result, status=1)
    assert "cannot reach" in line and str(port) in line
    assert elapsed < QUICK, f"took {elapsed:.1f}s to report an unreachable endpoint"


def test_no_credentials(cli_args, bucket, mountpoint, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "no-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1",
               HOME=str(tmp_path))
    started = time.monotonic()
    line = one_line_error(run_cli(*cli_args, bucket, str(mountpoint), env=env), status=1)
    assert "credentials" in line
    assert time.monotonic() - started < QUICK
    assert not is_mounted(mountpoint)


def test_profile_not_found(cli_args, bucket, mountpoint):
    line = one_line_error(run_cli(*cli_args, "--profile", "nosuchprofile", bucket,
                                  str(mountpoint)), status=1)
    assert "nosuchprofile" in line


class StubS3:
    """An HTTP server on loopback that answers every request with one fixed S3 error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                   f"<Message>{message}</Message><RequestId>stub</RequestId></Error>").encode()
        self.requests = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self, with_body: bool = True) -> None:
                stub.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if with_body:
                    self.wfile.write(payload)

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                self.answer(with_body=False)

            do_GET = do_PUT = do_POST = do_DELETE = answer  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def stub_s3():
    stubs: list[StubS3] = []

    def make(status: int, code: str, message: str) -> StubS3:
        stubs.append(StubS3(status, code, message))
        return stubs[-1]

    yield make
    for stub in stubs:
        stub.close()


def test_access_denied(stub_s3, mountpoint, tmp_path):
    stub = stub_s3(403, "AccessDenied", "Access Denied")
    started = time.monotonic()
    line = one_line_error(run_cli("--endpoint-url", stub.endpoint, "--cache-dir",
                                  str(tmp_path / "cache"), "secret-bucket", str(mountpoint)),
                          status=1)
    assert "access denied" in line and "secret-bucket" in line
    assert stub.requests >= 1
    assert time.monotonic() - started < QUICK
    assert not is_mounted(mountpoint)


def test_invalid_access_key(stub_s3, mountpoint, tmp_path):
    stub = stub_s3(403, "InvalidAccessKeyId", "The AWS Access Key Id does not exist")
    line = one_line_error(run_cli("--endpoint-url", stub.endpoint, "--cache-dir",
                                  str(tmp_path / "cache"), "bkt", str(mountpoint)), status=1)
    assert "access denied" in line


def test_endpoint_failing_with_500(stub_s3, mountpoint, tmp_path):
    stub = stub_s3(500, "InternalError", "We encountered an internal error")
    started = time.monotonic()
    result = run_cli("--endpoint-url", stub.endpoint, "--cache-dir", str(tmp_path / "cache"),
                     "bkt", str(mountpoint), timeout=120)
    elapsed = time.monotonic() - started
    line = one_line_error(result, status=1)
    assert "bkt" in line
    assert stub.requests >= 2  # retried, within bounds
    assert elapsed < QUICK, f"took {elapsed:.1f}s to give up on a failing endpoint"


# -- a mount that works ------------------------------------------------------------------------


def daemon_pids(cache_dir) -> list[int]:
    """Live s3mount processes started with this cache directory (zombies have no cmdline)."""
    wanted = ["s3mount", "--cache-dir", str(cache_dir)]
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if all(w in argv for w in wanted):
            pids.append(int(entry))
    return pids


def test_background_mount_is_live_on_return_and_fusermount_ends_it(s3_server, s3_client,
                                                                   bucket, tmp_path):
    s3_client.put_object(Bucket=bucket, Key="hello.txt", Body=b"hi")
    s3_client.put_object(Bucket=bucket, Key="dir/inner", Body=b"in")
    mount = Mount(s3_server.endpoint, bucket, tmp_path / "mnt", tmp_path / "cache")
    mount.path.mkdir()
    try:
        result = subprocess.run(mount.command(), env=test_env(), capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
        # No waiting: the command returned, so the mount must answer now.
        assert sorted(os.listdir(mount.path)) == ["dir", "hello.txt"]
        assert (mount.path / "hello.txt").read_bytes() == b"hi"
        assert is_mounted(mount.path)
        pids = daemon_pids(mount.cache_dir)
        assert len(pids) == 1, pids
        done = subprocess.run(["fusermount3", "-u", str(mount.path)], capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + QUICK
        while daemon_pids(mount.cache_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not daemon_pids(mount.cache_dir), "the daemon outlived its mount"
        assert not is_mounted(mount.path)
        assert mount.problems() == []
        assert "unmounted" in mount.log_text()
    finally:
        mount.stop()


def test_second_mount_on_same_point_fails_clearly(make_mount, bucket, cli_args):
    mounted = make_mount(bucket)
    line = one_line_error(run_cli(*cli_args, bucket, str(mounted.path)), status=1)
    assert "already a mount point" in line
    assert os.listdir(mounted.path) == []  # the first mount still answers


def test_read_only_flag_mounts_read_only(make_mount, bucket):
    mounted = make_mount(bucket, "-o", "ro,_netdev,noatime")
    with pytest.raises(OSError) as exc:
        (mounted.path / "f").write_text("x")
    assert exc.value.errno == 30  # EROFS


def test_fstab_x_options_are_accepted(make_mount, bucket):
    mounted = make_mount(bucket, "-o", "_netdev,x-systemd.automount,x-systemd.idle-timeout=60")
    assert os.listdir(mounted.path) == []
