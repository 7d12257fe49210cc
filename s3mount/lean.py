"""The lean request path: HEAD and LIST sent with a fraction of boto3's CPU.

boto3 spends about 1 ms of CPU on one HEAD (parameter validation, a dozen event hooks, the
response parser); on loopback, where the server answers in a fraction of that, this is what
bounds `stat` and `ls -l`, and, with small files, creating them.  `LeanS3Store` is an `S3Store`
that sends its hot small requests itself - HEAD, LIST, PutObject and GETs of up to `SMALL_GET`
bytes (random reads, a sequential run's first read) - signed with botocore's own
SigV4 signer (credentials read afresh for every attempt, so refreshed keys are used and no
signature outlives its request; a PUT's payload is signed too, as botocore signs it over http),
sent on a urllib3 pool (a botocore dependency), and answered by reading just the headers or XML
elements needed.  Everything else - larger ranged GETs, multipart uploads, copies, deletes, the
rare calls - stays on the boto3 client, and so does a PUT whose arguments this module cannot put
in headers (`PUT_HEADERS`).

Failures become the botocore exceptions boto3 would raise (a `ClientError` carrying the S3
error code and HTTP status, or a connection error), so `S3Store._call` maps them through the one
table in `s3.py`.  Retries follow botocore's standard mode: `--max-attempts` attempts in all,
on connection failures, timeouts, HTTP 500/502/503/504/429 and S3's throttling and transient
codes, with jittered exponential backoff (50 ms base, 1 s when throttled, at most 20 s).

`lean_blockers(config)` says why a mount cannot use this path; then `make_store` gives the plain
boto3 `S3Store`.  Only what this module implements passes: path-style addressing, SigV4, no
proxy, and every other option that changes requests at its default - an option it does not
know (say, one a provider needs) sends the whole mount through boto3 until it learns it.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import os
import random
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from typing import Any

import botocore.auth
import botocore.awsrequest
import botocore.exceptions
import botocore.httpsession
import urllib3

from s3mount import errors
from s3mount.capabilities import Capabilities
from s3mount.config import MountConfig
from s3mount.requestargs import RequestArgs
from s3mount.s3 import S3Store
from s3mount.s3client import build_session, parse_timestamp
from s3mount.store import ListPage, ObjectInfo

# MountConfig fields that do not change what a request carries, or that this path implements.
UNDERSTOOD_FIELDS = frozenset({
    "bucket", "prefix", "mountpoint", "endpoint_url", "region", "profile", "addressing_style",
    "signature_version", "foreground", "read_only", "allow_other", "uid", "gid", "file_mode",
    "dir_mode", "cache_dir", "log_level", "max_concurrency", "part_size", "single_put_limit",
    "metadata_ttl", "block_size", "max_readahead", "kernel_readahead", "cache_size",
    "connect_timeout", "read_timeout", "max_attempts", "conditional_writes", "trust_listings",
    "keys", "ca_bundle", "verify_ssl", "metrics_port", "request_path", "max_read_concurrency",
    "write_back",
    # Provider options that shape only what is written (boto3 sends every write):
    "sse", "sse_kms_key_id", "storage_class", "content_type", "checksum",
})
# As botocore's standard retry mode (botocore.retries.standard).
RETRY_STATUS = frozenset({500, 502, 503, 504, 429})
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException",
                             "PriorRequestNotComplete", "InternalError"})
THROTTLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "EC2ThrottledException"})
MAX_BACKOFF = 20.0
# PutObject's arguments (as boto3 names them) that a lean PUT sends, and their headers.  A PUT
# with any other argument (SSE-C keys, checksums) goes through boto3.
PUT_HEADERS = {
    "ContentType": "Content-Type", "IfNoneMatch": "If-None-Match", "IfMatch": "If-Match",
    "ServerSideEncryption": "x-amz-server-side-encryption",
    "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
    "StorageClass": "x-amz-storage-class"}
PUT_ARGUMENTS = frozenset(PUT_HEADERS) | {"Bucket", "Key", "Body", "Metadata"}
# A GET of up to this many bytes is sent here and, should its answer break off, sent again
# whole; a longer one goes through boto3, whose body reader S3Store resumes mid-body.
SMALL_GET = 1024 * 1024
META = "x-amz-meta-"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def lean_blockers(config: MountConfig) -> list[str]:
    """Why this mount's requests must go through boto3 (empty: the lean path serves them)."""
    reasons = []
    if config.request_path != "lean":
        reasons.append(f"--request-path {config.request_path}")
    if config.addressing_style != "path":
        reasons.append(f"--addressing-style {config.addressing_style}")
    if config.signature_version != "v4":
        reasons.append(f"--signature-version {config.signature_version}")
    scheme = urllib.parse.urlsplit(config.endpoint_url or "https://s3.amazonaws.com").scheme
    if scheme in urllib.request.getproxies():
        reasons.append(f"a proxy for {scheme} in the environment")
    defaults = type(config)(bucket="", prefix="", mountpoint="")
    for field in dataclasses.fields(config):
        if field.name not in UNDERSTOOD_FIELDS and (
                getattr(config, field.name) != getattr(defaults, field.name)):
            reasons.append(f"option {field.name}")
    return reasons


