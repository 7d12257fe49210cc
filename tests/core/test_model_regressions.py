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


MIB = 1024 * 1024


async def new_file_with_lost_answer(fs: Filesystem, store: MemoryStore, parent: int, name: str,
                                    data: bytes, op: str = "put"):  # type: ignore[no-untyped-def]
    """A new file written and fsynced, its upload landing with the answer lost (a timeout)."""
    handle, inode = await fs.create(parent, name.encode(), 0o644, os.O_RDWR | os.O_CREAT, PID,
                                    UID, GID)
    fs.remember(inode)
    await fs.write(handle.fh, 0, data)
    store.faults.lose_reply(op)
    with pytest.raises(errors.RemoteIO):
        await fs.fsync(handle.fh)
    return handle


async def test_rename_moves_a_new_file_whose_upload_answer_was_lost(store, make_fs):
    """A new file's PUT lands with its answer lost; the file, still without an ETag, was
    renamed as if not in the bucket: its object stayed under the old name for good."""
    fs = make_fs()
    handle = await new_file_with_lost_answer(fs, store, ROOT_INODE, "f", b"data")
    assert store.body("f") == b"data"
    await fs.rename(ROOT_INODE, b"f", ROOT_INODE, b"g", 0)
    await fs.fsync(handle.fh)
    await fs.release(handle.fh)
    assert {k: store.body(k) for k in store.objects} == {"g": b"data"}


async def test_directory_rename_moves_a_file_whose_upload_answer_was_lost(store, make_fs):
    """... and under a directory renamed meanwhile, its next commit found the copy of its
    own upload at the new key and took it for another client's (a conflict copy)."""
    fs = make_fs()
    d = fs.remember(await fs.mkdir(ROOT_INODE, b"d", 0o755, UID, GID))
    handle = await new_file_with_lost_answer(fs, store, d.ino, "f", b"data")
    await fs.write(handle.fh, 4, b" and more")
    await fs.rename(ROOT_INODE, b"d", ROOT_INODE, b"e", 0)
    await fs.fsync(handle.fh)
    await fs.release(handle.fh)
    files = {k: store.body(k) for k in store.objects if not k.endswith("/")}
    assert files == {"e/f": b"data and more"}


@pytest.mark.parametrize("size", [100, 9 * MIB], ids=["put", "multipart"])
async def test_writes_after_a_lost_answer_are_no_conflict_with_ourselves(store, make_fs, size):
    """An upload lands with its answer lost, the program writes on, then fsyncs: the object
    (our own earlier version) was taken for another client's, and ours went to a conflict
    key.  A multipart completion's lost answer was not recognised even with nothing written
    since."""
    store.put_now("f", b"old")
    fs = make_fs()
    inode = fs.remember(await fs.lookup(ROOT_INODE, b"f"))
    handle, _ = await fs.open(inode.ino, os.O_RDWR | os.O_TRUNC, PID)
    data = bytearray(os.urandom(size))
    await fs.write(handle.fh, 0, bytes(data))
    store.faults.lose_reply("put" if size < MIB else "complete_multipart")
    with pytest.raises(errors.RemoteIO):
        await fs.fsync(handle.fh)
    assert store.body("f") == data  # it landed
    await fs.write(handle.fh, 10, b"later")
    data[10:15] = b"later"
    await fs.fsync(handle.fh)
    await fs.release(handle.fh)
    assert sorted(store.objects) == ["f"]
    assert store.body("f") == data


async def test_a_lost_multipart_answer_then_a_retry(store, make_fs):
    """The retry of a multipart commit whose completion landed unanswered: ours, no conflict."""
    fs = make_fs()
    data = os.urandom(9 * MIB)
    handle = await new_file_with_lost_answer(fs, store, ROOT_INODE, "f", data,
                                             "complete_multipart")
    await fs.fsync(handle.fh)
    await fs.release(handle.fh)
    assert sorted(store.objects) == ["f"]
    assert store.body("f") == data


@pytest.mark.parametrize("synced", [False, True], ids=["logged", "checkpointed"])
async def test_crash_after_a_lost_answer_and_more_writes(store, make_fs, synced):
    """A lost answer, more writes, then a crash: recovery found the object to be the upload
    the journal named and took the file as uploaded, dropping the later writes (or, after a
    checkpoint, took our own version for another client's)."""
    store.put_now("f", b"old")
    fs = make_fs()
    inode = fs.remember(await fs.lookup(ROOT_INODE, b"f"))
    handle, _ = await fs.open(inode.ino, os.O_RDWR | os.O_TRUNC, PID)
    await fs.write(handle.fh, 0, b"first version")
    store.faults.lose_reply("put")
    with pytest.raises(errors.RemoteIO):
        await fs.fsync(handle.fh)
    await fs.write(handle.fh, 0, b"FIRST")
    if synced:  # the timer's checkpoint
        inode.staged.sync()
    del fs  # the crash

    await recover(make_fs())
    assert sorted(store.objects) == ["f"]
    assert store.body("f") == b"FIRST version"


async def test_a_file_replaced_by_rename_while_open_is_not_recovered(store, make_fs):
    """A new file still open (never uploaded) is replaced by a rename, then a crash: the
    replaced file's crash journal stayed, so recovery uploaded it under the name, and the
    renamed file then went to a conflict key."""
    fs = make_fs()
    a, inode_a = await fs.create(ROOT_INODE, b"a", 0o644, os.O_RDWR | os.O_CREAT, PID, UID, GID)
    fs.remember(inode_a)
    data = os.urandom(70_000)
    await fs.write(a.fh, 0, data)
    b, inode_b = await fs.create(ROOT_INODE, b"b", 0o644, os.O_RDWR | os.O_CREAT, PID, UID, GID)
    fs.remember(inode_b)
    await fs.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", 0)
    del fs

    await recover(make_fs())
    assert {k: store.body(k) for k in store.objects} == {"b": data}


