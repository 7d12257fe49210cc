"""`ObjectStore` over boto3: every request of a running mount, on the client `s3client.py` builds.

Every call runs through `run_blocking`: GETs of object bytes and HEADs made ahead of a reader
(`head(key, ahead=True)`, ls -l's sweep) on the `reads` limiter, everything else on the `s3`
one; botocore's connection pool holds both.  Retries and timeouts are botocore's
own, bounded by the config; after them a call fails with an `FsError` from the one table below
(`map_client_error`).
Keys given to and returned by this class are relative to the mount's prefix.  `RequestStats`
counts every call, its bytes and its failures for `s3mount status` and the stop progress; its
counters change only on the trio thread, between awaits.
Credentials are never logged (botocore's own loggers, which print signed headers at DEBUG, stay
at WARNING).
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, BinaryIO

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)

from s3mount import errors
from s3mount.bigcopy import multipart_copy
from s3mount.capabilities import Capabilities
from s3mount.config import MountConfig
from s3mount.requestargs import RequestArgs
from s3mount.store import EXPECT_ABSENT, ListPage, ObjectInfo
from s3mount.workers import run_blocking

log = logging.getLogger(__name__)

MAX_COPY_OBJECT = 5 * 1024**3  # CopyObject's limit; larger copies go multipart
UPLOAD_KINDS = frozenset({"PUT", "PART", "PART-COPY", "COMPLETE-MPU"})
BODY_PIECE = 1024 * 1024  # a GET's body is read in pieces, so a break loses at most one
# A GET's body broke off: reset, read timeout or short body (botocore retries none of these).
BODY_BROKEN = (HTTPClientError, IncompleteReadError)

# S3 error code (or HTTP status) -> the FsError it becomes.  The one table.
ERROR_TABLE: dict[str, type[errors.FsError]] = {
    "NoSuchKey": errors.NotFound,
    "404": errors.NotFound,
    "NotFound": errors.NotFound,
    "NoSuchBucket": errors.NotFound,
    "NoSuchUpload": errors.NotFound,
    "AccessDenied": errors.AccessDenied,
    "403": errors.AccessDenied,
    "Forbidden": errors.AccessDenied,
    "InvalidAccessKeyId": errors.AccessDenied,
    "SignatureDoesNotMatch": errors.AccessDenied,
    "RequestTimeTooSkewed": errors.AccessDenied,
    "PreconditionFailed": errors.Stale,
    "412": errors.Stale,
    "KeyTooLongError": errors.NameTooLong,
    "EntityTooLarge": errors.FileTooBig,
    "InvalidRange": errors.InvalidArgument,
    "InvalidArgument": errors.InvalidArgument,
    "NotImplemented": errors.NotSupported,
}


def map_client_error(exc: Exception, what: str) -> errors.FsError:
    """Turn any botocore failure into the FsError its code calls for (EIO when unknown)."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        cls = ERROR_TABLE.get(code) or ERROR_TABLE.get(status) or errors.RemoteIO
        return cls(f"{what}: {code or status} {err.get('Message', '')}".strip())
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return errors.AccessDenied(f"{what}: no usable credentials ({exc})")
    if isinstance(exc, (EndpointConnectionError, ConnectionError)):
        return errors.RemoteIO(f"{what}: cannot reach the endpoint ({exc})")
    if isinstance(exc, BotoCoreError):
        return errors.RemoteIO(f"{what}: {exc}")
    raise exc


def _condition(expect: str | None) -> dict[str, str]:
    """Conditional-write headers: "*" = the key must not exist, an ETag = it must still be
    that version, None = unconditional."""
    if expect is None:
        return {}
    if expect == EXPECT_ABSENT:
        return {"IfNoneMatch": "*"}
    return {"IfMatch": f'"{expect}"'}


def _next_marker(resp: dict[str, Any]) -> str | None:
    """Where a truncated ListObjects (V1) page goes on: its NextMarker, which servers send only
    with a delimiter, else the last key or common prefix it returned."""
    if resp.get("NextMarker"):
        return str(resp["NextMarker"])
    last = [o["Key"] for o in resp.get("Contents", [])] + [
        p["Prefix"] for p in resp.get("CommonPrefixes", [])]
    return max(last) if last else None