def make_store(client: Any, config: MountConfig, limiters: Any,
               capabilities: Capabilities | None = None) -> S3Store:
    """The mount's store: lean when the configuration allows it, else plain boto3."""
    kind = S3Store if lean_blockers(config) else LeanS3Store
    return kind(client, config.bucket, config.prefix, limiters.s3, RequestArgs(config),
                read_limiter=limiters.reads, capabilities=capabilities)


class Transport:
    """Signed requests on one urllib3 pool, retried as botocore's standard mode would."""

    def __init__(self, client: Any, config: MountConfig) -> None:
        self.endpoint = client.meta.endpoint_url.rstrip("/")
        self.region = client.meta.region_name or "us-east-1"
        # The same chain as the client's; refreshable credentials refresh on every read.
        self.credentials = build_session(config).get_credentials()
        timeout = urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout)
        tls: dict[str, Any] = {}
        if self.endpoint.startswith("https:"):
            if config.verify_ssl:
                tls = {"cert_reqs": "CERT_REQUIRED",
                       "ca_certs": config.ca_bundle or os.environ.get("AWS_CA_BUNDLE")
                       or botocore.httpsession.get_cert_path(True)}
            else:
                tls = {"cert_reqs": "CERT_NONE"}
        self.pool = urllib3.connection_from_url(
            self.endpoint, maxsize=config.max_concurrency + config.max_read_concurrency,
            block=False, timeout=timeout,
            retries=False, **tls)
        self.base_path = urllib.parse.urlsplit(self.endpoint).path
        self.max_attempts = max(1, config.max_attempts)

    def send(self, method: str, path: str, query: str = "", headers: dict[str, str] | None = None,
             body: bytes | None = None) -> urllib3.BaseHTTPResponse:
        """One request, retried while it fails transiently; a response with 2xx status, or the
        botocore exception boto3 would raise."""
        target = self.base_path + path + (f"?{query}" if query else "")
        payload_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        attempt = 0
        while True:
            attempt += 1
            throttled = False
            try:
                # Bodies as stored: no Content-Encoding undone (boto3 leaves gzip objects be).
                response = self.pool.urlopen(method, target, body=body, headers=self._sign(
                    method, target, headers or {}, payload_hash), preload_content=True,
                    decode_content=False, redirect=False, retries=False,
                    assert_same_host=False)
            except urllib3.exceptions.HTTPError as exc:
                if attempt >= self.max_attempts:
                    raise _connection_error(exc, self.endpoint) from None
            else:
                if response.status < 300:
                    return response
                error = _client_error(response, method)
                code = error.response["Error"]["Code"]
                throttled = code in THROTTLE_CODES
                retry = (response.status in RETRY_STATUS or throttled
                         or code in TRANSIENT_CODES)
                if not retry or attempt >= self.max_attempts:
                    raise error
            scale = 1.0 if throttled else 0.05
            time.sleep(random.random() * min(scale * 2 ** (attempt - 1), MAX_BACKOFF))

    def _sign(self, method: str, target: str, headers: dict[str, str],
              payload_hash: str = EMPTY_SHA256) -> dict[str, str]:
        """Headers of a request signed now, with the credentials as they are now."""
        credentials = self.credentials
        if credentials is None:
            raise botocore.exceptions.NoCredentialsError()
        signer = botocore.auth.S3SigV4Auth(credentials.get_frozen_credentials(), "s3",
                                           self.region)
        request = botocore.awsrequest.AWSRequest(method, self.endpoint + target, headers)
        request.headers["X-Amz-Content-SHA256"] = payload_hash
        request.context["payload_signing_enabled"] = True
        signer.add_auth(request)
        return dict(request.headers.items())


