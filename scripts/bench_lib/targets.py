"""The contenders: how each mounts the bucket, is unmounted, and which process serves it.

Every mount is fresh (new mount point, new empty cache directory) and is taken down with
`fusermount3 -u`, retried, then lazily (`-uz`) so a stuck mount never outlives the bench; the
daemon is then waited for (and killed only if it will not exit).  `Mounts` remembers every mount
made so `close()` can clean up whatever an error left behind.  The raw boto3 contender is not a
mount: it is the `raw_client` the workloads call directly.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.handlers
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

MIB = 1024 * 1024
RAW_TRANSFER = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB,
                              max_concurrency=10, use_threads=True)
RAW_DESCRIPTION = (
    "one boto3 client (max_pool_connections=10, no `Expect: 100-continue`, checksums only when "
    "required: the client settings s3mount itself uses); big transfers: upload_file / "
    "download_file to a local file with TransferConfig(8 MiB parts, max_concurrency=10); "
    "small operations: one request after another from one thread (the same order a program on a "
    "mount issues them), with a 10-thread pool shown in the JSON and below")
PEER_ENV_DROP = ("AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                 "SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE")


def make_client(url: str, access: str, secret: str, pool: int = 10) -> Any:
    config = Config(s3={"addressing_style": "path"}, max_pool_connections=pool,
                    retries={"max_attempts": 5, "mode": "standard"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")
    client = boto3.session.Session().client(
        "s3", endpoint_url=url, aws_access_key_id=access, aws_secret_access_key=secret,
        region_name="us-east-1", config=config)
    client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    return client


def in_mount_table(path: Path) -> bool:
    escaped = str(path).replace("\\", "\\134").replace(" ", "\\040")
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == escaped for line in f if len(line.split()) > 1)


def peer_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PEER_ENV_DROP}
    return env


@dataclass
class Mount:
    target: str
    path: Path
    cache: Path
    pattern: str = ""  # finds the daemon's command line (pgrep -f), when it is not our child
    proc: subprocess.Popen[bytes] | None = None  # when we hold the daemon's process
    pids: list[int] = field(default_factory=list)

    def daemon_pids(self) -> list[int]:
        """The serving process: ours, or found by what only this mount's command line holds."""
        if self.proc is not None and self.proc.poll() is None:
            return [self.proc.pid]
        return [p for p in _pgrep(self.pattern) if p != os.getpid()] if self.pattern else []


