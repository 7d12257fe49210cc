"""The kernel's mount table (`/proc/mounts`), read in one place.

The kernel writes a space, tab, newline or backslash inside a field as a three-digit octal escape
(`\\040`, `\\011`, `\\012`, `\\134`); `unescape` undoes any such escape, on bytes, so a mount point
that is not valid UTF-8 still reads back as the `surrogateescape` string `os` functions give.
Stdlib only; nothing here awaits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FSTYPE = "fuse.s3mount"
PROC_MOUNTS = "/proc/mounts"

_OCTAL = re.compile(rb"\\([0-7]{3})")


def unescape(field: str) -> str:
    """A /proc/mounts field as the path or text it stands for."""
    raw = field.encode("utf-8", "surrogateescape")
    raw = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), raw)
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class MountEntry:
    """One line of the mount table, unescaped."""

    source: str
    mountpoint: str
    fstype: str
    options: tuple[str, ...]

    def option(self, name: str, default: str | None = None) -> str | None:
        """The value of `name=value` among the options, or `default` if absent."""
        for item in self.options:
            key, _, value = item.partition("=")
            if key == name:
                return value
        return default


def parse_line(line: str) -> MountEntry | None:
    """A mount table line as an entry; None for a line too short to be one."""
    fields = line.split()
    if len(fields) < 4:
        return None
    source, mountpoint, fstype, options = (unescape(f) for f in fields[:4])
    return MountEntry(source, mountpoint, fstype, tuple(options.split(",")))


def mount_entries(table: str = PROC_MOUNTS) -> list[MountEntry]:
    """Every entry of the mount table at `table`, in its order (the last mount on top)."""
    with open(table, encoding="utf-8", errors="surrogateescape") as f:
        return [entry for entry in map(parse_line, f) if entry is not None]


def find_mount(mountpoint: str, table: str = PROC_MOUNTS) -> MountEntry | None:
    """The topmost entry mounted on `mountpoint` (a path as given, not resolved), if any."""
    found = None
    for entry in mount_entries(table):
        if entry.mountpoint == mountpoint:
            found = entry
    return found
