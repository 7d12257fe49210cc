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

MIN_WINDOW = 128 * 1024
MAX_WINDOW = 8 * 1024 * 1024


@dataclass
class FileHandle:
    fh: int
    ino: int
    flags: int
    pid: int
    wrote: bool = False
    error: Exception | None = None  # a failed commit, reported once by flush/fsync
    next_offset: int = -1  # where the last read ended
    window: int = MIN_WINDOW
    buffer_offset: int = 0
    buffer: bytes = b""
    buffer_etag: str | None = None

    def note_read(self, offset: int) -> int:
        """How much to fetch for a read at `offset`: grows while sequential, resets on a jump."""
        if offset == self.next_offset:
            self.window = min(self.window * 2, MAX_WINDOW)
        else:
            self.window = MIN_WINDOW
        return self.window

    def buffered(self, offset: int, size: int, etag: str | None) -> bytes | None:
        end = self.buffer_offset + len(self.buffer)
        if etag == self.buffer_etag and self.buffer_offset <= offset and offset + size <= end:
            start = offset - self.buffer_offset
            return self.buffer[start:start + size]
        return None


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
        self._handles.pop(fh, None)

    def files_of(self, ino: int) -> list[FileHandle]:
        return [h for h in self._handles.values() if isinstance(h, FileHandle) and h.ino == ino]
