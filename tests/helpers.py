"""Test helpers: the S3 servers on loopback (moto, s3rver), mounts made through the real command
line, and running that command line."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from prometheus_client.parser import text_string_to_metric_families

from s3mount.mounttable import find_mount

ACCESS_KEY = "testing-access"
SECRET_KEY = "testing-secret"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("AWS_"):
            del env[name]
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE="/nonexistent",
               AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    return env


test_env.__test__ = False  # a helper, not a test


class MotoServer:
    name = "moto"
    mount_args: tuple[str, ...] = ()  # what every mount of this server adds to its command

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=test_env())
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION,
                            config=Config(s3={"addressing_style": "path"}))

    def stop(self) -> None:
        stop_process(self.proc)


sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
from seaweed import SeaweedFS  # noqa: E402 - scripts/seaweed.py, the one SeaweedFS starter


class SeaweedServer:
    """SeaweedFS on loopback with the suite's keys (it verifies SigV4 and SigV2)."""

    name = "seaweedfs"
    mount_args: tuple[str, ...] = ()

    def __init__(self, data_dir: Path) -> None:
        self.server = SeaweedFS(data_dir, ACCESS_KEY, SECRET_KEY)
        self.server.start()
        self.endpoint = self.server.endpoint

    def client(self, signature: str = "s3v4"):  # type: ignore[no-untyped-def]
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                              aws_secret_access_key=SECRET_KEY, region_name=REGION,
                              config=Config(signature_version=signature,
                                            s3={"addressing_style": "path"},
                                            request_checksum_calculation="when_required",
                                            response_checksum_validation="when_required"))
        # Every test bucket keeps its empty folders: SeaweedFS's cleaner otherwise races a
        # `dir/` marker PUT (see SeaweedFS.keep_empty_folders), which lost a marker in
        # test_model once in a few hundred examples.
        client.meta.events.register("before-parameter-build.s3.CreateBucket", _note_bucket)
        client.meta.events.register("after-call.s3.CreateBucket", self._created)
        return client

    def _created(self, http_response, context, **_) -> None:  # type: ignore[no-untyped-def]
        if http_response.status_code == 200:
            self.server.keep_empty_folders(context["bucket"])

    def stop(self) -> None:
        self.server.stop()


def _note_bucket(params, context, **_) -> None:  # type: ignore[no-untyped-def]
    context["bucket"] = params["Bucket"]


def is_mounted(path: Path) -> bool:
    return find_mount(str(path)) is not None


# A log line of WARNING or worse, after the time stamp every line of the daemon's log starts with.
PROBLEM_LINE = re.compile(r"(?:\S+ \S+ )?(?:WARNING|ERROR|CRITICAL) ")


