"""SigV2 checked for real: a proxy in front of moto verifies every signature (tests/sigv2check.py),
since no local S3 server accepts botocore's SigV2 (see test_credentials.py)."""

from __future__ import annotations

import pytest
from faultproxy import FaultProxy
from sigv2check import SigV2Check
from test_credentials import (
    SOURCES,
    assert_secret_hidden,
    clean_env,
    credential_source,
    exercise,
    mount_with,
    refused,
)

ACCESS, SECRET = "V2ACCESSKEY", "v2/Secret+Key"


@pytest.fixture
def v2_proxy(s3_server):
    proxy = FaultProxy(s3_server.endpoint)
    proxy.check = SigV2Check({ACCESS: SECRET})
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("source", SOURCES)
def test_sigv2_each_credential_source_is_verified(v2_proxy, mounts, s3_client, bucket,
                                                  tmp_path, source):
    env = clean_env()
    extra = credential_source(source, ACCESS, SECRET, tmp_path / "creds", env)
    m = mount_with(mounts, v2_proxy.endpoint, bucket, tmp_path, env,
                   ["--signature-version", "v2", *extra])
    exercise(m, s3_client, bucket)
    outcomes = v2_proxy.check.outcomes
    assert set(outcomes) == {"ok"} and outcomes["ok"] >= 8, outcomes  # PUT, parts, GET, ...
    assert_secret_hidden(SECRET, m)
    assert not m.problems(), m.problems()


@pytest.mark.parametrize(("access", "secret", "outcome"), [
    (ACCESS, "not-the-secret", "bad-signature"),
    ("NOSUCHKEY", SECRET, "unknown-key"),
])
def test_sigv2_wrong_keys_are_refused(v2_proxy, bucket, tmp_path, access, secret, outcome):
    env = clean_env()
    extra = credential_source("passwd-file", access, secret, tmp_path / "c", env)
    line = refused(v2_proxy.endpoint, bucket, tmp_path, env, ["--signature-version", "v2",
                                                               *extra])
    assert line.startswith(f"s3mount: access denied to bucket '{bucket}'"), line
    assert "not-the-secret" not in line
    assert v2_proxy.check.outcomes[outcome] >= 1 and not v2_proxy.check.outcomes["ok"]


def test_sigv4_is_not_taken_for_sigv2(v2_proxy, bucket, tmp_path):
    """The check is no rubber stamp: a SigV4 request through it is refused."""
    env = clean_env()
    extra = credential_source("passwd-file", ACCESS, SECRET, tmp_path / "c", env)
    result = refused_any(v2_proxy.endpoint, bucket, tmp_path, env, extra)
    assert result and v2_proxy.check.outcomes["not-v2"] >= 1


def refused_any(endpoint, bucket, tmp_path, env, extra) -> str:  # type: ignore[no-untyped-def]
    from helpers import is_mounted
    from test_credentials import EnvMount
    m = EnvMount(env, endpoint, bucket, tmp_path / "mnt", tmp_path / "cache", extra)
    result = m.run()
    assert result.returncode != 0 and not is_mounted(m.path), result
    assert "Traceback" not in result.stderr
    return result.stderr.strip()
