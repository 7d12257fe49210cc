"""What is timed, for a mount and for raw boto3, and how "durable" is checked.

A session is one fresh mount (or none, for raw boto3) that times one or two workloads and returns
their `Sample`s.  Timers stop only once the bench's own client (straight to the server, never
through the proxy, so request counts stay the contender's) sees the result in the bucket: a mount
that uploads after close (rclone's write-back) is timed until its objects are there.  Every session
deletes what it wrote.  Shared inputs (the big object, the 10,000-object directory, the stat
directory, the tarball, the local source file) are made once by `prepare`.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import tarfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_lib.proxy import DelayProxy
from bench_lib.targets import RAW_TRANSFER, Mount, Mounts

MIB = 1024 * 1024
GIB = 1024 * MIB
CHUNK = MIB
SMALL = 4096

# name -> (label, kind): "rate" workloads are MB/s of `Sizes.big`, "time" ones are seconds.
WORKLOADS: dict[str, tuple[str, str]] = {
    "seqwrite": ("sequential write until durable", "rate"),
    "coldread": ("cold sequential read", "rate"),
    "warmread": ("warm re-read (same mount)", "rate"),
    "randread": ("random 4 KiB reads", "time"),
    "create": ("create 4 KiB files", "time"),
    "ls": ("ls -l of a big directory", "time"),
    "stat": ("stat files", "time"),
    "rename": ("rename a directory", "time"),
    "untar": ("untar a source tree", "time"),
}
SESSIONS: dict[str, list[str]] = {
    "write": ["seqwrite"], "read": ["coldread", "warmread"], "random": ["randread"],
    "create": ["create"], "ls": ["ls"], "stat": ["stat"], "rename": ["rename"],
    "untar": ["untar"],
}


@dataclass(frozen=True)
class Sizes:
    big: int = GIB
    random_reads: int = 200
    small_files: int = 1000
    bigdir: int = 10_000
    stat_files: int = 1000
    rename_files: int = 100
    tar_files: int = 1000
    memory: int = 4 * GIB

    @classmethod
    def scaled(cls, scale: float, big_mib: int | None = None) -> Sizes:
        def count(n: int) -> int:
            return max(10, round(n * scale))

        def size(n: int, floor: int) -> int:
            return max(floor, round(n * scale / MIB) * MIB)

        big = big_mib * MIB if big_mib else size(GIB, 16 * MIB)
        return cls(big, count(200), count(1000), count(10_000), count(1000),
                   count(100), count(1000), size(4 * GIB, 64 * MIB))

    def describe(self, name: str) -> str:
        return {
            "seqwrite": f"{mib(self.big)}",
            "coldread": f"{mib(self.big)}",
            "warmread": f"{mib(self.big)}",
            "randread": f"{self.random_reads} preads in a {mib(self.big)} object",
            "create": f"{self.small_files} files",
            "ls": f"{self.bigdir} objects",
            "stat": f"{self.stat_files} files",
            "rename": f"{self.rename_files} files",
            "untar": f"{self.tar_files} files",
        }[name]


def mib(n: int) -> str:
    return f"{n / GIB:g} GiB" if n >= GIB else f"{n / MIB:g} MiB"


@dataclass
class Sample:
    seconds: float | None
    error: str | None = None
    requests: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    """Everything a session needs."""

    admin: Any  # boto3 client straight to the server: set-up, checks, clean-up
    raw: Any  # the raw-boto3 contender's client, through the proxy when there is one
    bucket: str
    sizes: Sizes
    workdir: Path
    mounts: Mounts
    proxy: DelayProxy | None
    drop_caches: bool
    verify: bool
    say: Callable[[str], None]
    src: Path = field(init=False)
    src_crc: int = 0
    tarball: Path = field(init=False)
    disk_read_mbps: float | None = None  # the local disk, read with the page cache dropped
    server_pid: int | None = None
    daemon_pids: list[int] = field(default_factory=list)  # the mount being timed, if any

    def __post_init__(self) -> None:
        self.src = self.workdir / "src.bin"
        self.tarball = self.workdir / "tree.tar"

    # -- helpers -------------------------------------------------------------------------------

    def counts(self) -> dict[str, int] | None:
        return self.proxy.snapshot() if self.proxy else None

    def diff(self, before: dict[str, int] | None) -> dict[str, int] | None:
        if self.proxy is None or before is None:
            return None
        return DelayProxy.difference(self.proxy.snapshot(), before)

    def keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        for page in self.admin.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def file_keys(self, prefix: str) -> list[str]:
        """The files' keys under `prefix`: not directory markers, nor the attribute objects
        s3mount keeps beside them where the server drops metadata on markers (SeaweedFS)."""
        return [k for k in self.keys(prefix)
                if not k.endswith("/") and k.rsplit("/", 1)[-1] != ".s3mount-meta"]

    def size_of(self, key: str) -> int | None:
        try:
            return int(self.admin.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except Exception:  # noqa: BLE001 - absent (or not yet) is all that matters here
            return None

    def delete_prefix(self, prefix: str) -> None:
        keys = self.keys(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            self.admin.delete_objects(Bucket=self.bucket, Delete={"Objects": batch,
                                                                  "Quiet": True})

    def put_many(self, keys: list[str], body: bytes, client: Any = None,
                 threads: int = 16) -> None:
        client = client or self.admin
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda k: client.put_object(Bucket=self.bucket, Key=k, Body=body),
                          keys))

    def drop_page_cache(self) -> bool:
        if not self.drop_caches:
            return False
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True

    def warm_source(self) -> None:
        with open(self.src, "rb") as f:
            while f.read(8 * MIB):
                pass


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> bool:
    """Poll `check` until true; returns whether it was true at the first look."""
    if check():
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if check():
            return False
    raise TimeoutError(f"{what}: not in the bucket after {timeout:.0f} s")


# -- preparation -------------------------------------------------------------------------------

def prepare(b: Bench, sessions: list[str]) -> None:
    s = b.sizes
    if {"write", "read", "random"} & set(sessions):
        b.say(f"preparing a {mib(s.big)} source file and object data/big.bin")
        crc = 0
        with open(b.src, "wb") as f:
            for _ in range(s.big // MIB):
                chunk = os.urandom(MIB)
                crc = zlib.crc32(chunk, crc)
                f.write(chunk)
        b.src_crc = crc
        b.admin.upload_file(str(b.src), b.bucket, "data/big.bin", Config=RAW_TRANSFER)
        if b.drop_page_cache():
            start = time.perf_counter()
            read_all(b.src, False)
            b.disk_read_mbps = round(s.big / 1e6 / (time.perf_counter() - start))
    if "ls" in sessions:
        b.say(f"creating {s.bigdir} objects under bigdir/ with boto3")
        b.put_many([f"bigdir/file-{i:05d}.txt" for i in range(s.bigdir)], b"x" * 100)
    if "stat" in sessions:
        b.put_many([f"statdir/f{i:05d}" for i in range(s.stat_files)], b"s" * SMALL)
    if "untar" in sessions:
        make_tarball(b.tarball, s.tar_files)


def make_tarball(path: Path, files: int) -> None:
    """A synthetic source tree: ~`files` text files of 200 B - 16 KiB in nested directories."""
    rng = random.Random(42)
    words = [f"token{i}" for i in range(500)]
    per_dir = 20
    with tarfile.open(path, "w") as tar:
        for i in range(files):
            d = i // per_dir
            name = f"tree/pkg{d // 10:02d}/mod{d % 10}/file{i:04d}.py"
            size = int(rng.lognormvariate(7.5, 1.0))
            size = max(200, min(16 * 1024, size))
            text = " ".join(rng.choice(words) for _ in range(size // 7))[:size].encode()
            info = tarfile.TarInfo(name)
            info.size = len(text)
            info.mtime = 1_700_000_000
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(text))


# -- mount sessions ----------------------------------------------------------------------------

def run_mount_session(b: Bench, target: str, session: str, tag: str) -> dict[str, Sample]:
    if session == "write":
        b.warm_source()  # the local side is read from memory, not disk
    if session == "rename":
        rename_setup(b, tag)  # before the mount, which then sees it for the first time
    m = b.mounts.mount(target)
    b.daemon_pids = m.pids
    try:
        return MOUNT_SESSIONS[session](b, m, tag)
    finally:
        b.daemon_pids = []
        b.mounts.unmount(m)
        if session in CLEAN_UP:
            b.delete_prefix(CLEAN_UP[session](tag))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_snapshot(b: Bench) -> dict[str, float]:
    own = os.times()
    out = {"bench_cpu_s": own.user + own.system}
    if b.daemon_pids:
        out["daemon_cpu_s"] = sum(cpu_seconds(p) for p in b.daemon_pids)
    if b.server_pid:
        out["server_cpu_s"] = cpu_seconds(b.server_pid)
    return out


def timed(b: Bench, body: Callable[[], dict[str, Any] | None]) -> Sample:
    """Runs `body` under the clock; the sample also carries the CPU seconds the bench, the mount
    daemon and the server spent meanwhile (where the time went), and the proxy's counts."""
    before = b.counts()
    cpu = cpu_snapshot(b)
    start = time.perf_counter()
    extra = body() or {}
    seconds = time.perf_counter() - start
    extra.update({k: round(v - cpu[k], 2) for k, v in cpu_snapshot(b).items() if k in cpu})
    return Sample(seconds, requests=b.diff(before), extra=extra)


