"""FUSE-tier fixtures: a mount of the test's bucket through the real CLI and kernel FUSE.

After each test the mount's log must hold no WARNING/ERROR line unless the test expected it
(`mounted.expected_problems`), and the mount must come down cleanly.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers import Mount, is_mounted

if not os.path.exists("/dev/fuse"):
    pytest.skip("no /dev/fuse on this machine", allow_module_level=True)


@pytest.fixture
def make_mount(s3_server, tmp_path):
    mounts: list[Mount] = []

    def make(source: str, *extra: str, name: str = "mnt") -> Mount:
        m = Mount(s3_server.endpoint, source, tmp_path / name, tmp_path / f"{name}-cache",
                  [*s3_server.mount_args, *extra])
        m.expected_problems = []  # type: ignore[attr-defined]
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
        unexpected = [p for p in m.problems()
                      if not any(e in p for e in m.expected_problems)]  # type: ignore
        if unexpected:
            failures.append(f"unexpected log lines in {m.path}: {unexpected[:5]}")
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
    for m in made:
        try:
            m.stop()
        finally:
            if is_mounted(m.path):
                subprocess.run(["fusermount3", "-u", "-z", str(m.path)])


@pytest.fixture
def mountpoint(tmp_path):
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    if is_mounted(path):  # a start that should have failed did mount: take it down
        subprocess.run(["fusermount3", "-u", "-z", str(path)])
