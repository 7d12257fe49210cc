"""Bugs the reference model (test_fs_model.py) found, each as an ordinary test of `Filesystem`
over the in-memory store (tests/memstore.py).  A crash is the Filesystem dropped unflushed, then
a new one on the same cache directory and store, recovering as a restarted mount does."""

from __future__ import annotations

import os
import re

import pytest
from memstore import MemoryStore

from s3mount import errors
from s3mount.config import MountConfig
from s3mount.fs import Filesystem
from s3mount.inodes import ROOT_INODE
from s3mount.mount import build_filesystem
from s3mount.recovery import Recovery
from s3mount.workers import Background, Limiters

PID, UID, GID = 4242, 1000, 1000
# A conflict is reported at WARNING by design; a test that makes one expects this line.
EXPECTED_LOG = re.compile(r"changed in the bucket while our version waited")



@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def make_fs(store, tmp_path):
    def make() -> Filesystem:
        config = MountConfig(bucket="b", prefix="", mountpoint=str(tmp_path),
                             cache_dir=str(tmp_path / "cache"), uid=UID, gid=GID,
                             cache_size=64 * 1024 * 1024)
        return build_filesystem(config, store, Limiters(4), Background())
    return make


async def recover(fs: Filesystem) -> None:
    staging = fs.config.cache_path() / "staging"
    await Recovery(staging, fs.store, fs.files.uploader, fs.files.conditional).run()


async def test_crash_after_open_with_truncate_recovers_over_the_old_version(store, make_fs):
    """open(O_TRUNC) of an existing file, a write, a crash: recovery found no base version
    (the truncate dropped it) and took the old object for another client's new one, so ours
    went to a conflict key and the file kept its old bytes."""
    store.put_now("f", b"old bytes")
    fs = make_fs()
    inode = fs.remember(await fs.lookup(ROOT_INODE, b"f"))
    handle, _ = await fs.open(inode.ino, os.O_WRONLY | os.O_TRUNC, PID)
    await fs.write(handle.fh, 0, b"new")
    del fs  # the crash: nothing flushed

    await recover(make_fs())
    assert sorted(store.objects) == ["f"]
    assert store.body("f") == b"new"


async def test_crash_after_truncate_keeps_another_clients_version(store, make_fs):
    """... and when another client did replace it meanwhile, theirs stays and ours goes
    beside it, as before."""
    store.put_now("f", b"old bytes")
    fs = make_fs()
    inode = fs.remember(await fs.lookup(ROOT_INODE, b"f"))
    handle, _ = await fs.open(inode.ino, os.O_WRONLY | os.O_TRUNC, PID)
    await fs.write(handle.fh, 0, b"new")
    del fs
    store.put_now("f", b"theirs")

    await recover(make_fs())  # its WARNING names the conflict key (EXPECTED_LOG)
    assert store.body("f") == b"theirs"
    conflicts = [k for k in store.objects if k.startswith("f.s3mount-conflict-")]
    assert [store.body(k) for k in conflicts] == [b"new"]


async def test_file_unlinked_while_open_stays_gone_after_a_crash(store, make_fs):
    """A new file, written, unlinked while still open, then a crash: its crash journal
    stayed, and recovery uploaded the unlinked file under its old name."""
    fs = make_fs()
    handle, inode = await fs.create(ROOT_INODE, b"f", 0o644, os.O_RDWR | os.O_CREAT, PID, UID,
                                    GID)
    fs.remember(inode)
    await fs.write(handle.fh, 0, b"scratch")
    await fs.unlink(ROOT_INODE, b"f")
    assert await fs.read(handle.fh, 0, 100) == b"scratch"  # still readable while open
    del fs

    await recover(make_fs())
    assert store.objects == {}


async def test_unlink_deletes_a_new_file_whose_upload_answer_was_lost(store, make_fs):
    """A new file's PUT lands but its answer is lost (a timeout): the file stays dirty with no
    ETag, so unlink sent no DELETE and the file came back in the next listing."""
    fs = make_fs()
    handle, inode = await fs.create(ROOT_INODE, b"f", 0o644, os.O_RDWR | os.O_CREAT, PID, UID,
                                    GID)
    fs.remember(inode)
    await fs.write(handle.fh, 0, b"data")
    store.faults.lose_reply("put", "f")
    with pytest.raises(errors.RemoteIO):
        await fs.fsync(handle.fh)
    assert store.body("f") == b"data"  # it landed
    await fs.unlink(ROOT_INODE, b"f")
    await fs.release(handle.fh)
    assert store.objects == {}
    with pytest.raises(errors.NotFound):
        await fs.lookup(ROOT_INODE, b"f")


async def test_retry_after_a_lost_answer_is_no_conflict_with_ourselves(store, make_fs):
    """A PUT lands but its answer is lost (a timeout); the retry's If-Match then fails on our
    own new version: it was taken for another client's, and ours copied to a conflict key."""
    store.put_now("f", b"old")
    fs = make_fs()
    inode = fs.remember(await fs.lookup(ROOT_INODE, b"f"))
    handle, _ = await fs.open(inode.ino, os.O_RDWR, PID)
    await fs.write(handle.fh, 0, b"new")
    store.faults.lose_reply("put", "f")
    with pytest.raises(errors.RemoteIO):
        await fs.fsync(handle.fh)
    await fs.fsync(handle.fh)
    await fs.release(handle.fh)
    assert sorted(store.objects) == ["f"]
    assert store.body("f") == b"new"