def _client_error(response: urllib3.BaseHTTPResponse,
                  operation: str) -> botocore.exceptions.ClientError:
    """The `ClientError` boto3 would raise for an error response (HEAD has no body: the code
    is the status, as botocore makes it)."""
    code, message = str(response.status), ""
    body = response.data
    if body:
        try:
            root = ET.fromstring(body)
            code = root.findtext("Code") or code
            message = root.findtext("Message") or ""
        except ET.ParseError:
            pass
    parsed = {"Error": {"Code": code, "Message": message},
              "ResponseMetadata": {"HTTPStatusCode": response.status}}
    return botocore.exceptions.ClientError(parsed, operation)


def _connection_error(exc: Exception, endpoint: str) -> botocore.exceptions.BotoCoreError:
    if isinstance(exc, urllib3.exceptions.ProtocolError) and str(exc.args[0]).startswith(
            "Connection broken"):  # urllib3's words for an answer whose body broke off
        return botocore.exceptions.ResponseStreamingError(error=exc)
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return botocore.exceptions.ReadTimeoutError(endpoint_url=endpoint, error=exc)
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return botocore.exceptions.ConnectTimeoutError(endpoint_url=endpoint, error=exc)
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return botocore.exceptions.EndpointConnectionError(endpoint_url=endpoint, error=exc)
    return botocore.exceptions.ConnectionClosedError(endpoint_url=endpoint, error=exc)


def quote_key(key: str) -> str:
    """A key in a request path, encoded as botocore encodes it (and so as signed)."""
    return urllib.parse.quote(key, safe="/~")


def _query(params: dict[str, str]) -> str:
    """A canonical query string: sorted, each part encoded as SigV4 wants it."""
    return "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                    for k, v in sorted(params.items()))


def parse_http_date(value: str) -> float:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return parse_timestamp(value).timestamp()


