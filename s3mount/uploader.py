"""Commit a staged file to the bucket: one PUT when small, else a parallel multipart upload.

The part size grows with the file so that S3's 10,000-part limit never caps a file below S3's own
5 TiB object limit.  A multipart upload that fails is aborted in a shielded `finally`, so no
half-done upload is left behind; the staged data stays for the caller to retry.
"""

from __future__ import annotations

import logging
import math

import trio

from s3mount.errors import FileTooBig, FsError
from s3mount.store import ObjectStore

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_PART = 5 * MIB
MAX_PARTS = 10_000
MAX_OBJECT = 5 * 1024**4


def plan_parts(size: int, part_size: int) -> list[tuple[int, int, int]]:
    """(part number, offset, length) for a multipart upload of `size` bytes."""
    if size > MAX_OBJECT:
        raise FileTooBig(f"{size} bytes is over S3's 5 TiB object limit")
    part = max(part_size, MIN_PART, math.ceil(size / MAX_PARTS))
    part = math.ceil(part / MIB) * MIB
    return [(n + 1, off, min(part, size - off)) for n, off in enumerate(range(0, size, part))]


def unwrap_group(exc: BaseException) -> BaseException:
    """The single domain error inside a trio exception group, if that is all it holds."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if isinstance(inner, FsError):
                return inner
    return exc


class Uploader:
    def __init__(self, store: ObjectStore, part_size: int, single_put_limit: int,
                 concurrency: int) -> None:
        self.store = store
        self.part_size = part_size
        self.single_put_limit = single_put_limit
        self.concurrency = concurrency

    async def upload(self, key: str, path: str, size: int, metadata: dict[str, str]) -> str:
        """Upload `size` bytes of the file at `path` as object `key`; returns the new ETag."""
        if size <= self.single_put_limit:
            return await self.store.put_file(key, path, size, metadata)
        return await self._multipart(key, path, size, metadata)

    async def _multipart(self, key: str, path: str, size: int, metadata: dict[str, str]) -> str:
        plan = plan_parts(size, self.part_size)
        upload_id = await self.store.create_multipart(key, metadata)
        done: list[tuple[int, str]] = []
        slots = trio.Semaphore(self.concurrency)

        async def one(number: int, offset: int, length: int) -> None:
            async with slots:
                etag = await self.store.upload_part(key, upload_id, number, path, offset, length)
            done.append((number, etag))

        completed = False
        try:
            try:
                async with trio.open_nursery() as nursery:
                    for number, offset, length in plan:
                        nursery.start_soon(one, number, offset, length)
            except BaseExceptionGroup as group:
                raise unwrap_group(group) from None
            etag = await self.store.complete_multipart(key, upload_id, done)
            completed = True
            log.debug("uploaded %s: %d bytes in %d parts", key, size, len(plan))
            return etag
        finally:
            if not completed:
                with trio.CancelScope(shield=True):
                    try:
                        await self.store.abort_multipart(key, upload_id)
                    except FsError as exc:
                        log.warning("could not abort the multipart upload of %s: %s", key, exc)

