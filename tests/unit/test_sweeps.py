"""sweeps.Sweeps: when a directory's lookups make a sweep that one LIST answers better."""

from __future__ import annotations

from s3mount.sweeps import BATCH, SWEEP, Sweeps


def test_new_names_in_rising_order_make_a_sweep():
    sweeps = Sweeps()
    answers = [sweeps.new_name(f"f{i:03}") for i in range(SWEEP + 2)]
    assert answers == [False] * SWEEP + [True, True]


def test_a_new_name_out_of_order_starts_counting_again():
    sweeps = Sweeps()
    for name in ("b", "c", "d"):
        sweeps.new_name(name)
    assert sweeps.new_name("a") is False  # back to the start: one in a row
    assert [sweeps.new_name(n) for n in ("e", "f")] == [False, True]


def test_files_needing_metadata_are_counted_apart_from_new_names():
    sweeps = Sweeps()
    assert [sweeps.needs_metadata(n) for n in ("a", "b", "c")] == [False, False, True]
    assert sweeps.new_name("x") is False  # another pattern, its own count
    assert sweeps.needs_metadata("b") is False  # out of order: a new run


def test_stale_entries_count_only_toward_a_page_of_a_big_directory():
    sweeps = Sweeps()
    assert not sweeps.big
    sweeps.listed_all(BATCH - 1)
    assert not sweeps.big
    sweeps.listed_all(BATCH)
    assert sweeps.big
    assert [sweeps.stale_entry() for _ in range(SWEEP + 1)] == [False] * SWEEP + [True]


def test_a_full_listing_starts_the_stale_and_metadata_counts_again():
    sweeps = Sweeps()
    for name in ("a", "b", "c"):
        sweeps.needs_metadata(name)
        sweeps.stale_entry()
        sweeps.new_name(name)
    sweeps.listed_all(BATCH)
    assert sweeps.stale_entry() is False and sweeps.needs_metadata("d") is False
    assert sweeps.new_name("d") is True  # new names are not what a listing answers