async def test_writes_after_an_unlink_that_failed_are_kept(store, make_fs):
    """unlink of an open file whose DELETE failed (EIO): the name stayed in the bucket, but
    the open file had been detached from it, so what the program wrote on went nowhere."""
    store.put_now("c", b"old")
    fs = make_fs()
    inode = fs.remember(await fs.lookup(ROOT_INODE, b"c"))
    handle, _ = await fs.open(inode.ino, os.O_RDWR, PID)
    store.faults.fail("delete")
    with pytest.raises(errors.RemoteIO):
        await fs.unlink(ROOT_INODE, b"c")
    await fs.write(handle.fh, 0, b"new")
    await fs.release(handle.fh)
    assert store.body("c") == b"new"
    assert (await fs.lookup(ROOT_INODE, b"c")).size == 3


async def test_a_write_after_a_rename_survives_a_crash(store, make_fs):
    """A committed multipart file, still open, is renamed (its copy has a new ETag), written,
    then the mount crashes: the checkpoint still named the old ETag as the base, so recovery's
    fetch of the untouched bytes failed (412) and the write never reached the bucket."""
    fs = make_fs()
    handle, inode = await fs.create(ROOT_INODE, b"a", 0o644, os.O_RDWR | os.O_CREAT, PID, UID,
                                    GID)
    fs.remember(inode)
    data = bytearray(os.urandom(9 * MIB))
    await fs.write(handle.fh, 0, bytes(data))
    await fs.fsync(handle.fh)
    await fs.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", 0)
    await fs.write(handle.fh, 0, b"\x01")
    data[0] = 1
    del fs

    await recover(make_fs())
    assert sorted(store.objects) == ["b"]
    assert store.body("b") == data


async def test_an_unlink_whose_answer_was_lost_is_done(store, make_fs):
    """The DELETE landed with its answer lost: the unlink is done, not undone (the name must
    not come back for an object that is gone)."""
    store.put_now("c", b"old")
    fs = make_fs()
    inode = fs.remember(await fs.lookup(ROOT_INODE, b"c"))
    handle, _ = await fs.open(inode.ino, os.O_RDONLY, PID)
    store.faults.lose_reply("delete")
    await fs.unlink(ROOT_INODE, b"c")
    assert await fs.read(handle.fh, 0, 10) == b"old"
    await fs.release(handle.fh)
    assert store.objects == {}
    with pytest.raises(errors.NotFound):
        await fs.lookup(ROOT_INODE, b"c")


async def test_an_unlink_that_failed_then_a_crash_keeps_the_writes(store, make_fs):
    """... and when it failed, the writes made before it still reach the bucket after a
    crash (the unlink had removed the file's crash journal)."""
    store.put_now("c", b"old")
    fs = make_fs()
    inode = fs.remember(await fs.lookup(ROOT_INODE, b"c"))
    handle, _ = await fs.open(inode.ino, os.O_RDWR, PID)
    await fs.write(handle.fh, 0, b"new")
    store.faults.fail("delete")
    store.faults.fail("head")
    with pytest.raises(errors.RemoteIO):
        await fs.unlink(ROOT_INODE, b"c")
    del fs

    await recover(make_fs())
    assert store.body("c") == b"new"


@pytest.mark.parametrize("then", ["rename", "unlink"])
async def test_an_object_replaced_by_a_new_file_stays_replaced(store, make_fs, then):
    """A new file, not uploaded yet, replaces another client's object by rename, then is
    renamed away or unlinked before its commit: the replaced object came back."""
    fs = make_fs()
    handle, inode = await fs.create(ROOT_INODE, b"a", 0o644, os.O_RDWR | os.O_CREAT, PID, UID,
                                    GID)
    fs.remember(inode)
    store.put_now("b", b"theirs")
    await fs.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", 0)
    if then == "rename":
        await fs.rename(ROOT_INODE, b"b", ROOT_INODE, b"a", 0)
    else:
        await fs.unlink(ROOT_INODE, b"b")
    await fs.release(handle.fh)
    assert sorted(store.objects) == (["a"] if then == "rename" else [])
    with pytest.raises(errors.NotFound):
        await fs.lookup(ROOT_INODE, b"b")


@pytest.mark.expected_log("changed in the bucket by another client; ours is kept as")
async def test_a_new_file_that_lost_its_create_race_shows_theirs(store, make_fs):
    """Another client's PUT lands while our new file's commit is on its way: ours goes to a
    conflict key, and the file, still open, showed our bytes beside their size."""
    fs = make_fs()
    handle, inode = await fs.create(ROOT_INODE, b"a", 0o644, os.O_RDWR | os.O_CREAT, PID, UID,
                                    GID)
    fs.remember(inode)
    await fs.write(handle.fh, 0, b"ours")
    store.put_now("a", b"theirs, a longer one")
    with pytest.raises(errors.Stale):
        await fs.fsync(handle.fh)
    assert inode.size == len(b"theirs, a longer one")
    assert await fs.read(handle.fh, 0, 100) == b"theirs, a longer one"
    await fs.release(handle.fh)
    conflicts = [k for k in store.objects if k.startswith("a.s3mount-conflict-")]
    assert [store.body(k) for k in conflicts] == [b"ours"]
    assert store.body("a") == b"theirs, a longer one"
