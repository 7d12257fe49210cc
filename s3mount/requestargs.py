"""A mount's provider options as the extra arguments of each kind of S3 request: the one place
that decides which request carries what.

- Server-side encryption with S3's keys (`--sse AES256|aws:kms`, `--sse-kms-key-id`) and the
  storage class go on every request that makes an object: PUT, CreateMultipartUpload and
  CopyObject (a copy that does not name them gets the bucket's defaults).  Parts and the
  completion of a multipart upload inherit them from its creation, and S3 refuses them there.
- SSE-C (`--sse-c-key-file`) goes on every request that reads or writes object bytes: PUT, GET,
  HEAD, CreateMultipartUpload, UploadPart, UploadPartCopy, CompleteMultipartUpload and
  CopyObject, which also name it as their source's key (every object of the mount is encrypted
  with the one key).
- The content type (`--content-type auto|TYPE`) goes on what writes file data: PUT,
  CreateMultipartUpload, and CopyObject when it replaces the metadata (otherwise S3 keeps the
  source's).  `auto` guesses from the file name with `mimetypes`.
- Checksums (`--checksum sha256|crc32c`) are computed here, over the bytes sent, and go in
  `x-amz-checksum-*` headers of PUT and UploadPart (never as trailers, which many services
  reject); a multipart upload is created with the algorithm, and its completion lists each
  part's checksum.
- Requester pays is a header on every request, added by `s3client.build_client` from
  `every_request_headers`, so even requests whose model lacks it (HEAD of the bucket) carry it.
`headers_for_read` gives the same as raw HTTP headers, for requests sent without boto3.
The checks of the options' values (argparse types, `check_options`) live here too.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import mimetypes
import re
import urllib.parse
from typing import Any

from s3mount.config import MountConfig
from s3mount.errors import ConfigError

SSE_MODES = ("AES256", "aws:kms")
CHECKSUMS = ("off", "sha256", "crc32c")
UNREADABLE_CLASSES = {"GLACIER", "DEEP_ARCHIVE"}  # a GET needs a restore first
DEFAULT_TYPE = "application/octet-stream"  # what `auto` gives a name mimetypes does not know


# -- the values the command line accepts (argparse types) -----------------------------------------


def storage_class(text: str) -> str:
    if not re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a storage class such as STANDARD_IA")
    return text


def content_type(text: str) -> str:
    if text != "auto" and not re.fullmatch(r"[\w.+-]+/[\w.+-]+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is neither auto nor a type such as text/plain")
    return text


def proxy_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not a proxy URL such as "
                                         "http://proxy.example:3128")
    return text


def check_options(config: MountConfig) -> None:
    """Refuse contradictory or unusable provider options at start (exit status 2)."""
    if config.sse_kms_key_id and config.sse != "aws:kms":
        raise ConfigError("--sse-kms-key-id needs --sse aws:kms", status=2)
    if config.sse and config.sse_customer_key is not None:
        raise ConfigError("--sse and --sse-c-key-file contradict each other: an object is "
                          "encrypted with S3's keys or with yours, not both", status=2)
    if config.storage_class in UNREADABLE_CLASSES:
        raise ConfigError(f"--storage-class {config.storage_class}: objects in it cannot be "
                          "read without a restore, so a mount cannot use them", status=2)
    if config.checksum == "crc32c" and importlib.util.find_spec("awscrt") is None:
        raise ConfigError("--checksum crc32c needs the awscrt package (pip install awscrt); "
                          "--checksum sha256 needs nothing more", status=2)


def _crc32c(data: bytes) -> bytes:
    from awscrt import checksums  # optional: only --checksum crc32c needs it

    return checksums.crc32c(data).to_bytes(4, "big")


class RequestArgs:
    """The extra keyword arguments of each boto3 call, for one mount's options."""

    def __init__(self, config: MountConfig) -> None:
        self.config = config
        key = config.sse_customer_key
        self._sse_c: dict[str, Any] = {}
        self._source_sse_c: dict[str, Any] = {}
        if key is not None:
            self._sse_c = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key}
            self._source_sse_c = {"CopySourceSSECustomerAlgorithm": "AES256",
                                  "CopySourceSSECustomerKey": key}
        self._made: dict[str, Any] = {}  # what a request making an object names
        if config.sse:
            self._made["ServerSideEncryption"] = config.sse
        if config.sse_kms_key_id:
            self._made["SSEKMSKeyId"] = config.sse_kms_key_id
        if config.storage_class:
            self._made["StorageClass"] = config.storage_class
        self.algorithm = {"sha256": "SHA256", "crc32c": "CRC32C"}.get(config.checksum)

    # -- what is common to many requests --------------------------------------------------------

    def every_request_headers(self) -> dict[str, str]:
        return {"x-amz-request-payer": "requester"} if self.config.requester_pays else {}

    def headers_for_read(self) -> dict[str, str]:
        """GET and HEAD's extra HTTP headers (LIST needs only `every_request_headers`)."""
        headers = self.every_request_headers()
        key = self.config.sse_customer_key
        if key is not None:
            headers.update({
                "x-amz-server-side-encryption-customer-algorithm": "AES256",
                "x-amz-server-side-encryption-customer-key": base64.b64encode(key).decode(),
                "x-amz-server-side-encryption-customer-key-MD5":
                    base64.b64encode(hashlib.md5(key).digest()).decode()})
        return headers

    def content_type(self, key: str) -> str | None:
        """The type an object of this key is given (None: S3's default)."""
        wanted = self.config.content_type
        if wanted != "auto":
            return wanted
        guessed, _ = mimetypes.guess_type(key.rsplit("/", 1)[-1], strict=False)
        return guessed or DEFAULT_TYPE

    def retypes(self, src: str, dst: str) -> bool:
        """Whether a copy from `src` to `dst` must set a new type (the names' types differ)."""
        return self.config.content_type == "auto" and self.content_type(src) != \
            self.content_type(dst)

    def checksum(self, body: bytes) -> dict[str, str]:
        """The checksum header of a body (PUT, UploadPart), in the form S3 wants: base64."""
        if self.algorithm is None:
            return {}
        digest = hashlib.sha256(body).digest() if self.algorithm == "SHA256" else _crc32c(body)
        return {"ChecksumAlgorithm": self.algorithm,
                f"Checksum{self.algorithm}": base64.b64encode(digest).decode()}

    def part_checksum(self, response: dict[str, Any]) -> str | None:
        """The checksum of a part, as the server reported it (UploadPartCopy, ListParts)."""
        return None if self.algorithm is None else response.get(f"Checksum{self.algorithm}")

    # -- per operation --------------------------------------------------------------------------

    def read(self) -> dict[str, Any]:
        """GET and HEAD of an object."""
        return dict(self._sse_c)

    def put(self, key: str, body: bytes, file_data: bool) -> dict[str, Any]:
        """PutObject; `file_data`: a file's bytes (not a marker, symlink or special file)."""
        args = {**self._made, **self._sse_c, **self.checksum(body)}
        content_type = self.content_type(key) if file_data else None
        if content_type:
            args["ContentType"] = content_type
        return args

    def create_multipart(self, key: str) -> dict[str, Any]:
        args = {**self._made, **self._sse_c}
        content_type = self.content_type(key)
        if content_type:
            args["ContentType"] = content_type
        if self.algorithm:
            args["ChecksumAlgorithm"] = self.algorithm
        return args

    def part(self, body: bytes) -> dict[str, Any]:
        return {**self._sse_c, **self.checksum(body)}

    def part_copy(self) -> dict[str, Any]:
        return {**self._sse_c, **self._source_sse_c}

    def complete(self) -> dict[str, Any]:
        return dict(self._sse_c)

    def part_entry(self, number: int, etag: str, checksum: str | None) -> dict[str, Any]:
        """One part of CompleteMultipartUpload's list."""
        entry: dict[str, Any] = {"PartNumber": number, "ETag": f'"{etag}"'}
        if self.algorithm and checksum:
            entry[f"Checksum{self.algorithm}"] = checksum
        return entry

    def copy(self, dst: str, replaces_metadata: bool) -> dict[str, Any]:
        """CopyObject (and boto3's managed multipart copy): the copy is a new object."""
        args = {**self._made, **self._sse_c, **self._source_sse_c}
        content_type = self.content_type(dst) if replaces_metadata else None
        if content_type:
            args["ContentType"] = content_type
        if self.algorithm:
            args["ChecksumAlgorithm"] = self.algorithm
        return args
