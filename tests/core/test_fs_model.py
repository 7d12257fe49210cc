"""A reference model of `Filesystem` (s3mount/fs.py) over the in-memory store (tests/memstore.py).

Hypothesis drives random sequences of POSIX calls (create, open, write at an offset, truncate,
read, fsync, close, unlink, rename of files and directories, mkdir, rmdir), crashes (the
Filesystem is dropped unflushed and a new one recovers from the same cache directory, as a
restarted mount does), other clients' PUT, DELETE and copy, faults on the store's calls, and
commits held in flight while something else happens.  After every step the mount must look as
a local disk would under S3's rules, and the bucket must hold every closed file as written.

The model's rules, where S3 or the brief leave a choice:
- a file is in the bucket once closed (flush), fsynced, or recovered after a crash; until then
  the bucket keeps the version before (or nothing);
- other clients PUT, DELETE and copy only names no handle holds open and with no writes of ours
  pending: what an open handle reads after its object was replaced has no local-disk answer
  (the old version may be gone from the bucket).  Races of another client with our writes are
  not modelled yet (see `commit_held`); `lose_to_theirs` keeps the rule for them: their PUT wins
  the key, ours goes to a conflict key (or the cache's conflicts/) and the close says ESTALE;
- a crash loses no acknowledged write (a process crash keeps the page cache), and every file
  open at the crash counts as closed;
- a fault makes the call fail with EIO or succeed; afterwards the mount shows the state either
  before or after the call, never a mix.  Renames get no faults: S3 has no atomic rename, so a
  failure in the middle leaves both names, which is documented behaviour.

Steps are cheap by design: files are small but may be sparse past the multipart threshold, and
the mount reads back only what the step touched.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import hypothesis.strategies as st
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
)
from memstore import MemoryStore

from s3mount import errors
from s3mount.config import MountConfig
from s3mount.fs import Filesystem
from s3mount.inodes import ROOT_INODE, Inode
from s3mount.markers import is_marker
from s3mount.mount import build_filesystem
from s3mount.recovery import Recovery
from s3mount.workers import Background, Limiters

MIB = 1024 * 1024
PART = 6 * MIB  # the smallest part plan_parts makes
UID = GID = 1000
PID = 77
NAMES = ("a", "b", "c")
DIRS = ("d", "e")
CONFLICT = ".s3mount-conflict-"
# Log lines the model's own events call for; anything else at WARNING or above fails the test.
CAPTURE_LEVEL = logging.INFO  # see tests/core/conftest.py
EXPECTED_LOG = re.compile(
    r"was changed in the bucket by another client|changed in the bucket before our changes|"
    r"changed in the bucket while ours|stays staged, its upload failed|"
    r"could not finish the upload|could not upload|still cannot upload|"
    r"injected|changed in the bucket while our version|cannot rebuild")


# -- the mount's side: trio in a thread of its own ---------------------------------------------


class TrioThread:
    """A trio loop on its own thread, so hypothesis's synchronous rules can await."""

    def __init__(self) -> None:
        ready = threading.Event()
        self.failure: BaseException | None = None

        async def main() -> None:
            self.token = trio.lowlevel.current_trio_token()
            self.stop = trio.Event()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                ready.set()
                await self.stop.wait()
                nursery.cancel_scope.cancel()

        def run() -> None:
            try:
                trio.run(main)
            except BaseException as exc:  # noqa: BLE001 - reported by close()
                self.failure = exc
                ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait()

    def run(self, fn, *args):  # type: ignore[no-untyped-def]
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def call_soon(self, fn, *args):  # type: ignore[no-untyped-def]
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def close(self) -> None:
        trio.from_thread.run_sync(self.stop.set, trio_token=self.token)
        self.thread.join()
        if self.failure is not None:
            raise self.failure


