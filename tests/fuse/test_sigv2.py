"""SigV2 checked for real: a proxy in front of moto verifies every signature (tests/sigv2check.py),
for each credential source; and SeaweedFS, which verifies SigV2 itself, mounted with it (the
real-program tests also run so, as `[seaweedfs-sigv2]`)."""

from __future__ import annotations

import os

import pytest
from faultproxy import FaultProxy
from helpers import ACCESS_KEY, Mount, one_line_error, run_cli
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


def test_sigv2_on_seaweedfs(seaweed_server, tmp_path):
    """Bucket requests included (HEAD bucket, listings, batch deletes): botocore signs them for
    `/bucket/`, and s3mount sends that path, which the server verifies."""
    client = seaweed_server.client()
    client.create_bucket(Bucket="sigv2-real")
    m = Mount(seaweed_server.endpoint, "sigv2-real", tmp_path / "mnt", tmp_path / "cache",
              ["--signature-version", "v2"])
    m.start()
    try:
        (m.path / "d").mkdir()
        (m.path / "d/f.txt").write_text("signed with v2")
        assert os.listdir(m.path) == ["d"]
        os.rename(m.path / "d", m.path / "e")
        assert (m.path / "e/f.txt").read_text() == "signed with v2"
        m.remount()
        assert os.listdir(m.path) == ["e"] and os.listdir(m.path / "e") == ["f.txt"]
        assert client.get_object(Bucket="sigv2-real", Key="e/f.txt")["Body"].read() == \
            b"signed with v2"
    finally:
        m.stop()
    assert not m.problems(), m.problems()
    passwd = tmp_path / "wrong"
    passwd.write_text(f"{ACCESS_KEY}:not-the-secret\n")
    passwd.chmod(0o600)
    (tmp_path / "mnt2").mkdir()
    result = run_cli("--endpoint-url", seaweed_server.endpoint, "--signature-version", "v2",
                     "--passwd-file", str(passwd), "--cache-dir", str(tmp_path / "cache2"),
                     "sigv2-real", str(tmp_path / "mnt2"))
    assert one_line_error(result).startswith("s3mount: access denied to bucket 'sigv2-real'")
    client.delete_bucket(Bucket="sigv2-real")
