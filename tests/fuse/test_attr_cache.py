"""Attributes learned by HEAD are remembered in the cache directory (s3mount/attrcache.py): after
a remount, `ls -l` of unchanged objects costs listings only, and an object changed by another
client is asked about again."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest
from test_request_cost import requests

from s3mount.attrcache import AttrFile

COUNT = 150
# Long enough for a whole test: only the remount, never the TTL, sends lookups to the bucket.
TTL = ("--metadata-ttl", "60")


# Lookups of the directory `d` itself: is there an object `d`, and a marker `d/` (two HEADs).
DIR_PROBE = 2


def ls_l(m) -> dict[str, tuple[int, int]]:
    """name -> (st_mode, st_uid) of every entry, as `ls -l` asks (lstat of each)."""
    subprocess.run(["ls", "-l", str(m.path / "d")], capture_output=True, check=True)
    return {name: (st.st_mode, st.st_uid) for name in os.listdir(m.path / "d")
            for st in [os.lstat(m.path / "d" / name)]}


def heads(m, before):
    return requests(m).get("HEAD", 0) - before.get("HEAD", 0)


@pytest.fixture
def filled(s3_client, bucket):
    for i in range(COUNT):
        s3_client.put_object(Bucket=bucket, Key=f"d/f{i:03d}", Body=b"x" * i,
                             Metadata={"mode": str(stat.S_IFREG | 0o600), "uid": str(1000 + i)})
    s3_client.put_object(Bucket=bucket, Key="d/link", Body=b"f001",
                         Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    return bucket


def test_after_a_remount_unchanged_objects_need_no_head(make_mount, s3_client, filled):
    m = make_mount(filled, *TTL)
    first = ls_l(m)
    assert first["f007"] == (stat.S_IFREG | 0o600, 1007)
    assert stat.S_ISLNK(first["link"][0])
    m.remount()
    before = requests(m)
    assert ls_l(m) == first
    assert heads(m, before) == DIR_PROBE, requests(m)
    assert os.readlink(m.path / "d" / "link") == "f001"


def test_an_object_changed_elsewhere_is_asked_again(make_mount, s3_client, filled):
    m = make_mount(filled, *TTL)
    ls_l(m)
    m.stop()
    # New content (new ETag), and the same content with new metadata (a copy onto itself: same
    # ETag, new LastModified - a second later, as LastModified counts in seconds).
    s3_client.put_object(Bucket=filled, Key="d/f010", Body=b"changed",
                         Metadata={"mode": str(stat.S_IFREG | 0o640), "uid": "77"})
    time.sleep(1.1)
    s3_client.copy_object(Bucket=filled, Key="d/f020", CopySource={"Bucket": filled,
                          "Key": "d/f020"}, MetadataDirective="REPLACE",
                          Metadata={"mode": str(stat.S_IFREG | 0o604), "uid": "88"})
    m.start()
    before = requests(m)
    now = ls_l(m)
    assert now["f010"] == (stat.S_IFREG | 0o640, 77)
    assert now["f020"] == (stat.S_IFREG | 0o604, 88)
    assert now["f030"] == (stat.S_IFREG | 0o600, 1030)
    assert heads(m, before) == DIR_PROBE + 2, requests(m)


def test_a_damaged_cache_file_is_not_trusted(make_mount, s3_client, filled):
    m = make_mount(filled, *TTL)
    first = ls_l(m)
    m.stop()
    path = m.cache_dir / "attrs.sqlite"
    assert path.stat().st_size > 0
    for suffix in ("", "-wal", "-shm"):
        other = path.with_name(path.name + suffix)
        if other.exists():
            size = other.stat().st_size
            other.write_bytes(b"\xde\xad" * (size // 2))  # torn: garbage where pages were
    m.start()
    before = requests(m)
    assert ls_l(m) == first
    assert heads(m, before) >= COUNT  # nothing was taken from the damaged file
    m.remount()
    before = requests(m)
    assert ls_l(m) == first
    assert heads(m, before) == DIR_PROBE  # the fresh file serves the next mount


def test_the_file_keeps_at_most_its_bound(tmp_path):
    records = AttrFile(tmp_path / "attrs.sqlite", max_entries=50)
    records.open()
    for start in range(0, 200, 20):
        records.write([(f"k{i:03d}", "e", i, 0, "{}") for i in range(start, start + 20)])
    assert records.count == 50
    found = records.find([f"k{i:03d}" for i in range(200)])
    assert sorted(found) == [f"k{i:03d}" for i in range(150, 200)]  # the newest kept
    records.write([("k150", "e2", 1, 0, "{}")])  # rewritten: now the newest
    records.write([(f"n{i}", "e", 0, 0, "{}") for i in range(10)])
    assert "k150" in records.find(["k150"]) and "k151" not in records.find(["k151"])
    records.close()
