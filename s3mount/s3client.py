"""The boto3 client of a mount, and the start-up check that it can reach its bucket.

One client is built once, on the main thread, and shared by the worker threads (boto3 clients are
thread-safe; resources are not).  `build_client` sets what every request needs: credentials
(boto3's chain unless the config carries `Keys` from a passwd file; handed to boto3, never
logged), TLS verification, addressing, the signature version and its quirks, botocore's bounded
retries and timeouts, and a timestamp parser that skips dateutil.  `check_bucket` turns the
first request's failure into one `ConfigError` line that says what to fix.
Together with `s3.py` (the store) and `lean.py`, the only modules that import botocore.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import logging
import urllib.parse
import warnings
from typing import Any

import boto3
import botocore.handlers
import botocore.loaders
import botocore.session
import botocore.utils
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    SSLError,
)

from s3mount import errors
from s3mount.config import MountConfig
from s3mount.requestargs import RequestArgs

log = logging.getLogger(__name__)

SIGNATURE_VERSIONS = {"v4": "s3v4", "v2": "s3"}


def credential_source(config: MountConfig) -> str:
    """Where the keys come from, in words for error messages (never the keys themselves)."""
    if config.keys is not None:
        return config.keys.source or "the configuration"
    if config.profile:
        return f"profile {config.profile!r}"
    return "boto3's default chain (environment, ~/.aws/credentials, ~/.aws/config)"


@functools.cache
def shared_loader() -> Any:
    """botocore's loader of service models, one per process.  It caches the parsed S3 model;
    a fresh session's loader parses it again (0.5 s of CPU), and start-up builds two clients:
    the one that checks the bucket and, in the forked daemon, the mount's."""
    return botocore.loaders.create_loader()


def build_session(config: MountConfig) -> Any:
    """The boto3 session of a mount: its credentials are the keys given, else boto3's chain."""
    keys: dict[str, str] = {}
    if config.keys is not None:
        keys = {"aws_access_key_id": config.keys.access_key,
                "aws_secret_access_key": config.keys.secret_key}
    core = botocore.session.get_session()
    core.register_component("data_loader", shared_loader())
    core.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=parse_timestamp)
    try:
        session = boto3.session.Session(botocore_session=core, profile_name=config.profile,
                                        **keys)
        # The profile is looked up here, not at the first client: a fresh session's own loader
        # used to read the profile's config when it was made, the shared one does not.
        core.get_scoped_config()
        return session
    except ProfileNotFound as exc:
        raise errors.ConfigError(f"profile not found: {exc}") from None


def build_client(config: MountConfig) -> Any:
    """The boto3 client for a mount: keys, TLS, addressing, signature, bounded retries and
    timeouts."""
    session = build_session(config)
    verify: bool | str = config.verify_ssl
    if config.ca_bundle:
        verify = config.ca_bundle
    elif not config.verify_ssl:
        # Chosen explicitly (--no-verify-ssl); said once at start-up, not on every request.
        warnings.filterwarnings("ignore", message="Unverified HTTPS request")
        if (config.endpoint_url or "https:").startswith("https:"):
            log.warning("TLS certificates of %s are not verified (--no-verify-ssl)",
                        config.endpoint_url or "AWS")
    botocore_config = Config(
        signature_version=SIGNATURE_VERSIONS[config.signature_version],
        s3={"addressing_style": config.addressing_style},
        retries={"max_attempts": config.max_attempts, "mode": "standard"},
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        proxies={"http": config.proxy, "https": config.proxy} if config.proxy else None,
        # Metadata and uploads, and reads, each have their own limiter: the pool holds both.
        max_pool_connections=config.max_concurrency + config.max_read_concurrency,
        # Many S3-compatible services reject the CRC headers newer botocore adds by default.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    try:
        client = session.client("s3", endpoint_url=config.endpoint_url,
                                region_name=config.region, config=botocore_config, verify=verify)
    except ValueError as exc:  # botocore's "Invalid endpoint: ..."
        raise errors.ConfigError(f"{exc} (an endpoint looks like https://host[:port])",
                                 status=2) from None
    # "Expect: 100-continue" costs every upload a second round trip; S3 does not need it.
    client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    headers = RequestArgs(config).every_request_headers()
    if headers:  # on every request, even those whose model lacks them (HEAD of the bucket)
        def add_headers(request: Any, **_: Any) -> None:
            for name, value in headers.items():
                request.headers[name] = value

        client.meta.events.register("before-sign.s3", add_headers)
    if config.signature_version == "v2":
        client.meta.events.register("before-sign.s3", send_the_signed_path)
    return client


def send_the_signed_path(request: Any, **_: Any) -> None:
    """SigV2: a request on the bucket itself (HEAD bucket, listings, DeleteObjects) is signed
    for the resource `/bucket/` but botocore sends the path `/bucket`; a server that verifies
    the signature over the path it receives (SeaweedFS) then refuses it.  Send `/bucket/`, the
    path signed, which S3 treats as the same bucket request."""
    signed = getattr(request, "auth_path", None)
    if not signed or not signed.endswith("/"):
        return
    parts = urllib.parse.urlsplit(request.url)
    if parts.path + "/" == signed:
        request.url = urllib.parse.urlunsplit(parts._replace(path=signed))


def parse_timestamp(value: str) -> datetime.datetime:
    """A response's timestamp, parsed without dateutil for the two forms S3 sends: ISO 8601 in
    listings, where botocore's own parser spends ~35 us an entry (a tenth of a daemon's CPU
    while files are created in a directory it lists), and RFC 1123 in headers."""
    try:
        when = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return botocore.utils.parse_timestamp(value)
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def check_bucket(client: Any, config: MountConfig) -> None:
    """Start-up check of endpoint, credentials and bucket, as one clear `ConfigError` line."""
    where = config.endpoint_url or "AWS"
    try:
        client.head_bucket(Bucket=config.bucket)
    except (NoCredentialsError, PartialCredentialsError):
        raise errors.ConfigError(
            "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "use ~/.aws/credentials, name a profile with --profile, or give --passwd-file") \
            from None
    except SSLError as exc:
        raise errors.ConfigError(
            f"TLS certificate of {where} not accepted ({exc}): give its CA with --ca-bundle, "
            "or skip the check with --no-verify-ssl") from None
    except (EndpointConnectionError, ConnectionError) as exc:
        raise errors.ConfigError(f"cannot reach the endpoint {where}: {exc}") from None
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = exc.response.get("Error", {}).get("Code", "")
        if status == 404 or code in ("NoSuchBucket", "404", "NotFound"):
            raise errors.ConfigError(
                f"bucket {config.bucket!r} does not exist at {where}") from None
        if status == 403 or code in ("AccessDenied", "403", "InvalidAccessKeyId",
                                     "SignatureDoesNotMatch"):
            raise errors.ConfigError(
                f"access denied to bucket {config.bucket!r} at {where} ({code or status}) with "
                f"keys from {credential_source(config)}: check the access key, secret key, "
                "profile and signature version") from None
        raise errors.ConfigError(f"bucket {config.bucket!r} at {where}: {code} {exc}") from None
    except BotoCoreError as exc:
        raise errors.ConfigError(f"cannot use the endpoint {where}: {exc}") from None
