"""Random sequences of file and directory operations on a real mount, checked against a model.

hypothesis drives a state machine over one mount: create, write at an offset, append, truncate,
read, unlink, rename of files and directories, mkdir, rmdir, and files kept open across steps
(written, read, truncated, fsynced and closed through their descriptors while other steps rename
or unlink them).  The model is a dict path -> `File` (a bytearray shared by every path and
descriptor that reaches it, as an inode is) and a set of directories; each operation's errno is
predicted too.  After every step the listing of every directory and the bytes of every file must
be the model's; after fsync, a writer's close or a truncate(2) of a file nobody holds open, the
object in the bucket must be too; at the end of each example every object in the bucket must be
exactly the model, and in some examples again after an unmount and a mount.  (A reader's close
commits nothing: see test_concurrency's truncate-by-path test for what that leaves out.)
Sizes are mostly small, sometimes just around the 8 MiB block, part and single-PUT boundaries and
up to 12 MiB, so multipart uploads and server-side part copies happen too.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import shutil
import stat
from dataclasses import dataclass

from helpers import bucket_objects, objects_but_attributes
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

MIB = 1024 * 1024
MAX_SIZE = 12 * MIB + 4096
NAMES = ["a", "b", "ü x"]  # few names, so that operations meet each other's paths
MAX_DEPTH = 2  # new entries go at most this many directories deep
MAX_OPEN = 3

# 20 examples a server: the FUSE-free reference model (tests/core/test_fs_model.py) runs
# thousands of steps against the same rules in seconds; this one checks them through the kernel.
SETTINGS = settings(max_examples=20, stateful_step_count=25, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def mostly(common: st.SearchStrategy[int], rare: st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    """`common` about nine times in ten, `rare` otherwise."""
    return st.one_of(*[common] * 9, rare)


seeds = st.integers(0, 2**16)
offsets = mostly(st.integers(0, 5000),
                 st.sampled_from([5 * MIB - 1, 8 * MIB - 3, 8 * MIB, 8 * MIB + 1, 12 * MIB]))
lengths = mostly(st.integers(0, 3000), st.sampled_from([128 * 1024 + 1, MIB, 3 * MIB + 7]))
sizes = mostly(st.integers(0, 5000), st.sampled_from([8 * MIB - 1, 8 * MIB, 8 * MIB + 1, 12 * MIB]))


def payload(seed: int, length: int) -> bytes:
    return random.Random(seed).randbytes(length)


def clamp(offset: int, length: int) -> int:
    return max(0, min(length, MAX_SIZE - offset))


def write_into(data: bytearray, offset: int, chunk: bytes) -> None:
    if not chunk:
        return  # a write of nothing never extends a file
    if offset > len(data):
        data.extend(bytes(offset - len(data)))
    data[offset:offset + len(chunk)] = chunk


def truncate_to(data: bytearray, size: int) -> None:
    if size < len(data):
        del data[size:]
    else:
        data.extend(bytes(size - len(data)))


def same_bytes(what: str, got: bytes, want: bytes) -> None:
    """Assert equality with a short message: sizes and the first differing offset."""
    if got == want:
        return
    first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                 min(len(got), len(want)))
    raise AssertionError(f"{what}: got {len(got)} bytes, want {len(want)}; first difference "
                         f"at offset {first}: {got[first:first + 8]!r} != "
                         f"{want[first:first + 8]!r}")


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def depth(path: str) -> int:
    return path.count("/") + 1 if path else 0


def under(path: str, directory: str) -> bool:
    return path.startswith(directory + "/")


def guarded(step):
    """Mark the machine failed when a step raises, so teardown does not pile errors on it."""

    @functools.wraps(step)
    def run(self, *args, **kwargs):
        try:
            return step(self, *args, **kwargs)
        except BaseException:
            self.failed = True
            raise

    return run


class File:
    """A file's identity (what an inode is): its bytes, shared by its path and descriptors."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)


@dataclass
class Open:
    fd: int
    file: File
    append: bool
    wrote: bool = False  # written or truncated through this descriptor: its close commits