class LeanS3Store(S3Store):
    """`S3Store` whose HEAD, LIST, PutObject and small ranged GETs take the lean path.  Larger
    GETs stay on boto3, whose body reader S3Store resumes from the byte reached when a
    connection breaks mid-body."""

    def __init__(self, client: Any, bucket: str, prefix: str, limiter: Any,
                 args: RequestArgs, **kwargs: Any) -> None:
        super().__init__(client, bucket, prefix, limiter, args, **kwargs)
        self.transport = Transport(client, args.config)
        self.bucket_path = "/" + urllib.parse.quote(bucket, safe="")

    def _path(self, key: str) -> str:
        return self._object_path(self._full(key))

    def _object_path(self, full_key: str) -> str:
        """The request path of a key as boto3 names it (the mount's prefix included)."""
        return f"{self.bucket_path}/{quote_key(full_key)}"

    async def head(self, key: str, ahead: bool = False) -> ObjectInfo | None:
        def fetch() -> ObjectInfo:
            response = self.transport.send("HEAD", self._path(key))
            headers = response.headers
            # Names after the prefix keep their case, as botocore's parser keeps it.
            metadata = {name[len(META):]: value for name, value in headers.items()
                        if name[:len(META)].lower() == META}
            return ObjectInfo(key, int(headers.get("Content-Length", 0)),
                              headers.get("ETag", "").strip('"'),
                              parse_http_date(headers.get("Last-Modified", "")), metadata)
        try:
            info: ObjectInfo = await self._call(f"HEAD {key}", fetch, self._budget(ahead))
        except errors.NotFound:
            return None
        return info

    def _get_body(self, key: str, kwargs: dict[str, Any], start: int, end: int) -> bytes:
        if end - start > SMALL_GET or set(kwargs) - {"Bucket", "Key", "Range", "IfMatch"}:
            return super()._get_body(key, kwargs, start, end)
        headers = {"Range": kwargs["Range"]}
        if "IfMatch" in kwargs:
            headers["If-Match"] = kwargs["IfMatch"]
        try:
            return bytes(self.transport.send("GET", self._object_path(kwargs["Key"]),
                                             headers=headers).data)
        except botocore.exceptions.ResponseStreamingError as exc:
            raise errors.RemoteIO(f"GET {key}: the answer broke off on each of "
                                  f"{self.transport.max_attempts} attempts: {exc}") from None

    def _put_object(self, **kwargs: Any) -> dict[str, Any]:
        headers = put_headers(kwargs)
        if headers is None:
            return super()._put_object(**kwargs)
        response = self.transport.send("PUT", self._object_path(kwargs["Key"]),
                                       headers=headers, body=kwargs["Body"])
        return {"ETag": response.headers.get("ETag", "")}

    async def list_page(self, prefix: str, delimiter: str | None, token: str | None = None,
                        max_keys: int = 1000, start_after: str | None = None) -> ListPage:
        if self.capabilities.list_v2 is False:  # ListObjects V1 stays with boto3
            return await super().list_page(prefix, delimiter, token, max_keys, start_after)
        params = {"list-type": "2", "prefix": self._full(prefix), "max-keys": str(max_keys),
                  "encoding-type": "url"}
        if delimiter:
            params["delimiter"] = delimiter
        if token:
            params["continuation-token"] = token
        if start_after is not None:
            params["start-after"] = self._full(start_after)
        query = _query(params)
        cut = len(self.prefix)

        def fetch() -> ListPage:
            body = self.transport.send("GET", self.bucket_path, query).data
            return parse_listing(body, cut)

        return await self._call(f"LIST {prefix}", fetch)


def put_headers(kwargs: dict[str, Any]) -> dict[str, str] | None:
    """PutObject's arguments as HTTP headers; None when one of them has no header here, or a
    metadata value is not printable ASCII (which only boto3's encoding would carry)."""
    if not PUT_ARGUMENTS.issuperset(kwargs):
        return None
    headers = {PUT_HEADERS[name]: str(value) for name, value in kwargs.items()
               if name in PUT_HEADERS}
    for name, value in (kwargs.get("Metadata") or {}).items():
        if not (name.isascii() and value.isascii() and name.isprintable()
                and value.isprintable()):
            return None
        headers[META + name] = value
    return headers


def parse_listing(body: bytes, cut: int) -> ListPage:
    """A ListObjectsV2 answer (url-encoded keys) as a `ListPage`, keys `cut` of their prefix."""
    root = ET.fromstring(body)
    ns = root.tag[:root.tag.find("}") + 1]  # S3's namespace, or another server's, or none
    encoded = root.findtext(f"{ns}EncodingType") == "url"

    def name(text: str | None) -> str:
        text = text or ""
        return urllib.parse.unquote_plus(text) if encoded else text

    objects = []
    for item in root.iterfind(f"{ns}Contents"):
        objects.append(ObjectInfo(
            name(item.findtext(f"{ns}Key"))[cut:], int(item.findtext(f"{ns}Size") or 0),
            (item.findtext(f"{ns}ETag") or "").strip('"'),
            parse_timestamp(item.findtext(f"{ns}LastModified") or "").timestamp(), None))
    prefixes = [name(p.findtext(f"{ns}Prefix"))[cut:]
                for p in root.iterfind(f"{ns}CommonPrefixes")]
    truncated = root.findtext(f"{ns}IsTruncated") == "true"
    token = root.findtext(f"{ns}NextContinuationToken") if truncated else None
    return ListPage(objects, prefixes, token or None)
