"""Security: a private cache, kernel-checked permissions, an enforced --read-only, hidden keys.

- The cache directory and everything in it (staged data, journals, cached blocks) is the mounting
  user's alone: directories 0700, files 0600, looked at while files are open and dirty.
- The kernel checks permissions (`default_permissions`) and other users are kept out unless
  `--allow-other` is given; even then a 0600 file stays unreadable to them.
- `--read-only` refuses every mutating call with EROFS: as the kernel sees the mount (read-only),
  and with the kernel's read-only flag lifted, so every call reaches the daemon.
- Secret keys never show in the process list, the log, `s3mount status` or the cache directory.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

import pytest
from helpers import Mount, bucket_objects, have, is_mounted, prerequisite, test_env

from s3mount.mounttable import find_mount

SECRET = "sekrit-4f1d-never-show-me-0123456789ab"
ACCESS = "AKIDSECURITYTEST"


def mount_options(path: Path) -> set[str]:
    entry = find_mount(str(path))
    assert entry is not None, f"{path} is not mounted"
    return set(entry.options)


def modes_under(directory: Path) -> dict[str, int]:
    """Permission bits of the directory and everything under it, by path relative to it."""
    found = {".": stat.S_IMODE(directory.stat().st_mode)}
    for path, dirs, files in os.walk(directory):
        for name in dirs + files:
            full = Path(path, name)
            found[str(full.relative_to(directory))] = stat.S_IMODE(full.lstat().st_mode)
    return found


# -- the cache directory -----------------------------------------------------------------------


def cache_while_dirty(mounted, s3_client, bucket) -> dict[str, int]:
    """The cache's modes while a new file and an overwritten object are open and dirty, and a
    clean object's blocks are cached."""
    s3_client.put_object(Bucket=bucket, Key="clean.bin", Body=os.urandom(3 * 1024 * 1024))
    s3_client.put_object(Bucket=bucket, Key="patched.bin", Body=os.urandom(1024 * 1024))
    assert len((mounted.path / "clean.bin").read_bytes()) == 3 * 1024 * 1024
    with open(mounted.path / "new.bin", "wb") as new, \
            open(mounted.path / "patched.bin", "r+b") as patched:
        new.write(b"secret data " * 10_000)
        new.flush()
        patched.write(b"patched")
        patched.flush()
        modes = modes_under(mounted.cache_dir)
    staged = [p for p in modes if p.endswith(".data")]
    assert len(staged) >= 2, f"no staged files found in {sorted(modes)}"
    return modes


def test_cache_and_staging_are_private(mounted, s3_client, bucket):
    modes = cache_while_dirty(mounted, s3_client, bucket)
    dirs = {p: m for p, m in modes.items() if (mounted.cache_dir / p).is_dir()}
    assert all(m == 0o700 for m in dirs.values()), dirs
    data = {p: m for p, m in modes.items()
            if p.startswith(("staging", "blocks")) and p not in dirs}
    assert data and all(m == 0o600 for m in data.values()), data


def test_every_file_in_the_cache_is_private(mounted, s3_client, bucket):
    """The log and the lock too (they were once made with the umask's 0644)."""
    modes = cache_while_dirty(mounted, s3_client, bucket)
    files = {p: m for p, m in modes.items() if not (mounted.cache_dir / p).is_dir()}
    assert {p: m for p, m in files.items() if m != 0o600} == {}


def test_existing_cache_directory_is_made_private(make_mount, bucket, tmp_path):
    cache = tmp_path / "mnt-cache"  # where make_mount puts the cache of mount "mnt"
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)
    m = make_mount(bucket)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    (m.path / "f").write_bytes(b"x")


# -- who may enter -----------------------------------------------------------------------------


def test_default_permissions_on_and_allow_other_off_by_default(mounted):
    options = mount_options(mounted.path)
    assert "default_permissions" in options
    assert "allow_other" not in options
    assert "rw" in options


def test_allow_other_when_asked(make_mount, bucket):
    m = make_mount(bucket, "--allow-other")
    options = mount_options(m.path)
    assert "allow_other" in options and "default_permissions" in options


def test_read_only_mount_option(make_mount, bucket):
    m = make_mount(bucket, "--read-only")
    assert "ro" in mount_options(m.path)


