"""Attributes learned by HEAD, remembered on disk: `ls -l` after a remount at listing cost.

A listing carries each object's ETag, size and LastModified, but not its user metadata (mode,
owner, mtime, symlink type): without it, every entry of `ls -l` costs a HEAD.  `RememberingStore`
wraps the mount's `ObjectStore`: each HEAD answer is written down, keyed by the object's key,
and a later listing entry whose ETag, size and LastModified (to the second: HEAD's resolution)
all match a record comes back carrying that metadata, so the namespace needs no HEAD for it.
An object another client changed has a new ETag or LastModified, and is HEADed again.

The records live in SQLite in the cache directory (WAL, so a crash or power cut loses at most
the last writes, never the file's integrity).  A file SQLite finds damaged is deleted and
started afresh, never trusted.  At most `max_entries` records are kept; past that, those written
longest ago go.  Writes are batched, and every SQLite call runs in a worker thread on a limiter
of one (one connection, one thread at a time).  It is only a cache: any failure of it costs
HEADs, never an error.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from s3mount.store import ListPage, ObjectInfo, ObjectStore
from s3mount.workers import run_blocking

log = logging.getLogger(__name__)

MAX_ENTRIES = 100_000  # about 20 MB of SQLite for typical metadata (S3 caps it at 2 KiB)
FLUSH_EVERY = 100  # HEAD answers held in memory before they are written in one transaction
QUERY_CHUNK = 500  # keys per SELECT
SCHEMA = ("CREATE TABLE IF NOT EXISTS attrs (key TEXT PRIMARY KEY, etag TEXT NOT NULL, "
          "size INTEGER NOT NULL, modified INTEGER NOT NULL, metadata TEXT NOT NULL)")
Record = tuple[str, str, int, int, str]  # key, etag, size, LastModified (s), metadata as JSON


class AttrFile:
    """The SQLite file of records; every method blocks (call it from a worker thread)."""

    def __init__(self, path: Path, max_entries: int = MAX_ENTRIES) -> None:
        self.path = path
        self.max_entries = max_entries
        self.db: sqlite3.Connection | None = None
        self.count = 0

    def open(self) -> None:
        try:
            self._connect()
        except sqlite3.DatabaseError as exc:
            self._discard(exc)

    def _connect(self) -> None:
        # Made private before SQLite opens it: its -wal and -shm files take the same mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(self.path, 0o600)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(SCHEMA)
            self.count = db.execute("SELECT count(*) FROM attrs").fetchone()[0]
        except BaseException:
            db.close()
            raise
        self.db = db

    def _discard(self, exc: Exception) -> None:
        """A damaged file: forget it, start an empty one (or go without when that fails)."""
        log.info("attribute cache %s unreadable (%s): starting afresh", self.path, exc)
        if self.db is not None:
            self.db.close()
            self.db = None
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        try:
            self._connect()
        except sqlite3.DatabaseError as again:
            log.info("attribute cache disabled: %s", again)
            self.db = None

    def find(self, keys: list[str]) -> dict[str, tuple[str, int, int, str]]:
        """Records of those keys that have one: key -> (etag, size, modified, metadata)."""
        found: dict[str, tuple[str, int, int, str]] = {}
        if self.db is None:
            return found
        try:
            for start in range(0, len(keys), QUERY_CHUNK):
                chunk = keys[start:start + QUERY_CHUNK]
                marks = ",".join("?" * len(chunk))
                for key, etag, size, modified, metadata in self.db.execute(
                        f"SELECT key, etag, size, modified, metadata FROM attrs "  # noqa: S608
                        f"WHERE key IN ({marks})", chunk):
                    found[key] = (etag, size, modified, metadata)
        except sqlite3.DatabaseError as exc:
            self._discard(exc)
            return {}
        return found

    def write(self, records: list[Record]) -> None:
        """Store records (newest last wins), then drop the oldest past `max_entries`."""
        if self.db is None or not records:
            return
        try:
            with self.db:
                self.db.execute("BEGIN")
                # Deleting first gives a rewritten key a new rowid: rowid order is write order.
                self.db.executemany("DELETE FROM attrs WHERE key = ?", [(r[0],) for r in records])
                self.db.executemany("INSERT INTO attrs VALUES (?, ?, ?, ?, ?)", records)
                self.count = self.db.execute("SELECT count(*) FROM attrs").fetchone()[0]
                excess = self.count - self.max_entries
                if excess > 0:
                    self.db.execute("DELETE FROM attrs WHERE rowid IN (SELECT rowid FROM attrs "
                                    "ORDER BY rowid LIMIT ?)", (excess,))
                    self.count -= excess
        except sqlite3.DatabaseError as exc:
            self._discard(exc)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


class RememberingStore:
    """An `ObjectStore` that remembers HEAD answers and hands them back with listings.

    Every other call, and every attribute (`stats`, ...), is the wrapped store's."""

    def __init__(self, inner: ObjectStore, path: Path, max_entries: int = MAX_ENTRIES) -> None:
        self.inner = inner
        self.file = AttrFile(path, max_entries)  # opened by `open`, once the cache dir is ours
        self.limiter = trio.CapacityLimiter(1)
        self.pending: dict[str, Record] = {}

    def open(self) -> None:
        self.file.open()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def head(self, key: str, ahead: bool = False) -> ObjectInfo | None:
        info = await self.inner.head(key, ahead)
        if info is not None and info.metadata is not None:
            self.pending[key] = (key, info.etag, info.size, int(info.mtime),
                                 json.dumps(info.metadata, separators=(",", ":")))
            if len(self.pending) >= FLUSH_EVERY:
                await self.flush()
        return info

    async def flush(self) -> None:
        records, self.pending = list(self.pending.values()), {}
        await run_blocking(self.limiter, self.file.write, records)

    async def list_page(self, prefix: str, delimiter: str | None, token: str | None = None,
                        max_keys: int = 1000, start_after: str | None = None) -> ListPage:
        page = await self.inner.list_page(prefix, delimiter, token, max_keys, start_after)
        if not page.objects:
            return page
        if self.pending:
            await self.flush()
        known = await run_blocking(self.limiter, self.file.find, [o.key for o in page.objects])
        if not known:
            return page
        objects = []
        for obj in page.objects:
            record = known.get(obj.key)
            if record is not None and record[:3] == (obj.etag, obj.size, int(obj.mtime)):
                try:
                    metadata = json.loads(record[3])
                except ValueError:
                    metadata = None
                if isinstance(metadata, dict):
                    obj = replace(obj, metadata={str(k): str(v) for k, v in metadata.items()})
            objects.append(obj)
        return ListPage(objects, page.prefixes, page.next_token)

    def close(self) -> None:
        """Write what is pending and close the file (after trio has stopped)."""
        self.file.write(list(self.pending.values()))
        self.pending = {}
        self.file.close()
