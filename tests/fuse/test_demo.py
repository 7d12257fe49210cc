"""The README's first command: scripts/demo mounts a bucket on a local SeaweedFS, and the bucket
outlives `scripts/demo stop` and the next `scripts/demo`, as a user trying s3mount would expect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import is_mounted

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from seaweed import free_ports  # noqa: E402


def demo(home: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(S3MOUNT_SETUP_DONE="1", S3MOUNT_DEMO_HOME=str(home), S3MOUNT_DEMO_PORT=str(port))
    result = subprocess.run(["bash", str(ROOT / "scripts" / "demo"), *args], env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return result


def test_demo_bucket_survives_stop_and_start(tmp_path):
    port = free_ports(1)[0]
    mnt = tmp_path / "mnt"
    try:
        started = demo(tmp_path, port)
        assert f"http://127.0.0.1:{port}" in started.stdout
        assert is_mounted(mnt)
        assert (mnt / "hello.txt").read_text() == "Hello from a bucket!\n"
        assert (mnt / "notes" / "2024" / "january.txt").exists()
        (mnt / "photos").mkdir()
        (mnt / "photos" / "kept.txt").write_text("still here\n")

        demo(tmp_path, port, "stop")
        assert not is_mounted(mnt)
        assert not (tmp_path / ".demo" / "server.pid").exists()

        again = demo(tmp_path, port)
        assert "already there" in again.stderr  # the bucket was not made anew
        assert (mnt / "photos" / "kept.txt").read_text() == "still here\n"
    finally:
        demo(tmp_path, port, "stop")
    assert not is_mounted(mnt)
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / ".demo")], capture_output=True,
                              text=True).stdout
    assert leftover == "", f"demo processes left running: {leftover}"
