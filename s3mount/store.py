"""The object-store contract the filesystem is written against, and how POSIX attributes ride on
objects.

`fs.py` and everything below it depend on `ObjectStore`, never on boto3: `s3.py` implements it over
boto3, and `tests/memstore.py` in memory, for the core tests (a contract test holds both to the
same rules).  Keys are relative to the mount's prefix.  `head(key, ahead=True)` is a look-up
made before anyone asked (ls -l's sweep): a store runs it on its read budget, never on the slots
a stat or an upload needs.

Attributes are stored the way s3fs-fuse stores them, so both tools read each other's buckets:
user metadata `mode` (decimal `st_mode`, type bits included), `uid`, `gid`, `mtime`, and for
FIFOs, sockets and devices (empty objects) `rdev`, the decimal device number.
"""

from __future__ import annotations

import base64
import binascii
import json
import stat
import urllib.parse
from dataclasses import dataclass
from typing import Protocol

DIRECTORY_CONTENT_TYPE = "application/x-directory"
EXPECT_ABSENT = "*"  # a conditional write that succeeds only if the key does not exist yet
USER_METADATA_LIMIT = 2048  # S3: keys and values of all x-amz-meta-* headers together


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    mtime: float  # LastModified, seconds since the epoch
    metadata: dict[str, str] | None  # None: not known (listings carry no user metadata)


@dataclass(frozen=True)
class ListPage:
    objects: list[ObjectInfo]
    prefixes: list[str]  # common prefixes, each ending with the delimiter
    next_token: str | None


class ObjectStore(Protocol):
    async def check(self) -> None: ...
    async def head(self, key: str, ahead: bool = False) -> ObjectInfo | None: ...
    async def list_page(self, prefix: str, delimiter: str | None, token: str | None = None,
                        max_keys: int = 1000, start_after: str | None = None) -> ListPage: ...
    async def get_range(self, key: str, start: int, end: int, etag: str | None) -> bytes: ...
    async def put(self, key: str, body: bytes, metadata: dict[str, str],
                  content_type: str | None = None) -> str: ...
    async def put_file(self, key: str, path: str, size: int, metadata: dict[str, str],
                       expect: str | None = None) -> str: ...
    async def copy(self, src: str, dst: str, size: int, metadata: dict[str, str] | None,
                   expect: str | None = None) -> str: ...
    async def delete(self, key: str) -> None: ...
    async def delete_many(self, keys: list[str]) -> None: ...
    async def create_multipart(self, key: str, metadata: dict[str, str]) -> str: ...
    async def upload_part(self, key: str, upload_id: str, number: int, path: str, offset: int,
                          length: int) -> str: ...
    async def upload_part_copy(self, key: str, upload_id: str, number: int, source: str,
                               start: int, end: int, source_etag: str | None) -> str: ...
    async def complete_multipart(self, key: str, upload_id: str,
                                 parts: list[tuple[int, str]], expect: str | None = None,
                                 ) -> str: ...
    async def abort_multipart(self, key: str, upload_id: str) -> None: ...


@dataclass(frozen=True)
class PosixAttrs:
    mode: int  # full st_mode, type bits included
    uid: int
    gid: int
    mtime_ns: int
    rdev: int = 0  # devices: the device number


# Kinds of file stored as an empty object whose `mode` says what it is (as s3fs-fuse does).
SPECIAL_KINDS = frozenset({stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK})
OBJECT_KINDS = SPECIAL_KINDS | {stat.S_IFREG, stat.S_IFLNK}  # what a non-directory can be


def encode_attrs(attrs: PosixAttrs) -> dict[str, str]:
    """User metadata for an object, in s3fs-fuse's format (mtime as `sec.nnnnnnnnn`)."""
    sec, nsec = divmod(attrs.mtime_ns, 1_000_000_000)
    meta = {
        "mode": str(attrs.mode),
        "uid": str(attrs.uid),
        "gid": str(attrs.gid),
        "mtime": f"{sec}.{nsec:09d}",
    }
    if stat.S_IFMT(attrs.mode) in SPECIAL_KINDS:
        meta["rdev"] = str(attrs.rdev)
    return meta


