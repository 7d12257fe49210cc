"""Builds the object graph, runs pyfuse3 on trio, and unmounts cleanly.

`run` returns once the filesystem is unmounted.  On `fusermount3 -u`/`umount` the kernel ends the
session after every file was closed (and so committed); on SIGTERM/SIGINT every dirty file is
uploaded first, then the mount is taken down; either way the uploads left are reported every
second (log, STATUS=) until done.  `on_ready` is called, and READY=1 sent to `$NOTIFY_SOCKET`, only
once the mount answers a stat and the status socket listens.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from s3mount import malloc_tuning, metaqueue, probing, status
from s3mount.attrcache import RememberingStore
from s3mount.blockcache import BlockCache
from s3mount.capabilities import Capabilities
from s3mount.config import MountConfig
from s3mount.errors import ConfigError
from s3mount.files import FileData
from s3mount.fs import Filesystem
from s3mount.fuse_ops import FuseOperations
from s3mount.handles import HandleTable
from s3mount.inodes import InodeTable
from s3mount.keys import RESERVED_NAME
from s3mount.lean import lean_blockers, make_store
from s3mount.markers import MarkerStore
from s3mount.namespace import Namespace
from s3mount.notify import Notifier
from s3mount.recovery import Recovery
from s3mount.requestargs import RequestArgs
from s3mount.status import Monitor, human_bytes
from s3mount.uploader import Uploader
from s3mount.workers import Background, Limiters, run_blocking

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 1.0  # seconds between STATUS= updates of a stop
PROGRESS_LOG_EVERY = 5  # ... and between its log lines, in those intervals
STATUS_INTERVAL = 5.0  # seconds between STATUS= updates while serving


def build_filesystem(config: MountConfig, store: Any, limiters: Limiters,
                     background: Background | None = None,
                     capabilities: Capabilities | None = None) -> Filesystem:
    capabilities = capabilities or Capabilities()
    store = MarkerStore(store, capabilities)
    cache_dir = config.cache_path()
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(cache_dir, 0o700)
    table = InodeTable(config.uid, config.gid, config.dir_mode)
    background = background or Background()
    namespace = Namespace(table, store, config, background)
    uploader = Uploader(store, config.part_size, config.single_put_limit, config.max_concurrency)
    blocks = BlockCache(cache_dir / "blocks", config.cache_budget(), config.block_size,
                        limiters.disk)
    handles = HandleTable()
    files = FileData(store, namespace, uploader, limiters, cache_dir / "staging", blocks,
                     background, handles, config.max_readahead,
                     config.conditional_writes and capabilities.conditional_put is not False)
    return Filesystem(config, store, table, namespace, files, handles)


def find_capabilities(config: MountConfig, client: Any) -> Capabilities:
    """Probe the endpoint once, say what was found, and warn of what is missing."""
    found = probing.probe(client, config.bucket, config.prefix, config.read_only,
                          RequestArgs(config))
    log.info("endpoint capabilities: %s%s", found.summary(),
             " (a read-only mount writes no probes)" if config.read_only else "")
    if found.conditional_put is False and config.conditional_writes:
        log.warning("the endpoint does not honour conditional writes (If-None-Match/If-Match): "
                    "writing as with --no-conditional-writes, so a file changed by another "
                    "client meanwhile is overwritten instead of kept under a conflict name")
    if found.marker_metadata is False:
        log.info("the endpoint drops metadata on directory markers: directory attributes are "
                 "kept in a hidden %s object in each directory", RESERVED_NAME)
    if found.upload_part_copy is False:
        log.info("the endpoint has no UploadPartCopy: unchanged parts of a large file being "
                 "rewritten are downloaded and uploaded again")
    return found


def fuse_options(config: MountConfig) -> set[str]:
    options = {f"fsname=s3mount:{config.bucket}", "subtype=s3mount", "default_permissions"}
    if config.allow_other:
        options.add("allow_other")
    if config.read_only:
        options.add("ro")
    return options


def describe(config: MountConfig) -> str:
    prefix = config.prefix.rstrip("/")
    return f"s3://{config.bucket}{'/' + prefix if prefix else ''} on {config.mountpoint}"


def lock_cache_dir(cache_dir: Path) -> Any:
    """Hold the cache directory for this daemon alone: two mounts sharing staging files would
    upload (or recover) each other's data."""
    handle = open(cache_dir / "lock", "a+",  # noqa: SIM115 - held for the daemon's life
                  opener=lambda path, flags: os.open(path, flags, 0o600))
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"the cache directory {cache_dir} is in use by another s3mount; "
                          "give each mount its own --cache-dir") from None
    return handle


