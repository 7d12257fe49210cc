"""FUSE-tier fixtures: a mount of the test's bucket through the real CLI and kernel FUSE.

After each test every mount's log (those of `make_mount`/`mounted` and of `mounts`) must hold
no WARNING/ERROR line the test did not declare with `mount.expect(text, count=...)`, every
declared line must have appeared as often as declared, and the mount must come down cleanly.

The tier needs /dev/fuse: without it every test fails, so a run cannot silently lose the tier,
unless the developer opts out with S3MOUNT_SKIP=fuse (see `helpers.prerequisite`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from helpers import ACCESS_KEY, REGION, SECRET_KEY, Mount, check_log, is_mounted, prerequisite


def pytest_collection_modifyitems(config, items):
    """No /dev/fuse: the tier's tests fail (or skip, with S3MOUNT_SKIP=fuse), never vanish."""
    if os.path.exists("/dev/fuse"):
        return
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.usefixtures("_needs_dev_fuse"))


@pytest.fixture
def _needs_dev_fuse():
    prerequisite("fuse", "no /dev/fuse on this machine")


@pytest.fixture
def make_mount(s3_server, tmp_path):
    mounts: list[Mount] = []

    def make(source: str, *extra: str, name: str = "mnt", endpoint: str | None = None) -> Mount:
        m = Mount(endpoint or s3_server.endpoint, source, tmp_path / name,
                  tmp_path / f"{name}-cache", list(extra))
        m.start()
        mounts.append(m)
        return m

    yield make
    failures = []
    for m in mounts:
        try:
            m.stop()
        except Exception as exc:  # noqa: BLE001
            failures.append(str(exc))
        failures += check_log(m)[:10]
        assert not is_mounted(m.path)
    assert not failures, failures


@pytest.fixture
def mounted(make_mount, bucket):
    return make_mount(bucket)


@pytest.fixture
def mounts():
    """Mounts a test starts itself (each with its own environment): all taken down after it."""
    made: list[Mount] = []
    yield made
    failures = []
    for m in made:
        try:
            m.stop()
        finally:
            if is_mounted(m.path):
                subprocess.run(["fusermount3", "-u", "-z", str(m.path)])
        failures += check_log(m)[:10]
    assert not failures, failures


@pytest.fixture
def mountpoint(tmp_path):
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    if is_mounted(path):  # a start that should have failed did mount: take it down
        subprocess.run(["fusermount3", "-u", "-z", str(path)])


# -- a SeaweedFS server for the tests that need what moto lacks (helper F) ----------------------
# moto 5.2 ignores If-Match on CompleteMultipartUpload and x-amz-copy-source-if-match; SeaweedFS
# (a real object store, scripts/seaweed.py) enforces both.

_seaweed_buckets = itertools.count()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parents[2] / "scripts"))
    from seaweed import SeaweedFS

    data = tmp_path_factory.mktemp("seaweed")
    server = SeaweedFS(data, ACCESS_KEY, SECRET_KEY)
    server.start()
    server.client = boto3.client(  # type: ignore[attr-defined]
        "s3", endpoint_url=server.endpoint, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY, region_name=REGION,
        config=Config(s3={"addressing_style": "path"}))
    yield server
    server.stop()
    shutil.rmtree(data, ignore_errors=True)  # the 5.5 GiB test leaves ~18 GB: never keep it


@pytest.fixture
def seaweed_bucket(seaweed) -> str:
    name = f"seaweed-{next(_seaweed_buckets)}"
    seaweed.client.create_bucket(Bucket=name)
    return name
