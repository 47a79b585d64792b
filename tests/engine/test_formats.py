"""Formats a release does not read: a hot tier, or a record, of a newer release's format
is refused by name (NewerFormat), never read as an older one, whose newer fields a
rewrite would drop; a record or hot tier of before format versions reads as format 1."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

from tests.engine.stores import DATASETS, StoreFactory, payload
from tierstore.engine.catalog import META_DB
from tierstore.engine.records import (
    FORMAT_VERSION,
    ShardRecord,
    decode_dataset,
    encode_dataset,
    first_generation_of,
)
from tierstore.engine.store import hot_tier_dir
from tierstore.errors import IntegrityError, NewerFormat
from tierstore.tiers.memory import MemoryTier
from tierstore.types import DatasetSettings, Durability, ShardKind

NEWER = FORMAT_VERSION + 1
FORMAT_MARK = b"format\x00"


def with_version(raw: bytes, version: object) -> bytes:
    """``raw``, an encoded record, with its format version set to ``version`` (left out
    for None: as records of before format versions)."""
    document = json.loads(raw)
    if version is None:
        del document["v"]
    else:
        document["v"] = version
    return json.dumps(document).encode()


def a_record() -> bytes:
    return ShardRecord(
        dataset="plain",
        name="s",
        generation=7,
        kind=ShardKind.RAW,
        frame_sizes=(3,),
        created_at=1.0,
        envelope=None,
    ).encode()


def a_dataset() -> bytes:
    return encode_dataset(DatasetSettings(False, Durability.WRITE_BACK), first_generation=5)


def test_a_record_of_a_newer_format_is_refused_by_name() -> None:
    decoders: tuple[tuple[Callable[[bytes], object], bytes], ...] = (
        (ShardRecord.decode, a_record()),
        (decode_dataset, a_dataset()),
        (first_generation_of, a_dataset()),
    )
    for decode, raw in decoders:
        with pytest.raises(NewerFormat, match=f"newer tierstore release, in format {NEWER}"):
            decode(with_version(raw, NEWER))
        decode(with_version(raw, None))  # before versions: 1
        for damaged in ("1", 0, True, 1.5):
            with pytest.raises(IntegrityError):
                decode(with_version(raw, damaged))
        for not_an_object in (b"[1, 2]", b'"text"', b"3"):
            with pytest.raises(IntegrityError):  # not AttributeError
                decode(not_an_object)
    assert first_generation_of(with_version(a_dataset(), None)) == 5


def format_mark(data_dir: Path) -> bytes | None:
    with (
        lmdb.open(str(hot_tier_dir(data_dir)), max_dbs=8) as env,
        env.begin(db=env.open_db(META_DB.encode())) as txn,
    ):
        raw = txn.get(FORMAT_MARK)
        return None if raw is None else bytes(raw)


def set_format_mark(data_dir: Path, mark: bytes | None) -> None:
    with lmdb.open(str(hot_tier_dir(data_dir)), max_dbs=8) as env:
        meta = env.open_db(META_DB.encode())
        with env.begin(write=True, db=meta) as txn:
            if mark is None:
                txn.delete(FORMAT_MARK)
            else:
                txn.put(FORMAT_MARK, mark)


def test_a_hot_tier_of_a_newer_format_is_refused_and_kept(
    open_store: StoreFactory, archive: MemoryTier
) -> None:
    store = open_store(archive, datasets=DATASETS)
    store.put("plain", "kept", payload(100, 1))
    data_dir = store.settings.data_dir
    store.close()
    assert format_mark(data_dir) == str(FORMAT_VERSION).encode()

    set_format_mark(data_dir, str(NEWER).encode())
    with pytest.raises(NewerFormat, match=rf"hot tier at .*{data_dir.name}.* in format {NEWER}"):
        open_store(archive, data_dir=data_dir)
    assert format_mark(data_dir) == str(NEWER).encode()  # left as the newer release left it
    set_format_mark(data_dir, b"not a number")
    with pytest.raises(IntegrityError, match="unreadable format mark"):
        open_store(archive, data_dir=data_dir)

    set_format_mark(data_dir, None)  # as a release before the mark left it: marked now
    store = open_store(archive, data_dir=data_dir)
    assert store.get("plain", "kept").to_bytes() == payload(100, 1)
    store.close()
    assert format_mark(data_dir) == str(FORMAT_VERSION).encode()