def recover(config: MountConfig, fs: Filesystem) -> None:
    """Finish what a crashed mount of the same bucket/prefix/cache left staged."""
    staging = config.cache_path() / "staging"
    outcome = trio.run(Recovery(staging, fs.store, fs.files.uploader,
                                fs.files.conditional).run)
    # After the data: a record whose file was also being written applies to the version the
    # data's recovery put in place, and finds it already carries the change.
    trio.run(metaqueue.recover, config.cache_path() / "attrs", fs.store)
    if outcome.recovered or outcome.kept:
        log.info("recovery after a crash: %d files uploaded (%d under conflict keys), "
                 "%d kept staged", outcome.recovered, outcome.conflicts, outcome.kept)


def run(config: MountConfig, client: Any, on_ready: Callable[[], None] | None = None) -> int:
    malloc_tuning.return_big_buffers()  # before any worker thread makes an arena
    limiters = Limiters(config.max_concurrency, reads=config.max_read_concurrency)
    capabilities = find_capabilities(config, client)
    store = RememberingStore(make_store(client, config, limiters, capabilities),
                             config.cache_path() / "attrs.sqlite")
    blockers = lean_blockers(config)
    log.info("requests: %s", f"through boto3 ({', '.join(blockers)})" if blockers
             else "the lean path for HEAD, LIST, PUT and small GETs, boto3 for the rest")
    background = Background()
    fs = build_filesystem(config, store, limiters, background, capabilities)
    lock = lock_cache_dir(config.cache_path())
    store.open()
    recover(config, fs)
    monitor = Monitor(config, fs, store)
    notifier = Notifier()
    # The kernel holds names and attributes for half the TTL, as Namespace does: together an
    # answer is never older than the TTL.
    half = config.metadata_ttl / 2
    ops = FuseOperations(fs, attr_timeout=half, entry_timeout=half)
    try:
        pyfuse3.init(ops, config.mountpoint, fuse_options(config))
    except RuntimeError as exc:
        raise ConfigError(f"cannot mount on {config.mountpoint}: {exc} "
                          "(is /dev/fuse there, and fusermount3 installed?)") from None
    failed = 0
    try:
        failed = trio.run(_serve, fs, ops, limiters, background, monitor, notifier, on_ready)
    finally:
        pyfuse3.close(unmount=True)
        store.close()
        lock.close()
    log.info("unmounted %s", config.mountpoint)
    notifier.status(f"Unmounted {config.mountpoint}"
                    + (f"; {failed} files could not be uploaded" if failed else ""))
    return 1 if failed else 0


async def _serve(fs: Filesystem, ops: FuseOperations, limiters: Limiters, background: Background,
                 monitor: Monitor, notifier: Notifier, on_ready: Callable[[], None] | None,
                 ) -> int:
    config = monitor.config
    live = trio.Event()
    ops.on_init = live.set
    async with trio.open_nursery() as nursery:
        background.nursery = nursery
        async def fuse_main() -> None:
            await pyfuse3.main()
            nursery.cancel_scope.cancel()  # the kernel ended the session (umount)

        nursery.start_soon(fuse_main)
        nursery.start_soon(_stop_on_signal, fs, monitor, notifier)
        # Live once the kernel's INIT is answered.  Never a request to our own mount from here:
        # a thread waiting for its answer cannot die, so a SIGKILL meanwhile would leave the
        # daemon hung in the kernel until someone aborts the connection.
        await live.wait()
        device = await run_blocking(limiters.disk, mount_device, monitor.path)
        if config.kernel_readahead and device is not None:
            await run_blocking(limiters.disk, set_kernel_readahead, device,
                               config.kernel_readahead)
        await nursery.start(status.serve_socket, monitor)
        if config.metrics_port:
            await nursery.start(status.serve_metrics, monitor, config.metrics_port)
        monitor.state = "running"
        log.info("mounted %s", describe(config))
        if on_ready is not None:
            on_ready()
        notifier.ready(f"Mounted {describe(config)}")
        if notifier.enabled:
            nursery.start_soon(_report_status, monitor, notifier)
    with trio.CancelScope(shield=True):
        return await upload_all(fs, monitor, notifier)


