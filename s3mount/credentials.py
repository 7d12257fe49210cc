"""Secrets given to s3mount itself: the `--passwd-file` (s3fs's format), config-file keys, and
the SSE-C key file.

boto3's own chain (environment, `~/.aws/credentials` and `~/.aws/config`, `--profile`) needs
nothing here.  Keys read here live in a `Keys` object whose `repr` and `str` hide the secret, so
logging a config never prints it; a file holding keys is refused when group or others could read
it or when it is not owned by the user running s3mount (as s3fs does).  Error messages name the
file and the line number, never the content.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass, field

from s3mount.errors import ConfigError


@dataclass(frozen=True)
class Keys:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    source: str = ""

    def __str__(self) -> str:
        return f"keys from {self.source or 'the configuration'}"


def check_private(path: str, what: str) -> os.stat_result:
    """Refuse a file of secrets that others could read, or that someone else owns."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {path} is not a regular file")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{what} {path} is owned by uid {st.st_uid}, not by the user running "
                          f"s3mount (uid {os.geteuid()})")
    if st.st_mode & 0o077:
        raise ConfigError(f"{what} {path} is readable by group or others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}): run chmod 600 {path}")
    return st


def parse_passwd(text: str, bucket: str, source: str) -> Keys:
    """`ACCESS:SECRET`, or s3fs's `BUCKET:ACCESS:SECRET` lines; a bucket's own line wins."""
    default: Keys | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) == 2 and all(fields):
            if default is None:
                default = Keys(fields[0], fields[1], source)
        elif len(fields) == 3 and all(fields):
            if fields[0] == bucket:
                return Keys(fields[1], fields[2], source)
        else:
            raise ConfigError(f"{source} line {number}: expected ACCESS_KEY:SECRET_KEY "
                              "or BUCKET:ACCESS_KEY:SECRET_KEY")
    if default is None:
        raise ConfigError(f"{source} holds no ACCESS_KEY:SECRET_KEY line for bucket {bucket!r}")
    return default


def read_passwd_file(path: str, bucket: str) -> Keys:
    check_private(path, "passwd file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read passwd file {path}: {exc}") from None
    return parse_passwd(text, bucket, path)


SSE_C_KEY_BYTES = 32  # AES-256


def read_sse_c_key(path: str) -> bytes:
    """The SSE-C key: a private file holding the 32 bytes themselves (as s3fs's key files do,
    one line of 32 characters) or their base64; one trailing newline is allowed."""
    check_private(path, "SSE-C key file")
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except OSError as exc:
        raise ConfigError(f"cannot read SSE-C key file {path}: {exc.strerror}") from None
    text = data[:-1] if data.endswith(b"\n") else data
    if len(text) == SSE_C_KEY_BYTES:
        return text
    try:
        key = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != SSE_C_KEY_BYTES:
        raise ConfigError(f"SSE-C key file {path} must hold a 32-byte key, or its base64 "
                          f"(44 characters); it holds {len(text)} bytes", status=2)
    return key