async def background_scope(task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A nursery for one Filesystem's background work; cancelled when that mount crashes."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            task_status.started((nursery, scope))
            await trio.sleep_forever()


# -- the model's side ----------------------------------------------------------------------------


@dataclass(eq=False)
class File:
    data: bytearray
    path: str | None  # None: unlinked
    dirty: bool = True  # writes not in the bucket yet (a new file counts until closed)
    theirs: bytes | None = None  # another client's PUT over our unflushed writes


@dataclass
class Handle:
    fh: int
    file: File
    writable: bool
    wrote: bool = False


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def base_of(path: str) -> str:
    return path.rpartition("/")[2]


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def pattern(length: int, seed: int) -> bytes:
    return bytes((seed + i) % 251 for i in range(length)) if length < 4096 else (
        bytes([seed % 256]) * length)


def errno_of(exc: BaseException) -> int:
    if isinstance(exc, errors.FsError):
        return exc.errno
    raise exc


offsets = st.one_of(st.integers(0, 300), st.integers(PART - 50, PART + 50))
lengths = st.one_of(st.integers(1, 200), st.just(70_000))


class FilesystemModel(RuleBasedStateMachine):
    steps = 0

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(TMP_ROOT) / f"run-{next_id()}"
        self.root.mkdir()
        self.loop = TrioThread()
        self.store = MemoryStore(min_part_size=5 * MIB)
        self.fs: Filesystem | None = None
        self.dirs: set[str] = {""}
        self.files: dict[str, File] = {}
        self.handles: list[Handle] = []
        self.touched: set[str] = set()
        self.mount()

    # -- plumbing ------------------------------------------------------------------------------

    def mount(self) -> None:
        config = MountConfig(bucket="model", prefix="", mountpoint=str(self.root),
                             cache_dir=str(self.root / "cache"), uid=UID, gid=GID,
                             metadata_ttl=0.0, single_put_limit=64 * 1024, part_size=PART,
                             cache_size=64 * MIB, max_readahead=0, max_concurrency=4)
        self.config = config
        nursery, self.scope = self.loop.run(self.loop.nursery.start, background_scope)
        background = Background()
        background.nursery = nursery
        self.fs = build_filesystem(config, self.store, Limiters(4), background)

    def run(self, fn, *args):  # type: ignore[no-untyped-def]
        return self.loop.run(fn, *args)

    def call(self, fn, *args) -> int | None:  # type: ignore[no-untyped-def]
        """Run one filesystem call; its errno, or None when it succeeded."""
        try:
            self.run(fn, *args)
        except errors.FsError as exc:
            return exc.errno
        return None

    def teardown(self) -> None:
        self.store.faults.clear()
        self.loop.call_soon(self.scope.cancel)
        self.loop.close()

    async def resolve(self, path: str) -> Inode:
        fs = self.fs
        assert fs is not None
        inode = fs.inode(ROOT_INODE)
        if path:
            for part in path.split("/"):
                inode = fs.remember(await fs.lookup(inode.ino, part.encode()))
        return inode

    def lookup(self, path: str) -> Inode:
        return self.run(self.resolve, path)

    def open_handles(self, file: File) -> list[Handle]:
        return [h for h in self.handles if h.file is file]

    # -- what the mount must show ---------------------------------------------------------------

    def model_listing(self, directory: str) -> set[str]:
        names = {base_of(p) for p in self.files if parent_of(p) == directory}
        names |= {base_of(d) for d in self.dirs if d and parent_of(d) == directory}
        return names

    async def listing(self, directory: str) -> set[str]:
        fs = self.fs
        assert fs is not None
        inode = await self.resolve(directory)
        fh = await fs.opendir(inode.ino)
        try:
            return {name for name, _ in await fs.readdir(fh, 0)}
        finally:
            fs.releasedir(fh)

    async def read_path(self, path: str) -> bytes:
        fs = self.fs
        assert fs is not None
        inode = await self.resolve(path)
        handle, _ = await fs.open(inode.ino, os.O_RDONLY, PID)
        try:
            out = []
            while piece := await fs.read(handle.fh, sum(map(len, out)), 16 * MIB):
                out.append(piece)
            return b"".join(out)
        finally:
            await fs.release(handle.fh)

    def check_namespace(self) -> None:
        for directory in sorted(self.dirs):
            seen = self.run(self.listing, directory)
            assert seen == self.model_listing(directory), directory
        for path in self.dirs - {""}:
            assert self.lookup(path).is_dir, path

    def check_contents(self, paths: set[str]) -> None:
        for path in sorted(paths):
            file = self.files.get(path)
            if file is None:
                continue
            inode = self.lookup(path)
            assert stat.S_ISREG(inode.mode), path
            assert inode.size == len(file.data), path
            assert self.run(self.read_path, path) == file.data, path

    def check_bucket(self) -> None:
        """Closed, clean files are in the bucket as written; nothing is there that should not."""
        expected: dict[str, bytes | None] = {}
        for path, file in self.files.items():
            if not file.dirty:  # a dirty file's key holds its previous version, or nothing
                expected[path] = bytes(file.data)
        for key, obj in self.store.objects.items():
            if is_marker(key):
                assert key[:-1] in self.dirs, f"marker of a removed directory: {key}"
                continue
            if key in expected:
                assert obj.body == expected.pop(key), key
                continue
            assert key in self.files, f"{key} is in the bucket and should not be"
        assert not expected, f"missing from the bucket: {sorted(expected)}"

    @invariant()
    def after_each_step(self) -> None:
        FilesystemModel.steps += 1
        self.check_namespace()
        self.check_contents(self.touched)
        self.touched = set()
        self.check_bucket()

    # -- choices --------------------------------------------------------------------------------

    def pick_dir(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.dirs)))

    def new_path(self, data: st.DataObject, names=NAMES) -> str:  # type: ignore[no-untyped-def]
        return join(self.pick_dir(data), data.draw(st.sampled_from(names)))

    def pick_handle(self, data: st.DataObject, writable: bool = False) -> Handle | None:
        handles = [h for h in self.handles if h.writable or not writable]
        return data.draw(st.sampled_from(handles)) if handles else None

    def free_to_replace(self, path: str) -> bool:
        """Whether another client may PUT at `path`: no directory there, its parent exists,
        and no handle holds it open (races with our writes are `commit_held`'s)."""
        if path in self.dirs or parent_of(path) not in self.dirs or any(
                d.startswith(path + "/") for d in self.dirs):
            return False
        file = self.files.get(path)
        return file is None or not (self.open_handles(file) or file.dirty)

    # -- names ----------------------------------------------------------------------------------

    @rule(data=st.data())
    def mkdir(self, data: st.DataObject) -> None:
        parent = self.pick_dir(data)
        if parent.count("/") >= 1:
            return
        path = join(parent, data.draw(st.sampled_from(DIRS + NAMES[:1])))
        ino = self.lookup(parent).ino
        got = self.call(self._mkdir, ino, base_of(path))
        if path in self.dirs or path in self.files:
            assert got == errno.EEXIST, path
        else:
            assert got is None, path
            self.dirs.add(path)

    async def _mkdir(self, ino: int, name: str) -> None:
        assert self.fs is not None
        self.fs.remember(await self.fs.mkdir(ino, name.encode(), 0o755, UID, GID))

    @rule(data=st.data())
    def rmdir(self, data: st.DataObject) -> None:
        path = self.pick_dir(data)
        if not path:
            return
        got = self.call(self.fs.rmdir, self.lookup(parent_of(path)).ino, base_of(path).encode())
        if self.model_listing(path):
            assert got == errno.ENOTEMPTY, path
        else:
            assert got is None, path
            self.dirs.discard(path)

    @rule(data=st.data())
    def unlink(self, data: st.DataObject) -> None:
        if not self.files:
            return
        path = data.draw(st.sampled_from(sorted(self.files)))
        got = self.call(self.fs.unlink, self.lookup(parent_of(path)).ino, base_of(path).encode())
        assert got is None, path
        self.files.pop(path).path = None

    @rule(data=st.data(), noreplace=st.booleans())
    def rename(self, data: st.DataObject, noreplace: bool) -> None:
        sources = sorted(self.files) + sorted(self.dirs - {""})
        if not sources:
            return
        src = data.draw(st.sampled_from(sources))
        dst = self.new_path(data, NAMES + DIRS)
        if dst == src or dst.startswith(src + "/") or any(
                f.theirs is not None and (p == src or p.startswith(src + "/"))
                for p, f in self.files.items()):
            return  # a file another client replaced under our writes: see the docstring
        got = self.call(self.fs.rename, self.lookup(parent_of(src)).ino, base_of(src).encode(),
                        self.lookup(parent_of(dst)).ino, base_of(dst).encode(),
                        1 if noreplace else 0)
        expected = self.rename_errno(src, dst, noreplace)
        assert got == expected, (src, dst)
        if expected is None:
            self.apply_rename(src, dst)

    def rename_errno(self, src: str, dst: str, noreplace: bool) -> int | None:
        exists = dst in self.files or dst in self.dirs
        if exists and noreplace:
            return errno.EEXIST
        if src in self.dirs and dst in self.files:
            return errno.ENOTDIR
        if src in self.files and dst in self.dirs:
            return errno.EISDIR
        if dst in self.dirs and self.model_listing(dst):
            return errno.ENOTEMPTY
        return None

    def apply_rename(self, src: str, dst: str) -> None:
        if src in self.files:
            replaced = self.files.pop(dst, None)
            if replaced is not None:
                replaced.path = None
            file = self.files.pop(src)
            file.path = dst
            self.files[dst] = file
            self.touched.add(dst)
            return
        self.dirs.discard(dst)
        moved = {p for p in self.dirs if p == src or p.startswith(src + "/")}
        self.dirs = (self.dirs - moved) | {dst + p[len(src):] for p in moved}
        for path in [p for p in self.files if p.startswith(src + "/")]:
            file = self.files.pop(path)
            file.path = dst + path[len(src):]
            self.files[file.path] = file
            self.touched.add(file.path)

    # -- files ----------------------------------------------------------------------------------

    @rule(data=st.data(), exclusive=st.booleans())
    def create(self, data: st.DataObject, exclusive: bool) -> None:
        path = self.new_path(data)
        if path in self.dirs:
            return
        flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if exclusive else 0)
        parent = self.lookup(parent_of(path)).ino
        try:
            handle, inode = self.run(self.fs.create, parent, base_of(path).encode(), 0o644,
                                     flags, PID, UID, GID)
        except errors.FsError as exc:
            assert exclusive and path in self.files and exc.errno == errno.EEXIST, path
            return
        self.fs.remember(inode)
        assert not (exclusive and path in self.files), path
        file = self.files.get(path)
        if file is None:
            file = self.files[path] = File(bytearray(), path)
        self.handles.append(Handle(handle.fh, file, True, wrote=handle.wrote))

    @rule(data=st.data(), writable=st.booleans(), trunc=st.booleans())
    def open(self, data: st.DataObject, writable: bool, trunc: bool) -> None:
        if not self.files:
            return
        path = data.draw(st.sampled_from(sorted(self.files)))
        file = self.files[path]
        if trunc and writable and file.theirs is not None:
            return  # a truncate then decides nothing the model can foresee
        flags = (os.O_RDWR | (os.O_TRUNC if trunc else 0)) if writable else os.O_RDONLY
        handle, _ = self.run(self.fs.open, self.lookup(path).ino, flags, PID)
        h = Handle(handle.fh, file, writable, wrote=handle.wrote)
        self.handles.append(h)
        if writable and trunc and file.data:
            file.data.clear()
            file.dirty = True
            h.wrote = True

    @rule(data=st.data(), offset=offsets, length=lengths, seed=st.integers(0, 255))
    def write(self, data: st.DataObject, offset: int, length: int, seed: int) -> None:
        h = self.pick_handle(data, writable=True)
        if h is None:
            return
        body = pattern(length, seed)
        assert self.run(self.fs.write, h.fh, offset, body) == length
        file = h.file
        if len(file.data) < offset:
            file.data.extend(bytes(offset - len(file.data)))
        file.data[offset:offset + length] = body
        file.dirty = h.wrote = True
        if file.path is not None:
            self.touched.add(file.path)

    @rule(data=st.data(), offset=offsets, length=st.integers(0, 70_000))
    def read(self, data: st.DataObject, offset: int, length: int) -> None:
        h = self.pick_handle(data)
        if h is None:
            return
        got = self.run(self.fs.read, h.fh, offset, length)
        assert got == h.file.data[offset:offset + length]

    @rule(data=st.data(), size=st.one_of(st.integers(0, 300), st.just(PART + 10)),
          by_handle=st.booleans())
    def truncate(self, data: st.DataObject, size: int, by_handle: bool) -> None:
        h = self.pick_handle(data, writable=True) if by_handle else None
        if h is not None:
            file, ino, fh = h.file, self.fs.handles.file(h.fh).ino, h.fh
            h.wrote = True
        else:
            if not self.files:
                return
            path = data.draw(st.sampled_from(sorted(self.files)))
            file, ino, fh = self.files[path], self.lookup(path).ino, None
            if file.theirs is not None:
                return  # truncate(2) by path commits: see the contested close below
        self.run(lambda: self.fs.setattr(ino, size=size, fh=fh))
        del file.data[size:]
        file.data.extend(bytes(size - len(file.data)))
        file.dirty = fh is not None  # truncate(2) by path commits every write at once
        if file.path is not None:
            self.touched.add(file.path)

    def committed(self, file: File, got: int | None) -> None:
        """A commit of `file` was attempted and answered `got`: the model follows."""
        if file.theirs is not None and file.dirty:
            assert got == errno.ESTALE, file.path
            self.lose_to_theirs(file)
            return
        assert got is None, file.path
        file.dirty = False

    def lose_to_theirs(self, file: File) -> None:
        """Ours went to a conflict key (or the cache's conflicts/), theirs holds the key."""
        ours = bytes(file.data)
        key = file.path
        file.data = bytearray(file.theirs or b"")
        file.theirs = None
        file.dirty = False
        if key is None:
            return
        found = [k for k in self.store.objects
                 if k.startswith(key + CONFLICT) and k not in self.files]
        assert len(found) <= 1, found
        if found:
            assert self.store.objects[found[0]].body == ours, found[0]
            self.files[found[0]] = File(bytearray(ours), found[0], dirty=False)
            self.touched.add(found[0])
        else:  # set aside in the cache, or over an earlier conflict key (check_bucket sees it)
            assert self.kept_locally() or any(
                k.startswith(key + CONFLICT) for k in self.files), f"ours of {key} went nowhere"
        self.touched.add(key)

    @rule(data=st.data(), sync=st.booleans())
    def flush(self, data: st.DataObject, sync: bool) -> None:
        h = self.pick_handle(data)
        if h is None:
            return
        if sync:
            got = self.call(self.fs.fsync, h.fh)
            self.after_commit(h.file, got, always=True)
        else:
            got = self.call(self.fs.flush, h.fh)
            self.after_commit(h.file, got, always=h.wrote)

    def after_commit(self, file: File, got: int | None, always: bool) -> None:
        if file.path is None:
            assert got is None
            return
        if always:
            self.committed(file, got)
        else:
            assert got is None

    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        h = self.pick_handle(data)
        if h is None:
            return
        got = self.call(self.fs.flush, h.fh)
        self.after_commit(h.file, got, always=h.wrote)
        self.handles.remove(h)
        self.run(self.fs.release, h.fh)
        file = h.file
        if not self.open_handles(file) and file.path is not None and file.dirty:
            # The last close commits every write; a conflict there is logged, not returned.
            if file.theirs is not None:
                self.lose_to_theirs(file)
            else:
                file.dirty = False

    # -- other clients --------------------------------------------------------------------------

    @rule(data=st.data(), length=st.integers(0, 100), seed=st.integers(0, 255))
    def other_put(self, data: st.DataObject, length: int, seed: int) -> None:
        path = self.new_path(data)
        if not self.free_to_replace(path):
            return
        body = pattern(length, seed) + b"theirs"
        self.store.put_now(path, body)
        self.their_version(path, body)

    def their_version(self, path: str, body: bytes) -> None:
        file = self.files.get(path)
        if file is not None and file.dirty and self.open_handles(file):
            file.theirs = body
            return
        if file is not None:
            file.path = None
        self.files[path] = File(bytearray(body), path, dirty=False)
        self.touched.add(path)

    @rule(data=st.data())
    def other_delete(self, data: st.DataObject) -> None:
        if not self.files:
            return
        path = data.draw(st.sampled_from(sorted(self.files)))
        file = self.files[path]
        if self.open_handles(file) or file.dirty:
            return  # a delete under an open file: no local-disk answer
        self.store.delete_now(path)
        del self.files[path]
        file.path = None

    @rule(data=st.data())
    def other_copy(self, data: st.DataObject) -> None:
        clean = sorted(p for p, f in self.files.items() if not f.dirty)
        if not clean:
            return
        src = data.draw(st.sampled_from(clean))
        dst = self.new_path(data)
        if dst == src or not self.free_to_replace(dst):
            return
        self.store.copy_now(src, dst)
        self.their_version(dst, bytes(self.store.objects[dst].body))

    # -- faults ---------------------------------------------------------------------------------

    def arm(self, kind: str, ops: tuple[str, ...]) -> None:
        for op in ops:
            if kind == "fail":
                self.store.faults.fail(op)
            elif kind == "lose":
                self.store.faults.lose_reply(op)
            else:
                self.store.faults.cut()

    def pick_uncontested(self, data: st.DataObject) -> Handle | None:
        handles = [h for h in self.handles if h.file.theirs is None and h.file.path is not None]
        return data.draw(st.sampled_from(handles)) if handles else None

    @rule(data=st.data(), kind=st.sampled_from(["fail", "lose"]))
    def fsync_with_fault(self, data: st.DataObject, kind: str) -> None:
        """An upload call fails, or lands with its answer lost: fsync says EIO or succeeds, and
        a later commit puts exactly our bytes in the bucket, with no conflict with ourselves."""
        h = self.pick_uncontested(data)
        if h is None:
            return
        self.arm(kind, ("put", "complete_multipart") if kind == "lose" else (
            "put", "upload_part", "complete_multipart"))
        try:
            got = self.call(self.fs.fsync, h.fh)
        finally:
            self.store.faults.clear()
        assert got in (None, errno.EIO), got
        if got is None:
            h.file.dirty = False
        if h.file.path is not None:
            self.touched.add(h.file.path)

    @rule(data=st.data(), kind=st.sampled_from(["fail", "cut", "lose"]), offset=offsets,
          length=st.integers(1, 70_000))
    def read_with_fault(self, data: st.DataObject, kind: str, offset: int, length: int) -> None:
        h = self.pick_handle(data)
        if h is None:
            return
        self.arm(kind, ("get",))
        try:
            got = self.run(self.fs.read, h.fh, offset, length)
        except errors.FsError as exc:
            assert exc.errno == errno.EIO, exc
            return
        finally:
            self.store.faults.clear()
        assert got == h.file.data[offset:offset + length]

    @rule(data=st.data(), kind=st.sampled_from(["fail", "lose"]),
          op=st.sampled_from(["mkdir", "unlink", "rmdir"]))
    def name_change_with_fault(self, data: st.DataObject, kind: str, op: str) -> None:
        """mkdir, unlink or rmdir whose one request fails: EIO and the name as before, or the
        change made (the request landed, or a retry did it)."""
        if op == "mkdir":
            parent = self.pick_dir(data)
            path = join(parent, data.draw(st.sampled_from(DIRS)))
            if parent.count("/") >= 1 or path in self.dirs or path in self.files:
                return
        elif op == "rmdir":
            empty = sorted(d for d in self.dirs if d and not self.model_listing(d))
            if not empty:
                return
            path = data.draw(st.sampled_from(empty))
        else:
            if not self.files:
                return
            path = data.draw(st.sampled_from(sorted(self.files)))
            if self.files[path].theirs is not None:
                return
        parent_ino = self.lookup(parent_of(path)).ino
        self.arm(kind, ("put", "delete"))
        try:
            if op == "mkdir":
                got = self.call(self._mkdir, parent_ino, base_of(path))
            else:
                got = self.call(getattr(self.fs, op), parent_ino, base_of(path).encode())
        finally:
            self.store.faults.clear()
        assert got in (None, errno.EIO), (op, path, got)
        there = self.call(self.resolve, path) is None
        if got is None:
            assert there == (op == "mkdir"), (op, path)
        if op == "mkdir" and there:
            self.dirs.add(path)
        elif op == "rmdir" and not there:
            self.dirs.discard(path)
        elif op == "unlink" and not there:
            self.files.pop(path).path = None
        elif op == "unlink":
            self.touched.add(path)

    @rule(data=st.data(), action=st.sampled_from(["read", "list", "other_put"]))
    def commit_held(self, data: st.DataObject, action: str) -> None:
        """An fsync whose upload is held in flight while something else happens."""
        h = self.pick_uncontested(data)
        if h is None or not h.file.dirty:
            return
        file, key = h.file, h.file.path
        holds = [self.store.faults.hold(op, key) for op in ("put", "complete_multipart")]
        done, result = self.run(self.start_fsync, h.fh)
        self.run(self.wait_any, [g.reached for g in holds] + [done])
        seen: dict[str, object] = {}
        if action == "other_put":
            body = b"theirs while ours was in flight %d" % next_id()  # each its own ETag
            self.store.put_now(key, body)
            file.theirs = body
            self.loop.call_soon(self.store.faults.clear)
        else:  # beside the commit: a reader's close waits for the commit's lock
            look = self.read_path(key) if action == "read" else self.listing(parent_of(key))
            self.run(self.beside, look, seen, self.store.faults.clear)
        self.run(done.wait)
        if "failure" in result:
            raise result["failure"]
        if action == "read":
            assert seen["result"] == file.data, key
        elif action == "list":
            assert base_of(key) in seen["result"], key
        self.committed(file, result["errno"])
        self.touched.add(key)

    async def start_fsync(self, fh: int):  # type: ignore[no-untyped-def]
        done, result = trio.Event(), {}

        async def fsync() -> None:
            try:
                await self.fs.fsync(fh)
                result["errno"] = None
            except errors.FsError as exc:
                result["errno"] = exc.errno
            except Exception as exc:  # noqa: BLE001 - raised again on the test's thread
                result["failure"] = exc
            finally:
                done.set()

        self.loop.nursery.start_soon(fsync)
        return done, result

    @staticmethod
    async def beside(coro, seen: dict[str, object], release) -> None:  # type: ignore[no-untyped-def]
        """Run `coro` while a held call waits, then release it; `seen` gets the result."""
        async with trio.open_nursery() as nursery:
            async def look() -> None:
                seen["result"] = await coro
            nursery.start_soon(look)
            await trio.testing.wait_all_tasks_blocked()
            release()

    @staticmethod
    async def wait_any(events: list[trio.Event]) -> None:
        async with trio.open_nursery() as nursery:
            async def wait(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()
            for event in events:
                nursery.start_soon(wait, event)

    def kept_locally(self) -> bool:
        """Ours is in the cache's conflicts/ (set aside by a commit), or left staged by a
        recovery that could not rebuild it."""
        cache = self.root / "cache"
        return (cache / "conflicts").is_dir() or any((cache / "staging").glob("*.json"))

    # -- crashes --------------------------------------------------------------------------------

    @rule()
    def crash(self) -> None:
        """The mount dies without a flush; a new one recovers from the same cache directory."""
        self.loop.call_soon(self.scope.cancel)
        self.fs = None
        self.mount()
        fs = self.fs
        recovery = Recovery(self.config.cache_path() / "staging", fs.store, fs.files.uploader,
                            fs.files.conditional)
        self.run(recovery.run)
        for h in self.handles:
            file = h.file
            if file.path is not None and file.dirty:
                if file.theirs is not None:
                    self.lose_to_theirs(file)
                else:
                    file.dirty = False
        for file in self.files.values():
            if file.dirty:  # created and never written or closed: recovered empty
                file.dirty = False
        self.handles.clear()
        self.touched |= set(self.files)


TMP_ROOT = ""
_ids = iter(range(10**9))


def next_id() -> int:
    return next(_ids)



def test_model(tmp_path):
    global TMP_ROOT
    TMP_ROOT = str(tmp_path)
    FilesystemModel.steps = 0
    run = settings(max_examples=int(os.environ.get("S3MOUNT_MODEL_EXAMPLES", "80")),
                   stateful_step_count=40, deadline=None, database=None,
                   # CI runs one fixed set of sequences; S3MOUNT_MODEL_EXAMPLES explores anew.
                   derandomize="S3MOUNT_MODEL_EXAMPLES" not in os.environ,
                   phases=[Phase.explicit, Phase.generate] + (
                       [] if os.environ.get("S3MOUNT_MODEL_NO_SHRINK") else [Phase.shrink]),
                   suppress_health_check=list(HealthCheck))(FilesystemModel).TestCase
    run().runTest()
    print(f"model steps: {FilesystemModel.steps}")
    if "S3MOUNT_MODEL_EXAMPLES" not in os.environ:
        assert FilesystemModel.steps >= 2000  # issue 15: thousands of steps per CI run
