"""Credentials, signatures, addressing and TLS against servers that check credentials.

- moto with IAM authentication (INITIAL_NO_AUTH_ACTION_COUNT) checks SigV4 signatures fully
  (a wrong secret is refused), but answers SigV2 requests with a 500.
- s3rver 3.7.1 (npm) checks of a SigV4 request only that its access key exists (its SigV4
  calculation is unimplemented).  It does compute SigV2 signatures, but cannot accept botocore's:
  it leaves the Date header out of the string to sign (it keeps it only for query-string auth)
  and signs bucket requests as `/bucket` where botocore signs `/bucket/`.  So it runs with
  --allow-mismatched-signatures: a SigV2 (or SigV4) request must still be well formed and name
  an existing access key, but a wrong secret goes unnoticed there.
So every credential source is tested with SigV4 on moto (full check) and with SigV2 on s3rver
(key check); wrong keys are refused by both.  SigV2 signatures are checked in full by the proxy
of test_sigv2.py (tests/sigv2check.py) in front of moto.  Virtual-hosted addressing needs a host
name: those mounts run in a private mount namespace whose /etc/hosts names only
`BUCKET.s3.test`, so a path-style request could not even resolve.  s3rver is installed with npm
into a cache directory (`$S3MOUNT_NPM_PREFIX`, default ~/.cache/s3mount-tests/npm) when
missing; without npm the s3rver tests are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from helpers import (
    NO_CONDITIONAL_WRITES,
    S3RVER_KEY,
    Mount,
    S3rver,
    free_port,
    is_mounted,
    prerequisite,
    s3rver_script,
    stop_process,
    wait_port,
)

REGION = "us-east-1"
MIB = 1024 * 1024


def clean_env() -> dict[str, str]:
    """The environment with no AWS settings at all: each test adds its own credential source."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_DEFAULT_REGION=REGION, AWS_EC2_METADATA_DISABLED="true")
    return env


# -- the servers -------------------------------------------------------------------------------


class MotoWithAuth:
    """moto checking SigV4 signatures against an IAM user it holds (all actions allowed)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = clean_env()
        env.update(INITIAL_NO_AUTH_ACTION_COUNT="3", AWS_ACCESS_KEY_ID="bootstrap",
                   AWS_SECRET_ACCESS_KEY="bootstrap")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "moto")
        iam = boto3.client("iam", endpoint_url=self.endpoint, aws_access_key_id="bootstrap",
                           aws_secret_access_key="bootstrap", region_name=REGION)
        iam.create_user(UserName="mounter")  # the three unauthenticated actions
        key = iam.create_access_key(UserName="mounter")["AccessKey"]
        iam.put_user_policy(UserName="mounter", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=REGION,
                            config=Config(s3={"addressing_style": "path"}))

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def s3rver(tmp_path_factory):
    server = S3rver(s3rver_script(), tmp_path_factory.mktemp("s3rver"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3rver_tls(tmp_path_factory):
    if shutil.which("openssl") is None:
        prerequisite("programs", "openssl is not installed: no certificate for the TLS server")
    script = s3rver_script()
    certs = tmp_path_factory.mktemp("tls")
    key, cert = certs / "key.pem", certs / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = S3rver(script, tmp_path_factory.mktemp("s3rver-tls"), (key, cert))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto_auth():
    server = MotoWithAuth()
    yield server
    server.stop()


_buckets = iter(range(10**6))


def new_bucket(client) -> str:  # type: ignore[no-untyped-def]
    name = f"cred-{os.getpid()}-{next(_buckets)}"
    client.create_bucket(Bucket=name)
    return name


# -- mounting with a given environment ---------------------------------------------------------


class EnvMount(Mount):
    """A `Mount` whose daemon gets exactly the environment given (its own credential source)."""

    def __init__(self, env: dict[str, str], *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.env = env

    def run(self) -> subprocess.CompletedProcess[str]:
        self.path.mkdir(parents=True, exist_ok=True)
        return subprocess.run(self.command(), env=self.env, capture_output=True, text=True,
                              timeout=60)

    def start(self) -> None:
        result = self.run()
        assert result.returncode == 0, f"s3mount failed ({result.returncode}): {result.stderr}"
        assert is_mounted(self.path)


def exercise(m: Mount, client, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """PUT, multipart upload, HEAD, LIST, GET and DELETE through the mount: every kind of
    request signed."""
    big = os.urandom(9 * MIB)  # over the single-PUT limit: a multipart upload
    (m.path / "small.txt").write_text("signed")
    (m.path / "big.bin").write_bytes(big)
    assert sorted(os.listdir(m.path)) == ["big.bin", "small.txt"]
    assert (m.path / "small.txt").read_text() == "signed"
    assert (m.path / "big.bin").read_bytes() == big
    assert client.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == big
    (m.path / "small.txt").unlink()
    assert "small.txt" not in {o["Key"] for o in
                               client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def assert_secret_hidden(secret: str, m: Mount) -> None:
    """Neither the log nor any process's command line shows the secret key."""
    assert secret not in m.log_text()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert secret.encode() not in cmdline.read_bytes(), cmdline
        except OSError:
            continue


