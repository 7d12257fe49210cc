"""Test helpers: a moto S3 server on loopback, and mounts made through the real command line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

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
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def is_mounted(path: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


class Mount:
    """One s3mount daemon, started through the command line as a user would."""

    def __init__(self, endpoint: str, source: str, path: Path, cache_dir: Path,
                 extra: list[str] | None = None) -> None:
        self.endpoint = endpoint
        self.source = source
        self.path = path
        self.cache_dir = cache_dir
        self.extra = list(extra or [])

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
        return [line for line in self.log_text().splitlines()
                if line.startswith(("WARNING", "ERROR", "CRITICAL")) or "Traceback" in line]


def bucket_objects(client, bucket: str) -> dict[str, bytes]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def have(program: str) -> bool:
    return shutil.which(program) is not None
