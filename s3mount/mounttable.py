"""The kernel's mount table (`/proc/mounts`), read in one place.

The kernel writes a space, tab, newline or backslash inside a field as a three-digit octal escape
(`\\040`, `\\011`, `\\012`, `\\134`); `unescape` undoes any such escape, on bytes, so a mount point
that is not valid UTF-8 still reads back as the `surrogateescape` string `os` functions give.
`clear_dead_mount` takes down the mount of an s3mount that died, so a restart can mount again.
Nothing here awaits.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import subprocess
from dataclasses import dataclass

from s3mount.errors import ConfigError

log = logging.getLogger(__name__)

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


def clear_dead_mount(mountpoint: str, shown: str) -> None:
    """Take down the mount of an s3mount that died (SIGKILL, OOM), so a restart can mount again.

    Such a mount answers every call with ENOTCONN; only an `fuse.s3mount` entry is touched.
    """
    try:
        os.statvfs(mountpoint)  # statfs always reaches the daemon; stat may be cached
        return
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            return
    try:
        ours = any(entry.mountpoint == mountpoint and entry.fstype == FSTYPE
                   for entry in mount_entries())
    except OSError:
        ours = False
    if not ours:
        raise ConfigError(f"mount point {shown} is a FUSE mount whose program is gone: "
                          f"run fusermount3 -u -z {shown}")
    log.warning("%s: the s3mount that served it is gone; unmounting it (lazily)", shown)
    for command in (["fusermount3", "-u", "-z", mountpoint], ["umount", "-l", mountpoint]):
        try:
            if subprocess.run(command, capture_output=True, timeout=30).returncode == 0:
                return
        except (OSError, subprocess.TimeoutExpired):
            continue
    raise ConfigError(f"mount point {shown} is the dead mount of an earlier s3mount and "
                      f"could not be unmounted: run fusermount3 -u -z {shown}")
