"""Capability probing at mount: what the endpoint supports, found by trying it, once.

`probe` runs before the filesystem starts, on the mount's boto3 client (synchronously, like the
bucket check), and returns a `Capabilities`.  It never guesses from a server's name.  About a
dozen small requests, all under one scratch prefix `PREFIX/.s3mount-meta/probe-RANDOM/`: that
name is s3mount's own (`keys.RESERVED_NAME`), never listed nor looked up, so the scratch keys
stay invisible on the mount even when deleting them fails.  A read-only mount writes nothing:
it probes only the listing, and the rest stays "not probed" (None).

Each check decides from what the server did, never from an error it merely happens to send:
a condition is honoured when the request that breaks it is refused with 412 (or 409); it is
ignored when that request succeeds; anything else (400, 501) counts as not supported.
"""

from __future__ import annotations

import concurrent.futures
import logging
import secrets
from collections.abc import Callable
from typing import Any

from s3mount.capabilities import Capabilities
from s3mount.keys import RESERVED_NAME, deletion_order
from s3mount.requestargs import RequestArgs

log = logging.getLogger(__name__)

NO_ETAG = '"00000000000000000000000000000000"'  # matches no object
PROBE_MODE = "16877"  # drwxr-xr-x, as a marker's mode header


def probe(client: Any, bucket: str, prefix: str, read_only: bool,
          args: RequestArgs | None = None) -> Capabilities:
    """What the endpoint of `bucket` supports, as seen from keys under `prefix`; the probes
    carry the mount's provider options (`args`), as its own requests do."""
    scratch = f"{prefix}{RESERVED_NAME}/probe-{secrets.token_hex(6)}/"
    prober = Prober(client, bucket, scratch, f"{prefix}{RESERVED_NAME}/", args)
    if read_only:
        return Capabilities(conditional_put=None, marker_metadata=None,
                            copy_source_if_match=None, upload_part_copy=None,
                            list_v2=prober.lists_v2(), checksums=None)
    # The checks touch keys of their own, so they run side by side: a mount starts after two
    # rounds of requests instead of a dozen.  The copies read the object conditional_put
    # writes (or `source` makes), so they go second.
    try:
        with concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="probe") as pool:
            first = {check.__name__: pool.submit(prober.attempt, check) for check in (
                prober.conditional_put, prober.marker_metadata, prober.checksums)}
            list_v2 = pool.submit(prober.lists_v2)
            for done in concurrent.futures.as_completed(first.values()):
                done.result()
            prober.attempt(prober.source)
            second = {check.__name__: pool.submit(prober.attempt, check) for check in (
                prober.copy_source_if_match, prober.upload_part_copy)}
            found = {name: future.result() for name, future in {**first, **second}.items()}
        return Capabilities(list_v2=list_v2.result(), **found)
    finally:
        prober.clean_up()


