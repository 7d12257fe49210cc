"""What a running mount is doing: counted in the daemon, read by `s3mount status MOUNTPOINT`.

`Monitor` reads the live objects (the store's `RequestStats`, the block cache's counters, the inode
table's staged files) into one plain dict; it changes nothing, and reads between awaits only, so
every snapshot is consistent under trio.  The daemon serves that dict as one JSON line on a unix
socket in the abstract namespace, named from the mount point (no file to clean up, no path-length
limit), and, with `--metrics-port`, as Prometheus text on 127.0.0.1.  The socket answers only
its own user and root (SO_PEERCRED); the client trusts only a server running as the mount's owner
(`user_id=` in /proc/mounts) or root, so another user cannot pose as a mount's daemon.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from s3mount import __version__
from s3mount.mounttable import FSTYPE, PROC_MOUNTS, mount_entries

log = logging.getLogger(__name__)

PEERCRED = struct.Struct("3i")  # pid, uid, gid
LABELS = ["bucket", "mountpoint"]  # on every metric
MAX_REQUEST = 8192


def socket_name(mountpoint: str) -> bytes:
    """The abstract socket name for a mount point as /proc/mounts shows it (resolved).

    The daemon resolves its mount point before mounting: afterwards a stat of it from the trio
    thread would wait for the very loop that must answer it.
    """
    digest = hashlib.sha256(mountpoint.encode("utf-8", "surrogateescape"))
    return b"\0s3mount-status-" + digest.hexdigest()[:32].encode()


def peer_uid(sock: Any) -> int:
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
    return int(PEERCRED.unpack(data)[1])


def sent_early(staged: Any) -> int:
    """Bytes of a staged file already in the bucket as parts of its multipart upload (parts
    sent while it was being written, and still of the current version)."""
    upload = getattr(staged, "upload", None)
    parts = getattr(upload, "parts", None) or {}
    total = 0
    for number, entry in list(parts.items()):
        try:
            _, version, length = entry
            if staged.version(number) == version:
                total += int(length)
        except (TypeError, ValueError, AttributeError):
            continue
    return total


def pending_uploads(inodes: list[Any]) -> tuple[int, int]:
    """(files, bytes) staged locally and not yet in the bucket: what a stop must upload."""
    files = size = 0
    for inode in inodes:
        staged = inode.staged
        if staged is not None and not inode.unlinked and (staged.dirty or inode.local_only):
            files += 1
            # Bytes only in the old object are copied server-side: nothing to send.
            size += max(0, int(staged.size) - sent_early(staged) - staged.remote_bytes())
    return files, size


class Monitor:
    """One mount's numbers, and its state (running, or stopping with the uploads left)."""

    def __init__(self, config: Any, fs: Any, store: Any) -> None:
        self.config = config
        self.fs = fs
        self.store = store
        self.path = os.path.realpath(config.mountpoint)  # before mounting: see socket_name
        self.started = time.time()
        self.state = "starting"
        self._stop_base: tuple[int, int] | None = None  # (pending bytes, bytes_out) at the stop

    def pending(self) -> tuple[int, int]:
        return pending_uploads(self.fs.table.all())

    def begin_stop(self) -> None:
        self.state = "stopping"
        self._stop_base = (self.pending()[1], self.store.stats.bytes_out)

    def progress(self) -> tuple[int, int]:
        """(files, bytes) left to upload; bytes count down as parts reach the bucket."""
        files, size = self.pending()
        if self._stop_base is None or files == 0:
            return files, size if files else 0
        base_bytes, base_out = self._stop_base
        sent = self.store.stats.bytes_out - base_out
        return files, min(size, max(0, base_bytes - sent))

    def snapshot(self) -> dict[str, Any]:
        config, fs = self.config, self.fs
        inodes = fs.table.all()
        files, size = pending_uploads(inodes)
        cache = fs.files.cache
        lookups = cache.hits + cache.misses
        out: dict[str, Any] = {
            "version": __version__, "pid": os.getpid(), "state": self.state,
            "mountpoint": config.mountpoint, "bucket": config.bucket, "prefix": config.prefix,
            "endpoint": config.endpoint_url or "AWS", "read_only": config.read_only,
            "uptime": round(time.time() - self.started, 1),
            "s3": self.store.stats.as_dict(),
            "cache": {"used_bytes": cache.used_bytes(), "capacity_bytes": int(cache.lru.maxsize),
                      "hits": cache.hits, "misses": cache.misses,
                      "hit_rate": round(cache.hits / lookups, 4) if lookups else None},
            "files": {"inodes": len(inodes), "open": sum(i.opens for i in inodes),
                      "dirty": files, "dirty_bytes": size},
        }
        metaq = getattr(fs, "metaq", None)
        if metaq is not None:
            out["metadata_pending"] = metaq.stats()
        writeback = getattr(fs, "writeback", None)
        if writeback is not None:
            out["writeback"] = writeback.stats()
        if self.state == "stopping":
            left_files, left_bytes = self.progress()
            out["stop"] = {"files_left": left_files, "bytes_left": left_bytes}
        return out


