"""Fixtures shared by every tier: one moto server per session, a fresh bucket per test."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import MotoServer  # noqa: E402

_counter = itertools.count()


@pytest.fixture(scope="session")
def s3_server():
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def s3_client(s3_server):
    return s3_server.client()


@pytest.fixture
def bucket(s3_client) -> str:
    name = f"bucket-{next(_counter)}"
    s3_client.create_bucket(Bucket=name)
    return name
