"""The raw boto3 contender: the same workloads as direct S3 calls, the limit a mount is held to.

Big transfers use upload_file / download_file with 8 MiB parts and 10 threads.  Small operations
run one request after another from one thread, the order a program on a mount issues them; the
same work through a 10-thread pool is timed too and kept as `extra["pool10_seconds"]`.  The warm
re-read has no raw counterpart (boto3 keeps no cache).
"""

from __future__ import annotations

import os
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench_lib.targets import RAW_TRANSFER
from bench_lib.workloads import (
    CLEAN_UP,
    SMALL,
    Bench,
    Sample,
    payload,
    random_offsets,
    rename_names,
    rename_setup,
    renamed,
    timed,
)


def each(fn: Callable[[Any], Any], items: list[Any]) -> None:
    """One call after another, from this thread."""
    for item in items:
        fn(item)


def pooled(b: Bench, fn: Callable[[Any], Any], items: list[Any]) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(fn, items))
    return round(time.perf_counter() - start, 3)


def raw_seqwrite(b: Bench, tag: str) -> dict[str, Sample]:
    key = f"w-{tag}.bin"
    b.warm_source()

    def body() -> None:
        b.raw.upload_file(str(b.src), b.bucket, key, Config=RAW_TRANSFER)

    sample = timed(b, body)
    if b.size_of(key) != b.sizes.big:
        raise OSError(f"{key} is not in the bucket with its size after upload_file")
    return {"seqwrite": sample}


def raw_coldread(b: Bench, tag: str) -> dict[str, Sample]:
    dest = b.workdir / f"download-{tag}.bin"

    def body() -> None:
        b.raw.download_file(b.bucket, "data/big.bin", str(dest), Config=RAW_TRANSFER)

    try:
        sample = timed(b, body)
        if dest.stat().st_size != b.sizes.big:
            raise OSError("download_file wrote the wrong size")
    finally:
        dest.unlink(missing_ok=True)
    return {"coldread": sample}


def raw_randread(b: Bench, tag: str) -> dict[str, Sample]:
    offsets = random_offsets(b, tag)

    def get(off: int) -> bytes:
        return b.raw.get_object(Bucket=b.bucket, Key="data/big.bin",
                                Range=f"bytes={off}-{off + SMALL - 1}")["Body"].read()

    sample = timed(b, lambda: each(get, offsets))
    sample.extra["pool10_seconds"] = pooled(b, get, offsets)
    return {"randread": sample}


def raw_create(b: Bench, tag: str) -> dict[str, Sample]:
    prefix = f"c-{tag}/"
    n = b.sizes.small_files

    def put(i: int) -> None:
        b.raw.put_object(Bucket=b.bucket, Key=f"{prefix}f{i:05d}", Body=payload(i))

    sample = timed(b, lambda: each(put, list(range(n))))
    b.delete_prefix(prefix)
    sample.extra["pool10_seconds"] = pooled(b, put, list(range(n)))
    if len(b.file_keys(prefix)) != n:
        raise OSError("raw create: objects missing")
    return {"create": sample}


def raw_ls(b: Bench, tag: str) -> dict[str, Sample]:
    found: list[int] = []

    def body() -> None:
        pages = b.raw.get_paginator("list_objects_v2").paginate(
            Bucket=b.bucket, Prefix="bigdir/", Delimiter="/")
        found.append(sum(len(p.get("Contents", [])) for p in pages))

    sample = timed(b, body)
    if found != [b.sizes.bigdir]:
        raise OSError(f"raw list found {found}, expected {b.sizes.bigdir}")
    return {"ls": sample}


def raw_stat(b: Bench, tag: str) -> dict[str, Sample]:
    keys = [f"statdir/f{i:05d}" for i in range(b.sizes.stat_files)]

    def head(k: str) -> int:
        return int(b.raw.head_object(Bucket=b.bucket, Key=k)["ContentLength"])

    sample = timed(b, lambda: each(head, keys))
    sample.extra["pool10_seconds"] = pooled(b, head, keys)
    return {"stat": sample}


def raw_rename(b: Bench, tag: str) -> dict[str, Sample]:
    src, dst = rename_names(tag)
    names = [f"f{i:04d}" for i in range(b.sizes.rename_files)]

    def move(name: str) -> None:
        b.raw.copy_object(Bucket=b.bucket, Key=dst + name,
                          CopySource={"Bucket": b.bucket, "Key": src + name})
        b.raw.delete_object(Bucket=b.bucket, Key=src + name)

    rename_setup(b, tag)
    sample = timed(b, lambda: each(move, names))
    if not renamed(b, src, dst):
        raise OSError("raw rename: objects not where expected")
    b.delete_prefix(f"r-{tag}/")
    rename_setup(b, tag)
    sample.extra["pool10_seconds"] = pooled(b, move, names)
    return {"rename": sample}


def tar_members(b: Bench) -> list[tuple[str, bytes]]:
    out = []
    with tarfile.open(b.tarball) as tar:
        for member in tar:
            if member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                out.append((member.name, f.read()))
    return out


def raw_untar(b: Bench, tag: str) -> dict[str, Sample]:
    prefix = f"u-{tag}/"

    def put(item: tuple[str, bytes]) -> None:
        b.raw.put_object(Bucket=b.bucket, Key=prefix + item[0], Body=item[1])

    def body() -> None:
        with tarfile.open(b.tarball) as tar:  # reading the tarball is part of untar
            for member in tar:
                if member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    put((member.name, f.read()))

    sample = timed(b, body)
    b.delete_prefix(prefix)
    sample.extra["pool10_seconds"] = pooled(b, put, tar_members(b))
    return {"untar": sample}


RAW_SESSIONS: dict[str, Callable[[Bench, str], dict[str, Sample]]] = {
    "write": raw_seqwrite, "read": raw_coldread, "random": raw_randread, "create": raw_create,
    "ls": raw_ls, "stat": raw_stat, "rename": raw_rename, "untar": raw_untar,
}


def run_raw_session(b: Bench, session: str, tag: str) -> dict[str, Sample]:
    try:
        return RAW_SESSIONS[session](b, tag)
    finally:
        if session in CLEAN_UP:
            b.delete_prefix(CLEAN_UP[session](tag))
        for leftover in b.workdir.glob(f"download-{tag}.bin"):
            os.unlink(leftover)

