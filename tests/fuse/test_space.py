"""A cache disk that fills up: writes fail with ENOSPC, the mount lives on, nothing already
written is lost."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest
from helpers import Mount, bucket_objects, check_log, prerequisite

MIB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "small"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        prerequisite("root", f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)])


def test_full_cache_disk_gives_enospc(s3_server, s3_client, bucket, small_disk, tmp_path):
    m = Mount(s3_server.endpoint, bucket, tmp_path / "mnt", small_disk / "cache")
    m.expect("disk is nearly full", at_least=1)  # the write refused with ENOSPC says why
    m.start()
    try:
        (m.path / "keep.txt").write_text("written before the disk filled")
        # Another program fills the disk: staged data alone stays within the cache budget.
        with open(small_disk / "filler", "wb") as filler:
            filler.write(b"\0" * (150 * MIB))
        chunk = b"\xab" * (1024 * 1024)
        with pytest.raises(OSError) as exc:
            with open(m.path / "huge.bin", "wb") as f:
                for _ in range(1000):
                    f.write(chunk)
        assert exc.value.errno == errno.ENOSPC
        assert (m.path / "keep.txt").read_text() == "written before the disk filled"
        (small_disk / "filler").unlink()  # the other program frees its space
        (m.path / "after.txt").write_text("the mount still works")
        objects = bucket_objects(s3_client, bucket)
        assert objects["keep.txt"] == b"written before the disk filled"
        assert objects["after.txt"] == b"the mount still works"
    finally:
        m.stop()
    assert not check_log(m)


def disk_use(directory: Path) -> int:
    total = 0
    for root, _, names in os.walk(directory):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


class DiskWatch:
    """The most disk a directory takes while a `with` block runs (sampled every 20 ms)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.most = max(self.most, disk_use(self.directory))

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_writes_past_the_cache_budget_stay_within_it(s3_server, s3_client, bucket, tmp_path):
    """cp of a file 2.5 times --cache-size; then a file written on, rewritten where its parts
    were already dropped, read there, and written on again before close: the cache disk holds
    no more than the budget, and nothing is lost."""
    source = tmp_path / "source.bin"
    copied = os.urandom(160 * MIB + 999)
    source.write_bytes(copied)
    cache = tmp_path / "cache"
    m = Mount(s3_server.endpoint, bucket, tmp_path / "mnt", cache, ["--cache-size", "64M"])
    m.start()
    try:
        with DiskWatch(cache) as watch:
            subprocess.run(["cp", str(source), str(m.path / "copied.bin")], check=True)
        assert watch.most <= 64 * MIB, f"the cache took {watch.most / MIB:.1f} MiB"
        assert "parts already uploaded dropped" in m.log_text()
        data = bytearray()
        with DiskWatch(cache) as watch, open(m.path / "edited.bin", "w+b") as f:
            for _ in range(100):
                chunk = os.urandom(MIB)
                f.write(chunk)
                data += chunk
            patch = b"patched after its part was dropped"
            f.seek(3 * MIB + 5)
            f.write(patch)
            f.flush()
            data[3 * MIB + 5:3 * MIB + 5 + len(patch)] = patch
            f.seek(50 * MIB)
            assert f.read(MIB) == data[50 * MIB:51 * MIB]
            f.seek(0, os.SEEK_END)
            tail = os.urandom(60 * MIB)
            f.write(tail)
            data += tail
        assert watch.most <= 64 * MIB + 32 * MIB  # + the clean blocks a reader may keep
        assert "committed as it stands" in m.log_text()
        objects = {"copied.bin": copied, "edited.bin": data}
        for key, expected in objects.items():
            body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest(), key
        m.remount()
        for key, expected in objects.items():
            got = hashlib.sha256((m.path / key).read_bytes()).digest()
            assert got == hashlib.sha256(expected).digest(), key
    finally:
        m.stop()
    assert not m.problems()


def test_unlinked_file_past_the_budget_gets_enospc(s3_server, s3_client, bucket, tmp_path):
    """An open, unlinked file exists only on the cache disk: it cannot be committed to make
    room, so growing it past the budget is refused, and the mount lives on."""
    m = Mount(s3_server.endpoint, bucket, tmp_path / "mnt", tmp_path / "cache",
              ["--cache-size", "64M"])
    m.start()
    try:
        with open(m.path / "scratch.bin", "wb") as f:
            os.unlink(m.path / "scratch.bin")
            with pytest.raises(OSError) as exc:
                for _ in range(200):
                    f.write(b"\x5a" * MIB)
                    f.flush()
            assert exc.value.errno == errno.ENOSPC
        (m.path / "after.txt").write_text("the mount still works")
        assert bucket_objects(s3_client, bucket) == {"after.txt": b"the mount still works"}
    finally:
        m.stop()