def mount_seqwrite(b: Bench, m: Mount, tag: str) -> dict[str, Sample]:
    key = f"w-{tag}.bin"

    def body() -> dict[str, Any]:
        t0 = time.perf_counter()
        with open(b.src, "rb") as src, open(m.path / key, "wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
        closed = time.perf_counter() - t0
        at_close = wait_until(lambda: b.size_of(key) == b.sizes.big, 900, key)
        return {"close_seconds": round(closed, 3), "durable_at_close": at_close}

    return {"seqwrite": timed(b, body)}


def read_all(path: Path, crc: bool) -> tuple[int, int]:
    total = value = 0
    buf = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):  # type: ignore[attr-defined]
            total += n
            if crc:
                value = zlib.crc32(memoryview(buf)[:n], value)
    return total, value


def timed_read(b: Bench, path: Path, extra: dict[str, Any]) -> Sample:
    def body() -> dict[str, Any]:
        total, crc = read_all(path, b.verify)
        if total != b.sizes.big:
            raise OSError(f"read {total} bytes, expected {b.sizes.big}")
        if b.verify and crc != b.src_crc:
            raise OSError("read bytes differ from the object's (crc32)")
        return extra

    return timed(b, body)


def mount_read(b: Bench, m: Mount, tag: str) -> dict[str, Sample]:
    path = m.path / "data" / "big.bin"
    cold = timed_read(b, path, {})
    dropped = b.drop_page_cache()
    return {"coldread": cold, "warmread": timed_read(b, path, {"page_cache_dropped": dropped})}


