"""Real programs on a mount: each result checked through the mount, in the bucket with a separate
client, and after an unmount + mount."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess

import pytest
from helpers import bucket_objects, need_program, objects_but_attributes


def run(*cmd: str, cwd=None) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{cmd} failed: {result.stderr}"
    return result.stdout


def make_tree(root) -> dict[str, bytes]:
    files = {
        "README": b"readme\n",
        "src/main.c": b"int main(void) { return 0; }\n",
        "src/lib/util.h": b"#pragma once\n" * 100,
        "data/blob.bin": os.urandom(3 * 1024 * 1024 + 17),
        "data/empty": b"",
        "with space/ünï.txt": "ünïcødé\n".encode(),
    }
    for rel, body in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    os.chmod(root / "src/main.c", 0o755)
    return files


def tree_contents(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_cp_a_tree(mounted, s3_client, bucket, tmp_path):
    src = tmp_path / "src-tree"
    files = make_tree(src)
    run("cp", "-a", str(src), str(mounted.path / "copy"))
    assert tree_contents(mounted.path / "copy") == files
    stored = bucket_objects(s3_client, bucket)
    for rel, body in files.items():
        assert stored[f"copy/{rel}"] == body
    mounted.remount()
    assert tree_contents(mounted.path / "copy") == files
    assert os.stat(mounted.path / "copy/src/main.c").st_mode & 0o777 == 0o755
    assert os.stat(mounted.path / "copy/src/main.c").st_mtime_ns // 10**9 == \
        os.stat(src / "src/main.c").st_mtime_ns // 10**9


def test_tar_round_trip(mounted, s3_client, bucket, tmp_path):
    src = tmp_path / "t"
    files = make_tree(src)
    archive = tmp_path / "t.tar"
    run("tar", "-cf", str(archive), "-C", str(src), ".")
    (mounted.path / "x").mkdir()
    run("tar", "-xf", str(archive), "-C", str(mounted.path / "x"))
    assert tree_contents(mounted.path / "x") == files
    assert bucket_objects(s3_client, bucket)["x/data/blob.bin"] == files["data/blob.bin"]
    mounted.remount()
    back = tmp_path / "back.tar"
    run("tar", "-cf", str(back), "-C", str(mounted.path / "x"), ".")
    out = tmp_path / "out"
    out.mkdir()
    run("tar", "-xf", str(back), "-C", str(out))
    assert tree_contents(out) == files


def test_rsync_twice(mounted, s3_client, bucket, tmp_path):
    need_program("rsync")
    src = tmp_path / "r"
    files = make_tree(src)
    run("rsync", "-a", f"{src}/", f"{mounted.path}/r/")
    assert tree_contents(mounted.path / "r") == files
    out = run("rsync", "-a", "--itemize-changes", f"{src}/", f"{mounted.path}/r/")
    assert out.strip() == "", f"second rsync transferred: {out}"
    mounted.remount()
    out = run("rsync", "-a", "--itemize-changes", f"{src}/", f"{mounted.path}/r/")
    assert out.strip() == "", f"rsync after remount transferred: {out}"
    assert bucket_objects(s3_client, bucket)["r/src/lib/util.h"] == files["src/lib/util.h"]


def test_git(mounted, s3_client, bucket):
    need_program("git")
    repo = mounted.path / "repo"
    repo.mkdir()
    env_args = ["-c", "user.name=T", "-c", "user.email=t@example.com"]
    run("git", "init", "-q", cwd=repo)
    (repo / "a.txt").write_text("one\n")
    run("git", "add", "a.txt", cwd=repo)
    run("git", *env_args, "commit", "-q", "-m", "first", cwd=repo)
    (repo / "a.txt").write_text("two\n")
    run("git", *env_args, "commit", "-q", "-am", "second", cwd=repo)
    assert run("git", "log", "--format=%s", cwd=repo).split() == ["second", "first"]
    assert any(k.startswith("repo/.git/objects/") for k in bucket_objects(s3_client, bucket))
    mounted.remount()
    assert run("git", "log", "--format=%s", cwd=repo).split() == ["second", "first"]
    run("git", "fsck", "--strict", cwd=repo)
    assert run("git", "status", "--porcelain", cwd=repo).strip() == ""


def test_sqlite(mounted, s3_client, bucket):
    db = mounted.path / "db.sqlite"
    con = sqlite3.connect(db)
    con.execute("create table t (id integer primary key, v text)")
    with con:
        con.executemany("insert into t (v) values (?)", [(f"row {i}" * 20,) for i in range(2000)])
    with con:
        con.execute("update t set v = 'changed' where id % 7 = 0")
    try:
        with con:
            con.execute("insert into t (v) values ('rolled back')")
            raise RuntimeError
    except RuntimeError:
        pass
    assert con.execute("pragma integrity_check").fetchone() == ("ok",)
    con.close()
    assert len(bucket_objects(s3_client, bucket)["db.sqlite"]) == db.stat().st_size
    mounted.remount()
    con = sqlite3.connect(db)
    assert con.execute("pragma integrity_check").fetchone() == ("ok",)
    assert con.execute("select count(*) from t").fetchone() == (2000,)
    assert con.execute("select count(*) from t where v = 'changed'").fetchone() == (285,)
    con.close()


def test_sqlite3_shell(mounted):
    need_program("sqlite3")
    db = str(mounted.path / "shell.db")
    run("sqlite3", db, "create table x(a); begin; insert into x values (1),(2); commit;")
    mounted.remount()
    assert run("sqlite3", db, "pragma integrity_check; select sum(a) from x;").split() == \
        ["ok", "3"]


def test_appends(mounted, s3_client, bucket):
    p = mounted.path / "log.txt"
    for i in range(20):
        subprocess.run(f"echo line {i} >> '{p}'", shell=True, check=True)
    expected = "".join(f"line {i}\n" for i in range(20))
    assert p.read_text() == expected
    assert s3_client.get_object(Bucket=bucket, Key="log.txt")["Body"].read().decode() == expected
    mounted.remount()
    subprocess.run(f"echo last >> '{p}'", shell=True, check=True)
    assert p.read_text() == expected + "last\n"


def test_editor_save_pattern(mounted, s3_client, bucket):
    target = mounted.path / "doc.txt"
    target.write_text("version 1\n")
    tmp = mounted.path / ".doc.txt.swp"
    with open(tmp, "w") as f:
        f.write("version 2\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, target)
    assert target.read_text() == "version 2\n"
    assert bucket_objects(s3_client, bucket) == {"doc.txt": b"version 2\n"}
    mounted.remount()
    assert target.read_text() == "version 2\n"
    assert not tmp.exists()


def test_dd_notrunc_seek(mounted, s3_client, bucket):
    p = mounted.path / "disk.img"
    base = bytes(range(256)) * 4096 * 8  # 8 MiB
    s3_client.put_object(Bucket=bucket, Key="disk.img", Body=base)
    run("dd", "if=/dev/zero", f"of={p}", "bs=4096", "seek=100", "count=3", "conv=notrunc",
        "status=none")
    expected = bytearray(base)
    expected[100 * 4096:103 * 4096] = bytes(3 * 4096)
    assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(expected).digest()
    stored = s3_client.get_object(Bucket=bucket, Key="disk.img")["Body"].read()
    assert stored == bytes(expected)
    mounted.remount()
    assert p.read_bytes() == bytes(expected)


def test_truncate_grow_and_shrink(mounted, s3_client, bucket):
    p = mounted.path / "t.bin"
    p.write_bytes(b"abcdefghij")
    run("truncate", "-s", "4", str(p))
    assert p.read_bytes() == b"abcd"
    run("truncate", "-s", "100000", str(p))
    assert p.read_bytes() == b"abcd" + bytes(99996)
    assert s3_client.get_object(Bucket=bucket, Key="t.bin")["Body"].read() == \
        b"abcd" + bytes(99996)
    os.truncate(p, 2)
    mounted.remount()
    assert p.read_bytes() == b"ab"
    assert p.stat().st_size == 2


def test_mkdir_p_and_rm_rf(mounted, s3_client, bucket):
    run("mkdir", "-p", str(mounted.path / "a/b/c/d"))
    (mounted.path / "a/b/c/d/f").write_text("x")
    (mounted.path / "a/top").write_text("y")
    assert {"a/", "a/b/", "a/b/c/", "a/b/c/d/", "a/b/c/d/f", "a/top"} == \
        set(objects_but_attributes(s3_client, bucket))
    mounted.remount()
    assert (mounted.path / "a/b/c/d/f").read_text() == "x"
    run("rm", "-rf", str(mounted.path / "a"))
    assert not (mounted.path / "a").exists()
    assert bucket_objects(s3_client, bucket) == {}
    mounted.remount()
    assert os.listdir(mounted.path) == []


def test_mv_directory(mounted, s3_client, bucket, tmp_path):
    files = make_tree(mounted.path / "proj")
    run("mv", str(mounted.path / "proj"), str(mounted.path / "renamed"))
    assert not (mounted.path / "proj").exists()
    assert tree_contents(mounted.path / "renamed") == files
    keys = set(bucket_objects(s3_client, bucket))
    assert not any(k.startswith("proj/") for k in keys)
    assert {f"renamed/{rel}" for rel in files} <= keys
    mounted.remount()
    assert tree_contents(mounted.path / "renamed") == files


@pytest.mark.slow
def test_100_mib_file_by_checksum(mounted, s3_client, bucket, tmp_path):
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1024 * 1024))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    shutil.copyfile(src, mounted.path / "big.bin")
    stored = s3_client.get_object(Bucket=bucket, Key="big.bin")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == digest
    assert "-" in s3_client.head_object(Bucket=bucket, Key="big.bin")["ETag"]  # multipart
    mounted.remount()
    back = tmp_path / "back.bin"
    shutil.copyfile(mounted.path / "big.bin", back)
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
