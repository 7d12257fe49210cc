"""Local S3 servers on loopback: SeaweedFS (default), moto or s3rver, on a free port, always
stopped.

SeaweedFS is the reference: a real Go object store whose ranged GETs and part copies cost the
bytes asked for, as on S3.  It is started by scripts/seaweed.py (the one starter the tests and
the demo use too) with keys of our choosing, which every contender is given.  moto stays a test
server; its ranged GETs and part copies cost a copy of the whole object, so no design decision
rests on its timings.

moto comes from the venv running the bench (`moto_server` next to `sys.executable`).  s3rver is an
npm package: found on PATH, or installed once into ~/.cache/s3mount-bench/s3rver with npm.  It
verifies signatures, so its fixed keys S3RVER/S3RVER are used by every client, and it needs
OpenSSL's legacy provider on Node >= 17 for listings past 1,000 keys.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

S3RVER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
    / "s3mount-bench" / "s3rver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the S3 server exited ({proc.returncode}); see {log}:\n"
                               + tail(log))
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it listens
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the S3 server did not answer on port {port} within {timeout:.0f}s")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    access_key: str
    secret_key: str
    version: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def describe(self) -> str:
        return f"{self.kind} {self.version} on 127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_moto(workdir: Path) -> Server:
    binary = Path(sys.executable).parent / "moto_server"
    if not binary.exists():
        raise RuntimeError(f"{binary} not found: install moto[server] into this venv "
                           f"({sys.executable} -m pip install 'moto[server]')")
    port = free_port()
    log = workdir / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return _answering(Server("moto", port, proc, "benchkey", "benchsecret", _moto_version(),
                             log))


def _moto_version() -> str:
    try:
        from importlib.metadata import version
        return version("moto")
    except Exception:  # noqa: BLE001 - only for the report
        return "?"


def find_s3rver(install: bool) -> Path:
    found = shutil.which("s3rver")
    if found:
        return Path(found)
    local = S3RVER_CACHE / "node_modules" / ".bin" / "s3rver"
    if local.exists():
        return local
    if not install:
        raise RuntimeError("s3rver is not installed (run with --install-peers, or "
                           f"npm install --prefix {S3RVER_CACHE} s3rver)")
    if not shutil.which("npm"):
        raise RuntimeError("s3rver needs Node.js and npm (apt-get install nodejs npm)")
    S3RVER_CACHE.mkdir(parents=True, exist_ok=True)
    print(f"installing s3rver with npm into {S3RVER_CACHE}", file=sys.stderr)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error",
                    "--prefix", str(S3RVER_CACHE), "s3rver"], check=True)
    return local


def start_s3rver(workdir: Path, install: bool) -> Server:
    binary = find_s3rver(install)
    port = free_port()
    data = workdir / "s3rver-data"
    data.mkdir(parents=True, exist_ok=True)
    log = workdir / "s3rver.log"
    env = dict(os.environ)
    env["NODE_OPTIONS"] = (env.get("NODE_OPTIONS", "") + " --openssl-legacy-provider").strip()
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(binary), "-d", str(data), "-p", str(port),
                                 "-a", "127.0.0.1", "--silent"], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             env=env).stdout.strip() or "?"
    return _answering(Server("s3rver", port, proc, "S3RVER", "S3RVER", version, log))


def _answering(server: Server) -> Server:
    """The server once it answers HTTP; stopped if it never does."""
    try:
        wait_http(server.port, server.proc, server.log)
    except BaseException:
        server.stop()
        raise
    return server


SEAWEED_KEYS = ("benchkey", "benchsecret1234")


def start_seaweedfs(workdir: Path) -> Server:
    from seaweed import SeaweedFS, weed_binary  # scripts/ is on the bench's path

    server = SeaweedFS(workdir / "seaweedfs", *SEAWEED_KEYS)
    server.start()
    assert server.proc is not None
    try:
        text = subprocess.run([weed_binary(), "version"], capture_output=True, text=True,
                              timeout=30).stdout
        version = text.split()[2] if len(text.split()) > 2 else "?"
    except (OSError, subprocess.SubprocessError):
        version = "?"
    return Server("seaweedfs", server.port, server.proc, *SEAWEED_KEYS, version, server.log)


def start_server(kind: str, workdir: Path, install: bool) -> Server:
    if kind == "seaweedfs":
        return start_seaweedfs(workdir)
    if kind == "moto":
        return start_moto(workdir)
    if kind == "s3rver":
        return start_s3rver(workdir, install)
    raise ValueError(kind)