# -- the daemon's side -----------------------------------------------------------------------


async def serve_socket(monitor: Monitor, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Answer each connection with one JSON line; runs until cancelled."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(socket_name(monitor.path))
    except OSError as exc:
        sock.close()
        log.warning("no status socket for %s: %s", monitor.config.mountpoint, exc)
        task_status.started()
        return
    sock.listen(16)

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            if peer_uid(stream.socket) not in (0, os.geteuid()):
                return
            line = json.dumps(monitor.snapshot()) + "\n"
            try:
                await stream.send_all(line.encode())
            except trio.BrokenResourceError:
                pass

    task_status.started()
    await trio.serve_listeners(answer, [trio.SocketListener(sock)])


def prometheus(snap: dict[str, Any]) -> str:
    """The snapshot as Prometheus text exposition (version 0.0.4), written by prometheus_client."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    return generate_latest(registry).decode()


class SnapshotCollector(Collector):
    """One snapshot's metrics, every sample labelled with the bucket and the mount point."""

    def __init__(self, snap: dict[str, Any]) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        where = [snap["bucket"], snap["mountpoint"]]
        s3 = snap["s3"]
        info = GaugeMetricFamily("s3mount_info", "The mount this s3mount serves.",
                                 labels=[*LABELS, "version"])
        info.add_metric([*where, snap["version"]], 1)
        yield info

        def by_kind(name: str, text: str, counts: dict[str, int]) -> Metric:
            family = CounterMetricFamily(name, text, labels=[*LABELS, "kind"])
            for kind, value in sorted(counts.items()):
                family.add_metric([*where, kind], value)
            return family

        yield by_kind("s3mount_requests", "S3 requests by kind.", s3["by_kind"])
        yield by_kind("s3mount_request_errors", "Failed S3 requests by kind.",
                      s3["errors_by_kind"])
        for kind, name, text, section, field in METRICS:
            if section in snap:
                family = kind(name, text, labels=LABELS)
                family.add_metric(where, snap[section][field])
                yield family


_C, _G = CounterMetricFamily, GaugeMetricFamily
# (family, name, help, snapshot section, field): one sample each, labelled with the mount.
METRICS: list[tuple[type[Metric], str, str, str, str]] = [
    (_C, "s3mount_received_bytes", "Object bytes read from S3.", "s3", "bytes_in"),
    (_C, "s3mount_sent_bytes", "Object bytes written to S3.", "s3", "bytes_out"),
    (_G, "s3mount_requests_in_flight", "S3 requests under way.", "s3", "in_flight"),
    (_G, "s3mount_upload_requests_in_flight", "Uploads (PUT, parts) under way.", "s3",
     "uploads_in_flight"),
    (_C, "s3mount_cache_hits", "Block cache hits.", "cache", "hits"),
    (_C, "s3mount_cache_misses", "Block cache misses.", "cache", "misses"),
    (_G, "s3mount_cache_used_bytes", "Bytes in the block cache.", "cache", "used_bytes"),
    (_G, "s3mount_cache_capacity_bytes", "Block cache budget.", "cache", "capacity_bytes"),
    (_G, "s3mount_dirty_files", "Files not yet uploaded.", "files", "dirty"),
    (_G, "s3mount_dirty_bytes", "Bytes of files not yet uploaded.", "files", "dirty_bytes"),
    (_G, "s3mount_open_files", "Open file handles.", "files", "open"),
    (_G, "s3mount_writeback_files", "Closed files waiting for their upload.", "writeback",
     "files"),
    (_G, "s3mount_writeback_bytes", "Bytes of those files.", "writeback", "bytes"),
    (_G, "s3mount_writeback_oldest_age_seconds", "How long the oldest of them has waited.",
     "writeback", "oldest_age"),
    (_C, "s3mount_writeback_conflicts", "Background uploads that met another client's change "
     "(ours kept under a conflict name).", "writeback", "conflicts"),
]


async def serve_metrics(monitor: Monitor, port: int,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A minimal HTTP server on 127.0.0.1:port: GET /metrics answers; anything else is 404.

    prometheus_client writes the text; its own HTTP server is not used because it answers from
    a thread of its own, and the snapshot must be read on the trio thread, between awaits."""
    try:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    except OSError as exc:
        log.warning("no metrics on 127.0.0.1:%d: %s", port, exc)
        task_status.started()
        return

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            with trio.move_on_after(5):
                while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    request += chunk
            first = request.split(b"\r\n", 1)[0].split()
            if len(first) >= 2 and first[0] == b"GET" and first[1].split(b"?")[0] == b"/metrics":
                status, body = "200 OK", prometheus(monitor.snapshot()).encode()
            else:
                status, body = "404 Not Found", b"not found; try /metrics\n"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; "
                    f"charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            try:
                await stream.send_all(head.encode() + body)
            except trio.BrokenResourceError:
                pass

    task_status.started()
    await trio.serve_listeners(answer, listeners)


# -- the command's side ------------------------------------------------------------------------


def s3mount_mounts(table: str = PROC_MOUNTS) -> dict[str, int]:
    """Mount point -> owner uid (user_id=) of every s3mount mount."""
    return {entry.mountpoint: int(entry.option("user_id") or 0)
            for entry in mount_entries(table) if entry.fstype == FSTYPE}


class StatusError(Exception):
    pass


def query(mountpoint: str, timeout: float = 5.0) -> dict[str, Any]:
    """The snapshot of the daemon serving `mountpoint`."""
    owners = s3mount_mounts()
    path = os.path.abspath(mountpoint)
    if path not in owners:
        path = os.path.realpath(mountpoint)
    if path not in owners:
        raise StatusError(f"{mountpoint} is not an s3mount mount point")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_name(path))
        except OSError as exc:
            raise StatusError(f"the s3mount daemon of {mountpoint} does not answer ({exc}); "
                              "it may run as another user, or be an older version") from None
        if peer_uid(sock) not in (0, owners[path]):
            raise StatusError(f"the status socket of {mountpoint} is not served by the mount's "
                              "owner: not trusted")
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError as exc:
            raise StatusError(f"reading the status of {mountpoint}: {exc}") from None
    if not data:
        raise StatusError(f"the s3mount daemon of {mountpoint} refused (run as its user or root)")
    return dict(json.loads(data))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{minutes}m"] * bool(
        minutes)
    return " ".join(parts[:2]) or f"{secs}s"


def render(snap: dict[str, Any]) -> str:
    s3, cache, files = snap["s3"], snap["cache"], snap["files"]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(s3["by_kind"].items(), key=lambda kv: -kv[1]))
    rate = "n/a" if cache["hit_rate"] is None else f"{cache['hit_rate'] * 100:.1f}%"
    prefix = snap["prefix"].rstrip("/")
    lines = [
        f"{snap['mountpoint']}: s3://{snap['bucket']}{'/' + prefix if prefix else ''} at "
        f"{snap['endpoint']}{' (read-only)' if snap['read_only'] else ''}",
        f"  state:      {snap['state']}, pid {snap['pid']}, up {human_duration(snap['uptime'])},"
        f" s3mount {snap['version']}",
        f"  requests:   {s3['requests']}" + (f" ({kinds})" if kinds else "")
        + f", {s3['in_flight']} in flight",
        f"  bytes:      {human_bytes(s3['bytes_in'])} in, {human_bytes(s3['bytes_out'])} out",
        f"  cache:      {human_bytes(cache['used_bytes'])} of "
        f"{human_bytes(cache['capacity_bytes'])}, hit rate {rate} ({cache['hits']} hits, "
        f"{cache['misses']} misses)",
        f"  files:      {files['dirty']} dirty ({human_bytes(files['dirty_bytes'])}), "
        f"{files['open']} open, {s3['uploads_in_flight']} upload requests in flight",
        f"  errors:     {s3['errors']}" + (f" (last: {s3['last_error']})"
                                           if s3["last_error"] else ""),
    ]
    if "writeback" in snap:
        wb = snap["writeback"]
        lines.append(f"  write-back: {wb['files']} files ({human_bytes(wb['bytes'])}) waiting, "
                     f"oldest {wb['oldest_age']:.1f} s, after {wb['delay']:g} s; "
                     f"{wb['conflicts']} conflicts"
                     + (f" (last: {wb['last_conflict']})" if wb["last_conflict"] else ""))
    if "metadata_pending" in snap:
        mp = snap["metadata_pending"]
        lines.append(f"  attributes: {mp['files']} files waiting for their copy; {mp['sent']} "
                     f"copies sent, {mp['conflicts']} conflicts")
    if "stop" in snap:
        lines.append(f"  stopping:   {snap['stop']['files_left']} files, "
                     f"{human_bytes(snap['stop']['bytes_left'])} left to upload")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="s3mount status", description="Show what running s3mount mounts are doing: S3 "
        "requests, bytes in and out, cache use and hit rate, dirty files, uploads, errors.")
    parser.add_argument("mountpoints", nargs="*", metavar="MOUNTPOINT",
                        help="default: every s3mount mount this user can ask")
    parser.add_argument("--json", action="store_true", help="one JSON object per mount")
    args = parser.parse_args(argv)
    targets = args.mountpoints
    if not targets:
        try:
            targets = sorted(s3mount_mounts())
        except OSError as exc:
            print(f"s3mount status: cannot read /proc/mounts: {exc}", file=sys.stderr)
            return 1
        if not targets:
            print("s3mount status: no s3mount mounts", file=sys.stderr)
            return 1
    failed = 0
    for number, target in enumerate(targets):
        try:
            snap = query(target)
        except (StatusError, OSError, ValueError) as exc:
            print(f"s3mount status: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps(snap, sort_keys=True))
        else:
            print(("\n" if number else "") + render(snap))
    return 1 if failed else 0