def credential_source(kind: str, access: str, secret: str, tmp: Path,
                      env: dict[str, str]) -> list[str]:
    """Set up one credential source; returns the extra s3mount arguments it needs."""
    tmp.mkdir(exist_ok=True)
    if kind == "env":
        env.update(AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret)
        return []
    if kind == "shared-credentials-file":
        (tmp / "credentials").write_text(
            f"[default]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n")
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp / "credentials")
        return []
    if kind == "profile":
        (tmp / "credentials").write_text(
            "[default]\naws_access_key_id = WRONGWRONG\naws_secret_access_key = wrong\n"
            f"[team]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n")
        (tmp / "config").write_text(f"[profile team]\nregion = {REGION}\n")
        env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp / "credentials"),
                   AWS_CONFIG_FILE=str(tmp / "config"))
        return ["--profile", "team"]
    if kind == "config-file-profile":
        (tmp / "config").write_text(f"[profile ops]\nregion = {REGION}\naws_access_key_id = "
                                    f"{access}\naws_secret_access_key = {secret}\n")
        env["AWS_CONFIG_FILE"] = str(tmp / "config")
        return ["--profile", "ops"]
    if kind == "passwd-file":
        passwd = tmp / "passwd"
        passwd.write_text(f"{access}:{secret}\n")
        passwd.chmod(0o600)
        return ["--passwd-file", str(passwd)]
    if kind == "s3mount-config-file":
        conf = tmp / "s3mount.conf"
        conf.write_text(f"access_key_id = {access}\nsecret_access_key = {secret}\n")
        conf.chmod(0o600)
        return ["--config", str(conf)]
    raise AssertionError(kind)


SOURCES = ["env", "shared-credentials-file", "profile", "config-file-profile", "passwd-file",
           "s3mount-config-file"]


def mount_with(mounts, endpoint, bucket, tmp_path, env, extra) -> EnvMount:  # type: ignore[no-untyped-def]
    m = EnvMount(env, endpoint, bucket, tmp_path / "mnt", tmp_path / "cache", extra)
    mounts.append(m)
    m.start()
    return m


@pytest.mark.parametrize("source", SOURCES)
def test_sigv2_each_credential_source_on_s3rver(s3rver, mounts, tmp_path, source):
    client = s3rver.client()  # checks through SigV4, which s3rver does not verify
    bucket = new_bucket(client)
    env = clean_env()
    extra = credential_source(source, S3RVER_KEY, S3RVER_KEY, tmp_path / "creds", env)
    m = mount_with(mounts, s3rver.endpoint, bucket, tmp_path, env,
                   ["--signature-version", "v2", *extra])
    m.expect(NO_CONDITIONAL_WRITES, count=1)  # s3rver ignores If-Match/If-None-Match
    exercise(m, client, bucket)


@pytest.mark.parametrize("source", SOURCES)
def test_sigv4_each_credential_source_on_moto_with_auth(moto_auth, mounts, tmp_path, source):
    client = moto_auth.client()
    bucket = new_bucket(client)
    env = clean_env()
    extra = credential_source(source, moto_auth.access_key, moto_auth.secret_key,
                              tmp_path / "creds", env)
    m = mount_with(mounts, moto_auth.endpoint, bucket, tmp_path, env,
                   ["--signature-version", "v4", *extra])
    exercise(m, client, bucket)
    assert_secret_hidden(moto_auth.secret_key, m)
    assert not m.problems(), m.problems()


def test_sigv4_on_s3rver(s3rver, mounts, tmp_path):
    client = s3rver.client()
    bucket = new_bucket(client)
    env = clean_env()
    extra = credential_source("passwd-file", S3RVER_KEY, S3RVER_KEY, tmp_path / "c", env)
    m = mount_with(mounts, s3rver.endpoint, bucket, tmp_path, env, extra)
    m.expect(NO_CONDITIONAL_WRITES, count=1)  # s3rver ignores If-Match/If-None-Match
    exercise(m, client, bucket)


def refused(endpoint: str, bucket: str, tmp_path: Path, env: dict[str, str],
            extra: list[str]) -> str:
    m = EnvMount(env, endpoint, bucket, tmp_path / "mnt", tmp_path / "cache", extra)
    result = m.run()
    assert result.returncode == 1, result
    assert not is_mounted(m.path)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("signature", ["v2", "v4"])
def test_wrong_keys_refused_by_s3rver(s3rver, tmp_path, signature):
    access, secret = "NOSUCHKEY", "WrongSecretKey"
    bucket = new_bucket(s3rver.client())
    env = clean_env()
    extra = credential_source("passwd-file", access, secret, tmp_path / "c", env)
    line = refused(s3rver.endpoint, bucket, tmp_path, env, ["--signature-version", signature,
                                                            *extra])
    assert line.startswith(f"s3mount: access denied to bucket '{bucket}' at {s3rver.endpoint}")
    assert f"keys from {tmp_path / 'c' / 'passwd'}" in line
    assert "WrongSecretKey" not in line and "NOSUCHKEY" not in line