def random_offsets(b: Bench, tag: str) -> list[int]:
    rng = random.Random(tag)
    return [rng.randrange(b.sizes.big // SMALL) * SMALL for _ in range(b.sizes.random_reads)]


def mount_randread(b: Bench, m: Mount, tag: str) -> dict[str, Sample]:
    offsets = random_offsets(b, tag)
    got: list[bytes] = []

    def body() -> None:
        fd = os.open(m.path / "data" / "big.bin", os.O_RDONLY)
        try:
            got.extend(os.pread(fd, SMALL, off) for off in offsets)
        finally:
            os.close(fd)

    sample = timed(b, body)
    check_random(b, offsets, got)
    return {"randread": sample}


def check_random(b: Bench, offsets: list[int], got: list[bytes]) -> None:
    if any(len(g) != SMALL for g in got):
        raise OSError("a 4 KiB pread came back short")
    if b.verify:
        with open(b.src, "rb") as f:
            for off, data in zip(offsets, got, strict=True):
                f.seek(off)
                if f.read(SMALL) != data:
                    raise OSError(f"pread at {off} returned wrong bytes")


def payload(i: int) -> bytes:
    return (f"{i:08d}".encode() * (SMALL // 8))[:SMALL]


def mount_create(b: Bench, m: Mount, tag: str) -> dict[str, Sample]:
    prefix = f"c-{tag}/"
    (m.path / prefix).mkdir()
    n = b.sizes.small_files

    def body() -> dict[str, Any]:
        t0 = time.perf_counter()
        for i in range(n):
            with open(m.path / prefix / f"f{i:05d}", "wb") as f:
                f.write(payload(i))
        closed = time.perf_counter() - t0
        at_close = wait_until(lambda: len(b.file_keys(prefix)) == n, 600, prefix)
        return {"close_seconds": round(closed, 3), "durable_at_close": at_close}

    return {"create": timed(b, body)}


def mount_ls(b: Bench, m: Mount, tag: str) -> dict[str, Sample]:
    out: list[str] = []

    def body() -> None:
        res = subprocess.run(["ls", "-l", "--color=never", str(m.path / "bigdir")],
                             capture_output=True, text=True, check=True)
        out.extend(res.stdout.splitlines())

    sample = timed(b, body)
    if len(out) - 1 != b.sizes.bigdir:
        raise OSError(f"ls -l listed {len(out) - 1} entries, expected {b.sizes.bigdir}")
    return {"ls": sample}


def mount_stat(b: Bench, m: Mount, tag: str) -> dict[str, Sample]:
    names = [m.path / "statdir" / f"f{i:05d}" for i in range(b.sizes.stat_files)]
    sizes: list[int] = []

    def body() -> None:
        sizes.extend(os.stat(p).st_size for p in names)

    sample = timed(b, body)
    if set(sizes) != {SMALL}:
        raise OSError(f"stat returned sizes {sorted(set(sizes))[:5]}, expected {SMALL}")
    return {"stat": sample}


def rename_names(tag: str) -> tuple[str, str]:
    return f"r-{tag}/src/", f"r-{tag}/dst/"


def rename_setup(b: Bench, tag: str) -> None:
    src, _ = rename_names(tag)
    b.put_many([f"{src}f{i:04d}" for i in range(b.sizes.rename_files)], b"r" * SMALL)
    # s3rver 3.7 leaves a prefix out of a delimited listing when it holds only deeper keys:
    # one object beside src/ keeps r-TAG/ visible in the root listing for every contender.
    b.admin.put_object(Bucket=b.bucket, Key=f"r-{tag}/keep", Body=b"")


def renamed(b: Bench, src: str, dst: str) -> bool:
    return len(b.file_keys(dst)) == b.sizes.rename_files and not b.file_keys(src)


def mount_rename(b: Bench, m: Mount, tag: str) -> dict[str, Sample]:
    src, dst = rename_names(tag)

    def body() -> dict[str, Any]:
        os.rename(m.path / src, m.path / dst)
        at_close = wait_until(lambda: renamed(b, src, dst), 600, dst)
        return {"durable_at_return": at_close}

    return {"rename": timed(b, body)}


def mount_untar(b: Bench, m: Mount, tag: str) -> dict[str, Sample]:
    prefix = f"u-{tag}/"
    (m.path / prefix).mkdir()
    n = b.sizes.tar_files

    def body() -> dict[str, Any]:
        t0 = time.perf_counter()
        subprocess.run(["tar", "-xf", str(b.tarball), "-C", str(m.path / prefix)], check=True,
                       capture_output=True)
        closed = time.perf_counter() - t0
        at_close = wait_until(lambda: len(b.file_keys(prefix + "tree/")) == n, 600, prefix)
        return {"close_seconds": round(closed, 3), "durable_at_close": at_close}

    return {"untar": timed(b, body)}


MOUNT_SESSIONS: dict[str, Callable[[Bench, Mount, str], dict[str, Sample]]] = {
    "write": mount_seqwrite, "read": mount_read, "random": mount_randread,
    "create": mount_create, "ls": mount_ls, "stat": mount_stat, "rename": mount_rename,
    "untar": mount_untar,
}
CLEAN_UP: dict[str, Callable[[str], str]] = {
    "write": lambda tag: f"w-{tag}.bin", "create": lambda tag: f"c-{tag}/",
    "rename": lambda tag: f"r-{tag}/", "untar": lambda tag: f"u-{tag}/",
}
