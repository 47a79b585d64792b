"""One conformance suite that every ``Tier`` implementation must pass.

Bind it to a tier in a few lines::

    class TestMyTier(TierConformance):
        @pytest.fixture
        def tier(self) -> Iterator[MyTier]:
            tier = MyTier(...)      # empty, private to this test
            yield tier
            tier.close()

and, where the backend allows it, override the backdoor helpers so that a
value written through the API is checked by reading the backend directly (and
the other way round), not only through the API under test.

Key choice: listings are compared with ``sorted()`` only for keys made of
characters above ``/`` (letters, digits, ``_``) where byte order and the
path-segment order of filer-backed stores (SeaweedFS) agree; keys with
``-``, ``.`` or spaces are checked for complete, duplicate-free pagination in the
tier's own order.
"""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierstore.errors import InvalidArgument, InvalidRange, StoreClosed
from tierstore.tiers.base import ListPage, ObjectStat, Tier

__all__ = ["TierConformance", "list_all"]

MiB = 1024 * 1024
#: Over 20 MiB and not a multiple of any part or chunk size used below.
LARGE_SIZE = 20 * MiB + 12_345


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible-looking bytes (a wrong offset cannot match by chance)."""
    return random.Random(seed).randbytes(size)


def chunked(data: bytes, sizes: Iterable[int]) -> Iterator[bytes | bytearray | memoryview]:
    """Yield ``data`` in consecutive pieces of the given sizes (cycled), in mixed buffer types."""
    view = memoryview(data)
    position = 0
    kinds = itertools.cycle((bytes, bytearray, memoryview))
    for size in itertools.cycle(sizes):
        if position >= len(data):
            return
        piece = view[position : position + size]
        kind = next(kinds)
        yield piece if kind is memoryview else kind(piece)
        position += size


def list_all(tier: Tier, prefix: str = "", limit: int = 1000) -> list[str]:
    """Every key under ``prefix``, page by page, checking each page against the contract."""
    keys: list[str] = []
    start_after: str | None = None
    for _ in range(10_000):
        page = tier.list(prefix=prefix, start_after=start_after, limit=limit)
        assert isinstance(page, ListPage)
        assert len(page.keys) <= limit
        assert all(key.startswith(prefix) for key in page.keys)
        keys.extend(page.keys)
        if page.next_start_after is None:
            assert len(keys) == len(set(keys)), f"duplicate keys in pagination: {keys}"
            return keys
        assert page.keys, "a page that promises more must not be empty"
        assert page.next_start_after == page.keys[-1]
        start_after = page.next_start_after
    raise AssertionError("listing did not terminate")


class TierConformance:
    """The behaviour every tier promises (see ``tierstore.tiers.base.Tier``).

    Subclasses provide a function-scoped ``tier`` fixture yielding an empty tier
    that nobody else uses, and close it afterwards.
    """

    #: Whether listings page correctly when a key is also another key's
    #: directory (``"a"`` and ``"a/b"``). Stores that emulate S3 on a file
    #: tree (SeaweedFS) may not; their test classes set this to False.
    key_may_also_be_a_directory: ClassVar[bool] = True

    # Backdoors: reach the backend without the API under test. The defaults go
    # through the API, which still checks round-trips but not the storage itself.

    def backdoor_put(self, tier: Tier, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` bypassing ``tier.put`` if the backend allows."""
        tier.put(key, value)

    def backdoor_get(self, tier: Tier, key: str) -> bytes | None:
        """Read ``key`` bypassing ``tier.get`` if the backend allows."""
        value = tier.get(key)
        return None if value is None else bytes(value)

    # Basics.

    def test_is_a_tier(self, tier: Tier) -> None:
        assert isinstance(tier, Tier)

    @pytest.mark.parametrize(
        "value",
        [b"x", b"hello world", bytes(range(256)) * 3, b"\x00" * 1000],
        ids=["one-byte", "text", "all-bytes", "zeros"],
    )
    def test_round_trip(self, tier: Tier, value: bytes) -> None:
        tier.put("ds/shard", value)
        got = tier.get("ds/shard")
        assert isinstance(got, memoryview)
        assert bytes(got) == value
        assert self.backdoor_get(tier, "ds/shard") == value
        assert tier.stat("ds/shard") == ObjectStat(key="ds/shard", size=len(value))

    def test_reads_what_the_backend_holds(self, tier: Tier) -> None:
        self.backdoor_put(tier, "ds/planted", b"planted value")
        got = tier.get("ds/planted")
        assert got is not None and bytes(got) == b"planted value"
        assert tier.stat("ds/planted") == ObjectStat(key="ds/planted", size=13)
        assert "ds/planted" in list_all(tier)

    def test_put_accepts_every_buffer_type(self, tier: Tier) -> None:
        source = pattern(1000)
        tier.put("a", source)
        tier.put("b", bytearray(source))
        tier.put("c", memoryview(source))
        tier.put("d", memoryview(b"xx" + source + b"yy")[2:-2])  # a view at an offset
        for key in "abcd":
            assert self.backdoor_get(tier, key) == source

    def test_put_copies_the_callers_buffer(self, tier: Tier) -> None:
        buffer = bytearray(b"original")
        tier.put("k", buffer)
        buffer[:] = b"mutated!"
        got = tier.get("k")
        assert got is not None and bytes(got) == b"original"

    def test_put_iterable_of_buffers(self, tier: Tier) -> None:
        data = pattern(100_000, seed=1)
        tier.put("list", list(chunked(data, [1, 999, 4096, 31])))
        tier.put("gen", chunked(data, [7000]))
        tier.put("empty-iterable", iter(()))
        assert self.backdoor_get(tier, "list") == data
        assert self.backdoor_get(tier, "gen") == data
        assert self.backdoor_get(tier, "empty-iterable") == b""

    def test_empty_value(self, tier: Tier) -> None:
        tier.put("empty", b"")
        got = tier.get("empty")
        assert got is not None and bytes(got) == b""
        assert tier.stat("empty") == ObjectStat(key="empty", size=0)
        for byte_range in [(0, 0), (0, 10)]:
            part = tier.get("empty", byte_range)
            assert part is not None and bytes(part) == b""
        with pytest.raises(InvalidRange):
            tier.get("empty", (1, 0))
        assert list_all(tier) == ["empty"]

    # Missing keys.

    def test_missing_key_is_none(self, tier: Tier) -> None:
        assert tier.get("nope") is None
        assert tier.get("nope", (0, 10)) is None
        assert tier.get("nope", (0, 0)) is None
        assert tier.get("nope", (100, 10)) is None
        assert tier.stat("nope") is None
        assert tier.get("ds/nope/deeper") is None

    def test_missing_key_next_to_present_ones(self, tier: Tier) -> None:
        tier.put("ds/a", b"1")
        tier.put("ds/a/b", b"2")
        assert tier.get("ds") is None  # a "directory" in filer-backed stores
        assert tier.stat("ds") is None
        assert tier.get("ds/ab") is None
        assert tier.stat("ds/a/b/c") is None

    # Ranges: (offset, length), as resolve_range defines them.

    @pytest.mark.parametrize(
        ("byte_range", "expected"),
        [
            ((0, 10), slice(0, 10)),
            ((0, 0), slice(0, 0)),
            ((4000, 123), slice(4000, 4123)),
            ((5000, 0), slice(5000, 5000)),
            ((10_239, 1), slice(10_239, 10_240)),
            ((10_230, 100), slice(10_230, 10_240)),  # runs past the end: clipped
            ((0, 10_240), slice(0, 10_240)),
            ((0, 10**9), slice(0, 10_240)),
            ((10_240, 0), slice(10_240, 10_240)),  # zero bytes at the very end
        ],
    )
    def test_ranges(self, tier: Tier, byte_range: tuple[int, int], expected: slice) -> None:
        value = pattern(10_240, seed=2)
        tier.put("ranged", value)
        got = tier.get("ranged", byte_range)
        assert isinstance(got, memoryview)
        assert bytes(got) == value[expected]

    @pytest.mark.parametrize(
        "byte_range", [(10_240, 1), (10_241, 0), (10_241, 5), (10**9, 1), (-1, 5), (0, -1)]
    )
    def test_invalid_ranges(self, tier: Tier, byte_range: tuple[int, int]) -> None:
        tier.put("ranged", pattern(10_240, seed=2))
        with pytest.raises(InvalidRange):
            tier.get("ranged", byte_range)

    # Overwrite and delete.

    def test_overwrite_replaces_the_whole_value(self, tier: Tier) -> None:
        tier.put("k", pattern(5000, seed=3))
        tier.put("k", b"short")
        got = tier.get("k")
        assert got is not None and bytes(got) == b"short"
        assert tier.stat("k") == ObjectStat(key="k", size=5)
        assert self.backdoor_get(tier, "k") == b"short"
        assert list_all(tier) == ["k"]
        with pytest.raises(InvalidRange):
            tier.get("k", (10, 1))  # inside the old value, past the new one

    def test_delete_is_idempotent(self, tier: Tier) -> None:
        tier.put("ds/a", b"1")
        tier.put("ds/b", b"2")
        tier.delete("ds/a")
        assert tier.get("ds/a") is None
        assert tier.stat("ds/a") is None
        assert self.backdoor_get(tier, "ds/a") is None
        tier.delete("ds/a")
        tier.delete("never/was")
        assert list_all(tier) == ["ds/b"]
        got = tier.get("ds/b")
        assert got is not None and bytes(got) == b"2"

    def test_delete_many_removes_every_key_and_passes_over_missing_ones(self, tier: Tier) -> None:
        for name in ("a", "b", "c", "d"):
            tier.put(f"ds/{name}", name.encode())
        tier.delete_many(["ds/a", "never/was", "ds/c", "ds/a"])  # a missing key, a repeat
        assert list_all(tier) == ["ds/b", "ds/d"]
        assert tier.get("ds/a") is None and tier.stat("ds/c") is None
        assert self.backdoor_get(tier, "ds/c") is None
        assert bytes(tier.get("ds/b") or b"") == b"b"
        tier.delete_many([])
        tier.delete_many(["ds/a", "ds/c"])  # again: done already
        assert list_all(tier) == ["ds/b", "ds/d"]

    def test_put_after_delete(self, tier: Tier) -> None:
        tier.put("k", b"first")
        tier.delete("k")
        tier.put("k", b"second")
        got = tier.get("k")
        assert got is not None and bytes(got) == b"second"

    # Listing.

    def test_list_empty_tier(self, tier: Tier) -> None:
        assert tier.list() == ListPage(keys=(), next_start_after=None)
        assert tier.list(prefix="ds/", start_after="ds/x", limit=3) == ListPage((), None)

    def test_list_is_sorted_and_complete(self, tier: Tier) -> None:
        keys = [f"ds/shard_{i:03d}" for i in range(25)]
        for key in random.Random(4).sample(keys, len(keys)):
            tier.put(key, key.encode())
        page = tier.list()
        assert page == ListPage(tuple(keys), None)

    def test_list_pagination(self, tier: Tier) -> None:
        keys = [f"ds/shard_{i:03d}" for i in range(25)]
        for key in reversed(keys):
            tier.put(key, b"")
        pages = []
        start_after: str | None = None
        while True:
            page = tier.list(start_after=start_after, limit=7)
            pages.append(page.keys)
            if page.next_start_after is None:
                break
            assert page.next_start_after == page.keys[-1]
            start_after = page.next_start_after
        assert [len(p) for p in pages] == [7, 7, 7, 4]
        assert list(itertools.chain.from_iterable(pages)) == keys
        assert list_all(tier, limit=1) == keys

    def test_list_pagination_exact_multiple(self, tier: Tier) -> None:
        keys = [f"ds/shard_{i:03d}" for i in range(21)]
        for key in keys:
            tier.put(key, b"")
        assert list_all(tier, limit=7) == keys
        assert list_all(tier, limit=21) == keys

    def test_list_prefixes(self, tier: Tier) -> None:
        keys = ["dat", "data/a", "data/b/c", "data/b/d", "datum", "other/x", "z"]
        for key in keys:
            tier.put(key, key.encode())
        assert list_all(tier) == keys
        assert list_all(tier, prefix="data/") == ["data/a", "data/b/c", "data/b/d"]
        assert list_all(tier, prefix="data/b/") == ["data/b/c", "data/b/d"]
        assert list_all(tier, prefix="data/b") == ["data/b/c", "data/b/d"]
        assert list_all(tier, prefix="dat") == ["dat", "data/a", "data/b/c", "data/b/d", "datum"]
        assert list_all(tier, prefix="data") == ["data/a", "data/b/c", "data/b/d"]
        assert list_all(tier, prefix="datu") == ["datum"]
        assert list_all(tier, prefix="dat", limit=2) == list_all(tier, prefix="dat")
        assert list_all(tier, prefix="nothing/") == []
        assert list_all(tier, prefix="data/a") == ["data/a"]

    def test_list_start_after(self, tier: Tier) -> None:
        keys = [f"ds/shard_{i:03d}" for i in range(10)]
        for key in keys:
            tier.put(key, b"")
        assert tier.list(start_after="ds/shard_004").keys == tuple(keys[5:])
        assert tier.list(start_after="ds/shard_0045").keys == tuple(keys[5:])  # not a key
        assert tier.list(start_after="ds/").keys == tuple(keys)
        assert tier.list(start_after="ds/shard_009") == ListPage((), None)
        assert tier.list(start_after="zzz") == ListPage((), None)
        assert tier.list(prefix="ds/shard_00", start_after="ds/shard_007").keys == (
            "ds/shard_008",
            "ds/shard_009",
        )
        page = tier.list(start_after="ds/shard_002", limit=3)
        assert page == ListPage(("ds/shard_003", "ds/shard_004", "ds/shard_005"), "ds/shard_005")

    def test_list_awkward_keys_paginate_completely(self, tier: Tier) -> None:
        # Characters below "/" ("-", ".", " ", "%", "+") order differently by byte and
        # by path segment, so only completeness and self-consistency are checked. "%"
        # and "+" mean something in URLs (an escape, a space) and must stay themselves.
        keys = [
            "a b", "a%2Fb", "a%b", "a+b", "a-c", "a.b", "a/b-c/d", "a/b%20c", "a/b+c",
            "a/b.c", "a/b/c", "a/bc", "a0", "ab/é", "ab/z", "b", "ü/x", "x y/z", "~t",
        ]  # fmt: skip
        self._check_awkward_listing(tier, keys, directory="a/")

    def test_list_paginates_past_a_key_that_is_also_a_directory(self, tier: Tier) -> None:
        if not self.key_may_also_be_a_directory:
            pytest.skip("this store cannot page past a key that is also a directory")
        keys = ["a", "a b", "a-c", "a/b", "a/b/c", "a/b-c", "a/bc", "a0", "b"]
        self._check_awkward_listing(tier, keys, directory="a/")
        assert list_all(tier, limit=1) == sorted(keys)

    def _check_awkward_listing(self, tier: Tier, keys: list[str], directory: str) -> None:
        for key in keys:
            tier.put(key, key.encode())
        whole = tier.list()
        assert whole.next_start_after is None
        assert sorted(whole.keys) == sorted(keys)
        for limit in (1, 2, 5):
            assert list_all(tier, limit=limit) == list(whole.keys)
        inside = sorted(key for key in keys if key.startswith(directory))
        assert sorted(list_all(tier, prefix=directory, limit=2)) == inside
        for key in keys:
            got = tier.get(key)
            assert got is not None and bytes(got) == key.encode()

    def test_list_rejects_a_limit_below_one(self, tier: Tier) -> None:
        with pytest.raises(InvalidArgument):
            tier.list(limit=0)

    # Large values.

    def test_large_value_as_one_buffer(self, tier: Tier) -> None:
        data = pattern(LARGE_SIZE, seed=5)
        tier.put("large", data)
        assert tier.stat("large") == ObjectStat(key="large", size=LARGE_SIZE)
        got = tier.get("large")
        assert got is not None and len(got) == LARGE_SIZE and got == data
        middle = tier.get("large", (8 * MiB - 100, 200))  # straddles a part boundary
        assert middle is not None and bytes(middle) == data[8 * MiB - 100 : 8 * MiB + 100]
        tail = tier.get("large", (LARGE_SIZE - 10, 1000))
        assert tail is not None and bytes(tail) == data[-10:]

    def test_large_value_as_iterable_of_chunks(self, tier: Tier) -> None:
        data = pattern(LARGE_SIZE, seed=6)
        tier.put("large", chunked(data, [MiB + 3, 17, 3 * MiB - 1]))
        assert tier.stat("large") == ObjectStat(key="large", size=LARGE_SIZE)
        assert self.backdoor_get(tier, "large") == data
        part = tier.get("large", (16 * MiB - 5, 10))
        assert part is not None and bytes(part) == data[16 * MiB - 5 : 16 * MiB + 5]

    # Concurrency.

    def test_concurrent_readers_see_identical_bytes(self, tier: Tier) -> None:
        values = {f"ds/k{i}": pattern(50_000 + 7919 * i, seed=10 + i) for i in range(6)}
        for key, value in values.items():
            tier.put(key, value)
        workers = 8
        barrier = threading.Barrier(workers)

        def reader(worker: int) -> int:
            barrier.wait(timeout=30)
            rng = random.Random(worker)
            checked = 0
            for round_ in range(12):
                # Half the readers hammer one key, the others spread out.
                key = "ds/k0" if worker % 2 == 0 else rng.choice(list(values))
                value = values[key]
                if round_ % 3 == 0:
                    offset = rng.randrange(len(value))
                    length = rng.randrange(1, 20_000)
                    got = tier.get(key, (offset, length))
                    expected = value[offset : offset + length]
                else:
                    got = tier.get(key)
                    expected = value
                assert got is not None and bytes(got) == expected, (worker, key)
                checked += 1
            return checked

        with ThreadPoolExecutor(workers) as pool:
            counts = list(pool.map(reader, range(workers)))
        assert counts == [12] * workers

    def test_concurrent_writers_to_different_keys(self, tier: Tier) -> None:
        def writer(worker: int) -> None:
            for i in range(5):
                tier.put(f"w{worker}/k{i}", pattern(3000, seed=worker * 100 + i))

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(writer, range(6)))
        for worker in range(6):
            for i in range(5):
                assert self.backdoor_get(tier, f"w{worker}/k{i}") == pattern(
                    3000, seed=worker * 100 + i
                )
        assert len(list_all(tier)) == 30

    # Model check: any sequence of operations agrees with a plain dict.

    @settings(
        max_examples=20,
        deadline=None,
        # The tier fixture is shared across examples on purpose (each example
        # works in its own namespace), and every subclass runs this same test
        # with its own tier, which is the point of a conformance suite.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(
        operations=st.lists(
            st.tuples(
                st.sampled_from(["put", "put_chunks", "get", "range", "delete", "stat", "list"]),
                # No name is also a directory ("a" with "a/b"); see the class flag.
                st.sampled_from(["a/x", "a/y", "ab", "b/a/c", "b/c", "ba", "c"]),
                st.binary(max_size=300),
                st.integers(0, 320),
                st.integers(0, 320),
            ),
            max_size=25,
        )
    )
    def test_agrees_with_a_dict(
        self, tier: Tier, operations: list[tuple[str, str, bytes, int, int]]
    ) -> None:
        # The tier outlives hypothesis examples, so each example gets a namespace.
        space = f"m{uuid.uuid4().hex[:8]}/"
        model: dict[str, bytes] = {}
        for operation, name, value, offset, length in operations:
            key = space + name
            if operation == "put":
                tier.put(key, value)
                model[key] = value
            elif operation == "put_chunks":
                tier.put(key, chunked(value, [max(1, offset % 40)]))
                model[key] = value
            elif operation == "get":
                got = tier.get(key)
                assert (None if got is None else bytes(got)) == model.get(key)
            elif operation == "range":
                expected = model.get(key)
                if expected is not None and (
                    offset > len(expected) or (offset == len(expected) > 0 and length > 0)
                ):
                    with pytest.raises(InvalidRange):
                        tier.get(key, (offset, length))
                else:
                    got = tier.get(key, (offset, length))
                    want = None if expected is None else expected[offset : offset + length]
                    assert (None if got is None else bytes(got)) == want
            elif operation == "delete":
                tier.delete(key)
                model.pop(key, None)
            elif operation == "stat":
                expected = model.get(key)
                want_stat = None if expected is None else ObjectStat(key=key, size=len(expected))
                assert tier.stat(key) == want_stat
            else:
                assert list_all(tier, prefix=space, limit=max(1, length % 4)) == sorted(model)
        assert list_all(tier, prefix=space) == sorted(model)

    # Closing.

    def test_closed_tier_raises_store_closed(self, tier: Tier) -> None:
        tier.put("k", b"v")
        tier.close()
        with pytest.raises(StoreClosed):
            tier.get("k")
        with pytest.raises(StoreClosed):
            tier.get("k", (0, 1))
        with pytest.raises(StoreClosed):
            tier.put("k", b"w")
        with pytest.raises(StoreClosed):
            tier.delete("k")
        with pytest.raises(StoreClosed):
            tier.delete_many(["k"])
        with pytest.raises(StoreClosed):
            tier.stat("k")
        with pytest.raises(StoreClosed):
            tier.list()
        tier.close()  # closing twice is allowed
