"""Inode records and the parent/children index.

`InodeTable` owns every `Inode`: only its methods change the index, and none of them awaits, so each
is atomic under trio.  Callers fetch remote data first, then apply it in one synchronous call.

An inode's key is not stored: it is the chain of names up to the root, so renaming a directory
re-keys every cached descendant at once.  Identity is immutable: when an object turns from file to
directory (or symlink) it gets a new inode; attributes expire after the metadata TTL.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from s3mount.sweeps import Sweeps

ROOT_INODE = 1


@dataclass
class Inode:
    ino: int
    parent: int
    name: str
    mode: int  # full st_mode; the type bits never change for an inode
    uid: int
    gid: int
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    etag: str | None = None  # the bucket version our view is based on; None: not in the bucket
    meta_known: bool = True  # False: attributes came from a listing, without user metadata
    fetched_at: float = 0.0  # monotonic time the bucket last confirmed these attributes
    has_marker: bool = False  # directories: a `dir/` marker object exists
    target: str | None = None  # symlinks
    rdev: int = 0  # devices
    lookups: int = 0
    opens: int = 0
    unlinked: bool = False
    meta_pending: bool = False  # attribute changes journaled, their copy to come (metaqueue.py)
    staged: Any = None  # staging.StagedFile while the data is staged locally
    kernel_etag: str | None = None  # version whose pages the kernel may still cache
    xattrs: dict[str, bytes] = field(default_factory=dict)
    sweeps: Sweeps | None = None  # directories: the lookup patterns seen in it (sweeps.py)
    complete_at: float | None = None  # directories: when a listing or mkdir showed every child
    # directories: when a key under it last landed (our PUT), which proves the prefix exists
    exists_at: float = 0.0
    # directories: (after, last, when) of the last page listed alone: every name after `after`
    # up to `last` (None: unbounded) that is not a child was absent then
    known_span: tuple[str | None, str | None, float] | None = None

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    @property
    def dirty(self) -> bool:
        return self.staged is not None and self.staged.dirty

    @property
    def local_only(self) -> bool:
        """Created here and not yet in the bucket."""
        return self.etag is None and not self.is_dir

    def fresh(self, ttl: float) -> bool:
        return time.monotonic() - self.fetched_at < ttl


class InodeTable:
    def __init__(self, uid: int, gid: int, dir_mode: int) -> None:
        now = time.time_ns()
        root = Inode(ROOT_INODE, ROOT_INODE, "", stat.S_IFDIR | dir_mode, uid, gid,
                     mtime_ns=now, ctime_ns=now, lookups=1, etag="")
        self._inodes: dict[int, Inode] = {ROOT_INODE: root}
        self._children: dict[int, dict[str, int]] = {ROOT_INODE: {}}
        self._next = ROOT_INODE + 1

    def __len__(self) -> int:
        return len(self._inodes)

    def get(self, ino: int) -> Inode | None:
        return self._inodes.get(ino)

    def all(self) -> list[Inode]:
        return list(self._inodes.values())

    def key(self, inode: Inode) -> str:
        """The object key (relative to the mount's prefix) an inode stands for."""
        parts: list[str] = []
        while inode.ino != ROOT_INODE:
            parts.append(inode.name)
            inode = self._inodes[inode.parent]
        return "/".join(reversed(parts))

    def child(self, parent: int, name: str) -> Inode | None:
        ino = self._children.get(parent, {}).get(name)
        return self._inodes[ino] if ino is not None else None

    def count(self, parent: int) -> int:
        """How many children of `parent` are cached, without building the list."""
        return len(self._children.get(parent, ()))

    def children(self, parent: int) -> list[Inode]:
        return [self._inodes[i] for i in self._children.get(parent, {}).values()]

    def subtree(self, top: Inode) -> Iterator[Inode]:
        """`top`, then every inode cached under it, depth first.

        A node's children are read as the node is reached, before it is yielded: a caller that
        awaits between nodes walks the tree as it is then, not a copy taken at the start."""
        stack = [top]
        while stack:
            node = stack.pop()
            stack.extend(self.children(node.ino))
            yield node

    def add(self, parent: int, name: str, mode: int, uid: int, gid: int, **attrs: Any) -> Inode:
        """A new inode at `parent/name`, replacing (unlinking) whatever was there."""
        old = self.child(parent, name)
        if old is not None:
            self.detach(old)
        inode = Inode(self._next, parent, name, mode, uid, gid, **attrs)
        self._next += 1
        self._inodes[inode.ino] = inode
        self._children.setdefault(parent, {})[name] = inode.ino
        if inode.is_dir:
            self._children.setdefault(inode.ino, {})
        return inode

    def detach(self, inode: Inode) -> None:
        """Take an inode out of the namespace; it lives on while looked up or open."""
        siblings = self._children.get(inode.parent, {})
        if siblings.get(inode.name) == inode.ino:
            del siblings[inode.name]
            self._uncovered(inode)
        inode.unlinked = True
        self._drop_if_unused(inode)

    def move(self, inode: Inode, new_parent: int, new_name: str) -> None:
        """Re-link an inode under a new parent and name, unlinking what was there."""
        old = self.child(new_parent, new_name)
        if old is not None and old is not inode:
            self.detach(old)
        siblings = self._children.get(inode.parent, {})
        if siblings.get(inode.name) == inode.ino:
            del siblings[inode.name]
            self._uncovered(inode)
        inode.parent, inode.name = new_parent, new_name
        self._children.setdefault(new_parent, {})[new_name] = inode.ino

    def _uncovered(self, inode: Inode) -> None:
        """A directory left its name: an object of that name it shadowed may show again, so
        the parent no longer knows all its children."""
        parent = self._inodes.get(inode.parent)
        if inode.is_dir and parent is not None:
            parent.complete_at = parent.known_span = None

    def forget(self, ino: int, count: int) -> None:
        inode = self._inodes.get(ino)
        if inode is None or ino == ROOT_INODE:
            return
        inode.lookups = max(0, inode.lookups - count)
        self._drop_if_unused(inode)

    def _drop_if_unused(self, inode: Inode) -> None:
        if inode.ino == ROOT_INODE or inode.lookups > 0 or inode.opens > 0:
            return
        if not inode.unlinked and (inode.dirty or inode.meta_pending or self._children.get(
                inode.ino) or (inode.local_only and inode.staged is not None)):
            return  # dirty data or attributes, a new file not uploaded yet, or children
        if not inode.unlinked:
            siblings = self._children.get(inode.parent, {})
            if siblings.get(inode.name) == inode.ino:
                del siblings[inode.name]
                parent = self._inodes.get(inode.parent)
                if parent is not None:  # a name it has is no longer in the index
                    parent.complete_at = parent.known_span = None
        self._inodes.pop(inode.ino, None)
        self._children.pop(inode.ino, None)

    def settle(self, inode: Inode) -> None:
        """Drop an inode nobody needs any more (after a close or a forget)."""
        self._drop_if_unused(inode)
