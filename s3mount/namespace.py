"""The bucket seen as a tree: lookups, listings and the negative cache, applied to `InodeTable`.

A name is a directory when a `key/` marker exists or listing `key/` finds anything; a directory
shadows an object of the same name.  A lookup asks both questions at once (HEAD of the key, HEAD of
the marker, a one-key LIST), then applies the answer in one synchronous step.  Local state wins:
an inode with staged (dirty or not yet uploaded) data is never overwritten by what the bucket says.
Names S3 holds but POSIX cannot (`a//b`, `.`, `..`, over 255 bytes) are left out of listings.
"""

from __future__ import annotations

import bisect
import logging
import stat
import time
from dataclasses import dataclass

import cachetools
import trio

from s3mount.config import MountConfig
from s3mount.errors import FsError, NotFound
from s3mount.inodes import Inode, InodeTable
from s3mount.keys import RESERVED_NAME, dir_prefix, join, split_listing_name
from s3mount.store import (
    ListPage,
    ObjectInfo,
    ObjectStore,
    decode_attrs,
    decode_xattrs,
    object_kind,
)
from s3mount.sweeps import Sweeps
from s3mount.workers import Background

log = logging.getLogger(__name__)

PAGE = 1000  # entries one LIST returns
AHEAD = 32  # entries whose metadata is read ahead while a directory's entries are looked up


@dataclass
class Probe:
    obj: ObjectInfo | None
    marker: ObjectInfo | None
    has_children: bool