class Mounts:
    """Makes fresh mounts of each kind, and takes every one of them down in `close()`."""

    def __init__(self, workdir: Path, endpoint: str, bucket: str, access: str, secret: str,
                 rclone_cache_mode: str, rclone_write_back: str,
                 s3mount_options: list[str] | None = None) -> None:
        self.workdir = workdir
        self.endpoint = endpoint
        self.bucket = bucket
        self.access = access
        self.secret = secret
        self.rclone_cache_mode = rclone_cache_mode
        self.rclone_write_back = rclone_write_back
        self.s3mount_options = list(s3mount_options or [])
        self.live: list[Mount] = []
        self.s3mount_pythonpath: str | None = None  # a snapshot of the source, when pinned
        self.timings: list[tuple[str, str, float]] = []  # (target, "mount"/"unmount", seconds)
        self.all_timings: list[tuple[str, str, float]] = []
        self.counter = 0
        self.commands: dict[str, str] = {}
        self.s3mount_bin = Path(sys.executable).parent / "s3mount"
        passwd = workdir / "s3fs.passwd"
        passwd.write_text(f"{access}:{secret}\n")
        passwd.chmod(0o600)
        self.s3fs_passwd = passwd

    @staticmethod
    def available() -> dict[str, str | None]:
        """Each peer's version, or None when it is not installed."""
        out: dict[str, str | None] = {}
        for name, cmd in (("s3fs", ["s3fs", "--version"]), ("rclone", ["rclone", "version"])):
            if not shutil.which(cmd[0]):
                out[name] = None
                continue
            text = subprocess.run(cmd, capture_output=True, text=True).stdout
            out[name] = text.splitlines()[0].strip() if text else "?"
        return out

    def _fresh(self, target: str) -> Mount:
        self.counter += 1
        path = self.workdir / "mnt" / f"{target}-{self.counter}"
        cache = self.workdir / "cache" / f"{target}-{self.counter}"
        path.mkdir(parents=True)
        cache.mkdir(parents=True)
        return Mount(target, path, cache)

    def mount(self, target: str) -> Mount:
        started = time.monotonic()
        m = self._fresh(target)
        self.live.append(m)
        starter = {"s3mount": self._s3mount, "s3fs": self._s3fs, "rclone": self._rclone}[target]
        starter(m)
        deadline = time.monotonic() + 60
        while not (in_mount_table(m.path) and _answers(m.path)):
            if m.proc is not None and m.proc.poll() is not None:
                raise RuntimeError(f"{target} exited ({m.proc.returncode}) while mounting; "
                                   f"see {m.cache.parent}/{m.cache.name}.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target} did not mount {m.path} within 60 s")
            time.sleep(0.05)
        m.pids = m.daemon_pids()
        self._timed(target, "mount", started)
        return m

    def _timed(self, target: str, what: str, started: float) -> None:
        entry = (target, what, time.monotonic() - started)
        self.timings.append(entry)
        self.all_timings.append(entry)

    def median_timings(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for target, what, _ in self.all_timings:
            values = [s for t, w, s in self.all_timings if (t, w) == (target, what)]
            out.setdefault(target, {})[what] = round(statistics.median(values), 2)
        return out

    def describe(self, target: str) -> str:
        return self.commands.get(target, "")

    def _s3mount(self, m: Mount) -> None:
        cmd = [str(self.s3mount_bin), "--endpoint-url", self.endpoint, self.bucket, str(m.path),
               "--cache-dir", str(m.cache), *self.s3mount_options]
        m.pattern = f"--cache-dir {m.cache}( |$)"
        self.commands["s3mount"] = " ".join(cmd[:1] + ["--endpoint-url", "URL", "BUCKET",
                                                       "MNT", "--cache-dir", "DIR",
                                                       *self.s3mount_options])
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.access,
                   AWS_SECRET_ACCESS_KEY=self.secret, AWS_DEFAULT_REGION="us-east-1")
        if self.s3mount_pythonpath:
            env["PYTHONPATH"] = self.s3mount_pythonpath  # ahead of the editable install
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"s3mount failed to mount ({res.returncode}): "
                               f"{res.stderr.strip()}")

    def _s3fs(self, m: Mount) -> None:
        opts = (f"url={self.endpoint},use_path_request_style,passwd_file={self.s3fs_passwd},"
                f"dbglevel=warn,logfile={m.cache.parent}/{m.cache.name}.log")
        cmd = ["s3fs", self.bucket, str(m.path), "-o", opts]
        m.pattern = f"^s3fs {self.bucket} {m.path} "  # it forks: found by its mount point
        self.commands["s3fs"] = ("s3fs BUCKET MNT -o url=URL,use_path_request_style,"
                                 "passwd_file=FILE (s3fs defaults otherwise: no use_cache)")
        res = subprocess.run(cmd, env=peer_env(), capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"s3fs failed to mount ({res.returncode}): {res.stderr.strip()}")

    def _rclone(self, m: Mount) -> None:
        env = peer_env()
        env.update({
            "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": self.endpoint,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": self.access,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": self.secret,
            "RCLONE_CONFIG_BENCH_REGION": "us-east-1", "RCLONE_CONFIG_BENCH_ENV_AUTH": "false",
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        })
        flags = ["--vfs-cache-mode", self.rclone_cache_mode, "--vfs-write-back",
                 self.rclone_write_back, "--s3-no-check-bucket"]
        cmd = ["rclone", "mount", f"bench:{self.bucket}", str(m.path), "--cache-dir",
               str(m.cache), "--config", "/dev/null", *flags,
               "--log-file", f"{m.cache.parent}/{m.cache.name}.log", "--log-level", "NOTICE"]
        self.commands["rclone"] = ("rclone mount bench:BUCKET MNT --cache-dir DIR "
                                   + " ".join(flags)
                                   + " (remote from RCLONE_CONFIG_BENCH_*: type s3, provider "
                                   "Other, force_path_style; rclone defaults otherwise)")
        m.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)

    def unmount(self, m: Mount) -> None:
        started = time.monotonic()
        pids = m.pids or m.daemon_pids()
        for attempt in range(20):
            if not in_mount_table(m.path):
                break
            lazy = ["-z"] if attempt == 19 else []
            subprocess.run(["fusermount3", "-u", *lazy, str(m.path)], capture_output=True)
            if in_mount_table(m.path):
                time.sleep(0.5)
        _wait_gone(pids, timeout=600 if m.target == "s3mount" else 120)
        self._timed(m.target, "unmount", started)
        if m.proc is not None and m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait()
        if m in self.live:
            self.live.remove(m)
        shutil.rmtree(m.cache, ignore_errors=True)
        try:
            m.path.rmdir()
        except OSError:
            pass

    def close(self) -> None:
        for m in list(self.live):
            try:
                self.unmount(m)
            except Exception as exc:  # noqa: BLE001 - keep cleaning up the others
                print(f"warning: could not unmount {m.path}: {exc}", file=sys.stderr)


def _answers(path: Path) -> bool:
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _pgrep(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _alive(pid):
            if time.monotonic() > deadline:
                print(f"warning: process {pid} did not exit after unmount; killing it",
                      file=sys.stderr)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False
