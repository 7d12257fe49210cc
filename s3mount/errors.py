"""The filesystem's error vocabulary.

Every error the core raises is an `FsError`; its class carries the errno the kernel is given and
the level it is logged at.  `fuse_ops` is the one place that turns these into replies; `s3.py` is
the one place that turns botocore errors into these.  `ConfigError` is for start-up problems the
command line reports as one line and a non-zero exit.
"""

from __future__ import annotations

import errno
import logging


class FsError(Exception):
    """Base of all filesystem errors: `errno` goes to the kernel, `level` to the log."""

    errno: int = errno.EIO
    level: int = logging.ERROR

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__name__)


class NotFound(FsError):
    errno = errno.ENOENT
    level = logging.DEBUG


class Exists(FsError):
    errno = errno.EEXIST
    level = logging.DEBUG


class NotEmpty(FsError):
    errno = errno.ENOTEMPTY
    level = logging.DEBUG


class NotADirectory(FsError):
    errno = errno.ENOTDIR
    level = logging.DEBUG


class IsADirectory(FsError):
    errno = errno.EISDIR
    level = logging.DEBUG


class InvalidName(FsError):
    """A name S3 cannot hold (not UTF-8, control characters S3 rejects, '.', '..')."""

    errno = errno.EINVAL
    level = logging.INFO


class NameTooLong(FsError):
    errno = errno.ENAMETOOLONG
    level = logging.INFO


class InvalidArgument(FsError):
    errno = errno.EINVAL
    level = logging.INFO


class NotPermitted(FsError):
    """Operations S3 has no way to express, such as hard links."""

    errno = errno.EPERM
    level = logging.INFO


class NotSupported(FsError):
    errno = errno.ENOTSUP
    level = logging.INFO


class AccessDenied(FsError):
    errno = errno.EACCES
    level = logging.WARNING


class ReadOnly(FsError):
    errno = errno.EROFS
    level = logging.DEBUG


class Stale(FsError):
    """The object changed in the bucket under an open handle."""

    errno = errno.ESTALE
    level = logging.WARNING


class RemoteIO(FsError):
    """The endpoint failed after bounded retries."""

    errno = errno.EIO
    level = logging.ERROR


class NoSpace(FsError):
    errno = errno.ENOSPC
    level = logging.ERROR


class FileTooBig(FsError):
    errno = errno.EFBIG
    level = logging.INFO


class NoAttribute(FsError):
    errno = errno.ENODATA
    level = logging.DEBUG


class TooBig(FsError):
    """An extended attribute that does not fit in S3's 2 KiB of user metadata."""

    errno = errno.E2BIG
    level = logging.INFO


class OutOfRange(FsError):
    errno = errno.ERANGE
    level = logging.INFO


class BadHandle(FsError):
    errno = errno.EBADF
    level = logging.WARNING


class ConfigError(Exception):
    """A start-up problem: reported as one line, exit status 1 (2 for bad usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def unwrap_group(exc: BaseException) -> BaseException:
    """The single domain error inside a trio exception group, if that is all it holds.

    For the error boundary, which must answer whatever shape reaches it; a module that opens a
    nursery hands its callers an `FsError` itself, with `except* FsError`."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if isinstance(inner, FsError):
                return inner
    return exc
