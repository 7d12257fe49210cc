"""Open file and directory handles: per-open state, numbered apart from inodes.

A file handle remembers who opened it, whether it wrote, and a sticky error from a failed commit
that `close(2)`/`fsync(2)` must still report.  It also tracks where the last read ended, so
sequential readers get a growing read-ahead buffer while random readers fetch only what they ask.
A directory handle holds the listing snapshot that `readdir` pages through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from s3mount.errors import BadHandle

SEQUENTIAL_SLACK = 4 * 1024 * 1024  # the kernel's own read-ahead may reorder nearby reads


@dataclass
class FileHandle:
    fh: int
    ino: int
    flags: int
    pid: int
    wrote: bool = False
    error: Exception | None = None  # a failed commit, reported once by flush/fsync
    etag: str | None = None  # the version this handle reads: pinned at open, never mixed
    size: int = 0
    next_offset: int = 0  # where the last read ended
    window: int = 0  # read-ahead window, in blocks; 0 while reads are random
    run_from: int = 0  # where the current sequential run of reads began
    run_end: int = 0  # the block after the last one a streamed run was asked for
    streams: int = 0  # streamed read-ahead runs going on for this handle
    closed: bool = False

    def note_read(self, offset: int, size: int, max_window: int, block_size: int) -> bool:
        """Record a read; whether it continues a sequential run.  The window then covers
        twice what the run has read so far, in blocks (at least one, at most `max_window`), so
        a reader that stops early leaves little fetched for nothing."""
        sequential = (offset == 0 or
                      self.next_offset - SEQUENTIAL_SLACK <= offset <= self.next_offset
                      + SEQUENTIAL_SLACK)
        if not sequential:
            self.window = self.run_end = 0
            self.next_offset = offset + size
            return False
        if self.window == 0:
            self.run_from = offset
        self.next_offset = max(self.next_offset, offset + size)
        read = self.next_offset - self.run_from
        self.window = min(max(1, 2 * read // block_size), max_window)
        return True


@dataclass
class DirHandle:
    fh: int
    ino: int
    entries: list[tuple[str, Any]] = field(default_factory=list)  # (name, Inode)
    loaded: bool = False


class HandleTable:
    def __init__(self) -> None:
        self._handles: dict[int, FileHandle | DirHandle] = {}
        self._next = 1

    def _number(self) -> int:
        fh = self._next
        self._next += 1
        return fh

    def open_file(self, ino: int, flags: int, pid: int) -> FileHandle:
        handle = FileHandle(self._number(), ino, flags, pid)
        self._handles[handle.fh] = handle
        return handle

    def open_dir(self, ino: int) -> DirHandle:
        handle = DirHandle(self._number(), ino)
        self._handles[handle.fh] = handle
        return handle

    def file(self, fh: int) -> FileHandle:
        handle = self._handles.get(fh)
        if not isinstance(handle, FileHandle):
            raise BadHandle(f"no open file handle {fh}")
        return handle

    def dir(self, fh: int) -> DirHandle:
        handle = self._handles.get(fh)
        if not isinstance(handle, DirHandle):
            raise BadHandle(f"no open directory handle {fh}")
        return handle

    def close(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if isinstance(handle, FileHandle):
            handle.closed = True  # its read-ahead stops

    def files_of(self, ino: int) -> list[FileHandle]:
        return [h for h in self._handles.values() if isinstance(h, FileHandle) and h.ino == ino]