class Prober:
    def __init__(self, client: Any, bucket: str, scratch: str, top: str,
                 args: RequestArgs | None = None) -> None:
        self.client = client
        self.args = args
        self.bucket = bucket
        self.scratch = scratch
        self.top = top  # the folder of every probe's scratch keys, removed when empty
        self.made: set[str] = set()
        self.error = client.exceptions.ClientError

    def attempt(self, check: Callable[[], bool]) -> bool | None:
        """A check's answer; None when something else went wrong (no rights, no network)."""
        try:
            return check()
        except Exception as exc:  # noqa: BLE001 - a failed probe must never fail the mount
            log.info("capability probe %s did not finish: %s", check.__name__, exc)
            return None

    def _put(self, name: str, **kwargs: Any) -> dict[str, Any]:
        key = self.scratch + name
        extra = self.args.put(key, kwargs.get("Body", b""), False) if self.args else {}
        if "ChecksumAlgorithm" in kwargs:  # the checksum probe sends its own
            extra = {k: v for k, v in extra.items() if not k.startswith("Checksum")}
        result: dict[str, Any] = self.client.put_object(Bucket=self.bucket, Key=key,
                                                        **{**extra, **kwargs})
        self.made.add(key)
        return result

    def _refused(self, call: Callable[[], Any]) -> bool | None:
        """True: refused as a failed condition (412/409); False: done, so the condition was
        ignored; None: refused otherwise (the feature is missing)."""
        try:
            call()
        except self.error as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code", "")
            if status in (412, 409) or code == "PreconditionFailed":
                return True
            return None
        return False

    def source(self) -> str:
        """The scratch object the other checks copy from, made once."""
        key = self.scratch + "object"
        if key not in self.made:
            self._put("object", Body=b"probe")
        return key

    def lists_v2(self) -> bool:
        try:
            reply = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.scratch,
                                                MaxKeys=1)
        except self.error as exc:
            log.info("ListObjectsV2 refused (%s): listing with ListObjects (V1)", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - no answer: keep V2, which S3 has
            log.info("capability probe lists_v2 did not finish: %s", exc)
            return True
        return "KeyCount" in reply or "Contents" in reply or reply.get("IsTruncated") is False

    def conditional_put(self) -> bool:
        new = self._refused(lambda: self._put("object", Body=b"probe", IfNoneMatch="*"))
        if new is not False:  # a fresh key's If-None-Match must succeed
            self.source()
            return False
        again = self._refused(lambda: self._put("object", Body=b"probe", IfNoneMatch="*"))
        stale = self._refused(lambda: self._put("object", Body=b"probe", IfMatch=NO_ETAG))
        return again is True and stale is True

    def marker_metadata(self) -> bool:
        self._put("marker/", Body=b"", Metadata={"mode": PROBE_MODE},
                  ContentType="application/x-directory")
        head = self.client.head_object(Bucket=self.bucket, Key=self.scratch + "marker/",
                                       **self._read())
        return bool(head.get("Metadata", {}).get("mode") == PROBE_MODE)

    def copy_source_if_match(self) -> bool:
        source = {"Bucket": self.bucket, "Key": self.source()}
        target = self.scratch + "copy"

        def copy() -> None:
            self.made.add(target)
            extra = self.args.copy(target, False) if self.args else {}
            self.client.copy_object(Bucket=self.bucket, Key=target, CopySource=source,
                                    CopySourceIfMatch=NO_ETAG, **extra)

        return self._refused(copy) is True

    def upload_part_copy(self) -> bool:
        source = {"Bucket": self.bucket, "Key": self.source()}
        key = self.scratch + "multipart"
        extra = self.args.create_multipart(key) if self.args else {}
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                     **extra)["UploadId"]
        try:
            self.client.upload_part_copy(Bucket=self.bucket, Key=key, UploadId=upload,
                                         PartNumber=1, CopySource=source,
                                         CopySourceRange="bytes=0-1",
                                         **(self.args.part_copy() if self.args else {}))
        except self.error as exc:
            log.info("UploadPartCopy refused: %s", exc)
            return False
        finally:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                   UploadId=upload)
            except self.error as exc:  # an upload left over is no key, and no answer either
                log.info("capability probe: multipart upload %s not aborted: %s", key, exc)
        return True

    def checksums(self) -> bool:
        try:
            self._put("checksum", Body=b"probe", ChecksumAlgorithm="SHA256")
        except self.error as exc:
            log.info("a PUT with x-amz-checksum-sha256 was refused: %s", exc)
            return False
        head = self.client.head_object(Bucket=self.bucket, Key=self.scratch + "checksum",
                                       ChecksumMode="ENABLED", **self._read())
        return bool(head.get("ChecksumSHA256"))

    def _read(self) -> dict[str, Any]:
        return self.args.read() if self.args else {}

    def clean_up(self) -> None:
        """Delete the scratch keys, and their folders where the server keeps folders; should
        that fail, they stay hidden (see the docstring)."""
        if not self.made:
            return
        keys = deletion_order(self.top, sorted(self.made))
        try:
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": k} for k in keys], "Quiet": True})
        except Exception as exc:  # noqa: BLE001 - hidden keys left over are harmless
            log.info("capability probe: scratch keys under %s not deleted: %s", self.scratch, exc)
