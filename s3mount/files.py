"""File contents: staging writes, committing them, and reading files through their staging.

`FileData` owns each inode's staged file and the per-inode lock that serialises every change of
it (write, truncate, commit), so a commit never uploads a file that is being written.  Reads of a
clean file go to `reading.ObjectReader` (block cache, read-ahead); reads of a staged file take
written bytes from the staging file and fetch the rest of the base object into it.  To keep
staged data within the cache budget (`budget.py`), parts already uploaded are dropped locally;
anything that needs their bytes back (a read, a rewrite, a truncate, a rename, an unlink) first
commits the file as it stands ("settles" it), after which they are the base object's bytes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import trio

from s3mount.blockcache import BlockCache
from s3mount.budget import SpaceGuard
from s3mount.errors import FsError, NoSpace, RemoteIO, Stale
from s3mount.handles import FileHandle, HandleTable
from s3mount.inodes import Inode
from s3mount.keys import conflict_key
from s3mount.namespace import Namespace
from s3mount.parts import part_span, parts_within
from s3mount.reading import KeyGone, ObjectReader
from s3mount.staging import StagedFile
from s3mount.store import EXPECT_ABSENT, ObjectStore, PosixAttrs, encode_attrs, encode_xattrs
from s3mount.uploader import Uploader, file_md5
from s3mount.workers import Background, Limiters, run_blocking

log = logging.getLogger(__name__)

FETCH_CHUNK = 8 * 1024 * 1024
RETRY_FIRST = 2.0  # seconds before a failed commit is tried again in the background
RETRY_MAX = 60.0
SYNC_EVERY = 3.0  # seconds a write may wait before its data and journal go to the disk


class FileData:
    def __init__(self, store: ObjectStore, namespace: Namespace, uploader: Uploader,
                 limiters: Limiters, staging_dir: Path, cache: BlockCache,
                 background: Background, handles: HandleTable, max_readahead: int,
                 conditional: bool = True) -> None:
        self.store = store
        self.namespace = namespace
        self.uploader = uploader
        self.limiters = limiters
        self.staging_dir = staging_dir
        self.cache = cache
        self.background = background
        self.handles = handles
        self.reader = ObjectReader(store, cache, background, max_readahead)
        self._locks: dict[int, trio.Lock] = {}
        self._retrying: set[int] = set()
        self._syncing: set[int] = set()
        self.conditional = conditional  # If-Match / If-None-Match on commits
        self.space = SpaceGuard(staging_dir, cache, limiters)

    def lock(self, inode: Inode) -> trio.Lock:
        return self._locks.setdefault(inode.ino, trio.Lock())

    async def _disk(self, fn, *args):  # type: ignore[no-untyped-def]
        return await run_blocking(self.limiters.disk, fn, *args)

    # -- staging -------------------------------------------------------------------------------

    async def stage(self, inode: Inode, truncate_to: int | None = None) -> StagedFile:
        """The inode's staged file, made on first use (empty base when truncating to 0)."""
        if inode.staged is None:
            base = None if truncate_to == 0 else inode.etag
            size = 0 if base is None else inode.size
            inode.staged = await self._disk(StagedFile, self.staging_dir, size, base,
                                            self.uploader.part_size)
            inode.staged.expect = inode.etag if inode.etag is not None else EXPECT_ABSENT
            self.space.live[inode.ino] = inode
        return inode.staged

    async def journal(self, inode: Inode) -> None:
        """Keep the crash journal of a dirty file in step with its key, metadata and upload."""
        staged = inode.staged
        if staged is None:
            return
        if inode.unlinked or not (staged.dirty or inode.local_only):
            if staged.journal is not None:
                await self._disk(staged.forget_journal)
            return
        meta = {k: v for k, v in self.metadata(inode).items() if k != "mtime"}
        fields = {"key": self.namespace.key(inode), "metadata": meta,
                  "upload_id": staged.upload.upload_id if staged.upload else None,
                  "expect": staged.expect}
        if staged.journal is None or any(staged.journal.get(k) != v for k, v in fields.items()):
            await self._disk(lambda: staged.set_journal(**fields))
        if staged.unsynced and inode.ino not in self._syncing and self.background.start(
                self._sync_soon, inode):
            self._syncing.add(inode.ino)

    async def sync_now(self, staged: StagedFile) -> None:
        await self._disk(staged.sync)

    async def _sync_soon(self, inode: Inode) -> None:
        """Writes are journaled cheaply (see journal.py); every few seconds their data and a
        checkpoint go to the disk, so a power cut loses at most those seconds."""
        try:
            await trio.sleep(SYNC_EVERY)
            async with self.lock(inode):
                staged = inode.staged
                if staged is not None and staged.unsynced and staged.journal is not None:
                    await self._disk(staged.sync)
        finally:
            self._syncing.discard(inode.ino)

    async def _fill_gaps(self, inode: Inode, staged: StagedFile, start: int, end: int) -> None:
        key = self.namespace.key(inode)
        for gap_start, gap_end in staged.remote_gaps(start, end):
            for chunk in range(gap_start, gap_end, FETCH_CHUNK):
                chunk_end = min(chunk + FETCH_CHUNK, gap_end)
                data = await self.store.get_range(key, chunk, chunk_end, staged.base_etag)
                await self._disk(staged.fill, chunk, data)

    async def materialize(self, inode: Inode) -> None:
        """Bring every byte of the file local, so it outlives its object (unlink while open)."""
        async with self.lock(inode):
            await self.materialize_locked(inode)

    async def materialize_locked(self, inode: Inode) -> None:
        """`materialize`, for a caller that holds the inode's lock."""
        staged = await self.stage(inode)
        if staged.sent:
            await self._settle(inode)
        await self._fill_gaps(inode, staged, 0, staged.size)

    async def keep_readable(self, inode: Inode, locked: bool = False) -> None:
        """An open file losing its key (unlink, replaced by a rename) stays readable, as on a
        disk: every byte of it comes local, from its object or its unfinished upload."""
        staged = inode.staged
        if inode.opens and (inode.etag is not None or staged is not None and staged.sent):
            if locked:  # the caller holds the inode's lock
                await self.materialize_locked(inode)
            else:
                await self.materialize(inode)

    async def write(self, inode: Inode, offset: int, data: bytes) -> int:
        async with self.lock(inode):
            staged = await self.stage(inode)
            await self.space.admit(inode, len(data), self._spill)
            if staged.sent_within(offset, offset + len(data)):  # perhaps dropped just now
                await self._settle(inode)
            written = await self._disk(staged.write, offset, data)
            inode.size = staged.size
            inode.mtime_ns = inode.ctime_ns = staged.written_ns = time.time_ns()
            if staged.size > self.uploader.single_put_limit and not inode.unlinked:
                await self._stream_parts(inode, staged, offset, offset + written)
            await self.journal(inode)
            return written

    async def _stream_parts(self, inode: Inode, staged: StagedFile, start: int,
                            end: int) -> None:
        """Upload the parts this write completed now, so close(2) waits only for the tail."""
        if staged.upload is None:
            start = 0  # the upload begins now: earlier parts may be complete already
        for number in parts_within(start, end, staged.part_size):
            part_start, part_end = part_span(number, staged.part_size)
            if not staged.complete(part_start, part_end):
                continue
            if staged.upload is None:
                # No mtime: it keeps changing until close; LastModified stands in for it.
                meta = {k: v for k, v in self.metadata(inode).items() if k != "mtime"}
                staged.upload = await self.uploader.begin(self.namespace.key(inode), meta)
            sent = staged.upload.parts.get(number)
            version = staged.version(number)
            if sent is None or sent[1] != version:
                self.background.start(self.uploader.send_part, staged.upload, number,
                                      staged.path, part_start, part_end - part_start, version)

    async def truncate(self, inode: Inode, size: int) -> None:
        async with self.lock(inode):
            staged = await self.stage(inode, truncate_to=size)
            if staged.sent:
                await self._settle(inode)
            await self._disk(staged.truncate, size)
            inode.size = size
            inode.mtime_ns = inode.ctime_ns = time.time_ns()
            await self.journal(inode)

    # -- reading -------------------------------------------------------------------------------

    async def read(self, inode: Inode, handle: FileHandle, offset: int, size: int) -> bytes:
        while inode.staged is not None:
            staged = inode.staged
            end = min(offset + size, staged.size)
            if staged.sent_within(offset, end) or staged.remote_gaps(offset, end):
                async with self.lock(inode):
                    if staged.sent_within(offset, end):
                        await self._settle(inode)
                    await self._fill_gaps(inode, staged, offset, end)
            drops = staged.drops
            data = await self._disk(staged.read, offset, size)
            if staged.drops == drops:  # else the bytes were dropped under us: look again
                return data
        return await self._read_remote(inode, handle, offset, size)

    async def _read_remote(self, inode: Inode, handle: FileHandle, offset: int,
                           size: int) -> bytes:
        key = self.namespace.key(inode)
        try:
            return await self.reader.read(key, handle, offset, size)
        except KeyGone:
            # Our own unlink or rename may have deleted the key while this read waited: the
            # bytes are then staged locally (unlink of an open file), or under the new key.
            if inode.staged is not None:
                return await self.read(inode, handle, offset, size)
            if self.namespace.key(inode) != key:
                return await self.reader.read(self.namespace.key(inode), handle, offset, size)
            raise

    # -- committing ----------------------------------------------------------------------------

    def metadata(self, inode: Inode) -> dict[str, str]:
        meta = encode_attrs(PosixAttrs(inode.mode, inode.uid, inode.gid, inode.mtime_ns,
                                       inode.rdev))
        if inode.xattrs:
            meta["xattr"] = encode_xattrs(inode.xattrs)
        return meta

    async def commit(self, inode: Inode) -> None:
        """Upload the inode's staged data if it is dirty or not in the bucket yet."""
        async with self.lock(inode):
            await self._commit_locked(inode)

    async def _commit_locked(self, inode: Inode) -> None:
        staged = inode.staged
        if inode.unlinked or staged is None or not (staged.dirty or inode.local_only):
            return
        key = self.namespace.key(inode)
        await self.adopt_landed(inode)
        expect = staged.expect if self.conditional else None
        conflict: Stale | None = None
        try:
            if staged.upload is None and staged.size <= self.uploader.single_put_limit:
                await self._fill_gaps(inode, staged, 0, staged.size)
                # fsync(2) makes the file durable, and a crash once the PUT is done must find
                # it ours: the checkpoint names every byte, and the ETag the PUT will get.
                md5 = await self._disk(file_md5, staged.path, staged.size)
                staged.landing = md5
                await self._disk(lambda: staged.sync(etag=md5))
                etag = await self.uploader.upload(key, staged.path, staged.size,
                                                  self.metadata(inode), expect)
            else:
                etag = await self._commit_multipart(inode, staged, key, expect)
        except Stale:
            landed = await self._our_version(key, staged.landing)
            if landed is not None:
                etag = landed
            elif not staged.sent:
                await self._keep_as_conflict(inode, staged, key)
                raise
            else:
                etag, conflict = await self._overrule_conflict(inode, staged, key)
        staged.committed(etag)
        await self._disk(staged.forget_journal)
        inode.etag, inode.size = etag, staged.size
        inode.fetched_at = time.monotonic()
        inode.meta_known = True
        if self.namespace.key(inode) == key:  # not moved meanwhile: the same directories
            self.namespace.landed_under(inode)
        log.debug("committed %s (%d bytes)", key, staged.size)
        if conflict is not None:
            raise conflict

    async def _our_version(self, key: str, landing: str | None) -> str | None:
        """The object's ETag when it already is exactly this upload: a try of it landed with
        its answer lost (a timeout), and the condition of the next try then failed on our own
        version, which is no conflict."""
        if landing is None:
            return None
        found = await self.store.head(key)
        return found.etag if found is not None and found.etag == landing else None

    @staticmethod
    def replaces_object(inode: Inode) -> bool:
        """Whether a file not in the bucket yet stands over an object it replaced by a rename
        (its commit overwrites that one, `expect`): an unlink or a rename away deletes it."""
        staged = inode.staged
        return inode.etag is None and staged is not None and staged.expect not in (
            None, EXPECT_ABSENT)

    async def adopt_landed(self, inode: Inode) -> None:
        """Called with the inode's lock held.  An earlier upload of the file got no answer (a
        timeout) and may have landed: if the bucket holds it, it is our own version, which the
        next upload builds on and replaces (not another client's to set aside), and which a
        rename must move and an unlink delete."""
        staged = inode.staged
        if staged is None or staged.landing is None:
            return
        found = await self.store.head(self.namespace.key(inode))
        if found is not None and found.etag == staged.landing:
            log.info("%s: an upload whose answer was lost did land", self.namespace.key(inode))
            staged.rebase(found.etag, found.size)
            inode.etag = found.etag
        staged.landing = None

    async def settle(self, inode: Inode) -> None:
        """Commit a file some of whose bytes are only in its unfinished upload, so they can be
        read back (before a rename or an unlink moves the file away from that upload)."""
        async with self.lock(inode):
            if inode.staged is not None and inode.staged.sent:
                await self._settle(inode)

    async def _settle(self, inode: Inode) -> None:
        log.info("%s: committed as it stands, to read back bytes that were dropped locally",
                 self.namespace.key(inode))
        await self._commit_locked(inode)

    async def _spill(self, inode: Inode) -> int:
        """Free local bytes of a file being written, when staged data would pass the cache
        budget; returns the bytes freed.  Called with the inode's lock held.

        Parts already uploaded are dropped first (the writer waits for those in flight): a
        sequential writer then costs no more requests than without a budget.  When that is not
        enough, the file is committed as it stands, as fsync would, and its local copy dropped
        but for its last part (where writes most likely go on)."""
        staged = inode.staged
        if staged is None or inode.unlinked:
            return 0  # an unlinked file's bytes exist nowhere else
        freed = await self._drop_sent_parts(staged)
        if freed >= self.space.check_every:
            return freed
        keep_from = part_span(parts_within(0, max(staged.size, 1), staged.part_size)[-1],
                              staged.part_size)[0]
        if keep_from == 0 or await self._disk(staged.local_bytes) < self.space.check_every:
            return 0  # too little to gain
        try:
            await self._commit_locked(inode)
        except Stale:
            raise  # a conflict: kept aside by the commit, and ESTALE is the honest answer
        except FsError as exc:
            raise NoSpace(f"staged data fills the cache budget, and committing "
                          f"{self.namespace.key(inode)} to make room failed: {exc}") from exc
        before = await self._disk(staged.local_bytes)
        await self._disk(staged.drop_local, keep_from)
        dropped = before - await self._disk(staged.local_bytes)
        log.info("%s: committed as it stands at %d bytes, and %d MiB dropped locally, to keep "
                 "staged data within the %d MiB cache budget", self.namespace.key(inode),
                 staged.size, dropped >> 20, self.space.budget >> 20)
        return freed + dropped

    async def _drop_sent_parts(self, staged: StagedFile) -> int:
        """Drop the local copy of every whole part already uploaded and not changed since."""
        upload = staged.upload
        if upload is None:
            return 0
        await upload.wait_idle()  # the writer waits for its parts in flight, then drops them
        spans: dict[int, tuple[int, int]] = {}
        for number, (_, version, length) in list(upload.parts.items()):
            start, end = part_span(number, staged.part_size)
            if (version == staged.version(number) and length == end - start
                    and staged.complete(start, end)):
                spans[number] = (start, end)
        if not spans:
            return 0
        before = await self._disk(staged.local_bytes)
        await self._disk(staged.drop_sent, spans, {n: upload.parts[n][0] for n in spans})
        freed = before - await self._disk(staged.local_bytes)
        log.debug("%s: %d MiB of parts already uploaded dropped locally, to keep staged data "
                  "within the cache budget", upload.key, freed >> 20)
        return freed

    async def _keep_as_conflict(self, inode: Inode, staged: StagedFile, key: str) -> None:
        """Another client changed the object: never overwrite it; ours goes beside it."""
        if staged.remote_gaps(0, staged.size):
            # Our version is the old object plus our writes, and the old object is gone: keep
            # what we wrote, with its journal, out of the way of recovery and retries.
            keep = await self._disk(staged.move_to, self.staging_dir.parent / "conflicts")
            log.error("%s changed in the bucket before our changes to it were uploaded, and "
                      "the old version they applied to is gone: our writes are kept in %s",
                      key, keep)
        else:
            target = conflict_key(key)
            await self.uploader.upload(target, staged.path, staged.size, self.metadata(inode))
            log.warning("%s was changed in the bucket by another client; ours is kept as %s",
                        key, target)
            await self._disk(staged.forget_journal)
        staged.dirty = False
        inode.fetched_at = 0.0  # the next look at it reads the other client's attributes
        theirs = await self.store.head(key)
        if theirs is not None:
            # The key is theirs now: the inode and its open handles stand for their object
            # (reads showed ours beside their size), and nothing of ours is uploaded again.
            for handle in self.handles.files_of(inode.ino):
                handle.etag, handle.size = theirs.etag, theirs.size
            inode.etag, inode.size = theirs.etag, theirs.size
            inode.staged = None
            self.space.live.pop(inode.ino, None)
            await self._disk(staged.close)

    async def _overrule_conflict(self, inode: Inode, staged: StagedFile,
                                 key: str) -> tuple[str, Stale]:
        """Another client changed the object while part of ours existed only in its unfinished
        upload (dropped locally to stay within the cache budget), so ours cannot be set aside:
        theirs is copied beside it, and ours completes over the key.  Both are kept; returns
        our new ETag and the conflict the commit still reports."""
        theirs = await self.store.head(key)
        target = conflict_key(key)
        if theirs is not None:
            await self.store.copy(key, target, theirs.size, None)
        etag = await self._commit_multipart(inode, staged, key, None)
        log.warning("%s was changed in the bucket by another client while ours was being "
                    "written; theirs is kept as %s, ours is at %s", key, target, key)
        return etag, Stale(f"{key} was changed by another client; theirs is kept as {target}")

    async def _commit_multipart(self, inode: Inode, staged: StagedFile, key: str,
                                expect: str | None) -> str:
        """Complete the file's multipart upload: parts sent early and unchanged are kept,
        untouched ranges of the old object are copied server-side, the rest is sent."""
        upload, staged.upload = staged.upload, None
        metadata = self.metadata(inode)
        await self._disk(staged.sync)
        if upload is not None:
            await upload.wait_idle()
            if upload.key != key and staged.sent:  # never: a rename settles first
                staged.upload = upload
                raise RemoteIO(f"{key}: its upload under {upload.key} holds parts of it")
            if upload.key != key:  # renamed while streaming
                await self.uploader.abort(upload)
                upload = None
        fix_metadata = upload is not None and (inode.mtime_ns != staged.written_ns or any(
            upload.metadata.get(k) != v for k, v in metadata.items() if k != "mtime"))
        if upload is None:
            upload = await self.uploader.begin(key, metadata)
        base_etag = staged.base_etag

        async def source(number: int, offset: int, length: int) -> str:
            sent = upload.parts.get(number)
            if sent is not None and sent[1:] == (staged.version(number), length):
                return sent[0]
            if base_etag and length and staged.untouched(offset, offset + length):
                return await self.store.upload_part_copy(key, upload.upload_id, number, key,
                                                         offset, offset + length, base_etag)
            await self._fill_gaps(inode, staged, offset, offset + length)
            return await self.store.upload_part(key, upload.upload_id, number, staged.path,
                                                offset, length)

        async def completing(etag: str) -> None:  # a crash once it is done finds it ours
            staged.landing = etag
            await self._disk(lambda: staged.sync(etag=etag, upload_id=upload.upload_id))

        keep = bool(staged.sent)  # parts only the upload holds: a failure must not abort it
        try:
            etag = await self.uploader.finish(upload, staged.size, source, expect, keep,
                                              completing)
        except BaseException:
            if keep:
                staged.upload = upload  # the next try completes the same upload
            raise
        if fix_metadata:  # attributes changed after the upload began
            etag = await self.store.copy(key, key, staged.size, metadata, etag)
        return etag

    async def drop_clean(self, inode: Inode) -> None:
        """Free the staging file of a closed, clean file."""
        async with self.lock(inode):
            staged = inode.staged
            if staged is not None and not staged.dirty and inode.opens == 0 and (
                    not inode.local_only or inode.unlinked):
                inode.staged = None
                self.space.live.pop(inode.ino, None)
                await self._disk(staged.close)
            if inode.unlinked and inode.staged is not None and inode.opens == 0:
                staged, inode.staged = inode.staged, None
                self.space.live.pop(inode.ino, None)
                if staged.upload is not None:
                    await staged.upload.wait_idle()
                    await self.uploader.abort(staged.upload)
                await self._disk(staged.close)
        lock = self._locks.get(inode.ino)
        if inode.opens == 0 and inode.staged is None and lock is not None and not (
                lock.locked() or lock.statistics().tasks_waiting):
            # Only a lock nobody holds or waits for goes: a new one beside it would let two
            # tasks (an unlink filling the staging file, a release closing it) in at once.
            del self._locks[inode.ino]
        if not self.space.live:
            self.cache.reserve(0)  # nothing staged: clean blocks may use the whole budget

    def retry_later(self, inode: Inode) -> None:
        """Keep trying to upload a file whose commit failed, with backoff, in the background."""
        if inode.ino not in self._retrying and self.background.start(self._retry, inode):
            self._retrying.add(inode.ino)

    async def _retry(self, inode: Inode) -> None:
        delay = RETRY_FIRST
        key = self.namespace.key(inode)
        try:
            while inode.staged is not None and not inode.unlinked and (
                    inode.staged.dirty or inode.local_only):
                await trio.sleep(delay)
                try:
                    await self.commit(inode)
                except Stale:
                    return  # a conflict: handled (and logged) by commit
                except FsError as exc:
                    delay = min(delay * 2, RETRY_MAX)
                    log.warning("still cannot upload %s (%s); next try in %.0f s", key, exc,
                                delay)
                    continue
                log.info("uploaded %s after an earlier failure", key)
                await self.drop_clean(inode)
        finally:
            self._retrying.discard(inode.ino)

    async def commit_all(self, inodes: list[Inode]) -> list[tuple[Inode, FsError]]:
        """Commit every dirty inode; the failures, with their errors."""
        failed: list[tuple[Inode, FsError]] = []
        for inode in inodes:
            if inode.staged is not None and (inode.staged.dirty or inode.local_only):
                try:
                    await self.commit(inode)
                except FsError as exc:
                    failed.append((inode, exc))
        return failed
