"""Unit tests of the pure modules: no network, no FUSE, no trio loop.

staging (extents and the sparse staged file), uploader.plan_parts, keys, store (attribute
encoding), cli (argument and `-o` parsing into a MountConfig) and inodes.InodeTable.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest

from s3mount import cli
from s3mount.errors import ConfigError, FileTooBig, InvalidName, NameTooLong
from s3mount.inodes import ROOT_INODE, InodeTable
from s3mount.keys import decode_name, is_posix_segment, split_listing_name
from s3mount.staging import StagedFile, add_extent, clip_extents, missing_ranges
from s3mount.store import (
    ObjectInfo,
    PosixAttrs,
    decode_attrs,
    encode_attrs,
    is_symlink_meta,
    parse_mtime_ns,
)
from s3mount.uploader import plan_parts

MIB = 1024 * 1024
# S3's own limits, which every upload plan must respect.
MIN_PART = 5 * MIB
MAX_PARTS = 10_000
MAX_OBJECT = 5 * 1024**4

# -- staging: extents --------------------------------------------------------------------------


@pytest.mark.parametrize(("extents", "start", "end", "expected"), [
    ([], 0, 10, [(0, 10)]),
    ([], 5, 5, []),  # empty range: nothing added
    ([], 7, 3, []),  # inverted range: nothing added
    ([(0, 10)], 20, 30, [(0, 10), (20, 30)]),
    ([(20, 30)], 0, 10, [(0, 10), (20, 30)]),
    ([(0, 10)], 10, 20, [(0, 20)]),  # touching extents merge
    ([(10, 20)], 0, 10, [(0, 20)]),
    ([(0, 10), (20, 30)], 5, 25, [(0, 30)]),  # bridges two
    ([(0, 10), (20, 30), (40, 50)], 10, 40, [(0, 50)]),
    ([(0, 100)], 10, 20, [(0, 100)]),  # inside an existing one
    ([(10, 20)], 0, 100, [(0, 100)]),  # swallows an existing one
    ([(0, 5), (10, 15), (30, 40)], 12, 20, [(0, 5), (10, 20), (30, 40)]),
])
def test_add_extent(extents, start, end, expected):
    assert add_extent(list(extents), start, end) == expected


def test_add_extent_keeps_extents_sorted_and_disjoint():
    extents: list[tuple[int, int]] = []
    covered: set[int] = set()
    for start, end in [(50, 60), (0, 3), (70, 80), (59, 71), (5, 6), (3, 5), (100, 101)]:
        extents = add_extent(extents, start, end)
        covered.update(range(start, end))
        assert extents == sorted(extents)
        for (_, e1), (s2, _) in zip(extents, extents[1:], strict=False):
            assert e1 < s2  # disjoint and not touching
        assert {i for s, e in extents for i in range(s, e)} == covered
    assert extents == [(0, 6), (50, 80), (100, 101)]


@pytest.mark.parametrize(("extents", "limit", "expected"), [
    ([], 10, []),
    ([(0, 10), (20, 30)], 25, [(0, 10), (20, 25)]),
    ([(0, 10), (20, 30)], 20, [(0, 10)]),  # an extent starting at the limit goes
    ([(0, 10), (20, 30)], 10, [(0, 10)]),
    ([(0, 10)], 0, []),
    ([(0, 10)], 100, [(0, 10)]),
])
def test_clip_extents(extents, limit, expected):
    assert clip_extents(extents, limit) == expected


@pytest.mark.parametrize(("extents", "start", "end", "expected"), [
    ([], 0, 10, [(0, 10)]),
    ([(0, 10)], 0, 10, []),
    ([(0, 10)], 2, 8, []),
    ([(2, 4)], 0, 10, [(0, 2), (4, 10)]),
    ([(0, 3), (5, 7)], 0, 10, [(3, 5), (7, 10)]),
    ([(0, 3), (5, 7)], 4, 6, [(4, 5)]),
    ([(20, 30)], 0, 10, [(0, 10)]),  # extent after the range
    ([(0, 5)], 10, 20, [(10, 20)]),  # extent before the range
    ([(0, 5), (8, 30)], 2, 25, [(5, 8)]),
    ([], 5, 5, []),
])
def test_missing_ranges(extents, start, end, expected):
    assert missing_ranges(extents, start, end) == expected


# -- staging: StagedFile ----------------------------------------------------------------------

BASE = bytes(range(256)) * 4  # 1024 bytes of a pretend base object, no zero runs to hide in


def fill_from_base(staged: StagedFile, start: int = 0, end: int | None = None) -> None:
    """What `FileData` does: fetch each remote gap of the base object into the staged file."""
    end = staged.size if end is None else end
    for s, e in staged.remote_gaps(start, end):
        staged.fill(s, BASE[s:e])


@pytest.fixture
def staged_base(tmp_path):
    staged = StagedFile(tmp_path / "staging", len(BASE), "etag-1")
    yield staged
    staged.close()


def test_staged_directory_and_file_are_private(tmp_path):
    staged = StagedFile(tmp_path / "staging", 0, None)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "staging").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(staged.path).st_mode) == 0o600
    finally:
        staged.close()
    assert not os.path.exists(staged.path)


def test_new_file_without_base(tmp_path):
    staged = StagedFile(tmp_path, 0, None)
    try:
        assert staged.size == 0 and staged.base_valid == 0 and not staged.dirty
        assert staged.read(0, 100) == b""
        assert staged.remote_gaps(0, 100) == []
        assert staged.write(0, b"hello") == 5
        assert staged.dirty and staged.size == 5
        assert staged.read(0, 100) == b"hello"
        assert staged.read(2, 2) == b"ll"
        assert staged.read(5, 10) == b""
        assert staged.read(50, 10) == b""
        # A write past the end leaves a hole that reads as zeros, never fetched.
        staged.write(10, b"xy")
        assert staged.size == 12
        assert staged.read(0, 12) == b"hello\0\0\0\0\0xy"
        assert staged.remote_gaps(0, 12) == []
    finally:
        staged.close()


def test_base_file_reads_through_gaps(staged_base):
    staged = staged_base
    assert staged.size == len(BASE) and staged.base_valid == len(BASE)
    assert not staged.dirty
    assert staged.remote_gaps(0, len(BASE)) == [(0, len(BASE))]
    assert staged.remote_gaps(100, 50) == []
    staged.write(100, b"W" * 10)
    assert staged.remote_gaps(0, len(BASE)) == [(0, 100), (110, len(BASE))]
    assert staged.remote_gaps(100, 110) == []
    fill_from_base(staged)
    assert staged.remote_gaps(0, len(BASE)) == []
    expected = BASE[:100] + b"W" * 10 + BASE[110:]
    assert staged.read(0, 2000) == expected


def test_fill_never_overwrites_written_bytes(staged_base):
    staged = staged_base
    staged.write(10, b"A" * 5)
    staged.write(30, b"B" * 5)
    # A fetch of the whole range that began before the writes: it must fill only the gaps.
    staged.fill(0, BASE[0:64])
    assert staged.read(0, 64) == BASE[:10] + b"A" * 5 + BASE[15:30] + b"B" * 5 + BASE[35:64]
    assert staged.present == [(0, 64)]
    # A fill of bytes already present (filled or written) changes nothing.
    staged.fill(0, b"\xee" * 64)
    assert staged.read(0, 64) == BASE[:10] + b"A" * 5 + BASE[15:30] + b"B" * 5 + BASE[35:64]


def test_fill_does_not_dirty(staged_base):
    staged = staged_base
    staged.fill(0, BASE[:100])
    assert not staged.dirty
    assert staged.remote_gaps(0, 100) == []


def test_write_over_filled_bytes_wins(staged_base):
    staged = staged_base
    fill_from_base(staged)
    staged.write(0, b"new")
    assert staged.read(0, 5) == b"new" + BASE[3:5]


def test_truncate_shrink_then_grow_reads_zeros_never_base(staged_base):
    staged = staged_base
    staged.truncate(100)
    assert staged.size == 100 and staged.base_valid == 100 and staged.dirty
    staged.truncate(300)
    assert staged.size == 300
    assert staged.base_valid == 100  # only ever shrinks
    assert staged.remote_gaps(0, 300) == [(0, 100)]
    fill_from_base(staged)
    assert staged.read(0, 300) == BASE[:100] + b"\0" * 200


def test_truncate_shrink_after_fill_then_grow_reads_zeros(staged_base):
    staged = staged_base
    fill_from_base(staged)  # every base byte is local now
    staged.truncate(10)
    staged.truncate(len(BASE))
    assert staged.read(0, len(BASE)) == BASE[:10] + b"\0" * (len(BASE) - 10)
    assert staged.remote_gaps(0, len(BASE)) == []


def test_truncate_shrink_clips_written_extents(staged_base):
    staged = staged_base
    staged.write(50, b"W" * 100)
    staged.truncate(80)
    assert staged.present == [(50, 80)]
    staged.truncate(200)
    fill_from_base(staged)
    assert staged.read(0, 200) == BASE[:50] + b"W" * 30 + b"\0" * 120


def test_truncate_to_zero_then_write(staged_base):
    staged = staged_base
    staged.truncate(0)
    assert staged.base_valid == 0 and staged.remote_gaps(0, 1000) == []
    staged.write(5, b"x")
    assert staged.read(0, 10) == b"\0" * 5 + b"x"


def test_grow_of_base_file_fetches_only_the_base_range(staged_base):
    staged = staged_base
    staged.truncate(len(BASE) + 100)
    assert staged.remote_gaps(0, len(BASE) + 100) == [(0, len(BASE))]
    fill_from_base(staged)
    assert staged.read(0, 2000) == BASE + b"\0" * 100


def test_fill_after_shrink_never_resurrects_base_bytes(staged_base):
    staged = staged_base
    staged.truncate(10)  # a fetch of [0, 1024) was in flight when this happened
    staged.fill(0, BASE)
    assert os.fstat(staged.fd).st_size == 10
    staged.truncate(len(BASE))
    assert staged.read(0, len(BASE)) == BASE[:10] + b"\0" * (len(BASE) - 10)


# -- uploader.plan_parts ----------------------------------------------------------------------


def check_plan(size: int, part_size: int) -> list[tuple[int, int, int]]:
    plan = plan_parts(size, part_size)
    assert len(plan) <= MAX_PARTS
    assert [n for n, _, _ in plan] == list(range(1, len(plan) + 1))
    pos = 0
    for _, offset, length in plan:
        assert offset == pos
        pos += length
    assert pos == size
    for _, _, length in plan[:-1]:
        assert length >= MIN_PART
    assert all(length > 0 for _, _, length in plan) or size == 0
    return plan


SIZES = [1, MIN_PART - 1, MIN_PART, MIN_PART + 1, 12 * MIB, 100 * MIB + 7, 80 * 1024 * MIB,
         1024**4]


@pytest.mark.parametrize("size", [*SIZES, MAX_OBJECT - 1, MAX_OBJECT])
@pytest.mark.parametrize("part_size", [8 * MIB, 64 * MIB + 3])
def test_plan_parts_covers_size(size, part_size):
    check_plan(size, part_size)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("part_size", [1, 5 * MIB])
def test_plan_parts_covers_size_with_small_parts(size, part_size):
    check_plan(size, part_size)


def test_plan_parts_small_part_size_is_raised_to_the_minimum():
    plan = check_plan(12 * MIB, 1024)
    # 6 MiB, not S3's 5 MiB: the smallest first tier whose ten doublings still reach 5 TiB.
    assert [length for _, _, length in plan] == [6 * MIB, 6 * MIB]


def test_plan_parts_uses_the_given_part_size():
    plan = check_plan(20 * MIB, 8 * MIB)
    assert [(o, n) for _, o, n in plan] == [(0, 8 * MIB), (8 * MIB, 8 * MIB),
                                            (16 * MIB, 4 * MIB)]


def test_plan_parts_part_size_grows_for_huge_files():
    assert {length for _, _, length in plan_parts(1024 * MIB, 8 * MIB)} == {8 * MIB}
    # 1 TiB and 5 TiB cannot fit in 10,000 parts of 8 MiB: parts must grow.
    for size in (1024**4, MAX_OBJECT):
        plan = check_plan(size, 8 * MIB)
        assert max(length for _, _, length in plan) > 8 * MIB


@pytest.mark.parametrize("part_size", [1, MIN_PART])
def test_plan_parts_5_tib_with_the_smallest_parts(part_size):
    check_plan(MAX_OBJECT, part_size)


def test_plan_parts_empty_file_has_nothing_to_send():
    assert sum(length for _, _, length in plan_parts(0, 8 * MIB)) == 0


def test_plan_parts_over_5_tib_raises_file_too_big():
    for part_size in (1, 8 * MIB, 5 * 1024**3):
        with pytest.raises(FileTooBig) as exc:
            plan_parts(MAX_OBJECT + 1, part_size)
        assert exc.value.errno == errno.EFBIG


# -- keys --------------------------------------------------------------------------------------


def test_decode_name_accepts_utf8():
    assert decode_name(b"hello.txt") == "hello.txt"
    assert decode_name("ünï 日本 🎉".encode()) == "ünï 日本 🎉"
    assert decode_name(b"n" * 255) == "n" * 255
    assert decode_name(b"...") == "..."
    assert decode_name(b".hidden") == ".hidden"


def test_decode_name_too_long():
    with pytest.raises(NameTooLong) as exc:
        decode_name(b"n" * 256)
    assert exc.value.errno == errno.ENAMETOOLONG
    with pytest.raises(NameTooLong):
        decode_name("日".encode() * 86)  # 258 bytes, 86 characters
    with pytest.raises(NameTooLong):
        decode_name(b"\xff" * 300)  # the length wins over the encoding


@pytest.mark.parametrize("raw", [b"bad\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc"])
def test_decode_name_not_utf8(raw):
    with pytest.raises(InvalidName) as exc:
        decode_name(raw)
    assert exc.value.errno == errno.EINVAL


@pytest.mark.parametrize("raw", [b"", b".", b"..", b"a/b", b"/", b"a\0b"])
def test_decode_name_invalid(raw):
    with pytest.raises(InvalidName) as exc:
        decode_name(raw)
    assert exc.value.errno == errno.EINVAL


@pytest.mark.parametrize(("prefix", "key", "expected"), [
    ("", "file", "file"),
    ("", "dir/", "dir"),
    ("a/", "a/file", "file"),
    ("a/", "a/sub/", "sub"),
    ("a/b/", "a/b/c d", "c d"),
    ("a/", "a/", None),  # the directory's own marker
    ("a/", "a//", None),  # an empty segment
    ("", "/", None),
    ("", "//x", None),
    ("a/", "a/./", None),
    ("a/", "a/.", None),
    ("a/", "a/..", None),
    ("a/", "a/../", None),
    ("a/", "a/x\0y", None),
    ("a/", "a/b/c", None),  # not a direct child
    ("a/", "a/" + "z" * 255, "z" * 255),
    ("a/", "a/" + "z" * 256, None),
    ("a/", "a/" + "z" * 256 + "/", None),
    ("", "🎉" * 63, "🎉" * 63),  # 252 bytes
    ("", "🎉" * 64, None),  # 256 bytes in UTF-8, though 64 characters
    ("", "...", "..."),
])
def test_split_listing_name(prefix, key, expected):
    assert split_listing_name(prefix, key) == expected


def test_is_posix_segment_lone_surrogate_does_not_crash():
    # A name that is not UTF-8 (surrogate-escaped) is a name: it must not crash, and is shown.
    assert is_posix_segment("a\udcff") is True
    assert is_posix_segment("\udcff" * 300) is False  # over NAME_MAX however it is counted


# -- store: attributes ------------------------------------------------------------------------


@pytest.mark.parametrize("attrs", [
    PosixAttrs(stat.S_IFREG | 0o644, 1000, 1000, 1_600_000_000_123_456_789),
    PosixAttrs(stat.S_IFDIR | 0o755, 0, 0, 0),
    PosixAttrs(stat.S_IFLNK | 0o777, 65534, 65534, 1_700_000_000_000_000_001),
    PosixAttrs(stat.S_IFREG | 0o4755, 1, 2, 1_600_000_000_000_000_000),
    PosixAttrs(stat.S_IFREG | 0o600, 1, 2, -1_500_000_000),  # before 1970
])
def test_encode_decode_round_trip(attrs):
    meta = encode_attrs(attrs)
    assert set(meta) == {"mode", "uid", "gid", "mtime"}
    assert all(isinstance(v, str) for v in meta.values())
    info = ObjectInfo("k", 1, "etag", 1.0, meta)
    assert decode_attrs(info, stat.S_IFMT(attrs.mode), 0o600, 4321, 4321) == attrs


def test_encode_attrs_s3fs_format():
    meta = encode_attrs(PosixAttrs(stat.S_IFREG | 0o750, 1234, 5678, 1_600_000_000_000_000_005))
    assert meta == {"mode": str(0o100750), "uid": "1234", "gid": "5678",
                    "mtime": "1600000000.000000005"}


@pytest.mark.parametrize(("text", "expected"), [
    ("1600000000", 1_600_000_000_000_000_000),
    ("1600000000.5", 1_600_000_000_500_000_000),
    ("1600000000.123456789", 1_600_000_000_123_456_789),
    ("1600000000.000000001", 1_600_000_000_000_000_001),
    ("1600000000.1234567891", 1_600_000_000_123_456_789),  # beyond ns: cut
    (" 1600000000 ", 1_600_000_000_000_000_000),
    ("0", 0),
])
def test_parse_mtime_ns(text, expected):
    assert parse_mtime_ns(text) == expected


@pytest.mark.parametrize("text", ["", "garbage", "1.2.3", "1e9", "0x10", ".5", "16000.x",
                                  "16 00", "-", "nan", "inf"])
def test_parse_mtime_ns_garbage(text):
    assert parse_mtime_ns(text) is None


@pytest.mark.parametrize("text", ["²", "1600000000.³", "¹600000000"])
def test_parse_mtime_ns_non_ascii_digits(text):
    assert parse_mtime_ns(text) is None


def info_with(metadata):
    return ObjectInfo("k", 10, "etag", 1_500_000_000.0, metadata)


@pytest.mark.parametrize("metadata", [None, {}, {"other": "x"}])
def test_decode_attrs_missing_metadata_uses_defaults(metadata):
    attrs = decode_attrs(info_with(metadata), stat.S_IFREG, 0o640, 11, 22)
    assert attrs == PosixAttrs(stat.S_IFREG | 0o640, 11, 22, 1_500_000_000_000_000_000)
    attrs = decode_attrs(info_with(metadata), stat.S_IFDIR, 0o750, 11, 22)
    assert attrs.mode == stat.S_IFDIR | 0o750


def test_decode_attrs_garbage_metadata_uses_defaults():
    meta = {"mode": "rwx", "uid": "root", "gid": "", "mtime": "yesterday"}
    attrs = decode_attrs(info_with(meta), stat.S_IFREG, 0o644, 11, 22)
    assert attrs == PosixAttrs(stat.S_IFREG | 0o644, 11, 22, 1_500_000_000_000_000_000)


def test_decode_attrs_mode_without_type_bits_keeps_permissions():
    attrs = decode_attrs(info_with({"mode": str(0o600)}), stat.S_IFREG, 0o644, 0, 0)
    assert attrs.mode == stat.S_IFREG | 0o600


def test_decode_attrs_mode_of_another_kind_gets_default_permissions():
    # A `dir/` marker with a file's mode stays a directory, with the default permissions.
    attrs = decode_attrs(info_with({"mode": str(stat.S_IFREG | 0o600)}), stat.S_IFDIR, 0o755,
                         0, 0)
    assert attrs.mode == stat.S_IFDIR | 0o755


def test_decode_attrs_reads_s3fs_mtime_forms():
    for text, ns in [("1600000000", 1_600_000_000_000_000_000),
                     ("1600000000.5", 1_600_000_000_500_000_000)]:
        assert decode_attrs(info_with({"mtime": text}), stat.S_IFREG, 0o644, 0, 0).mtime_ns == ns


@pytest.mark.parametrize("meta", [{"mode": "-1"}, {"mode": str(2**70)}, {"uid": "-5"},
                                  {"gid": str(2**40)}])
def test_decode_attrs_out_of_range_numbers_use_defaults(meta):
    attrs = decode_attrs(info_with(meta), stat.S_IFREG, 0o644, 11, 22)
    assert attrs.mode == stat.S_IFREG | 0o644
    assert (attrs.uid, attrs.gid) == (11, 22)


@pytest.mark.parametrize("mode", ["-1", str(2**70)])
def test_is_symlink_meta_out_of_range_mode(mode):
    assert is_symlink_meta({"mode": mode}) is False


def test_is_symlink_meta():
    assert is_symlink_meta({"mode": str(stat.S_IFLNK | 0o777)})
    assert not is_symlink_meta({"mode": str(stat.S_IFREG | 0o777)})
    assert not is_symlink_meta({"mode": "garbage"})
    assert not is_symlink_meta({})
    assert not is_symlink_meta(None)


# -- cli ---------------------------------------------------------------------------------------


def test_make_config_defaults(tmp_path):
    config = cli.make_config(["my-bucket", str(tmp_path)])
    assert config.bucket == "my-bucket"
    assert config.prefix == ""
    assert config.mountpoint == str(tmp_path)
    assert not config.read_only and not config.allow_other and not config.foreground
    assert config.file_mode == 0o644 and config.dir_mode == 0o755
    assert config.uid == os.getuid() and config.gid == os.getgid()
    assert config.addressing_style == "path"


@pytest.mark.parametrize(("source", "bucket", "prefix"), [
    ("b-1:photos", "b-1", "photos/"),
    ("b-1:photos/", "b-1", "photos/"),
    ("b-1:/a/b/", "b-1", "a/b/"),
    ("b-1:", "b-1", ""),
    ("my.bucket_x", "my.bucket_x", ""),
])
def test_make_config_source(tmp_path, source, bucket, prefix):
    config = cli.make_config([source, str(tmp_path)])
    assert (config.bucket, config.prefix) == (bucket, prefix)


def test_make_config_relative_mountpoint_is_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "mnt").mkdir()
    monkeypatch.chdir(tmp_path)
    assert cli.make_config(["bkt", "mnt"]).mountpoint == str(tmp_path / "mnt")


def test_flags(tmp_path):
    config = cli.make_config([
        "--read-only", "--allow-other", "-f", "--endpoint-url", "http://h:9000",
        "--region", "eu-1", "--file-mode", "0600", "--dir-mode", "700", "--uid", "7",
        "--gid", "8", "--metadata-ttl", "2.5", "--max-concurrency", "3",
        "--addressing-style", "virtual", "--signature-version", "v2", "--log-level", "debug",
        "--cache-dir", str(tmp_path / "c"), "bkt", str(tmp_path)])
    assert config.read_only and config.allow_other and config.foreground
    assert config.endpoint_url == "http://h:9000" and config.region == "eu-1"
    assert (config.file_mode, config.dir_mode) == (0o600, 0o700)
    assert (config.uid, config.gid) == (7, 8)
    assert config.metadata_ttl == 2.5 and config.max_concurrency == 3
    assert config.addressing_style == "virtual" and config.signature_version == "v2"
    assert config.log_level == "debug" and config.cache_dir == str(tmp_path / "c")


def test_o_options_equal_the_flags(tmp_path):
    by_o = cli.make_config([
        "-o", "ro,allow_other,endpoint_url=http://x,file_mode=600,_netdev",
        "-o", "uid=7,gid=8,dir-mode=700,metadata_ttl=3,max_concurrency=4,f",
        "-o", "addressing_style=virtual,log_level=debug,region=r1,cache_dir=/c",
        "bkt", str(tmp_path)])
    by_flags = cli.make_config([
        "--read-only", "--allow-other", "--endpoint-url", "http://x", "--file-mode", "600",
        "--uid", "7", "--gid", "8", "--dir-mode", "700", "--metadata-ttl", "3",
        "--max-concurrency", "4", "-f", "--addressing-style", "virtual", "--log-level",
        "debug", "--region", "r1", "--cache-dir", "/c", "bkt", str(tmp_path)])
    assert by_o == by_flags
    assert by_o.read_only and by_o.allow_other and by_o.file_mode == 0o600


@pytest.mark.parametrize("ignored", ["rw", "defaults", "_netdev", "nofail", "noauto", "user",
                                     "nosuid", "nodev", "noatime", "relatime", "async"])
def test_o_fstab_options_are_ignored(tmp_path, ignored):
    assert cli.make_config(["-o", ignored, "bkt", str(tmp_path)]) == cli.make_config(
        ["bkt", str(tmp_path)])


def test_o_empty_items_are_ignored(tmp_path):
    config = cli.make_config(["-o", ",ro,,", "bkt", str(tmp_path)])
    assert config.read_only


@pytest.mark.parametrize("option", ["x-systemd.automount", "x-systemd.idle-timeout=60",
                                    "x-gvfs-hide"])
def test_o_x_options_are_ignored(tmp_path, option):
    config = cli.make_config(["-o", f"ro,allow_other,endpoint_url=http://x,file_mode=600,"
                              f"_netdev,{option}", "bkt", str(tmp_path)])
    assert config.read_only and config.allow_other
    assert config.endpoint_url == "http://x" and config.file_mode == 0o600


@pytest.mark.parametrize("option", [
    "nosuchoption", "nosuchoption=1", "source=x", "mountpoint=/x", "options=x", "help",
    "version", "ro=1", "allow_other=yes", "endpoint_url", "file_mode", "file_mode=999",
    "file_mode=rw", "dir_mode=17777", "uid=-1", "uid=abc", "metadata_ttl=-1",
    "addressing_style=foo", "log_level=loud", "max_concurrency=x",
])
def test_o_bad_option_raises_usage_error(tmp_path, option):
    with pytest.raises(ConfigError) as exc:
        cli.make_config(["-o", option, "bkt", str(tmp_path)])
    assert exc.value.status == 2
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(("argv", "delay"), [
    ([], None),
    (["--write-back"], cli.WRITE_BACK_DELAY),  # never takes the bucket as its delay
    (["--write-back=2.5"], 2.5),
    (["--write-back=0"], 0.0),
    (["-o", "write_back"], cli.WRITE_BACK_DELAY),
    (["-o", "ro,write_back=30"], 30.0),
])
def test_write_back_with_or_without_a_delay(tmp_path, argv, delay):
    assert cli.make_config([*argv, "bkt", str(tmp_path)]).write_back == delay


@pytest.mark.parametrize(("line", "delay"), [
    ("write_back", cli.WRITE_BACK_DELAY), ("write-back = true", cli.WRITE_BACK_DELAY),
    ("write_back = 1", 1.0), ("write_back = 12.5", 12.5), ("write_back = off", None),
])
def test_write_back_in_a_config_file(tmp_path, line, delay):
    conf = tmp_path / "m.conf"
    conf.write_text(f"{line}\n")
    assert cli.make_config(["--config", str(conf), "bkt", str(tmp_path)]).write_back == delay


@pytest.mark.parametrize("argv", [["--write-back=-1"], ["--write-back=soon"],
                                  ["-o", "write_back=nan"]])
def test_write_back_bad_delay_is_a_usage_error(tmp_path, argv):
    with pytest.raises(ConfigError) as exc:
        cli.make_config([*argv, "bkt", str(tmp_path)])
    assert exc.value.status == 2


def test_o_unknown_option_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nosuchoption"):
        cli.make_config(["-o", "ro,nosuchoption", "bkt", str(tmp_path)])


@pytest.mark.parametrize("argv", [
    ["--file-mode", "999"], ["--file-mode", "abc"], ["--dir-mode", "-1"],
    ["--dir-mode", "10000"], ["--addressing-style", "foo"], ["--signature-version", "v3"],
    ["--uid", "-3"], ["--max-concurrency", "0"], ["--metadata-ttl", "soon"], ["--bogus"],
])
def test_bad_flags_raise_usage_error(tmp_path, argv):
    with pytest.raises(ConfigError) as exc:
        cli.make_config([*argv, "bkt", str(tmp_path)])
    assert exc.value.status == 2


def test_missing_arguments_raise_usage_error():
    with pytest.raises(ConfigError) as exc:
        cli.make_config(["bkt"])
    assert exc.value.status == 2


@pytest.mark.parametrize("source", ["a", "-bucket", "bad bucket", "b!x", "", ":prefix",
                                    "x" * 256, "bkt:a//b"])
def test_bad_source(tmp_path, source):
    with pytest.raises(ConfigError) as exc:
        cli.make_config([source, str(tmp_path)])
    assert exc.value.status == 2


def test_missing_mountpoint(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as exc:
        cli.make_config(["bkt", str(tmp_path / "nowhere")])
    assert exc.value.status == 1


def test_mountpoint_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory") as exc:
        cli.make_config(["bkt", str(tmp_path / "file")])
    assert exc.value.status == 1


def test_mountpoint_is_already_a_mount_point():
    with pytest.raises(ConfigError, match="already a mount point"):
        cli.make_config(["bkt", "/proc"])


def test_main_reports_one_line(tmp_path, capsys):
    assert cli.main(["-o", "nosuchoption", "bkt", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("s3mount: ")
    assert cli.main(["bkt", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


# -- inodes.InodeTable ------------------------------------------------------------------------


@pytest.fixture
def table():
    return InodeTable(1000, 1000, 0o755)


def add_dir(table: InodeTable, parent: int, name: str):
    return table.add(parent, name, stat.S_IFDIR | 0o755, 0, 0, etag="")


def add_file(table: InodeTable, parent: int, name: str):
    return table.add(parent, name, stat.S_IFREG | 0o644, 0, 0, etag="e")


def test_root(table):
    root = table.get(ROOT_INODE)
    assert root is not None and root.is_dir and table.key(root) == ""
    assert root.mode == stat.S_IFDIR | 0o755 and (root.uid, root.gid) == (1000, 1000)
    table.forget(ROOT_INODE, 100)
    table.detach(root)
    assert table.get(ROOT_INODE) is root  # the root never goes


def test_key_through_parent_chain(table):
    a = add_dir(table, ROOT_INODE, "a")
    b = add_dir(table, a.ino, "b c")
    f = add_file(table, b.ino, "f.txt")
    top = add_file(table, ROOT_INODE, "top")
    assert table.key(a) == "a"
    assert table.key(b) == "a/b c"
    assert table.key(f) == "a/b c/f.txt"
    assert table.key(top) == "top"
    assert table.child(b.ino, "f.txt") is f
    assert table.child(b.ino, "nope") is None
    assert {i.name for i in table.children(ROOT_INODE)} == {"a", "top"}
    assert len({a.ino, b.ino, f.ino, top.ino, ROOT_INODE}) == 5


def test_subtree_walks_top_then_everything_under_it(table):
    a = add_dir(table, ROOT_INODE, "a")
    b = add_dir(table, a.ino, "b")
    f = add_file(table, b.ino, "f")
    g = add_file(table, a.ino, "g")
    add_file(table, ROOT_INODE, "outside")
    walk = table.subtree(a)
    assert next(walk) is a
    late = add_file(table, b.ino, "late")  # added mid-walk, under a node not yet reached
    assert {n.ino for n in walk} == {b.ino, f.ino, g.ino, late.ino}
    assert list(table.subtree(f)) == [f]


def test_move_rekeys_descendants(table):
    a = add_dir(table, ROOT_INODE, "a")
    b = add_dir(table, a.ino, "b")
    f = add_file(table, b.ino, "f")
    other = add_dir(table, ROOT_INODE, "other")
    table.move(a, other.ino, "moved")
    assert table.key(a) == "other/moved"
    assert table.key(b) == "other/moved/b"
    assert table.key(f) == "other/moved/b/f"
    assert table.child(ROOT_INODE, "a") is None
    assert table.child(other.ino, "moved") is a
    assert table.get(f.ino) is f


def test_move_over_existing_detaches_it(table):
    src = add_file(table, ROOT_INODE, "src")
    dst = add_file(table, ROOT_INODE, "dst")
    dst.lookups = 1
    table.move(src, ROOT_INODE, "dst")
    assert table.child(ROOT_INODE, "dst") is src
    assert table.child(ROOT_INODE, "src") is None
    assert dst.unlinked
    assert table.get(dst.ino) is dst  # still looked up by the kernel
    table.forget(dst.ino, 1)
    assert table.get(dst.ino) is None


def test_add_replaces_and_unlinks_the_old_inode(table):
    old = add_file(table, ROOT_INODE, "x")
    new = add_dir(table, ROOT_INODE, "x")
    assert new.ino != old.ino  # identity is immutable: a new kind gets a new inode
    assert old.unlinked and table.get(old.ino) is None
    assert table.child(ROOT_INODE, "x") is new


def test_detach_keeps_inode_while_looked_up(table):
    f = add_file(table, ROOT_INODE, "f")
    f.lookups = 2
    table.detach(f)
    assert f.unlinked
    assert table.child(ROOT_INODE, "f") is None
    assert table.get(f.ino) is f
    table.forget(f.ino, 1)
    assert table.get(f.ino) is f
    table.forget(f.ino, 1)
    assert table.get(f.ino) is None


def test_detach_keeps_inode_while_open(table):
    f = add_file(table, ROOT_INODE, "f")
    f.opens = 1
    table.detach(f)
    assert table.get(f.ino) is f
    f.opens = 0
    table.settle(f)
    assert table.get(f.ino) is None


def test_detach_of_unused_inode_drops_it(table):
    f = add_file(table, ROOT_INODE, "f")
    table.detach(f)
    assert table.get(f.ino) is None
    assert table.child(ROOT_INODE, "f") is None


def test_forget_drops_at_zero(table):
    f = add_file(table, ROOT_INODE, "f")
    f.lookups = 3
    table.forget(f.ino, 2)
    assert table.get(f.ino) is f and f.lookups == 1
    assert table.child(ROOT_INODE, "f") is f
    table.forget(f.ino, 1)
    assert table.get(f.ino) is None
    assert table.child(ROOT_INODE, "f") is None
    table.forget(f.ino, 1)  # forgetting an unknown inode is harmless
    table.forget(12345, 1)


def test_forget_more_than_looked_up_clamps(table):
    f = add_file(table, ROOT_INODE, "f")
    f.lookups = 1
    table.forget(f.ino, 5)
    assert table.get(f.ino) is None


def test_forget_keeps_directory_with_cached_children(table):
    d = add_dir(table, ROOT_INODE, "d")
    f = add_file(table, d.ino, "f")
    d.lookups, f.lookups = 1, 1
    table.forget(d.ino, 1)
    assert table.get(d.ino) is d  # f still names d as its parent
    assert table.key(f) == "d/f"
    table.forget(f.ino, 1)
    assert table.get(f.ino) is None
    assert table.child(d.ino, "f") is None


def test_forget_keeps_dirty_inode(table):
    class Dirty:
        dirty = True

    f = add_file(table, ROOT_INODE, "f")
    f.lookups = 1
    f.staged = Dirty()
    table.forget(f.ino, 1)
    assert table.get(f.ino) is f  # its data is not in the bucket yet
    f.staged = None
    table.settle(f)
    assert table.get(f.ino) is None


def test_all_and_len(table):
    a = add_dir(table, ROOT_INODE, "a")
    add_file(table, a.ino, "f")
    assert len(table) == 3
    assert {i.ino for i in table.all()} == {ROOT_INODE, a.ino, a.ino + 1}


def test_malloc_returns_big_buffers_on_glibc():
    import platform

    from s3mount import malloc_tuning

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert malloc_tuning.return_big_buffers()


@pytest.mark.parametrize("value", [
    "2026-11-25T17:55:22.000Z",  # a listing's LastModified
    "2026-11-25T17:55:22Z",
    "2026-11-25T17:55:22.123456+02:00",
    "2026-11-25T17:55:22",  # no zone: UTC, as botocore reads it
    "Wed, 25 Nov 2026 17:55:22 GMT",  # a Last-Modified header
    "1700000000",  # epoch seconds
])
def test_fast_timestamps_equal_botocores(value):
    import botocore.utils

    from s3mount.s3client import parse_timestamp

    assert parse_timestamp(value).timestamp() == botocore.utils.parse_timestamp(value).timestamp()
    assert parse_timestamp(value).tzinfo is not None


def test_mount_device_reads_the_mount_table_not_the_mount():
    from s3mount.mount import mount_device

    assert mount_device("/") == os.stat("/").st_dev
    assert mount_device("/proc") == os.stat("/proc").st_dev
    assert mount_device("/no/such/mount/point") is None