class Mount:
    """One s3mount daemon, started through the command line as a user would."""

    def __init__(self, endpoint: str, source: str, path: Path, cache_dir: Path,
                 extra: list[str] | None = None) -> None:
        self.endpoint = endpoint
        self.source = source
        self.path = path
        self.cache_dir = cache_dir
        self.extra = list(extra or [])
        self.expected: list[Expected] = []

    def expect(self, text: str, count: int | None = None, at_least: int = 1,
               at_most: int | None = None) -> None:
        """Declare WARNING/ERROR lines this test provokes: lines containing `text`, exactly
        `count` of them, or between `at_least` and `at_most`.  After the test, every problem
        line must match a declaration and every declaration must have matched (see
        `log_failures`)."""
        if count is not None:
            at_least = at_most = count
        self.expected.append(Expected(text, at_least, at_most))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "s3mount", "--endpoint-url", self.endpoint,
                "--cache-dir", str(self.cache_dir), "--log-level", "debug",
                *self.extra, self.source, str(self.path)]

    def start(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # a dead mount left by a killed daemon: s3mount itself must cope
        result = subprocess.run(self.command(), env=test_env(), capture_output=True, text=True,
                                timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"s3mount failed ({result.returncode}): {result.stderr}")
        assert is_mounted(self.path)

    def stop(self) -> None:
        if not is_mounted(self.path):
            return
        for _ in range(50):
            done = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True,
                                  text=True)
            if done.returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)])
            raise RuntimeError(f"could not unmount {self.path}: {done.stderr}")
        # The daemon exits once it has unmounted; wait so a remount never races it.
        deadline = time.monotonic() + 60
        while self._daemon_running() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _daemon_running(self) -> bool:
        out = subprocess.run(["pgrep", "-f", "--", f"--cache-dir {self.cache_dir} "],
                             capture_output=True, text=True)
        return bool(out.stdout.strip())

    def remount(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        log = self.cache_dir / "s3mount.log"
        return log.read_text() if log.exists() else ""

    def problems(self) -> list[str]:
        return problem_lines(self.log_text())


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the one sample `name` whose labels include `labels`, in Prometheus text
    (parsed by prometheus_client's parser, so malformed text fails too)."""
    found = [sample.value for family in text_string_to_metric_families(text)
             for sample in family.samples
             if sample.name == name and labels.items() <= sample.labels.items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def logged_problems(caplog, expected: re.Pattern[str] | None = None) -> list[str]:
    """WARNING-or-worse records s3mount logged during a test's call (core tier, in-process),
    but for those whose message `expected` matches."""
    return [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.get_records("call")
            if r.name.startswith("s3mount") and r.levelno >= logging.WARNING
            and not (expected and expected.search(r.getMessage()))]


def problem_lines(log: str) -> list[str]:
    """The WARNING/ERROR lines and tracebacks of a daemon's log (its file, or the stderr of a
    foreground daemon)."""
    return [line for line in log.splitlines() if PROBLEM_LINE.match(line) or "Traceback" in line]


@dataclass(frozen=True)
class Expected:
    text: str
    at_least: int
    at_most: int | None


def log_failures(problems: list[str], expected: list[Expected]) -> list[str]:
    """What is wrong with a mount's WARNING/ERROR lines: any line no declaration expects, and any
    declaration whose matching lines fall outside its count."""
    failures = [f"unexpected: {line}" for line in problems
                if not any(e.text in line for e in expected)]
    for e in expected:
        seen = sum(e.text in line for line in problems)
        if seen < e.at_least or (e.at_most is not None and seen > e.at_most):
            bound = (f"{e.at_least}" if e.at_most == e.at_least else
                     f"{e.at_least}..{'' if e.at_most is None else e.at_most}")
            failures.append(f"expected {bound} lines with {e.text!r}, saw {seen}")
    return failures


def check_log(mount: Mount) -> list[str]:
    """`log_failures` of a mount, each line naming the mount."""
    return [f"{mount.path}: {f}" for f in log_failures(mount.problems(), mount.expected)]


# -- killing a daemon (crash tests) -------------------------------------------------------------


def daemon_pid(m: Mount) -> int:
    out = subprocess.run(["pgrep", "-f", "--", f"--cache-dir {m.cache_dir} "],
                         capture_output=True, text=True).stdout.split()
    assert out, "no daemon"
    return int(out[0])


def kill_and_wait(pid: int) -> None:
    """SIGKILL, and wait (5 s at most) until the process is gone."""
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass  # the daemon is gone


@contextmanager
def crashable_mount(endpoint: str, bucket: str, tmp_path: Path,
                    extra: list[str] | None = None) -> Iterator[Mount]:
    """A mount whose daemon's pid (`m.pid`) is known before any file is opened: a fork + exec
    (pgrep) while a file is open closes the child's copy of the descriptor, which flushes, and
    so uploads, the file.  Afterwards the mount, dead or alive, is taken down."""
    m = Mount(endpoint, bucket, tmp_path / "mnt", tmp_path / "cache", extra)
    m.start()
    m.pid = daemon_pid(m)  # type: ignore[attr-defined]
    try:
        yield m
    finally:
        if is_mounted(m.path):
            subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
        m.stop()


async def append_through(fs, s3_client, bucket: str, key: str, size: int, pid: int) -> None:
    """Core tier: an object of `size` random bytes, then 1 MiB appended to it through `fs`
    (open with O_APPEND, write, flush, release); the bucket must hold both after."""
    base = os.urandom(size)
    s3_client.put_object(Bucket=bucket, Key=key, Body=base)
    inode = fs.remember(await fs.lookup(1, key.encode()))
    handle, _ = await fs.open(inode.ino, os.O_WRONLY | os.O_APPEND, pid)
    extra = os.urandom(1024 * 1024)
    await fs.write(handle.fh, len(base), extra)
    await fs.flush(handle.fh)
    await fs.release(handle.fh)
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == base + extra


def bucket_objects(client, bucket: str) -> dict[str, bytes]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


SKIP_ENV = "S3MOUNT_SKIP"


def prerequisite(what: str, reason: str) -> None:
    """This test cannot run here (`reason`): it fails, so a run never loses tests silently,
    unless the developer opted out of tests needing `what` ("fuse", "root", "npm", "programs")
    by naming it in $S3MOUNT_SKIP, e.g. S3MOUNT_SKIP=root,npm.  Then it is skipped."""
    opted_out = {w.strip() for w in os.environ.get(SKIP_ENV, "").split(",")}
    if what in opted_out or "all" in opted_out:
        pytest.skip(f"{reason} ({SKIP_ENV} names {what!r})")
    pytest.fail(f"{reason}; to skip such tests set {SKIP_ENV}={what}", pytrace=False)


ATTRIBUTE_OBJECT = ".s3mount-meta"  # keys.RESERVED_NAME


def objects_but_attributes(client, bucket: str) -> dict[str, bytes]:
    """The bucket's objects except directories' attribute objects (`dir/.s3mount-meta`), which
    s3mount writes only on servers that drop metadata on markers (markers.py): for comparing the
    keys a test made with what the bucket holds, on every server.  An empty bucket is checked
    with `bucket_objects`, which leaves nothing out."""
    return {k: v for k, v in bucket_objects(client, bucket).items()
            if k.rsplit("/", 1)[-1] != ATTRIBUTE_OBJECT}


def have(program: str) -> bool:
    return shutil.which(program) is not None


def need_program(program: str) -> None:
    """A program the test runs (scripts/test installs it): missing fails, or skips when
    $S3MOUNT_SKIP names "programs"."""
    if not have(program):
        prerequisite("programs", f"{program} is not installed")

def stop_process(proc: subprocess.Popen) -> None:
    """End a server the tests started: politely, then for sure."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)


# -- s3rver, an S3 server without conditional writes (npm) ------------------------------------

# The one WARNING a mount of s3rver logs: the probe at mount finds If-None-Match/If-Match ignored.
NO_CONDITIONAL_WRITES = "does not honour conditional writes"


def problems_but_no_conditions(m: Mount) -> list[str]:
    """A mount's WARNING/ERROR lines, but for the one that says the server has no conditional
    writes."""
    return [p for p in m.problems() if NO_CONDITIONAL_WRITES not in p]


S3RVER_VERSION = "3.7.1"
S3RVER_KEY = "S3RVER"


def s3rver_script() -> Path:
    """s3rver's entry point, installed with npm into the cache directory if it is not yet."""
    prefix = Path(os.environ.get("S3MOUNT_NPM_PREFIX")
                  or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                  / "s3mount-tests" / "npm")
    script = prefix / "node_modules" / "s3rver" / "bin" / "s3rver.js"
    if script.exists():
        return script
    if shutil.which("npm") is None or shutil.which("node") is None:
        prerequisite("npm", "npm/node are not installed: cannot install s3rver "
                     "(apt-get install npm)")
    prefix.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                             f"s3rver@{S3RVER_VERSION}"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and script.exists(), f"npm install s3rver: {result.stderr}"
    return script


class S3rver:
    def __init__(self, script: Path, directory: Path, tls: tuple[Path, Path] | None = None):
        self.port = free_port()
        scheme = "https" if tls else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self.port}"
        self.vhost_endpoint = f"{scheme}://s3.test:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["NODE_OPTIONS"] = "--openssl-legacy-provider"  # listings past 1,000 keys on Node 20
        command = ["node", str(script), "-d", str(directory), "-p", str(self.port), "-a",
                   "127.0.0.1", "--silent", "--service-endpoint", "test",
                   "--allow-mismatched-signatures"]
        if tls:
            command += ["--key", str(tls[0]), "--cert", str(tls[1])]
        self.tls = tls
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "s3rver")

    def client(self, signature: str = "s3v4"):  # type: ignore[no-untyped-def]
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3RVER_KEY,
                            aws_secret_access_key=S3RVER_KEY, region_name=REGION,
                            verify=str(self.tls[1]) if self.tls else None,
                            config=Config(signature_version=signature,
                                          s3={"addressing_style": "path"}))

    def stop(self) -> None:
        stop_process(self.proc)


# -- the command line --------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "s3mount", *args],
                          env=test_env() if env is None else env, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess[str], status: int | None = None) -> str:
    """The single stderr line of a failed start, lower-cased for matching."""
    assert result.returncode != 0, result
    if status is not None:
        assert result.returncode == status, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("s3mount: "), lines[0]
    assert result.stdout == ""
    return lines[0].lower()
