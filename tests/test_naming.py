"""Naming rules for datasets and shards (tierstore.naming): pure functions, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierstore.errors import InvalidArgument, InvalidName
from tierstore.naming import MAX_SHARD_NAME_BYTES, validate_dataset_name, validate_shard_name

GOOD_DATASETS = ["a", "0", "plain", "images-2024.v1", "a_b", "x" * 63, "9lives"]
BAD_DATASETS = [
    "",
    "Plain",
    ".hidden",
    "-dash",
    "_under",
    "a/b",
    "a b",
    "x" * 64,
    "ünicode",
    "tab\t",
    "nul\x00",
    "trailing\n",
]
NOT_STRINGS = [None, b"plain", 7, 1.5, ["a"], ("a",)]

GOOD_SHARDS = [
    "a",
    "a/b/c.bin",
    "a..b",  # '..' inside a segment is an ordinary name
    ".hidden/x",
    "with space",
    "données/été",
    "日本/データ",
    "emoji-😀",
    "x" * MAX_SHARD_NAME_BYTES,
    "é" * (MAX_SHARD_NAME_BYTES // 2),  # 1024 bytes of UTF-8
]
BAD_SHARDS = {
    "empty": "",
    "dotdot": "..",
    "dotdot-inside": "a/../b",
    "dotdot-last": "a/..",
    "dot-segment": "a/./b",
    "dot-first": "./a",
    "leading-slash": "/abs",
    "double-slash": "a//b",
    "trailing-slash": "a/",
    "nul": "nul\x00byte",
    "newline": "new\nline",
    "tab": "tab\tx",
    "escape": "esc\x1b[0m",
    "delete": "del\x7f",
    "c1-control": "c1\x85",
    "zero-width-space": "zero\u200bwidth",
    "line-separator": "line\u2028sep",
    "bidi-override": "bidi\u202eevil",
    "lone-surrogate": "lone\ud800",
    "private-use": "private\ue000",
    "unassigned": "unassigned\u0378",
    "over-1024-ascii": "x" * (MAX_SHARD_NAME_BYTES + 1),
    "over-1024-utf8": "é" * (MAX_SHARD_NAME_BYTES // 2) + "x",
}


@pytest.mark.parametrize("name", GOOD_DATASETS)
def test_good_dataset_names_pass_unchanged(name: str) -> None:
    assert validate_dataset_name(name) == name


@pytest.mark.parametrize("name", BAD_DATASETS + NOT_STRINGS)
def test_bad_dataset_names_raise_invalid_name(name: object) -> None:
    with pytest.raises(InvalidName):
        validate_dataset_name(name)


@pytest.mark.parametrize("name", GOOD_SHARDS)
def test_good_shard_names_pass_unchanged(name: str) -> None:
    assert validate_shard_name(name) == name


@pytest.mark.parametrize("name", BAD_SHARDS.values(), ids=BAD_SHARDS.keys())
def test_bad_shard_names_raise_invalid_name(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_shard_name(name)


@pytest.mark.parametrize("name", NOT_STRINGS)
def test_shard_names_must_be_strings(name: object) -> None:
    with pytest.raises(InvalidName, match="must be a string"):
        validate_shard_name(name)


def test_invalid_name_is_an_invalid_argument() -> None:
    assert issubclass(InvalidName, InvalidArgument)
    assert InvalidName.status_code == "INVALID_ARGUMENT"


def test_long_names_are_cut_in_the_message() -> None:
    with pytest.raises(InvalidName) as caught:
        validate_shard_name("/" + "x" * 5000)
    assert len(str(caught.value)) < 300


segments = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
    ).filter(lambda c: c != "/"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))


@given(st.lists(segments, min_size=1, max_size=6))
def test_printable_paths_without_dot_segments_are_valid(parts: list[str]) -> None:
    name = "/".join(parts)
    if len(name.encode()) <= MAX_SHARD_NAME_BYTES:
        assert validate_shard_name(name) == name


@given(st.text(max_size=40))
def test_accepted_names_keep_every_rule(name: str) -> None:
    try:
        validate_shard_name(name)
    except InvalidName:
        return
    assert name and not name.startswith("/")
    assert all(segment not in ("", ".", "..") for segment in name.split("/"))
    assert all(ch.isprintable() or ch == " " for ch in name if ord(ch) < 0x80)
    assert len(name.encode("utf-8")) <= MAX_SHARD_NAME_BYTES
