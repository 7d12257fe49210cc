"""A server-side copy too large for one CopyObject (over 5 GiB): a multipart upload whose parts
are UploadPartCopy requests, run in parallel, aborted in a shielded `finally` on any failure.

A multipart upload starts with no user metadata of its own, so the copy always carries the full
metadata explicitly: the caller's, or else the source's as a HEAD reads it (mode, owner, mtime,
xattrs, the symlink type).  Every part is pinned to one version of the source
(`CopySourceIfMatch`), the one the caller expects or else the one that HEAD saw, so a source
replaced mid-copy fails the copy with `Stale` instead of mixing two versions.
"""

from __future__ import annotations

import logging

import trio

from s3mount.errors import FsError, NotFound, Stale
from s3mount.parts import MIB, plan_parts
from s3mount.store import ObjectStore

log = logging.getLogger(__name__)

# Large parts: each is one request whatever its size, and the layout of `plan_parts` keeps them
# within UploadPartCopy's 5 GiB limit (512 MiB doubling every 1,000 parts reaches 5 TiB at 4 GiB).
COPY_PART = 512 * MIB
PARALLEL_PARTS = 4


async def multipart_copy(store: ObjectStore, src: str, dst: str, size: int,
                         metadata: dict[str, str] | None, expect: str | None) -> str:
    """Copy object `src` (`size` bytes) to `dst` part by part; returns the new ETag.
    `metadata` None: the source's own.  `expect`: the source's ETag it must still have."""
    if metadata is None or expect is None:
        info = await store.head(src)
        if info is None:
            raise NotFound(src)
        if expect is not None and info.etag != expect:
            raise Stale(f"{src} is no longer the version {expect}")
        expect = info.etag
        if metadata is None:
            metadata = dict(info.metadata or {})
    upload_id = await store.create_multipart(dst, metadata)
    done: list[tuple[int, str]] = []
    slots = trio.Semaphore(PARALLEL_PARTS)

    async def one(number: int, offset: int, length: int) -> None:
        async with slots:
            done.append((number, await store.upload_part_copy(
                dst, upload_id, number, src, offset, offset + length, expect)))

    completed = False
    try:
        try:
            async with trio.open_nursery() as nursery:
                for number, offset, length in plan_parts(size, COPY_PART):
                    nursery.start_soon(one, number, offset, length)
        except* FsError as failed:
            raise failed.exceptions[0] from None  # callers catch an FsError, not a group
        # Onto itself: complete only over the version the parts came from.
        etag = await store.complete_multipart(dst, upload_id, done,
                                              expect if dst == src else None)
        completed = True
        log.debug("copied %s to %s: %d bytes in %d parts", src, dst, size, len(done))
        return etag
    finally:
        if not completed:
            with trio.CancelScope(shield=True):
                try:
                    await store.abort_multipart(dst, upload_id)
                except Exception as exc:  # noqa: BLE001 - the copy's own error matters more
                    log.warning("could not abort the multipart copy to %s: %s", dst, exc)
