"""Open file and directory handles: per-open state, numbered apart from inodes.

A file handle remembers who opened it, whether it wrote, and a sticky error from a failed commit
that `close(2)`/`fsync(2)` must still report.  It also holds its reads' pattern (prefetch.py),
whose read-ahead stops when the handle closes.
A directory handle holds the listing snapshot that `readdir` pages through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from s3mount.errors import BadHandle


class ReadAhead(Protocol):
    def stop(self) -> None: ...


@dataclass
class FileHandle:
    fh: int
    ino: int
    flags: int
    pid: int
    wrote: bool = False
    etag: str | None = None  # the version this handle reads: pinned at open, never mixed
    size: int = 0
    readahead: ReadAhead | None = None  # its reads' pattern (prefetch.ReadPattern)
    closed: bool = False


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
            handle.closed = True
            if handle.readahead is not None:
                handle.readahead.stop()  # its read-ahead stops

    def files_of(self, ino: int) -> list[FileHandle]:
        return [h for h in self._handles.values() if isinstance(h, FileHandle) and h.ino == ino]
