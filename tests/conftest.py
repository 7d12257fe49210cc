"""Fixtures shared by every tier: the S3 servers (started once per session, each only when a
test needs it), a fresh bucket per test.

`s3_server` is moto, except in the FUSE-tier semantics tests (SERVER_MATRIX), which run on
moto and on SeaweedFS, a real object store that verifies signatures and enforces conditional
writes: their ids end in `[moto]` or `[seaweedfs]`.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from faultproxy import FaultProxy  # noqa: E402
from helpers import MotoServer, SeaweedServer  # noqa: E402

SERVERS = ("moto", "seaweedfs")
# ... and these real programs also on SeaweedFS with SigV2, which it verifies:
# `[seaweedfs-sigv2]` (the request shapes they make between them: PUT, multipart, copy,
# listings, HEAD and DELETE of files and directories; the rest of test_programs adds no new one).
SIGV2_MATRIX = {"test_cp_a_tree", "test_tar_round_trip", "test_rsync_twice", "test_git"}
SERVER_MATRIX = {"test_basics", "test_programs", "test_model", "test_crash", "test_conflicts",
                 "test_coherence", "test_fsx", "test_capabilities",
                 "test_directories", "test_file_types"}

_counter = itertools.count()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module in SERVER_MATRIX and "s3_server" in metafunc.fixturenames and not any(
            m.name == "parametrize" and "s3_server" in m.args[0]
            for m in metafunc.definition.iter_markers()):
        sigv2 = module == "test_programs" and metafunc.function.__name__ in SIGV2_MATRIX
        servers = SERVERS + (("seaweedfs-sigv2",) if sigv2 else ())
        metafunc.parametrize("s3_server", servers, indirect=True, scope="session")


class _Servers:
    """The session's servers, started on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.running: dict[str, MotoServer | SeaweedServer] = {}
        self.spent: list[str] = []  # SeaweedFS buckets of tests done, to delete

    def get(self, name: str) -> MotoServer | SeaweedServer | SigV2View:
        if name == "seaweedfs-sigv2":
            return SigV2View(self.get("seaweedfs"))
        if name not in self.running:
            self.running[name] = (MotoServer() if name == "moto"
                                  else SeaweedServer(self.root / "seaweedfs"))
        return self.running[name]

    def stop(self) -> None:
        for server in self.running.values():
            server.stop()


class SigV2View:
    """A server whose mounts sign with SigV2 (`--signature-version v2`); the test's own client
    still signs with SigV4."""

    mount_args = ("--signature-version", "v2")

    def __init__(self, server: SeaweedServer) -> None:
        self.server = server
        self.name = server.name
        self.endpoint = server.endpoint

    def client(self):  # type: ignore[no-untyped-def]
        return self.server.client()


@pytest.fixture(scope="session")
def _servers(tmp_path_factory):
    servers = _Servers(tmp_path_factory.mktemp("servers"))
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def s3_server(request, _servers):
    return _servers.get(getattr(request, "param", "moto"))


@pytest.fixture(scope="session")
def seaweed_server(_servers):
    return _servers.get("seaweedfs")


@pytest.fixture
def s3_client(s3_server):
    return s3_server.client()


@pytest.fixture
def bucket(s3_server, s3_client, _servers):
    if s3_server.name == "seaweedfs":
        # Each bucket holds volumes of its own (7 at its first write): the buckets of tests
        # already done go, so a session never needs more than a few (their mounts are down by
        # now; at their own teardown they might not be yet).
        while _servers.spent:
            s3_client.delete_bucket(Bucket=_servers.spent.pop())
    name = f"bucket-{next(_counter)}"
    s3_client.create_bucket(Bucket=name)
    yield name
    if s3_server.name == "seaweedfs":
        _servers.spent.append(name)


@pytest.fixture
def proxy(s3_server):
    """The HTTP fault proxy (tests/faultproxy.py) in front of the test's server."""
    p = FaultProxy(s3_server.endpoint)
    yield p
    p.stop()
