"""fsx-style: a seeded random sequence of operations on one file of the mount, checked against a
shadow file on local disk after every read, again after a remount, and in the bucket.

Real fsx (and fsstress) are not packaged in Debian, and the project does not build fetched
sources into its tests, so this is the same idea, bounded: a few hundred operations (write at a
random offset, truncate up and down, read back, close and reopen, fsync) on one file that grows
past the part size now and then, so commits take both the single-PUT and the multipart road
(with server-side copies of untouched parts).  The seed is in the test id: a failure names the
operation and replays the same sequence.
"""

from __future__ import annotations

import os
import random

import pytest

KIB, MIB = 1024, 1024 * 1024
OPERATIONS = 300


class Pair:
    """The file on the mount and its shadow, opened and changed together."""

    def __init__(self, mounted_path, shadow_path) -> None:  # type: ignore[no-untyped-def]
        self.paths = (mounted_path, shadow_path)
        self.fds = (-1, -1)
        self.size = 0

    def open(self) -> None:
        self.fds = tuple(os.open(p, os.O_RDWR | os.O_CREAT, 0o644) for p in self.paths)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)

    def write(self, offset: int, data: bytes) -> None:
        for fd in self.fds:
            assert os.pwrite(fd, data, offset) == len(data)
        self.size = max(self.size, offset + len(data))

    def truncate(self, size: int) -> None:
        for fd in self.fds:
            os.ftruncate(fd, size)
        self.size = size

    def read_check(self, offset: int, length: int, step: str) -> None:
        got, want = (os.pread(fd, length, offset) for fd in self.fds)
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                      min(len(got), len(want)))
            pytest.fail(f"{step}: read of {length} at {offset} differs from byte {offset + at} "
                        f"(got {len(got)} bytes, want {len(want)})")

    def check_sizes(self, step: str) -> None:
        sizes = [os.fstat(fd).st_size for fd in self.fds]
        assert sizes == [self.size, self.size], f"{step}: sizes {sizes}, want {self.size}"


def choose_offset(rng: random.Random, size: int, limit: int) -> int:
    """Mostly inside the file or just past it; now and then far out (a hole, a large file)."""
    roll = rng.random()
    if roll < 0.05:
        return rng.randrange(0, limit)
    return rng.randrange(0, min(limit, size + 64 * KIB))


@pytest.mark.parametrize("seed", [20261201])
def test_fsx_random_operations(mounted, s3_client, bucket, tmp_path, seed):
    rng = random.Random(seed)
    limit = 12 * MIB  # past the 8 MiB part size: some commits are multipart
    pair = Pair(mounted.path / "fsx.bin", tmp_path / "shadow.bin")
    pair.open()
    counts: dict[str, int] = {}
    try:
        for number in range(OPERATIONS):
            op = rng.choices(["write", "truncate", "read", "reopen", "fsync"],
                             weights=[45, 10, 35, 5, 5])[0]
            counts[op] = counts.get(op, 0) + 1
            step = f"operation {number} ({op}, seed {seed})"
            if op == "write":
                offset = choose_offset(rng, pair.size, limit)
                length = rng.choice([1, rng.randrange(1, 4 * KIB), rng.randrange(1, 256 * KIB)])
                pair.write(offset, rng.randbytes(min(length, limit - offset) or 1))
            elif op == "truncate":
                grow = rng.random() < 0.5
                target = (rng.randrange(pair.size, limit) if grow and pair.size < limit
                          else rng.randrange(0, pair.size + 1))
                pair.truncate(target)
            elif op == "read":
                offset = rng.randrange(0, pair.size + 4 * KIB)
                pair.read_check(offset, rng.randrange(1, 512 * KIB), step)
            elif op == "reopen":
                pair.close()
                pair.open()
            else:
                os.fsync(pair.fds[0])
            pair.check_sizes(step)
        pair.read_check(0, limit + 1, "the whole file at the end")
    finally:
        pair.close()
    assert all(counts.get(op) for op in ("write", "truncate", "read", "reopen", "fsync")), counts
    want = (tmp_path / "shadow.bin").read_bytes()
    assert s3_client.get_object(Bucket=bucket, Key="fsx.bin")["Body"].read() == want
    mounted.remount()
    assert (mounted.path / "fsx.bin").read_bytes() == want
    assert (mounted.path / "fsx.bin").stat().st_size == len(want)