@pytest.fixture
def public_mounts(s3_server, tmp_path):
    """Mounts under a directory every user may traverse (pytest's own tmp is root's alone)."""
    if not have("runuser") or os.geteuid() != 0:
        prerequisite("root", "needs root and runuser")
    top = Path(tempfile.mkdtemp(prefix="s3mount-security-", dir="/tmp"))
    top.chmod(0o755)
    made: list[Mount] = []

    def make(source: str, *extra: str) -> Mount:
        m = Mount(s3_server.endpoint, source, top / f"mnt{len(made)}",
                  tmp_path / f"cache{len(made)}", list(extra))
        m.start()
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()
        assert not m.problems(), m.problems()
    if not any(is_mounted(m.path) for m in made):
        shutil.rmtree(top, ignore_errors=True)


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "nobody", "--", *command], capture_output=True,
                          text=True, timeout=60)


def test_other_users_are_kept_out_without_allow_other(public_mounts, bucket):
    m = public_mounts(bucket)
    (m.path / "public.txt").write_text("world-readable, but the mount is not\n")
    os.chmod(m.path / "public.txt", 0o644)
    result = as_nobody("cat", str(m.path / "public.txt"))
    assert result.returncode != 0 and "Permission denied" in result.stderr, result
    result = as_nobody("ls", str(m.path))
    assert result.returncode != 0 and "Permission denied" in result.stderr, result
    assert (m.path / "public.txt").read_text().startswith("world-readable")  # root may


def test_allow_other_still_checks_permissions(public_mounts, s3_client, bucket):
    m = public_mounts(bucket, "--allow-other")
    secret, public = m.path / "secret.txt", m.path / "public.txt"
    secret.write_text("for root only\n")
    secret.chmod(0o600)
    public.write_text("for everyone\n")
    public.chmod(0o644)
    (m.path / "private-dir").mkdir(mode=0o700)
    (m.path / "private-dir" / "inside.txt").write_text("hidden\n")

    result = as_nobody("cat", str(public))
    assert result.returncode == 0 and result.stdout == "for everyone\n", result
    result = as_nobody("ls", str(m.path))
    assert result.returncode == 0 and "secret.txt" in result.stdout, result
    for denied in (["cat", str(secret)],
                   ["ls", str(m.path / "private-dir")],
                   ["cat", str(m.path / "private-dir" / "inside.txt")],
                   ["sh", "-c", f"echo more >> '{public}'"],  # 0644 root's: no writing
                   ["touch", str(m.path / "made-by-nobody")],  # 0755 root's directory
                   ["rm", "-f", str(public)],
                   ["chmod", "666", str(secret)]):
        result = as_nobody(*denied)
        assert result.returncode != 0, denied
        assert "ermission denied" in result.stderr or "not permitted" in result.stderr, result
    assert secret.read_text() == "for root only\n"  # root may
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    objects = bucket_objects(s3_client, bucket)
    assert set(objects) == {"secret.txt", "public.txt", "private-dir/",
                            "private-dir/inside.txt"}
    assert objects["public.txt"] == b"for everyone\n"


# -- --read-only -------------------------------------------------------------------------------


def s3fs_xattr(values: dict[str, bytes]) -> str:
    table = {k: base64.b64encode(v).decode() for k, v in values.items()}
    return urllib.parse.quote(json.dumps(table), safe="")


def mutations(root: Path) -> dict[str, tuple]:
    """Every mutating call, each as (function, *args), on the tree `populate` made."""
    f, d, e = root / "f", root / "d", root / "e"
    return {
        "create": (os.open, root / "new", os.O_WRONLY | os.O_CREAT, 0o644),
        "create-excl": (os.open, root / "new", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644),
        "open-for-write": (os.open, f, os.O_WRONLY),
        "open-read-write": (os.open, f, os.O_RDWR),
        "open-append": (os.open, f, os.O_WRONLY | os.O_APPEND),
        "open-truncate": (os.open, f, os.O_WRONLY | os.O_TRUNC),
        "open-readonly-truncate": (os.open, f, os.O_RDONLY | os.O_TRUNC),
        "truncate": (os.truncate, f, 0),
        "unlink": (os.unlink, f),
        "unlink-in-dir": (os.unlink, d / "g"),
        "rmdir": (os.rmdir, e),
        "mkdir": (os.mkdir, root / "newdir"),
        "rename-file": (os.rename, f, root / "f2"),
        "rename-over": (os.rename, f, d / "g"),
        "rename-dir": (os.rename, d, root / "d2"),
        "symlink": (os.symlink, "f", root / "link"),
        "link": (os.link, f, root / "hard"),
        "mkfifo": (os.mkfifo, root / "fifo"),
        "chmod": (os.chmod, f, 0o600),
        "chmod-dir": (os.chmod, d, 0o700),
        "chown": (os.chown, f, 1234, 1234),
        "utime": (os.utime, f, (1, 1)),
        "utime-now": (os.utime, f, None),
        "setxattr": (os.setxattr, f, "user.new", b"v"),
        "setxattr-replace": (os.setxattr, f, "user.k", b"other"),
        "removexattr": (os.removexattr, f, "user.k"),
    }