def mount_device(path: str) -> int | None:
    """The device number of the (last) mount at `path`, read from /proc/self/mountinfo, which
    asks nothing of the mount itself."""
    device = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == path:
                major, minor = fields[2].split(":")
                device = os.makedev(int(major), int(minor))
    return device


def set_kernel_readahead(device: int, size: int) -> None:
    """Let the kernel read ahead `size` bytes on this mount: its reads then come as 1 MiB
    requests instead of 128 KiB ones, and a warm re-read runs about three times faster.  Only
    root may write the setting; others keep the kernel's default."""
    setting = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    try:
        setting.write_text(f"{max(1, size // 1024)}\n")
    except OSError as exc:
        log.debug("kernel read-ahead left at its default: %s", exc)
    else:
        log.debug("kernel read-ahead set to %d KiB", size // 1024)


async def _stop_on_signal(fs: Filesystem, monitor: Monitor, notifier: Notifier) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s: uploading every dirty file, then unmounting",
                     signal.Signals(signum).name)
            with trio.CancelScope(shield=True):
                await upload_all(fs, monitor, notifier)
            pyfuse3.terminate()
            return


def progress_line(files: int, left: int) -> str:
    return f"Stopping: uploading {files} file{'s' * (files != 1)}, {human_bytes(left)} left"


async def upload_all(fs: Filesystem, monitor: Monitor, notifier: Notifier) -> int:
    """Commit every dirty file, reporting the files and bytes left every second."""
    again = monitor.state == "stopping"
    monitor.begin_stop()
    files, left = monitor.progress()
    if again and not files:  # the unmount after a SIGTERM's uploads: nothing new to say
        return await fs.commit_all()
    if files:
        log.info("uploading %d dirty files (%s) before unmounting", files, human_bytes(left))
    notifier.stopping(progress_line(files, left) if files else "Stopping: unmounting")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_report_progress, monitor, notifier, files, left)
        failed = await fs.commit_all()
        nursery.cancel_scope.cancel()
    if files:
        log.info("uploads done: %d of %d files uploaded", files - failed, files)
    notifier.status(f"Stopping: {failed} files could not be uploaded" if failed
                    else "Stopping: every file uploaded, unmounting")
    return failed


async def _report_progress(monitor: Monitor, notifier: Notifier, files: int, left: int) -> None:
    """STATUS= every second, a log line every few; more stop time while bytes still move."""
    tick = 0
    while True:
        await trio.sleep(PROGRESS_INTERVAL)
        tick += 1
        now_files, now_left = monitor.progress()
        if now_files == 0:
            continue
        line = progress_line(now_files, now_left)
        notifier.status(line)
        if (now_files, now_left) != (files, left):
            notifier.extend_stop()
        if tick % PROGRESS_LOG_EVERY == 0:
            log.info("%s", line)
        files, left = now_files, now_left


async def _report_status(monitor: Monitor, notifier: Notifier) -> None:
    """STATUS= while serving (systemctl status shows it): requests, dirty files, errors."""
    while monitor.state == "running":
        snap = monitor.snapshot()
        s3, files = snap["s3"], snap["files"]
        notifier.status(f"Mounted {describe(monitor.config)}: {s3['requests']} requests, "
                        f"{files['dirty']} dirty files ({human_bytes(files['dirty_bytes'])}), "
                        f"{s3['errors']} errors")
        await trio.sleep(STATUS_INTERVAL)