def parse_mtime_ns(text: str) -> int | None:
    """Read all the mtime forms in the wild: whole seconds, float seconds, `sec.nnnnnnnnn`."""
    text = text.strip()
    whole, _, frac = text.partition(".")
    digits = whole.removeprefix("-")
    if not (digits.isascii() and digits.isdecimal()) or (
            frac and not (frac.isascii() and frac.isdecimal())):
        return None
    nsec = int((frac + "000000000")[:9]) if frac else 0
    if len(digits) > 10:  # past year 2286: garbage, and past what st_mtime can hold
        return None
    return int(whole) * 1_000_000_000 + nsec


MAX_ID = 2**32 - 1
MAX_MODE = 0o177777
MAX_RDEV = 2**64 - 1


def _int_or(text: str | None, default: int, limit: int = MAX_ID) -> int:
    """A decimal number in 0..limit from a header, else the default (garbage never raises)."""
    if text is None:
        return default
    text = text.strip()
    if not (text.isascii() and text.isdecimal()) or int(text) > limit:
        return default
    return int(text)


def decode_attrs(info: ObjectInfo, kind_bits: int, default_perm: int, uid: int, gid: int,
                 ) -> PosixAttrs:
    """Attributes of an object, from its metadata where present and sane, else the defaults."""
    meta = info.metadata or {}
    mode = _int_or(meta.get("mode"), 0, MAX_MODE)
    if stat.S_IFMT(mode) != kind_bits:
        # No mode, or one for another kind of object: keep the kind we decided, default bits.
        mode = kind_bits | (stat.S_IMODE(mode) if mode and stat.S_IFMT(mode) == 0 else default_perm)
    mtime_ns = parse_mtime_ns(meta["mtime"]) if "mtime" in meta else None
    if mtime_ns is None:
        mtime_ns = int(info.mtime * 1_000_000_000)
    rdev = _int_or(meta.get("rdev"), 0, MAX_RDEV) if kind_bits in SPECIAL_KINDS else 0
    return PosixAttrs(mode, _int_or(meta.get("uid"), uid), _int_or(meta.get("gid"), gid), mtime_ns,
                      rdev)


def is_symlink_meta(metadata: dict[str, str] | None) -> bool:
    return bool(metadata) and stat.S_ISLNK(_int_or(metadata.get("mode"), 0, MAX_MODE))


def object_kind(metadata: dict[str, str] | None, size: int = 0) -> int:
    """What a (non-directory) object is, by the type bits of its mode: a symlink, FIFO, socket
    or device when they say so, else a regular file.  Special files are empty objects, so one
    with a body is a regular file whatever its mode says: its bytes stay readable."""
    kind = stat.S_IFMT(_int_or((metadata or {}).get("mode"), 0, MAX_MODE))
    if kind in SPECIAL_KINDS and size > 0:
        return stat.S_IFREG
    return kind if kind in OBJECT_KINDS else stat.S_IFREG


def encode_xattrs(xattrs: dict[str, bytes]) -> str:
    """s3fs-fuse's `x-amz-meta-xattr`: URL-encoded JSON of name -> base64 of the value."""
    table = {name: base64.b64encode(value).decode() for name, value in sorted(xattrs.items())}
    return urllib.parse.quote(json.dumps(table, separators=(",", ":")), safe="")


def decode_xattrs(text: str | None) -> dict[str, bytes]:
    """Read `x-amz-meta-xattr`; anything unreadable counts as no attributes, never a crash."""
    if not text:
        return {}
    try:
        table = json.loads(urllib.parse.unquote(text))
        return {str(k): base64.b64decode(v) for k, v in table.items()}
    except (ValueError, TypeError, AttributeError, binascii.Error):
        return {}


def metadata_size(metadata: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