def part_snapshot(path: str, offset: int, length: int) -> BinaryIO:
    """A private copy of bytes [offset, offset + length) of a staging file (fewer where it
    was truncated), in an unnamed file beside it, to send a part from.  The staging file may
    be written or truncated while the part is in flight, and the part must stay the bytes of
    this moment (SigV4 hashes the body in a pass before sending it); in memory instead, 10
    parts of 8 MiB in flight were 80 MiB of the daemon's RSS.  The copy vanishes when closed,
    or with the daemon."""
    copy = tempfile.TemporaryFile(dir=os.path.dirname(path))
    try:
        with open(path, "rb") as source:
            copied = 0
            while copied < length:
                try:
                    n = os.copy_file_range(source.fileno(), copy.fileno(), length - copied,
                                           offset + copied)
                except OSError:  # a filesystem that cannot: through user space
                    n = copy.write(os.pread(source.fileno(), min(length - copied, BODY_PIECE),
                                            offset + copied))
                if n == 0:
                    break
                copied += n
        copy.seek(0)
        return copy
    except BaseException:
        copy.close()
        raise


def _read_back(body: BinaryIO) -> bytes:
    data = body.read()
    body.seek(0)
    return data


def _etag(response: dict[str, Any]) -> str:
    return str(response.get("ETag", "")).strip('"')


