"""The crash journal of a staged file, replayed as the next mount would: after SIGKILL every
written byte is provably local; after a lost page cache only what a checksum or a sync proves."""

from __future__ import annotations

import json
import os

from s3mount.journal import BLOCK, replay
from s3mount.staging import StagedFile

KIB = 1024


def staged(tmp_path, size=256 * KIB, base="etag1") -> StagedFile:
    f = StagedFile(tmp_path / "staging", size, base)
    f.set_journal(key="k", metadata={}, upload_id=None)
    return f


def replayed(f: StagedFile):
    state = json.loads(open(f.journal_path).read())
    return replay(state, f.log.path, f.path)


def test_killed_process_keeps_every_write(tmp_path):
    f = staged(tmp_path)
    f.write(10, b"a" * 100_000)
    f.fill(150_000, b"b" * 1000)  # base bytes fetched in between
    f.write(50_000, b"c" * 10)  # over part of the first write
    f.truncate(200_000)
    f.write(300_000, b"d" * 5)  # past the end: the file grows
    r = replayed(f)
    assert r.lost == []
    assert r.size == f.size == 300_005
    assert r.present == [(10, 100_010), (300_000, 300_005)]  # fetched bytes are not claimed
    assert r.base_valid == 200_000


def test_lost_page_cache_is_never_claimed(tmp_path):
    f = staged(tmp_path)
    f.write(0, b"x" * 4096)
    f.write(3 * BLOCK + 7, b"y" * 10)
    with open(f.path, "r+b") as out:  # the second write never reached the disk
        out.seek(3 * BLOCK + 7)
        out.write(bytes(10))
    r = replayed(f)
    assert r.present == [(0, 4096)]
    assert r.lost == [(3 * BLOCK + 7, 3 * BLOCK + 17)]


def test_synced_bytes_are_trusted_and_old_lines_not_replayed(tmp_path):
    f = staged(tmp_path)
    f.write(0, b"s" * 1000)
    f.truncate(500)
    f.sync()  # data on the disk, then a checkpoint naming it; the log starts again
    assert json.loads(open(f.journal_path).read())["present"] == [[0, 500]]
    assert os.path.getsize(f.log.path) == 0
    f.write(100, b"u" * 10)
    f.write(600, b"v" * 10)
    with open(f.path, "r+b") as out:  # both writes lost: the disk has what the sync left
        out.seek(100)
        out.write(b"s" * 10)
        out.truncate(500)
    r = replayed(f)
    assert r.size == 610
    assert r.present == [(0, 500)]  # synced: older bytes of ours, never zeros
    assert r.lost == [(600, 610)]


def test_checkpoint_never_names_unsynced_writes(tmp_path):
    f = staged(tmp_path)
    f.write(0, b"w" * 100)
    f.set_journal(key="renamed", metadata={}, upload_id=None)  # no sync: present stays empty
    state = json.loads(open(f.journal_path).read())
    assert state["key"] == "renamed" and state["present"] == []
    assert replayed(f).present == [(0, 100)]  # the log still has the write
