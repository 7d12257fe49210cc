"""Whether the lookups in one directory make a sweep, which one LIST answers better than a HEAD
a name.

`ls -l`, `find` and `du` look a directory's entries up one after another, in the order S3 lists
them; so does a program that stats many names it is about to create.  A HEAD a name costs a
round trip each, where one LIST page answers a thousand.  `Namespace.lookup` tells a directory's
`Sweeps` of each lookup that needs the bucket, and it says when a pattern has gone on long
enough (more than `SWEEP` in a row) to switch:

- new names (not cached) in rising order: list a page from this name on;
- cached files whose user metadata is unknown (a listing lacks it), in rising order: read the
  metadata of the files that follow ahead, in parallel;
- expired entries of a big directory (at least `BATCH` entries in its last full listing), in any
  order: list a page from this entry on, which refreshes it and the entries after it.

A full listing of the directory starts the last two counts again.  Plain bookkeeping on the trio
thread: nothing here awaits or does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

BATCH = 100  # a directory this big is refreshed a page at a time rather than entry by entry
SWEEP = 2  # more lookups than this, in a row, make a sweep


@dataclass
class Sweeps:
    """The lookup patterns seen in one directory (kept on its `Inode`)."""

    listed: int = 0  # entries in the last full listing
    stale: int = 0  # lookups of expired entries since that listing
    meta: int = 0  # lookups in name order of files needing a HEAD, in a row
    meta_last: str = ""  # the name the last of those looked up
    new: int = 0  # lookups in name order of names not cached, in a row
    new_last: str = ""  # the name the last of those looked up

    @property
    def big(self) -> bool:
        """Big enough to refresh a page at a time."""
        return self.listed >= BATCH

    def new_name(self, name: str) -> bool:
        """A name not cached is looked up: True when it continues a sweep of new names."""
        self.new = self.new + 1 if name > self.new_last else 1
        self.new_last = name
        return self.new > SWEEP

    def needs_metadata(self, name: str) -> bool:
        """A cached file needs a HEAD: True when it continues a sweep through the listing."""
        self.meta = self.meta + 1 if name > self.meta_last else 1
        self.meta_last = name
        return self.meta > SWEEP

    def stale_entry(self) -> bool:
        """An expired entry of a big directory is looked up: True once enough were since its
        last listing."""
        self.stale += 1
        return self.stale > SWEEP

    def listed_all(self, count: int) -> None:
        """A full listing showed `count` entries."""
        self.listed = count
        self.stale = self.meta = 0