def test_wrong_secret_refused_by_moto_sigv4(moto_auth, tmp_path):
    bucket = new_bucket(moto_auth.client())
    env = clean_env()
    env.update(AWS_ACCESS_KEY_ID=moto_auth.access_key, AWS_SECRET_ACCESS_KEY="NotTheSecret")
    line = refused(moto_auth.endpoint, bucket, tmp_path, env, [])
    assert line.startswith(f"s3mount: access denied to bucket '{bucket}'")
    assert "NotTheSecret" not in line and moto_auth.access_key not in line


def test_no_credentials_at_all(moto_auth, tmp_path):
    line = refused(moto_auth.endpoint, "some-bucket", tmp_path, clean_env(), [])
    assert line.startswith("s3mount: no S3 credentials found")


@pytest.mark.parametrize("signature", ["v2", "v4"])
def test_virtual_hosted_addressing(s3rver, tmp_path, signature):
    """In a private mount namespace whose /etc/hosts knows only BUCKET.s3.test: a path-style
    request (to s3.test) could not resolve, so the mount working shows virtual-hosted
    addressing at work, signed as the server checks it."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        prerequisite("root", "needs root and unshare for a private /etc/hosts")
    client = s3rver.client()
    bucket = f"vhost-{signature}-{os.getpid()}"
    client.create_bucket(Bucket=bucket)
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 {bucket}.s3.test\n")
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    env = clean_env()
    extra = credential_source("passwd-file", S3RVER_KEY, S3RVER_KEY, tmp_path / "c", env)
    command = " ".join([sys.executable, "-m", "s3mount", "--endpoint-url",
                        s3rver.vhost_endpoint, "--addressing-style", "virtual",
                        "--signature-version", signature, "--cache-dir", str(cache), *extra,
                        bucket, str(mnt)])
    script = f"""
set -e
mount --bind {hosts} /etc/hosts
trap 'fusermount3 -u -z {mnt} 2>/dev/null || true' EXIT
{command}
echo virtual > {mnt}/vh.txt
cat {mnt}/vh.txt
ls {mnt}
fusermount3 -u {mnt}
# the daemon, not this script (whose text holds the same words): anchored at its start
for i in $(seq 300); do
    pgrep -f "^{sys.executable} -m s3mount .*--cache-dir {cache} " >/dev/null || exit 0
    sleep 0.1
done
exit 1
"""
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                             script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["virtual", "vh.txt"]
    assert client.get_object(Bucket=bucket, Key="vh.txt")["Body"].read() == b"virtual\n"


# -- TLS ---------------------------------------------------------------------------------------


def test_tls_verified_by_default(s3rver_tls, tmp_path):
    bucket = new_bucket(s3rver_tls.client())
    env = clean_env()
    extra = credential_source("env", S3RVER_KEY, S3RVER_KEY, tmp_path / "c", env)
    line = refused(s3rver_tls.endpoint, bucket, tmp_path, env, extra)
    assert line.startswith(f"s3mount: TLS certificate of {s3rver_tls.endpoint} not accepted")
    assert "--ca-bundle" in line


def mount_s3rver_tls(s3rver_tls, mounts, tmp_path, options: list[str]):  # type: ignore[no-untyped-def]
    """A mount of a new bucket of the TLS s3rver, with keys from the environment; returns the
    mount, a client of the server, and the bucket."""
    client = s3rver_tls.client()
    bucket = new_bucket(client)
    env = clean_env()
    extra = credential_source("env", S3RVER_KEY, S3RVER_KEY, tmp_path / "c", env)
    m = mount_with(mounts, s3rver_tls.endpoint, bucket, tmp_path, env, [*options, *extra])
    m.expect(NO_CONDITIONAL_WRITES, count=1)  # s3rver ignores If-Match/If-None-Match
    return m, client, bucket


def test_tls_with_ca_bundle(s3rver_tls, mounts, tmp_path):
    m, client, bucket = mount_s3rver_tls(s3rver_tls, mounts, tmp_path,
                                         ["--ca-bundle", str(s3rver_tls.tls[1])])
    exercise(m, client, bucket)


def test_tls_without_verification(s3rver_tls, mounts, tmp_path):
    m, client, bucket = mount_s3rver_tls(s3rver_tls, mounts, tmp_path, ["--no-verify-ssl"])
    m.expect("TLS certificates of https://127.0.0.1", count=1)  # "... are not verified"
    (m.path / "f").write_text("unverified")
    assert client.get_object(Bucket=bucket, Key="f")["Body"].read() == b"unverified"


def test_s3rver_is_reachable_over_plain_http(s3rver):
    with pytest.raises(urllib.error.HTTPError) as exc:  # no signature: refused, but answered
        urllib.request.urlopen(f"{s3rver.endpoint}/nosuchbucket/x", timeout=10)
    assert exc.value.code in (403, 404)