# What the daemon itself answers where the kernel does not refuse first: a hard link is
# refused for what it is before the mount's mode is looked at.  A refusal either way.
DAEMON_ALSO = {"link": {errno.EPERM}}


def populate(s3, bucket: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    s3.put_object(Bucket=bucket, Key="f", Body=b"file f",
                  Metadata={"mode": str(0o100644), "xattr": s3fs_xattr({"user.k": b"v"})})
    s3.put_object(Bucket=bucket, Key="d/g", Body=b"file g")
    s3.put_object(Bucket=bucket, Key="e/", Body=b"")
    return snapshot(s3, bucket)


def snapshot(s3, bucket: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    return {k: (body, s3.head_object(Bucket=bucket, Key=k)["Metadata"])
            for k, body in bucket_objects(s3, bucket).items()}


@pytest.mark.parametrize("layer", ["kernel", "daemon"])
def test_read_only_refuses_every_mutating_call(make_mount, s3_client, bucket, layer):
    before = populate(s3_client, bucket)
    m = make_mount(bucket, "--read-only")
    if layer == "daemon":
        # Lift the kernel's read-only flag (the superblock's): every call now reaches s3mount.
        done = subprocess.run(["mount", "-i", "-o", "remount,rw", str(m.path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-write: {done.stderr.strip()}")
        assert "rw" in mount_options(m.path)
    assert os.getxattr(m.path / "f", "user.k") == b"v"
    for name, (fn, *args) in mutations(m.path).items():
        allowed = {errno.EROFS} | (DAEMON_ALSO.get(name, set()) if layer == "daemon" else set())
        with pytest.raises(OSError) as exc:
            result = fn(*args)
            if isinstance(result, int):
                os.close(result)
        assert exc.value.errno in allowed, f"{name}: {exc.value!r}"
    # Reading still works, and nothing changed anywhere.
    assert (m.path / "f").read_bytes() == b"file f"
    assert sorted(os.listdir(m.path)) == ["d", "e", "f"]
    assert os.listdir(m.path / "d") == ["g"]
    assert os.getxattr(m.path / "f", "user.k") == b"v"
    assert snapshot(s3_client, bucket) == before
    m.remount()
    assert snapshot(s3_client, bucket) == before


# -- credentials -------------------------------------------------------------------------------


def secret_sources(tmp_path: Path, kind: str) -> list[str]:
    if kind == "passwd-file":
        path = tmp_path / "passwd"
        path.write_text(f"{ACCESS}:{SECRET}\n")
        path.chmod(0o600)
        return ["--passwd-file", str(path)]
    path = tmp_path / "s3mount.conf"
    path.write_text(f"access_key_id = {ACCESS}\nsecret_access_key = {SECRET}\n")
    path.chmod(0o600)
    return ["--config", str(path)]


def process_list() -> str:
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("kind", ["passwd-file", "config-file", "environment"])
def test_no_secret_in_process_list_log_status_or_cache(make_mount, s3_server, s3_client, bucket,
                                                      tmp_path, kind, monkeypatch):
    if kind == "environment":
        real_env = test_env

        def env_with_secret() -> dict[str, str]:
            env = real_env()
            env.update(AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET)
            return env

        monkeypatch.setattr("helpers.test_env", env_with_secret)
        extra: list[str] = []
    else:
        extra = secret_sources(tmp_path, kind)
    m = make_mount(bucket, *extra)
    assert SECRET not in process_list()
    (m.path / "f.txt").write_bytes(b"data")
    with open(m.path / "big.bin", "wb") as f:  # busy: a multipart upload under way
        f.write(os.urandom(20 * 1024 * 1024))
        assert SECRET not in process_list()
    assert not (m.path / "missing").exists()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert SECRET.encode() not in cmdline.read_bytes(), cmdline
        except OSError:
            continue
    status = subprocess.run([sys.executable, "-m", "s3mount", "status", str(m.path)],
                            env=test_env(), capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert SECRET not in status.stdout + status.stderr
    m.remount()
    assert (m.path / "f.txt").read_bytes() == b"data"
    assert SECRET not in m.log_text() and m.log_text()
    for path in m.cache_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert s3_client.get_object(Bucket=bucket, Key="f.txt")["Body"].read() == b"data"