def read_all(fd: int, size: int) -> bytes:
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, max(size - offset, 0) + 65536, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def force_clean(mount, s3, bucket: str) -> None:
    """Empty the mount and the bucket, whatever an earlier failed example left behind."""
    for name in os.listdir(mount.path):
        path = mount.path / name
        try:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except OSError:
            pass
    if bucket_objects(s3, bucket) or os.listdir(mount.path):
        mount.stop()  # uploads whatever it still held; then the bucket is emptied behind it
        for key in bucket_objects(s3, bucket):
            s3.delete_object(Bucket=bucket, Key=key)
        mount.start()


def machine_for(mount, s3, bucket: str) -> type[RuleBasedStateMachine]:
    root = str(mount.path)

    def full(path: str) -> str:
        return os.path.join(root, path) if path else root

    class MountModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            force_clean(mount, s3, bucket)
            self.files: dict[str, File] = {}
            self.dirs: set[str] = {""}
            self.fds: list[Open] = []
            self.remount_at_end = False
            self.failed = False

        # -- the model's queries -----------------------------------------------------------

        def kind(self, path: str) -> str | None:
            if path in self.dirs:
                return "dir"
            return "file" if path in self.files else None

        def children(self, directory: str) -> list[str]:
            names = [p.rpartition("/")[2] for p in (*self.files, *self.dirs)
                     if p and parent_of(p) == directory]
            return sorted(names)

        def path_of(self, file: File) -> str | None:
            return next((p for p, f in self.files.items() if f is file), None)

        def pick_new_path(self, data: st.DataObject) -> str:
            parents = sorted(d for d in self.dirs if depth(d) < MAX_DEPTH)
            parent = data.draw(st.sampled_from(parents), label="parent")
            name = data.draw(st.sampled_from(NAMES), label="name")
            return f"{parent}/{name}" if parent else name

        def pick(self, data: st.DataObject, paths, label: str) -> str:
            return data.draw(st.sampled_from(sorted(paths)), label=label)

        def pick_open(self, data: st.DataObject) -> Open:
            return self.fds[data.draw(st.integers(0, len(self.fds) - 1), label="fd")]

        def attempt(self, what: str, action, expected: int | set[int] | None) -> bool:
            """Run `action`; it must succeed when `expected` is None, else fail with it."""
            allowed = {expected} if isinstance(expected, int) else expected
            try:
                action()
            except OSError as exc:
                if allowed is None or exc.errno not in allowed:
                    raise AssertionError(f"{what}: {exc!r}, expected "
                                         f"{'success' if allowed is None else allowed}") from exc
                return False
            assert allowed is None, f"{what} succeeded, expected errno {allowed}"
            return True

        def check_committed(self, file: File, what: str) -> None:
            """After fsync/close returned, the bucket holds the file's bytes at its path."""
            path = self.path_of(file)
            if path is not None:
                body = s3.get_object(Bucket=bucket, Key=path)["Body"].read()
                same_bytes(f"bucket object {path!r} after {what}", body, bytes(file.data))

        # -- rules ---------------------------------------------------------------------------

        @initialize(remount=st.sampled_from([False] * 5 + [True]))
        @guarded
        def choose_remount(self, remount: bool) -> None:
            self.remount_at_end = remount

        @rule(data=st.data(), seed=seeds, length=lengths)
        @guarded
        def create(self, data, seed, length):
            path = self.pick_new_path(data)
            content = payload(seed, length)
            kind = self.kind(path)

            def act():
                with open(full(path), "wb") as f:
                    f.write(content)

            if self.attempt(f"create {path!r}", act, errno.EISDIR if kind == "dir" else None):
                if kind == "file":
                    self.files[path].data[:] = content  # O_TRUNC: the same file, emptied
                else:
                    self.files[path] = File(content)
                self.check_committed(self.files[path], "close")

        @precondition(lambda self: self.files)
        @rule(data=st.data(), offset=offsets, seed=seeds, length=lengths)
        @guarded
        def write_at(self, data, offset, seed, length):
            path = self.pick(data, self.files, "path")
            content = payload(seed, clamp(offset, length))
            fd = os.open(full(path), os.O_WRONLY)
            try:
                assert os.pwrite(fd, content, offset) == len(content)
            finally:
                os.close(fd)
            write_into(self.files[path].data, offset, content)
            self.check_committed(self.files[path], "close")

        @precondition(lambda self: self.files)
        @rule(data=st.data(), seed=seeds, length=lengths)
        @guarded
        def append(self, data, seed, length):
            path = self.pick(data, self.files, "path")
            file = self.files[path]
            content = payload(seed, clamp(len(file.data), length))
            with open(full(path), "ab") as f:
                f.write(content)
            file.data.extend(content)

        @precondition(lambda self: self.files)
        @rule(data=st.data(), size=sizes)
        @guarded
        def truncate(self, data, size):
            path = self.pick(data, self.files, "path")
            os.truncate(full(path), size)
            truncate_to(self.files[path].data, size)
            if not any(o.file is self.files[path] for o in self.fds):
                self.check_committed(self.files[path], "truncate")

        @rule(data=st.data())
        @guarded
        def unlink(self, data):
            path = self.pick(data, {*self.files, *self.dirs, self.pick_new_path(data)} - {""},
                             "path")
            expected = {"file": None, "dir": errno.EISDIR, None: errno.ENOENT}[self.kind(path)]
            if self.attempt(f"unlink {path!r}", lambda: os.unlink(full(path)), expected):
                del self.files[path]

        @precondition(lambda self: self.files)
        @rule(data=st.data())
        @guarded
        def rename_file(self, data):
            src = self.pick(data, self.files, "src")
            dst = self.pick_new_path(data)
            if under(src, dst):  # onto a directory that holds it: the kernel's own answer
                expected = errno.ENOTEMPTY
            else:
                expected = errno.EISDIR if self.kind(dst) == "dir" else None
            if self.attempt(f"rename {src!r} -> {dst!r}", lambda: os.rename(full(src), full(dst)),
                            expected) and src != dst:
                self.files[dst] = self.files.pop(src)

        @rule(data=st.data())
        @guarded
        def mkdir(self, data):
            path = self.pick_new_path(data)
            expected = errno.EEXIST if self.kind(path) else None
            if self.attempt(f"mkdir {path!r}", lambda: os.mkdir(full(path)), expected):
                self.dirs.add(path)

        @precondition(lambda self: len(self.dirs) > 1 or self.files)
        @rule(data=st.data())
        @guarded
        def rmdir(self, data):
            path = self.pick(data, (self.dirs | set(self.files)) - {""}, "path")
            if self.kind(path) == "file":
                expected = errno.ENOTDIR
            else:
                expected = errno.ENOTEMPTY if self.children(path) else None
            if self.attempt(f"rmdir {path!r}", lambda: os.rmdir(full(path)), expected):
                self.dirs.remove(path)

        @precondition(lambda self: len(self.dirs) > 1)
        @rule(data=st.data())
        @guarded
        def rename_dir(self, data):
            src = self.pick(data, self.dirs - {""}, "src")
            dst = self.pick_new_path(data)
            kind = self.kind(dst)
            if dst == src:
                expected = None
            elif under(src, dst):
                expected = errno.ENOTEMPTY
            elif under(dst, src):
                expected = errno.EINVAL
            elif kind == "file":
                expected = errno.ENOTDIR
            elif kind == "dir" and self.children(dst):
                expected = {errno.ENOTEMPTY, errno.EEXIST}
            else:
                expected = None
            if not self.attempt(f"rename dir {src!r} -> {dst!r}",
                                lambda: os.rename(full(src), full(dst)), expected) or dst == src:
                return
            self.dirs.discard(dst)

            def moved(p: str) -> str:
                return dst + p[len(src):] if p == src or under(p, src) else p

            self.dirs = {moved(d) for d in self.dirs}
            self.files = {moved(p): f for p, f in self.files.items()}

        # -- files kept open across steps ----------------------------------------------------

        @precondition(lambda self: self.files and len(self.fds) < MAX_OPEN)
        @rule(data=st.data(), append=st.booleans())
        @guarded
        def open_file(self, data, append):
            path = self.pick(data, self.files, "path")
            fd = os.open(full(path), os.O_RDWR | (os.O_APPEND if append else 0))
            self.fds.append(Open(fd, self.files[path], append))

        @precondition(lambda self: self.fds)
        @rule(data=st.data(), offset=offsets, seed=seeds, length=lengths)
        @guarded
        def fd_write(self, data, offset, seed, length):
            o = self.pick_open(data)
            if o.append:  # O_APPEND: every write goes to the end, whatever the offset
                content = payload(seed, clamp(len(o.file.data), length))
                assert os.write(o.fd, content) == len(content)
                o.file.data.extend(content)
                o.wrote = True
            else:
                content = payload(seed, clamp(offset, length))
                assert os.pwrite(o.fd, content, offset) == len(content)
                write_into(o.file.data, offset, content)
                o.wrote = True

        @precondition(lambda self: self.fds)
        @rule(data=st.data(), offset=offsets, length=lengths)
        @guarded
        def fd_read(self, data, offset, length):
            o = self.pick_open(data)
            same_bytes("pread through an open descriptor", os.pread(o.fd, length, offset),
                       bytes(o.file.data[offset:offset + length]))

        @precondition(lambda self: self.fds)
        @rule(data=st.data(), size=sizes)
        @guarded
        def fd_truncate(self, data, size):
            o = self.pick_open(data)
            os.ftruncate(o.fd, size)
            truncate_to(o.file.data, size)
            o.wrote = True

        @precondition(lambda self: self.fds)
        @rule(data=st.data())
        @guarded
        def fd_fsync(self, data):
            o = self.pick_open(data)
            os.fsync(o.fd)
            self.check_committed(o.file, "fsync")

        @precondition(lambda self: self.fds)
        @rule(data=st.data())
        @guarded
        def fd_close(self, data):
            o = self.pick_open(data)
            self.fds.remove(o)
            os.close(o.fd)
            if o.wrote:  # a reader's close commits nothing (fs.flush)
                self.check_committed(o.file, "close")

        # -- checks --------------------------------------------------------------------------

        @invariant()
        @guarded
        def tree_matches(self) -> None:
            for directory in sorted(self.dirs):
                listed = sorted(os.listdir(full(directory)))
                assert listed == self.children(directory), f"listing of {directory!r}"
                assert stat.S_ISDIR(os.stat(full(directory)).st_mode)
            for path, file in sorted(self.files.items()):
                st_ = os.stat(full(path))
                assert stat.S_ISREG(st_.st_mode), path
                assert st_.st_size == len(file.data), f"size of {path!r}"
                # An open file is read through its descriptor: opening and closing the path
                # would commit it, and the steps should also meet files dirty across steps.
                held = next((o for o in self.fds if o.file is file), None)
                if held is not None:
                    got = read_all(held.fd, len(file.data))
                else:
                    with open(full(path), "rb") as f:
                        got = f.read()
                same_bytes(f"contents of {path!r}", got, bytes(file.data))

        def bucket_matches(self) -> None:
            want = {p: bytes(f.data) for p, f in self.files.items()}
            want.update({f"{d}/": b"" for d in self.dirs if d})
            got = objects_but_attributes(s3, bucket)
            assert sorted(got) == sorted(want), "keys in the bucket"
            for key in sorted(want):
                same_bytes(f"bucket object {key!r}", got[key], want[key])

        def teardown(self) -> None:
            if self.failed:  # the next example's force_clean starts afresh
                for o in self.fds:
                    os.close(o.fd)
                return
            for o in self.fds:
                os.fsync(o.fd)  # fsync on any descriptor commits; a reader's close does not
                self.check_committed(o.file, "fsync")
                os.close(o.fd)
            self.fds.clear()
            self.bucket_matches()
            if self.remount_at_end:
                mount.remount()
                self.tree_matches()
                self.bucket_matches()
            for name in os.listdir(root):
                p = os.path.join(root, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
            assert bucket_objects(s3, bucket) == {}, "the bucket after removing everything"

    return MountModel


def test_operations_match_model(mounted, s3_client, bucket):
    run_state_machine_as_test(machine_for(mounted, s3_client, bucket), settings=SETTINGS)
