"""What a mount is configured with: one immutable `MountConfig`, built by the command line."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from s3mount.credentials import Keys

MIB = 1024 * 1024


def default_cache_root() -> Path:
    """Where per-mount cache directories live when `--cache-dir` is not given."""
    if os.geteuid() == 0:
        return Path("/var/cache/s3mount")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "s3mount"


@dataclass(frozen=True)
class MountConfig:
    bucket: str
    prefix: str  # "" or "a/b/" (always ends with "/" when not empty)
    mountpoint: str
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    addressing_style: str = "path"
    signature_version: str = "v4"
    foreground: bool = False
    read_only: bool = False
    allow_other: bool = False
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    file_mode: int = 0o644
    dir_mode: int = 0o755
    cache_dir: str | None = None
    log_level: str = "info"
    max_concurrency: int = 10  # metadata requests and uploads at once
    max_read_concurrency: int = 32  # GETs of object bytes, and HEADs run ahead of ls -l
    part_size: int = 8 * MIB
    single_put_limit: int = 8 * MIB
    metadata_ttl: float = 1.0
    block_size: int = 8 * MIB
    max_readahead: int = 128 * MIB
    kernel_readahead: int = 4 * MIB  # the mount's read_ahead_kb in sysfs; 0: leave it
    cache_size: int | None = None  # None: min(10 GiB, a quarter of the free space)
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_attempts: int = 5
    conditional_writes: bool = True
    trust_listings: bool = False  # show listed objects with default attributes, no HEAD each
    keys: Keys | None = field(default=None, repr=False)  # --passwd-file or config-file keys
    ca_bundle: str | None = None
    verify_ssl: bool = True
    metrics_port: int | None = None  # Prometheus text on 127.0.0.1, when given
    # Provider options: what every request that needs them carries (see requestargs).
    sse: str | None = None  # "AES256" or "aws:kms": server-side encryption with S3's keys
    sse_kms_key_id: str | None = None
    sse_customer_key: bytes | None = field(default=None, repr=False)  # SSE-C, 32 bytes
    storage_class: str | None = None
    requester_pays: bool = False
    content_type: str | None = None  # None: S3's default; "auto": guessed from the name
    proxy: str | None = None  # http(s) proxy URL for every request
    checksum: str = "off"  # "sha256" or "crc32c": x-amz-checksum-* on every upload
    request_path: str = "lean"  # "boto3": every request through boto3 (see lean.py)
    write_back: float | None = None  # seconds from close(2) to the upload; None: at close

    def cache_budget(self) -> int:
        """Bytes the block cache may hold: the option, or a share of the disk that never
        fills it."""
        if self.cache_size is not None:
            return self.cache_size
        path = self.cache_path()
        while not path.exists():
            path = path.parent
        st = os.statvfs(path)
        return max(64 * MIB, min(10 * 1024 * MIB, st.f_bavail * st.f_frsize // 4))

    def cache_path(self) -> Path:
        """This mount's own cache directory: one per endpoint, bucket and prefix."""
        if self.cache_dir:
            return Path(self.cache_dir)
        ident = f"{self.endpoint_url or 'aws'}|{self.bucket}|{self.prefix}"
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        return default_cache_root() / f"{self.bucket}-{digest}"
