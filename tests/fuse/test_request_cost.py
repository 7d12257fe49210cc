"""What operations cost in S3 requests, read from the daemon's own counters (`s3mount status`)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import stat
import subprocess
import sys

from helpers import test_env


def requests(m) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "s3mount", "status", "--json", str(m.path)],
                         capture_output=True, text=True, env=test_env(), check=True).stdout
    return dict(json.loads(out)["s3"]["by_kind"])


def fill(s3_client, bucket, count: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3_client.put_object(Bucket=bucket, Key=f"d/f{i:04d}", Body=b"x"),
                      range(count)))


def test_ls_l_with_trusted_listings_costs_lists_not_heads(make_mount, s3_client, bucket):
    fill(s3_client, bucket, 2500)
    m = make_mount(bucket, "--trust-listings")
    before = requests(m)
    out = subprocess.run(["ls", "-l", str(m.path / "d")], capture_output=True, text=True,
                         check=True).stdout
    assert len(out.splitlines()) == 2501
    after = requests(m)
    heads = after.get("HEAD", 0) - before.get("HEAD", 0)
    lists = after.get("LIST", 0) - before.get("LIST", 0)
    assert heads <= 5, after
    assert lists <= 3 + 3 * 4, after  # 3 pages, plus a re-listing if ls outlived the TTL


def test_ls_l_by_default_shows_exact_modes_and_symlinks(make_mount, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="exec.sh", Body=b"#!/bin/sh\n",
                         Metadata={"mode": str(stat.S_IFREG | 0o755)})
    s3_client.put_object(Bucket=bucket, Key="link", Body=b"exec.sh",
                         Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    m = make_mount(bucket)
    names = sorted(os.listdir(m.path))
    assert names == ["exec.sh", "link"]
    assert stat.S_IMODE(os.lstat(m.path / "exec.sh").st_mode) == 0o755
    assert os.path.islink(m.path / "link")
    assert os.readlink(m.path / "link") == "exec.sh"


def test_repeated_stat_within_the_ttl_is_free(make_mount, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"1")
    m = make_mount(bucket, "--metadata-ttl", "30")
    os.stat(m.path / "f")
    before = requests(m)
    for _ in range(50):
        os.stat(m.path / "f")
    assert requests(m) == before
