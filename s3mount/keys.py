"""Names and keys: which S3 keys can be POSIX names, and which names S3 can hold.

A mount of `BUCKET:PREFIX` sees key `PREFIX` + `a/b/c` as file `c` in directory `a/b`.  Inside the
filesystem a key is always relative to the prefix; `s3.py` adds and strips the prefix.
"""

from __future__ import annotations

import secrets
import time

from s3mount.errors import InvalidName, NameTooLong

NAME_MAX = 255
KEY_MAX = 1024  # S3's limit on a key, in UTF-8 bytes
# s3mount's own name in every directory: `dir/.s3mount-meta` holds the directory's attributes
# where the server drops metadata on `dir/` markers (see markers.py), and `.s3mount-meta/` at the
# mount's root holds the capability probe's scratch keys.  Never listed, never looked up, never
# created by a user (EINVAL): the server offers no key that POSIX could not name (it refuses
# `.`/`..` and long segments, and folds `a//b`), so one plain name is set aside.
RESERVED_NAME = ".s3mount-meta"


def decode_name(raw: bytes) -> str:
    """Turn a name from the kernel into a key segment, or raise the errno S3's rules call for."""
    if len(raw) > NAME_MAX:
        raise NameTooLong(f"name is {len(raw)} bytes, the limit is {NAME_MAX}")
    if raw in (b".", b"..") or not raw or b"/" in raw or b"\0" in raw:
        raise InvalidName(f"{raw!r} cannot be a name")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidName(f"{raw!r} is not UTF-8, and S3 keys are UTF-8") from None


def check_not_reserved(name: str) -> None:
    """A new name must not be s3mount's own (`RESERVED_NAME`)."""
    if name == RESERVED_NAME:
        raise InvalidName(f"{name} is reserved by s3mount for directory attributes")


def is_posix_segment(segment: str) -> bool:
    """Whether a key segment can be shown as a name in a listing."""
    return (
        segment not in ("", ".", "..")
        and "\0" not in segment
        and len(segment.encode("utf-8", "surrogatepass")) <= NAME_MAX
    )


def join(dir_key: str, name: str) -> str:
    """Key of `name` inside the directory whose key is `dir_key` ("" for the root)."""
    return f"{dir_key}/{name}" if dir_key else name


def check_key_length(key: str, prefix: str) -> None:
    full = len(prefix.encode()) + len(key.encode()) + 1  # +1: room for a directory marker's "/"
    if full > KEY_MAX:
        raise NameTooLong(f"the key would be {full} bytes, S3's limit is {KEY_MAX}")


def dir_prefix(dir_key: str) -> str:
    """Listing prefix of a directory: "" for the root, else `key/`."""
    return f"{dir_key}/" if dir_key else ""


def split_listing_name(prefix: str, key: str) -> str | None:
    """The entry name `key` gives in the listing of `prefix`, or None if it is not a POSIX name.

    Works for both objects (`prefix + name`) and common prefixes (`prefix + name + "/"`).
    s3mount's own keys (`RESERVED_NAME`) are never entries.
    """
    rest = key[len(prefix):]
    if rest.endswith("/"):
        rest = rest[:-1]
    if not is_posix_segment(rest) or "/" in rest or rest == RESERVED_NAME:
        return None
    return rest


def conflict_key(key: str, when: float | None = None) -> str:
    """Where our version goes when another client changed the object under us: a new key
    every time (two conflicts within a second, or on two machines, must not share one)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    return f"{key}.s3mount-conflict-{stamp}-{secrets.token_hex(3)}"


def creation_rounds(keys: list[str]) -> list[list[str]]:
    """The keys of a directory tree to create (a tree rename's copies), in rounds that each go
    side by side: the `dir/` markers a depth at a time, shallowest first, then every other key.
    A server that keeps folders as entries of their own (SeaweedFS) can lose a marker PUT that
    races the creation of a key under it: the folder stays, listed without its marker."""
    markers: dict[int, list[str]] = {}
    others = []
    for key in keys:
        if key.endswith("/"):
            markers.setdefault(key.count("/"), []).append(key)
        else:
            others.append(key)
    rounds = [markers[depth] for depth in sorted(markers)]
    return rounds + [others] if others else rounds


def deletion_order(top: str, keys: list[str]) -> list[str]:
    """The keys of a directory tree under `top` (`dir/`) to delete, with the marker of every
    directory in it (whether one exists or not: deleting a missing key is no error), deepest
    first and each directory after its contents.  A server that keeps folders as entries of
    their own (SeaweedFS) removes one on the DELETE of its `dir/` key once it is empty, and
    otherwise keeps showing it, empty, as a common prefix."""
    wanted = set(keys)
    for key in keys:
        end = key.rfind("/", 0, len(key) - 1)
        while end >= len(top) - 1:
            wanted.add(key[:end + 1])
            end = key.rfind("/", 0, end)
    return sorted(wanted, key=lambda k: (-k.count("/"), k.endswith("/"), k))
