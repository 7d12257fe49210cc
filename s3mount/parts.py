"""Where the parts of a multipart upload fall: a layout that depends only on the offset.

Parts written while a file is still growing stay valid when it grows further, so they can be
uploaded before the file is closed.  Every 1,000 parts the part size doubles: 8 MiB parts reach
8 TiB in S3's 10,000 parts, past its 5 TiB object limit.
"""

from __future__ import annotations

from s3mount.errors import FileTooBig

MIB = 1024 * 1024
MIN_PART = 5 * MIB  # S3's smallest part (but the last)
MIN_BASE = 6 * MIB  # the smallest first-tier part whose ten tiers still reach 5 TiB
MAX_PARTS = 10_000
MAX_OBJECT = 5 * 1024**4


PARTS_PER_TIER = 1000


def plan_parts(size: int, part_size: int) -> list[tuple[int, int, int]]:
    """(part number, offset, length) for a multipart upload of `size` bytes.

    The layout depends only on the offset, never on the final size, so parts uploaded while a
    file is still growing stay valid: every 1,000 parts the part size doubles (8 MiB parts reach
    8 TiB in 10,000 parts, past S3's 5 TiB object limit).
    """
    if size > MAX_OBJECT:
        raise FileTooBig(f"{size} bytes is over S3's 5 TiB object limit")
    base = max(part_size, MIN_BASE)
    plan: list[tuple[int, int, int]] = []
    offset = 0
    while offset < size or not plan:
        number = len(plan) + 1
        if number > MAX_PARTS:
            raise FileTooBig(f"{size} bytes needs more than {MAX_PARTS} parts")
        length = min(base << min((number - 1) // PARTS_PER_TIER, 9), size - offset)
        plan.append((number, offset, length))
        offset += length
    return plan


def part_span(number: int, part_size: int) -> tuple[int, int]:
    """[start, end) of part `number` in the layout of `plan_parts`."""
    base = max(part_size, MIN_BASE)
    tier = min((number - 1) // PARTS_PER_TIER, 9)
    start = PARTS_PER_TIER * base * ((1 << tier) - 1) + (
        number - 1 - tier * PARTS_PER_TIER) * (base << tier)
    return start, start + (base << tier)


def part_at(offset: int, part_size: int) -> int:
    """Number of the part that holds byte `offset`."""
    base = max(part_size, MIN_BASE)
    tier = 0
    while tier < 9 and PARTS_PER_TIER * base * ((1 << (tier + 1)) - 1) <= offset:
        tier += 1
    within = offset - PARTS_PER_TIER * base * ((1 << tier) - 1)
    return tier * PARTS_PER_TIER + within // (base << tier) + 1


def parts_within(start: int, end: int, part_size: int) -> range:
    """Numbers of the parts that bytes [start, end) touch."""
    if end <= start:
        return range(0)
    return range(part_at(start, part_size), part_at(end - 1, part_size) + 1)
