"""The pure LRU choice of cache entries to evict, and size parsing."""

from __future__ import annotations

import pytest

from pervade.core.cache_policy import CachedEntry, CacheFull, choose_evictions, parse_size
from pervade.core.config import ConfigError


def entry(digest: str, size: int, used: float, pinned: bool = False) -> CachedEntry:
    return CachedEntry(digest, size, used, pinned)


def test_nothing_evicted_when_it_fits() -> None:
    held = [entry("a", 10, 1.0), entry("b", 10, 2.0)]
    assert choose_evictions(held, 10, limit=30) == ()
    assert choose_evictions(held, 10**9) == ()  # no limit, no disk concern


def test_least_recently_used_go_first_until_it_fits() -> None:
    held = [entry("new", 10, 5.0), entry("old", 10, 1.0), entry("mid", 10, 3.0)]
    assert choose_evictions(held, 15, limit=40) == ("old",)
    assert choose_evictions(held, 25, limit=40) == ("old", "mid")


def test_pinned_entries_are_never_chosen() -> None:
    held = [entry("old", 10, 1.0, pinned=True), entry("mid", 10, 3.0), entry("new", 10, 5.0)]
    assert choose_evictions(held, 15, limit=40) == ("mid",)


def test_free_disk_space_is_made_as_well() -> None:
    held = [entry("a", 10, 1.0), entry("b", 10, 2.0)]
    # No limit, but only 5 bytes free on the disk: 10 more are needed.
    assert choose_evictions(held, 15, free=5) == ("a",)
    assert choose_evictions(held, 15, limit=100, free=0) == ("a", "b")


def test_an_artifact_larger_than_the_limit_is_a_clear_error() -> None:
    with pytest.raises(CacheFull, match=r"model.*needs 50 bytes.*limit of 40 bytes"):
        choose_evictions([entry("a", 1, 1.0)], 50, limit=40, name="model")


def test_impossible_when_pinned_entries_hold_the_room() -> None:
    held = [entry("a", 30, 1.0, pinned=True), entry("b", 5, 2.0)]
    with pytest.raises(CacheFull, match=r"frees 5 of the 25 bytes.*30 bytes are pinned"):
        choose_evictions(held, 30, limit=40)


def test_negative_need_is_rejected() -> None:
    with pytest.raises(ValueError, match="needed bytes"):
        choose_evictions([], -1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("50GB", 50 * 10**9), ("1.5 GiB", 3 * 2**29), ("10mb", 10**7), ("7B", 7)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "5 parsecs", "-3GB"])
def test_parse_size_names_the_field(text: str) -> None:
    with pytest.raises(ConfigError, match="PERVADE_ARTIFACT_CACHE_LIMIT"):
        parse_size(text, "PERVADE_ARTIFACT_CACHE_LIMIT")