class RequestStats:
    """What the store has asked of S3 so far: requests by kind, bytes, failures, in flight."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.bytes_in = 0  # object bytes received (GET)
        self.bytes_out = 0  # object bytes sent (PUT, parts)
        self.in_flight = 0
        self.uploads_in_flight = 0
        self.last_error = ""

    def as_dict(self) -> dict[str, Any]:
        return {"requests": sum(self.requests.values()), "by_kind": dict(self.requests),
                "errors": sum(self.errors.values()), "errors_by_kind": dict(self.errors),
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "in_flight": self.in_flight, "uploads_in_flight": self.uploads_in_flight,
                "last_error": self.last_error}


class S3Store:
    """An S3 bucket, or a prefix of one, as an `ObjectStore`."""

    def __init__(self, client: Any, bucket: str, prefix: str, limiter: Any,
                 args: RequestArgs | None = None, *, read_limiter: Any = None,
                 capabilities: Capabilities | None = None) -> None:
        self.client = client
        self.args = args or RequestArgs(MountConfig(bucket, prefix, ""))
        self.capabilities = capabilities or Capabilities()
        self.part_copies = True  # False: UploadPartCopy refused, parts are read and sent
        # Checksums of the parts of unfinished uploads: (upload id, number) -> base64.
        self._part_sums: dict[tuple[str, int], str] = {}
        self.bucket = bucket
        self.prefix = prefix
        self.limiter = limiter
        self.read_limiter = read_limiter or limiter  # GETs of object bytes, HEADs ahead
        self.stats = RequestStats()

    async def _call(self, what: str, fn: Callable[..., Any], limiter: Any = None,
                    **kwargs: Any) -> Any:
        kind = what.split(" ", 1)[0]
        upload = kind in UPLOAD_KINDS
        stats = self.stats
        stats.requests[kind] += 1
        stats.in_flight += 1
        stats.uploads_in_flight += upload
        try:
            return await run_blocking(limiter or self.limiter, fn, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            error = map_client_error(exc, what)
            if not isinstance(error, errors.NotFound):  # a missing name is an answer
                stats.errors[kind] += 1
                stats.last_error = str(error)
            raise error from None
        finally:
            stats.in_flight -= 1
            stats.uploads_in_flight -= upload

    def _budget(self, ahead: bool) -> Any:
        """The slots a HEAD waits for: one made ahead of its reader (`ls -l`'s sweep) takes the
        read budget, like read-ahead GETs, never the slots a stat or an upload needs."""
        return self.read_limiter if ahead else self.limiter

    def _full(self, key: str) -> str:
        return self.prefix + key

    async def check(self) -> None:
        """Fail with an FsError when the bucket is missing, forbidden or unreachable."""
        await self._call(f"bucket {self.bucket}", self.client.head_bucket, Bucket=self.bucket)

    async def head(self, key: str, ahead: bool = False) -> ObjectInfo | None:
        try:
            resp = await self._call(f"HEAD {key}", self.client.head_object, self._budget(ahead),
                                    Bucket=self.bucket, Key=self._full(key), **self.args.read())
        except errors.NotFound:
            return None
        return ObjectInfo(key, int(resp["ContentLength"]), _etag(resp),
                          resp["LastModified"].timestamp(), dict(resp.get("Metadata", {})))

    async def list_page(self, prefix: str, delimiter: str | None, token: str | None = None,
                        max_keys: int = 1000, start_after: str | None = None) -> ListPage:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._full(prefix),
                                  "MaxKeys": max_keys}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        v2 = self.capabilities.list_v2
        if token:
            kwargs["ContinuationToken" if v2 else "Marker"] = token
        elif start_after is not None:
            kwargs["StartAfter" if v2 else "Marker"] = self._full(start_after)
        listing = self.client.list_objects_v2 if v2 else self.client.list_objects
        resp = await self._call(f"LIST {prefix}", listing, **kwargs)
        cut = len(self.prefix)
        objects = [ObjectInfo(o["Key"][cut:], int(o["Size"]), _etag(o),
                              o["LastModified"].timestamp(), None)
                   for o in resp.get("Contents", [])]
        prefixes = [p["Prefix"][cut:] for p in resp.get("CommonPrefixes", [])]
        next_token = None
        if resp.get("IsTruncated"):
            next_token = resp.get("NextContinuationToken") if v2 else _next_marker(resp)
        return ListPage(objects, prefixes, next_token)

    def _range_args(self, key: str, start: int, end: int, etag: str | None) -> dict[str, Any]:
        """GetObject's arguments for bytes [start, end), pinned to `etag` when given."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key),
                                  "Range": f"bytes={start}-{end - 1}", **self.args.read()}
        if etag:
            kwargs["IfMatch"] = f'"{etag}"'
        return kwargs

    async def get_range(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        """Bytes [start, end) of the object; `Stale` when it no longer has `etag`."""
        kwargs = self._range_args(key, start, end, etag)
        data: bytes = await self._call(f"GET {key}", self._get_body, self.read_limiter,
                                       key=key, kwargs=kwargs, start=start, end=end)
        self.stats.bytes_in += len(data)
        return data

    def _get_body(self, key: str, kwargs: dict[str, Any], start: int, end: int) -> bytes:
        """GetObject's body, resumed from the byte reached when the connection breaks in the
        middle of it (botocore retries a request only until its headers arrive), up to the
        client's max_attempts in all.  A resumed request is pinned (If-Match) to the ETag of
        the first answer, so two versions of the object are never mixed.  In a worker thread.
        """
        attempts = max(1, int((self.client.meta.config.retries or {}).get("max_attempts", 3)))
        pieces: list[bytes] = []
        reached = start
        for attempt in range(1, attempts + 1):
            resp = self.client.get_object(**kwargs)
            if "IfMatch" not in kwargs and resp.get("ETag"):
                kwargs = dict(kwargs, IfMatch=resp["ETag"])
            body = resp["Body"]  # botocore's: it turns urllib3's errors into its own
            try:
                while piece := body.read(BODY_PIECE):
                    pieces.append(piece)
                    reached += len(piece)
            except BODY_BROKEN as exc:
                if reached >= end or attempt == attempts:
                    raise errors.RemoteIO(f"GET {key}: the answer broke off at byte {reached} "
                                          f"of {start}-{end}, {attempt} attempts: {exc}") from None
                log.info("GET %s: the answer broke off at byte %d (%s); resuming from there",
                         key, reached, exc)
                kwargs = dict(kwargs, Range=f"bytes={reached}-{end - 1}")
                continue
            finally:
                body.close()
            break
        return b"".join(pieces)

    async def put(self, key: str, body: bytes, metadata: dict[str, str],
                  content_type: str | None = None) -> str:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key), "Body": body,
                                  "Metadata": metadata, **self.args.put(key, body, False)}
        if content_type:
            kwargs["ContentType"] = content_type
        etag = _etag(await self._call(f"PUT {key}", self._put_object, **kwargs))
        self.stats.bytes_out += len(body)
        return etag

    def _put_object(self, **kwargs: Any) -> dict[str, Any]:
        """PutObject, its arguments as boto3's; in a worker thread."""
        return dict(self.client.put_object(**kwargs))

    async def put_file(self, key: str, path: str, size: int, metadata: dict[str, str],
                       expect: str | None = None) -> str:
        """PUT the first `size` bytes of a file; `expect` makes it conditional (see store)."""
        def upload() -> dict[str, Any]:
            with open(path, "rb") as f:
                body = f.read(size)
            return self._put_object(Bucket=self.bucket, Key=self._full(key), Body=body,
                                    Metadata=metadata, **_condition(expect),
                                    **self.args.put(key, body, True))

        etag = _etag(await self._call(f"PUT {key}", upload))
        self.stats.bytes_out += size
        return etag

    async def copy(self, src: str, dst: str, size: int, metadata: dict[str, str] | None,
                   expect: str | None = None) -> str:
        """Server-side copy; `metadata` replaces the source's when given; `expect` (an ETag)
        makes it conditional on the source still being that version (`Stale` otherwise)."""
        if metadata is None and src != dst and self.args.retypes(src, dst):
            # A new name of another type (--content-type auto): the copy gets the new type,
            # which only a copy replacing the metadata can set.
            info = await self.head(src)
            metadata = info.metadata if info is not None else None
        if size > MAX_COPY_OBJECT:
            return await multipart_copy(self, src, dst, size, metadata, expect)
        extra = self.args.copy(dst, metadata is not None)
        if metadata is not None:
            extra.update(Metadata=metadata, MetadataDirective="REPLACE")
        if expect:
            extra["CopySourceIfMatch"] = f'"{expect}"'
        resp = await self._call(f"COPY {src} -> {dst}", self.client.copy_object,
                                CopySource={"Bucket": self.bucket, "Key": self._full(src)},
                                Bucket=self.bucket, Key=self._full(dst), **extra)
        return _etag(resp.get("CopyObjectResult", {}))

    async def delete(self, key: str) -> None:
        await self._call(f"DELETE {key}", self.client.delete_object, Bucket=self.bucket,
                         Key=self._full(key))

    async def delete_many(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._full(k)} for k in keys[start:start + 1000]]
            resp = await self._call("DELETE (batch)", self.client.delete_objects,
                                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            failed = resp.get("Errors") or []
            if failed:
                raise errors.RemoteIO(f"could not delete {len(failed)} keys, first: {failed[0]}")

    async def create_multipart(self, key: str, metadata: dict[str, str]) -> str:
        resp = await self._call(f"CREATE-MPU {key}", self.client.create_multipart_upload,
                                Bucket=self.bucket, Key=self._full(key), Metadata=metadata,
                                **self.args.create_multipart(key))
        return str(resp["UploadId"])

    async def upload_part(self, key: str, upload_id: str, number: int, path: str, offset: int,
                          length: int) -> str:
        return await self._send_part(key, upload_id, number,
                                     lambda: part_snapshot(path, offset, length), length)

    async def _send_part(self, key: str, upload_id: str, number: int,
                         body_of: Callable[[], BinaryIO], length: int) -> str:
        def upload() -> dict[str, Any]:
            with body_of() as body:
                # Only a checksum needs the part's bytes in memory.
                extra = self.args.part(_read_back(body) if self.args.algorithm else b"")
                resp = self.client.upload_part(Bucket=self.bucket, Key=self._full(key),
                                               UploadId=upload_id, PartNumber=number,
                                               Body=body, **extra)
            return {**resp, **extra}  # the checksum sent is the part's

        resp = await self._call(f"PART {number} of {key}", upload)
        self._remember_checksum(upload_id, number, resp)
        etag = _etag(resp)
        self.stats.bytes_out += length
        return etag

    async def upload_part_copy(self, key: str, upload_id: str, number: int, source: str,
                               start: int, end: int, source_etag: str | None) -> str:
        """Part `number` copied server-side from bytes [start, end) of object `source`; where
        the server has no UploadPartCopy, or cannot copy this source (SeaweedFS refuses a copy
        from an SSE-C source), those bytes are fetched and sent instead."""
        if not (self.capabilities.upload_part_copy and self.part_copies):
            return await self._upload_part_fetched(key, upload_id, number, source, start, end,
                                                   source_etag)
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket, "Key": self._full(key), "UploadId": upload_id,
            "PartNumber": number, "CopySource": {"Bucket": self.bucket, "Key": self._full(source)},
            "CopySourceRange": f"bytes={start}-{end - 1}", **self.args.part_copy()}
        if source_etag:
            kwargs["CopySourceIfMatch"] = f'"{source_etag}"'
        try:
            resp = await self._call(f"PART-COPY {number} of {key}",
                                    self.client.upload_part_copy, **kwargs)
        except errors.NotSupported:
            if not self.args.config.sse_customer_key:
                raise
            if self.part_copies:
                log.info("the endpoint cannot copy parts of SSE-C objects: such parts are read "
                         "and sent again")
            self.part_copies = False
            return await self.upload_part_copy(key, upload_id, number, source, start, end,
                                               source_etag)
        result = resp.get("CopyPartResult", {})
        self._remember_checksum(upload_id, number, result)
        return _etag(result)

    def _remember_checksum(self, upload_id: str, number: int, resp: dict[str, Any]) -> None:
        checksum = self.args.part_checksum(resp)
        if checksum:
            self._part_sums[(upload_id, number)] = checksum

    async def _part_checksums(self, key: str, upload_id: str,
                              numbers: list[int]) -> dict[int, str | None]:
        """Each part's checksum for the completion: as sent, or as the server lists it (parts
        sent by an earlier run of the mount, before a crash)."""
        if self.args.algorithm is None:
            return {}
        sums = {n: self._part_sums.pop((upload_id, n), None) for n in numbers}
        if any(v is None for v in sums.values()):
            marker = 0
            while True:
                resp = await self._call(f"LIST-PARTS {key}", self.client.list_parts,
                                        Bucket=self.bucket, Key=self._full(key),
                                        UploadId=upload_id, PartNumberMarker=marker,
                                        **self.args.read())
                for part in resp.get("Parts", []):
                    if sums.get(part["PartNumber"], "") is None:
                        sums[part["PartNumber"]] = self.args.part_checksum(part)
                if not resp.get("IsTruncated"):
                    break
                marker = int(resp["NextPartNumberMarker"])
        return sums

    async def _upload_part_fetched(self, key: str, upload_id: str, number: int, source: str,
                                   start: int, end: int, source_etag: str | None) -> str:
        data = await self.get_range(source, start, end, source_etag)
        return await self._send_part(key, upload_id, number, lambda: io.BytesIO(data),
                                     len(data))

    async def complete_multipart(self, key: str, upload_id: str,
                                 parts: list[tuple[int, str]], expect: str | None = None) -> str:
        sums = await self._part_checksums(key, upload_id, [n for n, _ in parts])
        listing = [self.args.part_entry(n, e, sums.get(n)) for n, e in sorted(parts)]
        resp = await self._call(f"COMPLETE-MPU {key}", self.client.complete_multipart_upload,
                                Bucket=self.bucket, Key=self._full(key), UploadId=upload_id,
                                MultipartUpload={"Parts": listing}, **_condition(expect),
                                **self.args.complete())
        return _etag(resp)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        for number in [n for (u, n) in self._part_sums if u == upload_id]:
            del self._part_sums[(upload_id, number)]
        await self._call(f"ABORT-MPU {key}", self.client.abort_multipart_upload,
                         Bucket=self.bucket, Key=self._full(key), UploadId=upload_id)
