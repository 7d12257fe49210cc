"""The crash journal of one staged file, and what a later mount may believe of it.

A dirty staged file `NAME.data` has two companions:

- `NAME.json`, the checkpoint: its key, metadata, base version, unfinished upload, and the state
  of the data as of the last *sync*: size, `base_valid`, the extents that were local (`present`),
  and the parts only its upload holds.  A sync fdatasyncs the data file first and only then
  writes the checkpoint (to a temporary file, fsynced, renamed over, directory fsynced), so every
  extent a checkpoint names was on the disk before the checkpoint was.
- `NAME.log`, appended (no fsync, no rename) by each write, truncate and fetch since: what
  changed, and a CRC-32 of every 64 KiB block it touched as the block then stood.

After SIGKILL the page cache survives, the log is whole and every block matches its last CRC: every
acknowledged write is recovered.  After a power cut, pages and log lines written since the last
sync may be gone, or be only partly on the disk.  A byte is then *provably local* when the
checkpoint names it (it was synced), or when the log names it and its block still matches the
block's last CRC.  Whatever else the replayed log names is lost: below `base_valid` it is fetched
again from the base version; above it (bytes that were never in the bucket) nothing can rebuild
it, and recovery leaves the bucket alone.  Bytes above `base_valid` that nothing names are holes
(zeros), whatever the disk holds.  Log lines carry a sequence number: a checkpoint records the
last it covers, so lines older than it are never replayed over it.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from typing import Any

Extent = tuple[int, int]  # [start, end)

BLOCK = 64 * 1024  # the span of one CRC in the log


def add_extent(extents: list[Extent], start: int, end: int) -> list[Extent]:
    """Merge [start, end) into a sorted list of disjoint extents."""
    if start >= end:
        return extents
    merged: list[Extent] = []
    for s, e in extents:
        if e < start or s > end:
            merged.append((s, e))
        else:
            start, end = min(s, start), max(e, end)
    merged.append((start, end))
    merged.sort()
    return merged


def clip_extents(extents: list[Extent], limit: int) -> list[Extent]:
    return [(s, min(e, limit)) for s, e in extents if s < limit]


def remove_range(extents: list[Extent], start: int, end: int) -> list[Extent]:
    """The sorted extents without [start, end)."""
    kept: list[Extent] = []
    for s, e in extents:
        if s < start:
            kept.append((s, min(e, start)))
        if e > end:
            kept.append((max(s, end), e))
    return kept


def missing_ranges(extents: list[Extent], start: int, end: int) -> list[Extent]:
    """The parts of [start, end) no extent covers."""
    gaps: list[Extent] = []
    pos = start
    for s, e in extents:
        if e <= pos:
            continue
        if s >= end:
            break
        if s > pos:
            gaps.append((pos, s))
        pos = max(pos, e)
        if pos >= end:
            break
    if pos < end:
        gaps.append((pos, end))
    return gaps


def block_crcs(fd: int, start: int, end: int, size: int) -> list[list[int]]:
    """[block, CRC-32, length] of each block [start, end) touches, as it stands up to `size`."""
    out = []
    for block in range(start // BLOCK, (end - 1) // BLOCK + 1 if end > start else 0):
        low = block * BLOCK
        length = max(0, min(low + BLOCK, size) - low)
        out.append([block, zlib.crc32(os.pread(fd, length, low)), length])
    return out


def write_durably(path: str, state: dict[str, Any]) -> None:
    """Replace `path` by `state` as JSON, whole and on the disk when this returns."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(state).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ChangeLog:
    """The append-only log of one staged file (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.seq = 0  # number of the last line appended

    def append(self, record: dict[str, Any]) -> None:
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.seq += 1
        record["n"] = self.seq
        os.write(self.fd, json.dumps(record, separators=(",", ":")).encode() + b"\n")

    def reset(self) -> None:
        """Every line so far is covered by a checkpoint: drop them."""
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)

    def remove(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def read_log(path: str, after: int) -> list[dict[str, Any]]:
    """The log's lines numbered past `after`, up to the first torn or unreadable one."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return []
    records = []
    for line in raw.split(b"\n"):
        try:
            record = json.loads(line)
            number = int(record["n"])
        except (ValueError, KeyError, TypeError):
            break
        if number > after:
            records.append(record)
    return records


@dataclass
class Replayed:
    """What a crashed mount's staged file provably holds (see the module docstring)."""

    size: int
    base_valid: int
    present: list[Extent]  # provably local
    lost: list[Extent]  # written by the user, but not provably on the disk
    changed: bool = False  # the log names changes made after the checkpoint


def replay(state: dict[str, Any], log_path: str, data_path: str) -> Replayed:
    """Apply the log to the checkpoint `state`, and check every block it names on the disk."""
    size, base_valid = int(state["size"]), int(state["base_valid"])
    present = [(int(s), int(e)) for s, e in state.get("present", [])]
    synced = list(present)
    crcs: dict[int, tuple[int, int]] = {}
    changed = False
    for record in read_log(log_path, int(state.get("seq", 0))):
        changed = changed or "t" in record or "w" in record
        if "t" in record:
            size = int(record["t"])
            present, synced = clip_extents(present, size), clip_extents(synced, size)
            base_valid = min(base_valid, size)
            crcs = {b: c for b, c in crcs.items() if b * BLOCK < size}
        if "w" in record:
            start, end = int(record["w"][0]), int(record["w"][1])
            present = add_extent(present, start, end)
            size = max(size, end)
        for block, crc, length in record.get("c", []):
            crcs[int(block)] = (int(crc), int(length))
    bad: list[Extent] = []
    with open(data_path, "rb") as f:
        for block, (crc, length) in crcs.items():
            data = os.pread(f.fileno(), length, block * BLOCK)
            if zlib.crc32(data + bytes(length - len(data))) != crc:
                bad = add_extent(bad, block * BLOCK, block * BLOCK + length)
    lost: list[Extent] = []
    for start, end in bad:
        for s, e in present:
            low, high = max(s, start), min(e, end)
            for gap in missing_ranges(synced, low, high) if low < high else []:
                lost = add_extent(lost, *gap)
    for start, end in lost:
        present = remove_range(present, start, end)
    return Replayed(size, base_valid, present, lost, changed)