class Namespace:
    def __init__(self, table: InodeTable, store: ObjectStore, config: MountConfig,
                 background: Background | None = None) -> None:
        self.table = table
        self.store = store
        self.config = config
        # The kernel caches for half the TTL, and so do we: an answer is never older than the
        # TTL however the two caches line up.
        self.freshness = config.metadata_ttl / 2
        ttl = self.freshness
        self._relisting: dict[int, trio.Event] = {}  # a page of the directory being listed
        self._listing: dict[int, trio.Event] = {}  # the whole directory being listed
        self._completing: dict[int, trio.Event] = {}  # entries whose metadata is being read
        # Names of recently listed directories in S3's order, for reading metadata ahead.
        self._order: cachetools.LRUCache = cachetools.LRUCache(maxsize=16)
        self.background = background or Background()
        self._negative: cachetools.TTLCache | None = (
            cachetools.TTLCache(maxsize=65536, ttl=ttl, timer=time.monotonic) if ttl > 0 else None)

    def key(self, inode: Inode) -> str:
        return self.table.key(inode)

    @staticmethod
    def sweeps(directory: Inode) -> Sweeps:
        """The directory's lookup patterns, started on first use."""
        if directory.sweeps is None:
            directory.sweeps = Sweeps()
        return directory.sweeps

    # -- attributes ----------------------------------------------------------------------------

    def refresh_from(self, inode: Inode, info: ObjectInfo | None, kind: int) -> None:
        """Apply what the bucket says of an inode's object (None: a directory without marker)."""
        inode.fetched_at = time.monotonic()
        if info is None:
            return
        if inode.meta_pending or (inode.staged is not None and inode.staged.dirty):
            return  # ours are newer; a change elsewhere meets our copy's or PUT's condition
        if kind == stat.S_IFDIR and info.metadata is None:
            inode.has_marker = True  # seen in a listing: the attributes we hold still stand
            return
        perm = self.config.dir_mode if kind == stat.S_IFDIR else self.config.file_mode
        attrs = decode_attrs(info, kind, perm, self.config.uid, self.config.gid)
        if kind != stat.S_IFDIR:
            if inode.etag != info.etag:
                inode.target = None
            inode.size = info.size
            inode.etag = info.etag
        else:
            inode.has_marker = True
        inode.mode, inode.uid, inode.gid, inode.rdev = attrs.mode, attrs.uid, attrs.gid, attrs.rdev
        inode.mtime_ns = inode.ctime_ns = attrs.mtime_ns
        inode.meta_known = info.metadata is not None
        if info.metadata is not None:
            inode.xattrs = decode_xattrs(info.metadata.get("xattr"))

    def new_child(self, parent: Inode, name: str, kind: int, info: ObjectInfo | None) -> Inode:
        perm = self.config.dir_mode if kind == stat.S_IFDIR else self.config.file_mode
        now = time.time_ns()
        inode = self.table.add(parent.ino, name, kind | perm, self.config.uid, self.config.gid,
                               mtime_ns=now, ctime_ns=now, meta_known=info is not None,
                               etag="" if kind == stat.S_IFDIR else None)
        self.refresh_from(inode, info, kind)
        return inode

    # -- lookup --------------------------------------------------------------------------------

    async def probe(self, key: str, *, obj: bool = True, marker: bool = True) -> Probe:
        """Ask at once what `key` is: the object (HEAD) and what lies under `key/` (a one-page
        LIST, which also shows a `key/` marker).  A marker found is then read for its metadata
        (mode, owner) when `marker` is set."""
        result = Probe(None, None, False)
        marker_info: list[ObjectInfo] = []

        async def head_object() -> None:
            result.obj = await self.store.head(key)

        async def list_children() -> None:
            page = await self.store.list_page(key + "/", "/", max_keys=2)
            marker_info.extend(o for o in page.objects if o.key == key + "/")
            result.has_children = any(o.key != key + "/" for o in page.objects) or bool(
                page.prefixes)

        async with trio.open_nursery() as nursery:
            if obj:
                nursery.start_soon(head_object)
            nursery.start_soon(list_children)
        if marker_info:
            result.marker = (await self.store.head(key + "/") if marker else None) or \
                marker_info[0]
        return result

    async def lookup(self, parent: Inode, name: str) -> Inode:
        """The inode at `parent/name`, asking the bucket when the cached answer is too old."""
        if name == RESERVED_NAME:
            raise NotFound(name)  # s3mount's own key, never an entry
        child = self.table.child(parent.ino, name)
        ttl = self.freshness
        if child is not None and (child.staged is not None or child.local_only or child.opens
                                  or child.meta_pending
                                  or (child.fresh(ttl) and child.meta_known)):
            return child
        if child is None:
            if self._known_absent(parent, name):
                raise NotFound(name)
            if parent.complete_at is not None and self.table.count(parent.ino) < PAGE:
                # A small directory we knew completely until recently (files being created in
                # it): one LIST answers this lookup and the misses that follow for a while.
                await self.relist(parent)
                child = self.table.child(parent.ino, name)
                if child is None and self._known_absent(parent, name):
                    raise NotFound(name)
            # New names looked up one after another in a directory (stat of many files): after
            # a couple of probes, one LIST from this name on answers it and the names after it.
            if self.sweeps(parent).new_name(name) and child is None:
                await self.relist_from(parent, name)
                child = self.table.child(parent.ino, name)
                if child is None and self._known_absent(parent, name):
                    raise NotFound(name)  # the page covered it: neither object nor directory
            if child is not None and child.fresh(ttl) and child.meta_known:
                return child  # a listing just now said all there is to know
        if (child is not None and child.meta_known and not child.fresh(ttl)
                and self.sweeps(parent).big):
            if self.sweeps(parent).stale_entry():
                # A big directory whose entries are being looked at one by one (ls -l that
                # outlived the TTL): one LIST from this entry on refreshes it and the next
                # thousand, where a HEAD would refresh only it.
                await self.relist_from(parent, name)
                child = self.table.child(parent.ino, name)
                if child is None:
                    raise NotFound(name)
                if child.fresh(ttl) and child.meta_known:
                    return child
        if child is not None and not child.is_dir:
            return await self._refresh_file(parent, child)
        key = join(self.key(parent), name)
        if child is not None and child.fresh(ttl):
            # Seen in a listing just now, without its marker's metadata (mode, owner).
            found = Probe(None, await self.store.head(key + "/"), True)
        elif child is not None:
            if time.monotonic() - child.exists_at < ttl:
                # A key of ours landed under it just now: still a directory, confirmed as the
                # LIST below would confirm it (which reads no attributes either).
                child.fetched_at = max(child.fetched_at, child.exists_at)
                return child
            # Still a directory? One LIST, and the marker's HEAD if it had one.
            found = await self.probe(key, obj=False, marker=False)
            if not (found.marker or found.has_children):
                found = await self.probe(key)  # gone, or now a file
        else:
            found = await self.probe(key)
        return self.apply_probe(parent, name, found)

    async def _refresh_file(self, parent: Inode, child: Inode) -> Inode:
        """Still that file?  One HEAD, which also reads the metadata (mode, owner, symlink type)
        a listing lacks.  While a directory's entries are looked at one after another (ls -l),
        the HEADs of the entries that follow run ahead in the background, in parallel."""
        waiting = self._completing.get(child.ino)
        if waiting is not None:
            await waiting.wait()
            now = self.table.child(parent.ino, child.name)
            if now is None:
                raise NotFound(child.name)
            if now.meta_known and now.fresh(self.freshness):
                return now
            child = now
        # Entries looked up in listing order (ls -l, find, du) make a sweep; others do not.
        if self.sweeps(parent).needs_metadata(child.name):
            for ahead in self._files_after(parent, child.name, AHEAD):
                done = self._completing[ahead.ino] = trio.Event()
                if not self.background.start(self._refresh_ahead, parent, ahead, done):
                    del self._completing[ahead.ino]
                    break
        key = join(self.key(parent), child.name)
        found = Probe(await self.store.head(key), None, False)
        if found.obj is None:
            found = await self.probe(key)  # gone, or now a directory
        return self.apply_probe(parent, child.name, found)

    async def _refresh_ahead(self, parent: Inode, child: Inode, done: trio.Event) -> None:
        try:
            info = await self.store.head(join(self.key(parent), child.name), ahead=True)
            if info is not None and self.table.child(parent.ino, child.name) is child:
                self.apply_probe(parent, child.name, Probe(info, None, False))
        except FsError as exc:
            log.debug("%s not looked up ahead: %s", child.name, exc)
        finally:
            if self._completing.get(child.ino) is done:
                del self._completing[child.ino]
            done.set()

    def _files_after(self, parent: Inode, name: str, count: int) -> list[Inode]:
        """Up to `count` files listed after `name` whose attributes need a HEAD that is not on
        its way yet, looking no further than `count` entries past those already on their way."""
        order = self._order.get(parent.ino)
        if order is None:
            return []
        found: list[Inode] = []
        start = bisect.bisect_right(order, name)
        for other in order[start:start + 2 * count]:
            child = self.table.child(parent.ino, other)
            # An entry whose attributes are known but old is left to the LIST page that
            # refreshes a big directory (`relist_from`); a HEAD would refresh it alone.
            stale = not child.fresh(self.freshness) and not self.sweeps(parent).big \
                if child is not None else False
            if (child is not None and not child.is_dir and child.staged is None
                    and not child.local_only and child.ino not in self._completing
                    and (not child.meta_known or stale)):
                found.append(child)
                if len(found) == count:
                    break
        return found

    def _known_absent(self, parent: Inode, name: str) -> bool:
        """No such name, as a recent lookup or a recent complete listing of `parent` said."""
        if self._negative is not None and (parent.ino, name) in self._negative:
            return True
        now = time.monotonic()
        if parent.complete_at is not None and now - parent.complete_at < self.freshness:
            return True
        if parent.known_span is None:
            return False
        after, last, when = parent.known_span
        return (now - when < self.freshness and (after is None or name > after)
                and (last is None or name + "/" <= last))

    async def relist(self, directory: Inode) -> None:
        """List a directory again, once however many lookups are waiting for it."""
        waiting = self._listing.get(directory.ino)
        if waiting is not None:
            await waiting.wait()
            return
        done = self._listing[directory.ino] = trio.Event()
        try:
            await self.list_dir(directory)
        finally:
            del self._listing[directory.ino]
            done.set()

    async def relist_from(self, directory: Inode, name: str) -> None:
        """Refresh one page of a directory's listing, starting at `name`, and remember the span
        it covered (`known_span`); once however many lookups are waiting for the directory (a
        waiter outside the page asks on its own)."""
        waiting = self._relisting.get(directory.ino)
        if waiting is not None:
            await waiting.wait()
            return
        done = self._relisting[directory.ino] = trio.Event()
        try:
            names = sorted(c.name for c in self.table.children(directory.ino))
            at = bisect.bisect_left(names, name)
            # Sorts before `name` and `name/` alike, and as close to them as cheaply known.
            after = max(names[at - 1] if at > 0 else "", name[:-1]) or None
            prefix = dir_prefix(self.key(directory))
            started = time.monotonic()
            page = await self.store.list_page(
                prefix, "/", start_after=None if after is None else prefix + after)
            files, dirs = _page_entries(prefix, page)
            last = None
            if page.next_token is not None:
                last = max([o.key for o in page.objects] + page.prefixes)[len(prefix):]
            self._merge_listing(directory, files, dirs, started, span=(after, last))
            directory.known_span = (after, last, started)
            known = [c.name for c in self.table.children(directory.ino)]
            if len(self._order.get(directory.ino, ())) < len(known):
                self._order[directory.ino] = sorted(known)  # for reading metadata ahead
        finally:
            del self._relisting[directory.ino]
            done.set()

    def apply_probe(self, parent: Inode, name: str, found: Probe) -> Inode:
        child = self.table.child(parent.ino, name)
        if child is not None and (child.staged is not None or child.local_only):
            return child  # created or changed here since the probe began
        if found.marker is not None or found.has_children:
            kind, info = stat.S_IFDIR, found.marker
        elif found.obj is not None:
            kind = object_kind(found.obj.metadata, found.obj.size)
            info = found.obj
        else:
            if child is not None:
                self.table.detach(child)
            if self._negative is not None:
                self._negative[(parent.ino, name)] = True
            raise NotFound(name)
        if child is not None and child.kind == kind:
            self.refresh_from(child, info, kind)
            return child
        return self.new_child(parent, name, kind, info)

    def landed_under(self, inode: Inode) -> None:
        """A key of ours just landed at `inode`: every directory above it exists in the bucket,
        as a prefix with a key under it, which is all a lookup's "still a directory?" LIST would
        ask (untar through a 20 ms link sent one such LIST a directory every half second)."""
        now = time.monotonic()
        parent = self.table.get(inode.parent)
        while parent is not None and parent.ino != parent.parent:
            parent.exists_at = now
            parent = self.table.get(parent.parent)

    async def revalidate(self, inode: Inode) -> None:
        """Refresh an inode's attributes from the bucket; NotFound when its object is gone."""
        key = self.key(inode)
        if inode.is_dir:
            marker = (await self.store.head(key + "/")
                      if inode.has_marker or not inode.meta_known else None)
            self.refresh_from(inode, marker, stat.S_IFDIR)
            inode.meta_known = True
            return
        info = await self.store.head(key)
        if info is None:
            raise NotFound(key)
        self.refresh_from(inode, info, inode.kind)

    def forget_negative(self, parent: Inode, name: str) -> None:
        if self._negative is not None:
            self._negative.pop((parent.ino, name), None)

    # -- listing -------------------------------------------------------------------------------

    async def list_dir(self, directory: Inode) -> list[tuple[str, Inode]]:
        """All entries of a directory: the bucket's listing merged with local-only children."""
        prefix = dir_prefix(self.key(directory))
        started = time.monotonic()
        files: dict[str, ObjectInfo] = {}
        dirs: set[str] = set()
        token: str | None = None
        while True:
            page = await self.store.list_page(prefix, "/", token)
            page_files, page_dirs = _page_entries(prefix, page)
            files.update(page_files)
            dirs.update(page_dirs)
            token = page.next_token
            if token is None:
                break
        entries = self._merge_listing(directory, files, dirs, started)
        directory.complete_at = started
        self._order[directory.ino] = [name for name, _ in entries]
        return entries

    def _merge_listing(self, directory: Inode, files: dict[str, ObjectInfo], dirs: set[str],
                       started: float, span: tuple[str | None, str | None] | None = None,
                       ) -> list[tuple[str, Inode]]:
        """Apply a listing of the whole directory, or of the names within `span` (after its first
        bound, up to and including its second; None: open-ended) as S3 orders them."""
        entries: dict[str, Inode] = {}
        for name in dirs:
            child = self.table.child(directory.ino, name)
            if child is None or not child.is_dir:
                if child is not None and (child.staged is not None or child.local_only):
                    entries[name] = child
                    continue
                child = self.new_child(directory, name, stat.S_IFDIR, None)
                child.meta_known = self.config.trust_listings
            else:
                child.fetched_at = time.monotonic()  # the listing confirms it
            entries[name] = child
        for name, obj in files.items():
            if name in dirs:
                continue
            child = self.table.child(directory.ino, name)
            if child is not None and (child.staged is not None or child.local_only
                                      or child.meta_pending
                                      or (child.etag == obj.etag and not child.is_dir)):
                if child.etag == obj.etag and child.staged is None:
                    child.fetched_at = time.monotonic()  # the listing confirms this version
                entries[name] = child
                continue
            if obj.metadata is not None:
                # This very version's attributes, remembered from an earlier HEAD of it.
                kind = object_kind(obj.metadata, obj.size)
                if child is not None and child.kind == kind:
                    self.refresh_from(child, obj, kind)
                else:
                    child = self.new_child(directory, name, kind, obj)
            elif child is not None and child.kind == stat.S_IFREG:
                child.size, child.etag = obj.size, obj.etag
                child.meta_known = self.config.trust_listings
                child.mtime_ns = int(obj.mtime * 1e9)
                child.fetched_at = time.monotonic()
            else:
                child = self.new_child(directory, name, stat.S_IFREG, None)
                child.size, child.etag = obj.size, obj.etag
                child.mtime_ns = child.ctime_ns = int(obj.mtime * 1e9)
                # Listings carry no user metadata: unless told to trust them, the first lookup
                # reads it (one HEAD), so modes, owners and symlinks are never shown wrong.
                child.meta_known = self.config.trust_listings
            entries[name] = child
        for child in self.table.children(directory.ino):
            if child.name in entries:
                continue
            if (child.staged is not None or child.local_only or child.fetched_at > started
                    or (span is not None and not _within(child, span))):
                entries[child.name] = child
            else:
                self.table.detach(child)  # deleted in the bucket by someone else
                if self._negative is not None:
                    self._negative[(directory.ino, child.name)] = True
        if span is None:
            self.sweeps(directory).listed_all(len(entries))
        return sorted(entries.items())

    async def is_empty(self, directory: Inode) -> bool:
        if self.table.children(directory.ino) and any(
                c.local_only or c.staged is not None for c in self.table.children(directory.ino)):
            return False
        prefix = dir_prefix(self.key(directory))
        # Its marker and its attribute object (markers.py) sort before most names, but not all:
        # three keys show whether anything else is there.
        own = (prefix, prefix + RESERVED_NAME)
        page = await self.store.list_page(prefix, "/", max_keys=3)
        return not page.prefixes and all(o.key in own for o in page.objects)


def _page_entries(prefix: str, page: ListPage) -> tuple[dict[str, ObjectInfo], set[str]]:
    """The files and subdirectories one listing page shows under `prefix`."""
    files: dict[str, ObjectInfo] = {}
    dirs: set[str] = set()
    for obj in page.objects:
        name = split_listing_name(prefix, obj.key)
        if name is not None and not obj.key.endswith("/"):
            files[name] = obj
    for sub in page.prefixes:
        name = split_listing_name(prefix, sub)
        if name is not None:
            dirs.add(name)
    return files, dirs


def _within(child: Inode, span: tuple[str | None, str | None]) -> bool:
    """Whether a listing covering `span` would have shown `child`, by where S3 sorts its key."""
    listed = child.name + "/" if child.is_dir else child.name
    after, last = span
    return (after is None or listed > after) and (last is None or listed <= last)
