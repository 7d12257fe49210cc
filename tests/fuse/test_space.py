"""A cache disk that fills up: writes fail with ENOSPC, the mount lives on, nothing already
written is lost."""

from __future__ import annotations

import errno
import subprocess

import pytest
from helpers import Mount, bucket_objects


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "small"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)])


def test_full_cache_disk_gives_enospc(s3_server, s3_client, bucket, small_disk, tmp_path):
    m = Mount(s3_server.endpoint, bucket, tmp_path / "mnt", small_disk / "cache")
    m.start()
    try:
        (m.path / "keep.txt").write_text("written before the disk filled")
        chunk = b"\xab" * (1024 * 1024)
        with pytest.raises(OSError) as exc:
            with open(m.path / "huge.bin", "wb") as f:
                for _ in range(1000):
                    f.write(chunk)
        assert exc.value.errno == errno.ENOSPC
        assert (m.path / "keep.txt").read_text() == "written before the disk filled"
        (m.path / "after.txt").write_text("the mount still works")
        objects = bucket_objects(s3_client, bucket)
        assert objects["keep.txt"] == b"written before the disk filled"
        assert objects["after.txt"] == b"the mount still works"
    finally:
        m.stop()
    assert "Traceback" not in m.log_text()
