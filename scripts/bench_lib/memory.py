"""`--memory`: stream a big file into s3mount and back out while sampling the daemon's RSS.

The daemon is found by its cache directory (`pgrep -f -- "--cache-dir DIR"`); VmRSS is read from
/proc/PID/status every 0.2 s, labelled with the phase running, and the kernel's own high-water
mark (VmHWM, which sees peaks between samples) is read at the end of each mount.  Phases: write
(close included, then until the object is in the bucket), read back on the same mount, and a
cold read on a fresh mount.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from bench_lib.workloads import MIB, Bench, mib, read_all, wait_until


def status_kib(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pid = pid
        self.interval = interval
        self.phase = "idle"
        self.samples: list[tuple[float, str, int]] = []
        self._stop_event = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.is_set():
            kib = status_kib(self.pid, "VmRSS")
            if kib is not None:
                self.samples.append((round(time.monotonic() - self._t0, 2), self.phase, kib))
            self._stop_event.wait(self.interval)

    def stop(self) -> int | None:
        """Stops sampling; returns VmHWM (KiB) if the process is still there."""
        hwm = status_kib(self.pid, "VmHWM")
        self._stop_event.set()
        self.join()
        return hwm

    def peak(self, phase: str | None = None) -> int:
        return max((kib for _, p, kib in self.samples if phase in (None, p)), default=0)


def write_stream(path: Any, size: int) -> None:
    """`size` bytes of incompressible data, 1 MiB writes, from a 16 MiB random pattern."""
    pattern = bytearray(os.urandom(16 * MIB))
    view = memoryview(pattern)
    written = 0
    with open(path, "wb") as f:
        while written < size:
            pattern[:8] = written.to_bytes(8, "little")  # no two 16 MiB runs are alike
            for off in range(0, len(pattern), MIB):
                if written >= size:
                    break
                f.write(view[off:off + MIB])
                written += MIB


def run_memory(b: Bench, size: int) -> dict[str, Any]:
    key = "mem/stream.bin"
    result: dict[str, Any] = {"size": size, "size_text": mib(size), "interval_s": 0.2}
    m = b.mounts.mount("s3mount")
    try:
        pid = m.pids[0]
        (m.path / "mem").mkdir(exist_ok=True)
        sampler = RssSampler(pid)
        sampler.start()
        b.say(f"memory: writing {mib(size)} into the mount (daemon pid {pid})")
        sampler.phase = "write"
        t0 = time.perf_counter()
        write_stream(m.path / key, size)
        wait_until(lambda: b.size_of(key) == size, 1800, key)
        result["write_seconds"] = round(time.perf_counter() - t0, 2)
        b.say("memory: reading it back on the same mount")
        sampler.phase = "read"
        t0 = time.perf_counter()
        total, _ = read_all(m.path / key, False)
        result["read_seconds"] = round(time.perf_counter() - t0, 2)
        if total != size:
            raise OSError(f"read back {total} bytes, expected {size}")
        hwm = sampler.stop()
        result["same_mount"] = {"peak_rss_kib": sampler.peak(), "vmhwm_kib": hwm,
                                "peak_write_kib": sampler.peak("write"),
                                "peak_read_kib": sampler.peak("read"),
                                "samples": sampler.samples}
    finally:
        b.mounts.unmount(m)
    m = b.mounts.mount("s3mount")
    try:
        b.say("memory: cold read on a fresh mount")
        sampler = RssSampler(m.pids[0])
        sampler.phase = "cold-read"
        sampler.start()
        t0 = time.perf_counter()
        total, _ = read_all(m.path / key, False)
        result["cold_read_seconds"] = round(time.perf_counter() - t0, 2)
        hwm = sampler.stop()
        result["fresh_mount"] = {"peak_rss_kib": sampler.peak(), "vmhwm_kib": hwm,
                                 "samples": sampler.samples}
    finally:
        b.mounts.unmount(m)
        b.delete_prefix("mem/")
    return result


def memory_markdown(r: dict[str, Any]) -> str:
    same, fresh = r["same_mount"], r["fresh_mount"]

    def mb(kib: int | None) -> str:
        return "?" if kib is None else f"{kib / 1024:.0f} MiB"

    rate = r["size"] / 1e6
    return "\n".join([
        f"### Memory: s3mount daemon RSS while {r['size_text']} streams in and out",
        "",
        "| phase | time | throughput | peak VmRSS (0.2 s samples) |",
        "|---|---|---|---|",
        f"| write (until in the bucket) | {r['write_seconds']} s | "
        f"{rate / r['write_seconds']:.0f} MB/s | {mb(same['peak_write_kib'])} |",
        f"| read back, same mount | {r['read_seconds']} s | {rate / r['read_seconds']:.0f} MB/s"
        f" | {mb(same['peak_read_kib'])} |",
        f"| cold read, fresh mount | {r['cold_read_seconds']} s | "
        f"{rate / r['cold_read_seconds']:.0f} MB/s | {mb(fresh['peak_rss_kib'])} |",
        "",
        f"Kernel high-water mark (VmHWM): {mb(same['vmhwm_kib'])} for the write+read mount, "
        f"{mb(fresh['vmhwm_kib'])} for the fresh mount.  Target: below 200 MB "
        f"(~191 MiB): **{'met' if max(same['vmhwm_kib'] or same['peak_rss_kib'], fresh['vmhwm_kib'] or fresh['peak_rss_kib']) * 1024 < 200e6 else 'NOT met'}**.",  # noqa: E501
    ])
