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
import subprocess

import pytest
from helpers import Mount, check_log, is_mounted, prerequisite


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
                  tmp_path / f"{name}-cache", [*s3_server.mount_args, *extra])
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


# -- SeaweedFS for the tests that need what moto lacks ------------------------------------------
# moto 5.2 ignores If-Match on CompleteMultipartUpload and x-amz-copy-source-if-match; SeaweedFS
# (a real object store, scripts/seaweed.py) enforces both.  The session's one SeaweedFS server.


@pytest.fixture(scope="session")
def seaweed(seaweed_server):
    return seaweed_server


@pytest.fixture
def seaweed_bucket(seaweed) -> str:
    name = f"seaweed-{next(_seaweed_buckets)}"
    seaweed.client().create_bucket(Bucket=name)
    return name


_seaweed_buckets = itertools.count()
