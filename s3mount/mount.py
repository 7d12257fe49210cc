"""Builds the object graph, runs pyfuse3 on trio, and unmounts cleanly.

`run` returns once the filesystem is unmounted.  On `fusermount3 -u`/`umount` the kernel ends the
session after every file was closed (and so committed); on SIGTERM/SIGINT every dirty file is
uploaded first, then the mount is taken down.  `on_ready` is called only once the mount answers.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

from s3mount.blockcache import BlockCache
from s3mount.blocking import Background, Limiters, run_blocking
from s3mount.config import MountConfig
from s3mount.errors import ConfigError
from s3mount.files import FileData
from s3mount.fs import Filesystem
from s3mount.fuse_ops import FuseOperations
from s3mount.handles import HandleTable
from s3mount.inodes import InodeTable
from s3mount.namespace import Namespace
from s3mount.s3 import S3Store
from s3mount.uploader import Uploader

log = logging.getLogger(__name__)


def build_filesystem(config: MountConfig, store: Any, limiters: Limiters,
                     background: Background | None = None) -> Filesystem:
    cache_dir = config.cache_path()
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(cache_dir, 0o700)
    table = InodeTable(config.uid, config.gid, config.dir_mode)
    namespace = Namespace(table, store, config)
    uploader = Uploader(store, config.part_size, config.single_put_limit, config.max_concurrency)
    blocks = BlockCache(cache_dir / "blocks", config.cache_budget(), config.block_size,
                        limiters.disk)
    files = FileData(store, namespace, uploader, limiters, cache_dir / "staging", blocks,
                     background or Background(), config.max_readahead)
    return Filesystem(config, store, table, namespace, files, HandleTable())


def fuse_options(config: MountConfig) -> set[str]:
    options = {f"fsname=s3mount:{config.bucket}", "subtype=s3mount", "default_permissions"}
    if config.allow_other:
        options.add("allow_other")
    if config.read_only:
        options.add("ro")
    return options


def run(config: MountConfig, client: Any, on_ready: Callable[[], None] | None = None) -> int:
    limiters = Limiters(config.max_concurrency)
    store = S3Store(client, config.bucket, config.prefix, limiters.s3)
    background = Background()
    fs = build_filesystem(config, store, limiters, background)
    ops = FuseOperations(fs, attr_timeout=config.metadata_ttl, entry_timeout=config.metadata_ttl)
    try:
        pyfuse3.init(ops, config.mountpoint, fuse_options(config))
    except RuntimeError as exc:
        raise ConfigError(f"cannot mount on {config.mountpoint}: {exc} "
                          "(is /dev/fuse there, and fusermount3 installed?)") from None
    failed = 0
    try:
        failed = trio.run(_serve, fs, limiters, background, config.mountpoint, on_ready)
    finally:
        pyfuse3.close(unmount=True)
    log.info("unmounted %s", config.mountpoint)
    return 1 if failed else 0


async def _serve(fs: Filesystem, limiters: Limiters, background: Background, mountpoint: str,
                 on_ready: Callable[[], None] | None) -> int:
    async with trio.open_nursery() as nursery:
        background.nursery = nursery
        async def fuse_main() -> None:
            await pyfuse3.main()
            nursery.cancel_scope.cancel()  # the kernel ended the session (umount)

        nursery.start_soon(fuse_main)
        nursery.start_soon(_stop_on_signal, fs)
        await run_blocking(limiters.disk, os.stat, mountpoint)  # answers only once live
        log.info("mounted on %s", mountpoint)
        if on_ready is not None:
            on_ready()
    with trio.CancelScope(shield=True):
        return await fs.commit_all()


async def _stop_on_signal(fs: Filesystem) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s: uploading every dirty file, then unmounting",
                     signal.Signals(signum).name)
            with trio.CancelScope(shield=True):
                await fs.commit_all()
            pyfuse3.terminate()
            return
