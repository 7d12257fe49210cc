"""Core-tier fixtures: the environment boto3 reads, pointed at the test server's keys only, and
the log check every core test gets: no WARNING or worse from s3mount, but for messages its
module's `EXPECTED_LOG` pattern matches, or the test's `@pytest.mark.expected_log(PATTERN)`."""

from __future__ import annotations

import logging
import os
import re

import pytest
from helpers import ACCESS_KEY, REGION, SECRET_KEY, logged_problems


@pytest.fixture
def aws_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(autouse=True)
def no_problems_logged(caplog, request):
    # The model test runs thousands of steps: DEBUG records would slow it (`CAPTURE_LEVEL`).
    caplog.set_level(getattr(request.module, "CAPTURE_LEVEL", logging.DEBUG), logger="s3mount")
    yield
    marker = request.node.get_closest_marker("expected_log")
    expected = re.compile(marker.args[0]) if marker else getattr(request.module, "EXPECTED_LOG",
                                                                 None)
    assert not logged_problems(caplog, expected)[:5]
