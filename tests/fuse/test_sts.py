"""Temporary credentials from STS through botocore's own chain, against moto's STS: a profile
that assumes a role (`role_arn` + `source_profile`), and web identity (`AWS_ROLE_ARN` +
`AWS_WEB_IDENTITY_TOKEN_FILE`, as on EKS).  The STS endpoint is set as users set it,
with `AWS_ENDPOINT_URL_STS`.  A recording proxy in front of S3 shows that the mount signed
with the temporary keys (an `ASIA...` access key and a session token), not the source keys.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from faultproxy import FaultProxy
from helpers import ACCESS_KEY, SECRET_KEY, Mount, is_mounted

ROLE = "arn:aws:iam::123456789012:role/mounter"


def sts_env(tmp_path, s3_server, kind: str) -> tuple[dict[str, str], list[str]]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_ENDPOINT_URL_STS=s3_server.endpoint)
    config = tmp_path / "aws-config"
    if kind == "assume-role-profile":
        config.write_text(f"[profile source]\naws_access_key_id = {ACCESS_KEY}\n"
                          f"aws_secret_access_key = {SECRET_KEY}\n"
                          f"[profile mounter]\nrole_arn = {ROLE}\nsource_profile = source\n"
                          "role_session_name = s3mount-test\n")
        env["AWS_CONFIG_FILE"] = str(config)
        return env, ["--profile", "mounter"]
    token = tmp_path / "token"
    token.write_text("a-web-identity-token")
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_ROLE_ARN=ROLE,
               AWS_WEB_IDENTITY_TOKEN_FILE=str(token), AWS_ROLE_SESSION_NAME="s3mount-test")
    return env, []


@pytest.mark.parametrize("kind", ["assume-role-profile", "web-identity"])
def test_mount_with_sts_credentials(s3_server, s3_client, bucket, tmp_path, kind):
    env, extra = sts_env(tmp_path, s3_server, kind)
    proxy = FaultProxy(s3_server.endpoint)
    m = Mount(proxy.endpoint, bucket, tmp_path / "mnt", tmp_path / "cache", extra)
    m.path.mkdir()
    try:
        result = subprocess.run(m.command(), env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert is_mounted(m.path)
        (m.path / "f").write_text("with temporary keys")
        assert (m.path / "f").read_text() == "with temporary keys"
        m.stop()
        assert not m.problems(), m.problems()
    finally:
        m.stop()
        proxy.stop()
    assert s3_client.get_object(Bucket=bucket, Key="f")["Body"].read() == b"with temporary keys"
    signed = [s for s in proxy.seen if s.header("Authorization")]
    assert signed
    for seen in signed:
        key = re.search(r"Credential=([^/]+)/", seen.header("Authorization") or "")
        assert key and key.group(1).startswith("ASIA") and key.group(1) != ACCESS_KEY
        assert seen.header("x-amz-security-token")
