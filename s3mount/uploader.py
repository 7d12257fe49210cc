"""Commit a staged file to the bucket: one PUT when small, else a parallel multipart upload.

The part size grows with the file so that S3's 10,000-part limit never caps a file below S3's own
5 TiB object limit.  A multipart upload that fails is aborted in a shielded `finally`, so no
half-done upload is left behind; the staged data stays for the caller to retry.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from s3mount.errors import FsError, NotFound
from s3mount.parts import plan_parts
from s3mount.store import ObjectStore

log = logging.getLogger(__name__)

__all__ = ["Multipart", "PartSource", "Uploader"]


@dataclass
class Multipart:
    """A multipart upload in progress, and the parts already sent: number -> (etag, version,
    length).  `busy` counts part uploads still running in the background."""

    key: str
    upload_id: str
    metadata: dict[str, str]
    parts: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    busy: int = 0
    idle: trio.Event = field(default_factory=trio.Event)

    async def wait_idle(self) -> None:
        while self.busy:
            await self.idle.wait()


def multipart_etag(parts: list[tuple[int, str]]) -> str:
    """The ETag S3 gives a completed multipart upload: the MD5 of its parts' MD5s, and their
    number."""
    try:
        digests = b"".join(bytes.fromhex(etag.strip('"')) for _, etag in sorted(parts))
    except ValueError:
        return ""  # not MD5s: this server's ETags cannot be foreseen
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"


def file_md5(path: str, size: int) -> str:
    """The MD5 of the first `size` bytes of a file: the ETag of a single PUT of them."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        remaining = size
        while remaining > 0:
            chunk = f.read(min(remaining, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


# How to produce one part at commit: the bytes to send (after `prepare`), or a server-side copy.
PartSource = Callable[[int, int, int], Awaitable[str]]


class Uploader:
    def __init__(self, store: ObjectStore, part_size: int, single_put_limit: int,
                 concurrency: int) -> None:
        self.store = store
        self.part_size = part_size
        self.single_put_limit = single_put_limit
        self.concurrency = concurrency

    async def upload(self, key: str, path: str, size: int, metadata: dict[str, str],
                     expect: str | None = None,
                     completing: Callable[[str], Awaitable[None]] | None = None) -> str:
        """Upload `size` bytes of the file at `path` as object `key`; returns the new ETag.
        With `expect`, the write is conditional (`Stale` when the object is not as expected);
        `completing` is as for `finish` (multipart only)."""
        if size <= self.single_put_limit:
            return await self.store.put_file(key, path, size, metadata, expect)
        upload = await self.begin(key, metadata)

        async def send(number: int, offset: int, length: int) -> str:
            return await self.store.upload_part(key, upload.upload_id, number, path, offset,
                                                length)

        return await self.finish(upload, size, send, expect, completing=completing)

    async def begin(self, key: str, metadata: dict[str, str]) -> Multipart:
        return Multipart(key, await self.store.create_multipart(key, metadata), metadata)

    async def send_part(self, upload: Multipart, number: int, path: str, offset: int,
                        length: int, version: int) -> None:
        """Upload one part in the background; a failure only means the commit sends it again."""
        upload.busy += 1
        try:
            etag = await self.store.upload_part(upload.key, upload.upload_id, number, path,
                                                offset, length)
            upload.parts[number] = (etag, version, length)
        except FsError as exc:
            log.info("early upload of part %d of %s failed, it will be retried: %s", number,
                     upload.key, exc)
        finally:
            upload.busy -= 1
            if not upload.busy:
                upload.idle.set()
                upload.idle = trio.Event()

    async def finish(self, upload: Multipart, size: int, source: PartSource,
                     expect: str | None = None, keep: bool = False,
                     completing: Callable[[str], Awaitable[None]] | None = None) -> str:
        """Send every part `source` produces, in parallel, and complete the upload.
        `completing` is told the ETag the completed object will have, before it is asked for.

        Any failure aborts the upload (shielded, so cancellation cannot skip it), unless `keep`:
        when some parts exist nowhere else, the upload stays for the next try.
        """
        plan = plan_parts(size, self.part_size)
        done: list[tuple[int, str]] = []
        slots = trio.Semaphore(self.concurrency)

        async def one(number: int, offset: int, length: int) -> None:
            async with slots:
                done.append((number, await source(number, offset, length)))

        completed = False
        try:
            try:
                async with trio.open_nursery() as nursery:
                    for number, offset, length in plan:
                        nursery.start_soon(one, number, offset, length)
            except* FsError as failed:
                raise failed.exceptions[0] from None  # callers catch an FsError, not a group
            if completing is not None:
                await completing(multipart_etag(done))
            etag = await self.store.complete_multipart(upload.key, upload.upload_id, done,
                                                       expect)
            completed = True
            log.debug("uploaded %s: %d bytes in %d parts", upload.key, size, len(plan))
            return etag
        finally:
            if not completed and not keep:
                await self.abort(upload)

    async def abort(self, upload: Multipart) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self.store.abort_multipart(upload.key, upload.upload_id)
            except NotFound:  # gone: completed by a request whose answer was lost, or aborted
                log.debug("multipart upload of %s already gone", upload.key)
            except FsError as exc:
                log.warning("could not abort the multipart upload of %s: %s", upload.key, exc)
