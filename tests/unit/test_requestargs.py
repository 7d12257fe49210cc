"""The provider options: what each kind of request carries (requestargs), the SSE-C key file,
and that every option is documented in the README, `--help` and systemd/example.conf."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest

from s3mount import cli
from s3mount.config import MountConfig
from s3mount.credentials import read_sse_c_key
from s3mount.errors import ConfigError
from s3mount.requestargs import RequestArgs, check_options

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ["sse", "sse-kms-key-id", "sse-c-key-file", "storage-class", "requester-pays",
           "content-type", "proxy", "checksum"]
KEY = bytes(range(32))


def config(**kwargs) -> MountConfig:  # type: ignore[no-untyped-def]
    return MountConfig("b-1", "", "/mnt", **kwargs)


def test_no_options_add_nothing():
    args = RequestArgs(config())
    for extra in (args.read(), args.put("a.txt", b"x", True), args.create_multipart("a"),
                  args.part(b"x"), args.part_copy(), args.complete(), args.copy("a", True)):
        assert extra == {}
    assert args.every_request_headers() == {} and args.headers_for_read() == {}
    assert args.part_entry(1, "e", "c") == {"PartNumber": 1, "ETag": '"e"'}


def test_sse_and_storage_class_on_what_makes_objects_only():
    args = RequestArgs(config(sse="aws:kms", sse_kms_key_id="k", storage_class="STANDARD_IA"))
    made = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "k", "StorageClass": "STANDARD_IA"}
    assert args.put("a", b"", True) == made
    assert args.create_multipart("a") == made
    assert args.copy("a", False) == made
    assert args.part(b"x") == args.part_copy() == args.complete() == args.read() == {}


def test_sse_c_on_everything_with_bytes_and_as_copy_source():
    args = RequestArgs(config(sse_customer_key=KEY))
    mine = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": KEY}
    source = {"CopySourceSSECustomerAlgorithm": "AES256", "CopySourceSSECustomerKey": KEY}
    assert args.read() == args.complete() == args.part(b"x") == mine
    assert args.put("a", b"", False) == args.create_multipart("a") == mine
    assert args.part_copy() == args.copy("a", True) == {**mine, **source}
    headers = args.headers_for_read()
    assert headers["x-amz-server-side-encryption-customer-key"] == base64.b64encode(KEY).decode()
    assert headers["x-amz-server-side-encryption-customer-key-MD5"] == \
        base64.b64encode(hashlib.md5(KEY).digest()).decode()


def test_content_type():
    auto = RequestArgs(config(content_type="auto"))
    assert auto.put("d/page.html", b"", True)["ContentType"] == "text/html"
    assert "ContentType" not in auto.put("d/page.html", b"", False)  # markers, symlinks
    assert auto.create_multipart("x.unknown-ext")["ContentType"] == "application/octet-stream"
    assert auto.copy("a.txt", True)["ContentType"] == "text/plain"
    assert "ContentType" not in auto.copy("a.txt", False)  # S3 keeps the source's
    assert auto.retypes(".a.html.XyZ12", "a.html") and not auto.retypes("a.html", "b.html")
    fixed = RequestArgs(config(content_type="text/csv"))
    assert fixed.put("a.html", b"", True)["ContentType"] == "text/csv"
    assert not fixed.retypes("a.txt", "a.html")
    assert not RequestArgs(config()).retypes("a.txt", "a.html")


def test_checksums():
    args = RequestArgs(config(checksum="sha256"))
    digest = base64.b64encode(hashlib.sha256(b"data").digest()).decode()
    assert args.put("a", b"data", True) == {"ChecksumAlgorithm": "SHA256",
                                           "ChecksumSHA256": digest}
    assert args.part(b"data")["ChecksumSHA256"] == digest
    assert args.create_multipart("a") == {"ChecksumAlgorithm": "SHA256"}
    assert args.part_entry(2, "e", digest) == {"PartNumber": 2, "ETag": '"e"',
                                               "ChecksumSHA256": digest}
    assert args.part_checksum({"ChecksumSHA256": "x", "ETag": "e"}) == "x"
    assert RequestArgs(config()).part_checksum({"ChecksumSHA256": "x"}) is None


def test_requester_pays_header():
    args = RequestArgs(config(requester_pays=True))
    assert args.every_request_headers() == {"x-amz-request-payer": "requester"}
    assert args.headers_for_read() == {"x-amz-request-payer": "requester"}


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"sse_kms_key_id": "k"}, "needs --sse aws:kms"),
    ({"sse": "AES256", "sse_kms_key_id": "k"}, "needs --sse aws:kms"),
    ({"sse": "AES256", "sse_customer_key": KEY}, "contradict"),
    ({"storage_class": "DEEP_ARCHIVE"}, "restore"),
])
def test_contradictions(kwargs, needle):
    with pytest.raises(ConfigError, match=needle) as exc:
        check_options(config(**kwargs))
    assert exc.value.status == 2


@pytest.mark.parametrize("content", [KEY, KEY + b"\n", base64.b64encode(KEY),
                                     base64.b64encode(KEY) + b"\n"])
def test_sse_c_key_file_forms(tmp_path, content):
    path = tmp_path / "key"
    path.write_bytes(content)
    path.chmod(0o600)
    assert read_sse_c_key(str(path)) == KEY


def test_sse_c_key_file_never_shows_the_key(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(b"not-a-key-but-secret")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="32-byte") as exc:
        read_sse_c_key(str(path))
    assert "secret" not in str(exc.value)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by group"):
        read_sse_c_key(str(path))


def test_every_option_documented():
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "systemd/example.conf").read_text()
    helptext = cli.build_parser().format_help()
    for name in OPTIONS:
        assert re.search(rf"^\| `--{name}[ `]", readme, re.M), name
        assert f"--{name}" in helptext, name
        assert re.search(rf"^# {name} = ", example, re.M), name


def test_example_conf_provider_options_parse(tmp_path):
    """The example's provider lines, uncommented, make a valid configuration."""
    key = tmp_path / "key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    lines = [f"bucket = b-1\nmountpoint = {tmp_path}\n"]
    for line in (ROOT / "systemd/example.conf").read_text().splitlines():
        match = re.match(r"^# ([a-z-]+) = (.*)$", line)
        if match and match.group(1) in OPTIONS:
            if match.group(1) != "sse-c-key-file":  # SSE-C and --sse exclude each other
                lines.append(f"{match.group(1)} = {match.group(2)}\n")
    conf = tmp_path / "c.conf"
    conf.write_text("".join(lines))
    conf.chmod(0o600)
    made = cli.make_config(["--config", str(conf)])
    assert made.sse == "aws:kms" and made.sse_kms_key_id and made.storage_class == "STANDARD_IA"
    assert made.requester_pays and made.content_type == "auto" and made.proxy
    assert made.checksum == "sha256"
    both = cli.make_config(["--sse-c-key-file", str(key), "b-1", str(tmp_path)])
    assert both.sse_customer_key == KEY and repr(KEY) not in repr(both)
