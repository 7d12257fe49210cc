"""A SigV2 signature check for `FaultProxy`, written from AWS's description of the scheme.

No local S3 server verifies botocore's SigV2 signatures (see tests/fuse/test_credentials.py),
so the proxy in front of moto checks them: `Authorization: AWS ACCESS:SIGNATURE`, where the
signature is base64(HMAC-SHA1(secret, string to sign)) and the string to sign is

    VERB \\n Content-MD5 \\n Content-Type \\n Date \\n CanonicalizedAmzHeaders CanonicalizedResource

(the Date line is empty when x-amz-date is sent; amz headers lower-cased, sorted, one
`name:value\\n` each; the resource is the request path, plus the sub-resources of the query such
as ?uploads or ?partNumber=1&uploadId=X, sorted).  A request signed otherwise (SigV4, none), by an
unknown key, with a wrong signature, or dated more than 15 minutes away is refused as S3 would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections import Counter
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from urllib.parse import unquote

SUBRESOURCES = {
    "acl", "cors", "delete", "lifecycle", "location", "logging", "notification", "partNumber",
    "policy", "requestPayment", "restore", "tagging", "torrent", "uploadId", "uploads",
    "versionId", "versioning", "versions", "website", "response-cache-control",
    "response-content-disposition", "response-content-encoding", "response-content-language",
    "response-content-type", "response-expires",
}
MAX_SKEW = 15 * 60  # seconds, as S3 allows


def string_to_sign(method: str, target: str, headers: Mapping[str, str]) -> str:
    path, _, query = target.partition("?")
    lower = {k.lower(): v.strip() for k, v in headers.items()}
    date = "" if "x-amz-date" in lower else lower.get("date", "")
    amz = "".join(f"{k}:{lower[k]}\n" for k in sorted(lower) if k.startswith("x-amz-"))
    subs = []
    for item in query.split("&") if query else []:
        name, eq, value = item.partition("=")
        if unquote(name) in SUBRESOURCES:
            subs.append(unquote(name) + (f"={unquote(value)}" if eq else ""))
    if path.count("/") == 1 and path != "/":
        path += "/"  # a path-style bucket request: S3 names the bucket's resource /bucket/
    resource = path + ("?" + "&".join(sorted(subs)) if subs else "")
    return (f"{method}\n{lower.get('content-md5', '')}\n{lower.get('content-type', '')}\n"
            f"{date}\n{amz}{resource}")


class SigV2Check:
    """Callable as `FaultProxy.check`: None when a request is well signed, else the refusal."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()

    def _count(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1

    def __call__(self, method: str, target: str, headers: Mapping[str, str],
                 ) -> tuple[int, str] | None:
        auth = headers.get("Authorization", "")
        if not auth.startswith("AWS ") or ":" not in auth:
            self._count("not-v2")
            return 400, "InvalidRequest"
        access, _, signature = auth[4:].partition(":")
        secret = self.keys.get(access)
        if secret is None:
            self._count("unknown-key")
            return 403, "InvalidAccessKeyId"
        when = headers.get("x-amz-date") or headers.get("Date") or ""
        try:
            skew = abs(time.time() - parsedate_to_datetime(when).timestamp())
        except (TypeError, ValueError):
            skew = float("inf")
        if skew > MAX_SKEW:
            self._count("expired")
            return 403, "RequestTimeTooSkewed"
        wanted = base64.b64encode(hmac.new(secret.encode(),
                                           string_to_sign(method, target, headers).encode(),
                                           hashlib.sha1).digest()).decode()
        if not hmac.compare_digest(wanted, signature):
            self._count("bad-signature")
            return 403, "SignatureDoesNotMatch"
        self._count("ok")
        return None
