"""Where work runs besides the trio loop's own handlers: worker threads and background tasks.

Every blocking call (boto3, local disk) runs through `run_blocking` with a named
`trio.CapacityLimiter`, so the trio loop that answers the kernel never blocks and the number of
threads talking to S3 matches botocore's connection pool.  Optional work (read-ahead) starts in
the mount's long-lived nursery through `Background`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class Limiters:
    """The named limiters: `s3` for metadata requests and uploads, `reads` for GETs of object
    bytes and HEADs made ahead of a reader (read-ahead must never take the slots a stat or an
    upload needs; botocore's pool holds both together), `disk` for the local cache files."""

    def __init__(self, s3: int, disk: int = 8, reads: int | None = None) -> None:
        self.s3 = trio.CapacityLimiter(s3)
        self.reads = trio.CapacityLimiter(reads or s3)
        self.disk = trio.CapacityLimiter(disk)


async def run_blocking(limiter: trio.CapacityLimiter, fn: Callable[..., T], *args: Any,
                       **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` in a worker thread bounded by `limiter`."""
    call = functools.partial(fn, *args, **kwargs) if kwargs else functools.partial(fn, *args)
    return await trio.to_thread.run_sync(call, limiter=limiter)


class Background:
    """Where optional background work (read-ahead) is started: the mount's long-lived nursery.

    Until a nursery is attached, background work is simply skipped; nothing depends on it.
    """

    def __init__(self) -> None:
        self.nursery: trio.Nursery | None = None

    def start(self, fn: Callable[..., Any], *args: Any) -> bool:
        if self.nursery is None:
            return False
        self.nursery.start_soon(fn, *args)
        return True
