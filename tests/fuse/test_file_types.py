"""Every file type s3fs-fuse can store, through the real mount: FIFOs, sockets, character and
block devices are empty objects whose `x-amz-meta-mode` carries the type bits and whose
`x-amz-meta-rdev` carries the device number.  They keep their type across a remount, and
chmod, chown, utimensat, rename and unlink work on them as on any file; hard links stay EPERM.
s3fs-fuse (Debian's `s3fs`), when installed, must see the same types in the same bucket.
Debian 12's s3fs 1.90 neither writes nor reads `rdev` (its devices all show 0:0), so across the
two tools only the types are compared.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
import time

import pytest
from helpers import ACCESS_KEY, SECRET_KEY, is_mounted

DEVICES = {"chr": (stat.S_IFCHR, os.makedev(1, 3)), "blk": (stat.S_IFBLK, os.makedev(8, 17))}


def make_all(root) -> dict[str, tuple[int, int]]:  # type: ignore[no-untyped-def]
    """A FIFO, a socket and two devices under `root`; returns name -> (type bits, rdev)."""
    os.mkfifo(root / "fifo", 0o640)
    for name, (kind, rdev) in DEVICES.items():
        os.mknod(root / name, kind | 0o600, rdev)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(root / "sock"))
    return {"fifo": (stat.S_IFIFO, 0), "sock": (stat.S_IFSOCK, 0), **DEVICES}


def check_types(root, made, rdev_too: bool = True) -> None:  # type: ignore[no-untyped-def]
    for name, (kind, rdev) in made.items():
        st = os.lstat(root / name)
        assert stat.S_IFMT(st.st_mode) == kind, name
        assert st.st_rdev == rdev or not rdev_too, name
        assert st.st_size == 0, name


def test_special_files_persist_with_their_type(mounted, s3_client, bucket):
    made = make_all(mounted.path)
    check_types(mounted.path, made)
    assert sorted(os.listdir(mounted.path)) == sorted(made)
    for name, (kind, rdev) in made.items():
        head = s3_client.head_object(Bucket=bucket, Key=name)
        assert head["ContentLength"] == 0
        mode = int(head["Metadata"]["mode"])
        assert stat.S_IFMT(mode) == kind, name
        assert int(head["Metadata"]["rdev"]) == rdev, name
    assert stat.S_IMODE(int(s3_client.head_object(Bucket=bucket, Key="fifo")["Metadata"]
                            ["mode"])) == 0o640
    mounted.remount()
    check_types(mounted.path, made)
    # A listing first, then the lookups: the types come from the metadata either way.
    assert sorted(os.listdir(mounted.path)) == sorted(made)
    check_types(mounted.path, made)


def test_special_files_chmod_chown_utime_rename_unlink(mounted, s3_client, bucket):
    made = make_all(mounted.path)
    for name in made:
        path = mounted.path / name
        os.chmod(path, 0o604)
        os.chown(path, 1234, 4321)
        os.utime(path, ns=(1_500_000_000_000_000_000, 1_500_000_000_123_456_789))
        os.rename(path, mounted.path / f"{name}.moved")
    mounted.remount()
    for name, (kind, rdev) in made.items():
        st = os.lstat(mounted.path / f"{name}.moved")
        assert st.st_mode == kind | 0o604, name
        assert (st.st_uid, st.st_gid, st.st_rdev) == (1234, 4321, rdev), name
        assert st.st_mtime_ns == 1_500_000_000_123_456_789, name
        meta = s3_client.head_object(Bucket=bucket, Key=f"{name}.moved")["Metadata"]
        assert int(meta["mode"]) == kind | 0o604 and int(meta["rdev"]) == rdev, name
    assert sorted(os.listdir(mounted.path)) == sorted(f"{n}.moved" for n in made)
    for name in made:
        os.unlink(mounted.path / f"{name}.moved")
    assert os.listdir(mounted.path) == []
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_fifo_passes_data_and_hard_links_stay_eperm(mounted):
    """The kernel serves a FIFO on the mount itself: data passes, nothing reaches S3."""
    os.mkfifo(mounted.path / "pipe")
    (mounted.path / "file").write_text("x")
    reader = subprocess.Popen(["cat", str(mounted.path / "pipe")], stdout=subprocess.PIPE)
    with open(mounted.path / "pipe", "w") as pipe:
        pipe.write("through the pipe")
    assert reader.communicate(timeout=30)[0] == b"through the pipe"
    for name in ("pipe", "file"):
        with pytest.raises(OSError) as exc:
            os.link(mounted.path / name, mounted.path / f"{name}.link")
        assert exc.value.errno == errno.EPERM


# -- s3fs-fuse sees the same types ------------------------------------------------------------


def s3fs_mount(endpoint: str, bucket: str, path, passwd) -> None:  # type: ignore[no-untyped-def]
    path.mkdir()
    passwd.write_text(f"{ACCESS_KEY}:{SECRET_KEY}\n")
    passwd.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    subprocess.run(["s3fs", bucket, str(path), "-o", f"url={endpoint}",
                    "-o", "use_path_request_style",
                    "-o", f"passwd_file={passwd}", "-o", "stat_cache_expire=1",
                    "-o", "enable_noobj_cache"],
                   check=True, env=env, capture_output=True, text=True, timeout=60)
    deadline = time.monotonic() + 30
    while not is_mounted(path):
        assert time.monotonic() < deadline, "s3fs did not mount"
        time.sleep(0.1)


def s3fs_unmount(path) -> None:  # type: ignore[no-untyped-def]
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", str(path)], check=False)
    if is_mounted(path):
        subprocess.run(["fusermount", "-u", "-z", str(path)], check=False)


def test_s3fs_sees_the_same_types(make_mount, s3_server, bucket, tmp_path):
    if shutil.which("s3fs") is None:
        pytest.skip("s3fs-fuse is not installed (Debian package s3fs; scripts/test installs it)")
    ours = make_mount(bucket)
    made = make_all(ours.path)
    os.mknod(ours.path / "plain", stat.S_IFREG | 0o644)
    theirs = tmp_path / "s3fs"
    s3fs_mount(s3_server.endpoint, bucket, theirs, tmp_path / "passwd")
    try:
        check_types(theirs, made, rdev_too=False)
        assert stat.S_ISREG(os.lstat(theirs / "plain").st_mode)
        # And the other way round: what s3fs-fuse makes, s3mount shows as such.
        os.mkfifo(theirs / "their-fifo", 0o600)
        os.mknod(theirs / "their-chr", stat.S_IFCHR | 0o600, os.makedev(4, 5))
    finally:
        s3fs_unmount(theirs)
    ours.remount()
    check_types(ours.path, made)
    check_types(ours.path, {"their-fifo": (stat.S_IFIFO, 0), "their-chr": (stat.S_IFCHR, 0)},
                rdev_too=False)
