"""Checks of raw requests before they are parsed, for the methods where parsing costs
far more than the bytes.

A protobuf parser turns each entry of a repeated field into an object, and an entry can
be 2 or 3 bytes on the wire: parsing an 80 MiB DeclarePlan request of 1-character shard
names grew the server by 1.07 GB (28 million entries), a 4 MB read report of empty
entries by some 120 MB, and a 60 MB CreateToken request of empty grants by 1.6 GB —
long before the handler's own limits (or, for CreateToken, the admin's role any
token holder may lack) could refuse them. So
the methods with a repeated field in their request get a *request check*
(:mod:`tierstore.server.decoding`): it counts the field headers in the raw bytes and
refuses, with INVALID_ARGUMENT, a request with more entries than the method accepts.

The count reads field headers only (:func:`count_fields`, compiled by numba, so a list
of ten million entries is walked in some tens of milliseconds without holding the
GIL; :func:`count_fields_py` is its plain-Python twin). Bytes that end mid-field are
left to the parser, which refuses them. A group (wire type 3 or 4, which no proto3
message has) or an invalid wire type is refused here.

Pure and thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from tierstore.compiled import njit
from tierstore.engine.planbook import MAX_PLAN_ENTRIES
from tierstore.errors import InvalidArgument, InvalidPlan
from tierstore.wire.local import MAX_REPORT_BYTES, MAX_REPORT_ENTRIES

__all__ = [
    "MAX_PREFETCH_SHARDS",
    "MAX_TOKEN_GRANTS",
    "REQUEST_CHECKS",
    "check_plan_encoding",
    "check_prefetch_encoding",
    "check_report_encoding",
    "check_token_encoding",
    "count_fields",
    "count_fields_py",
]

#: Shards one Prefetch may name.
MAX_PREFETCH_SHARDS = 100_000
#: Grants one CreateToken may give (a token for more datasets is one for ``*``).
MAX_TOKEN_GRANTS = 100_000
#: Top-level fields of a CreateToken request besides its grants: principal and ttl_s.
_TOKEN_OTHER_FIELDS = 2
#: Top-level fields of a valid read report: the dataset and its entries.
_MAX_REPORT_FIELDS = 1 + MAX_REPORT_ENTRIES
#: Top-level fields a DeclarePlan request may have. A protobuf encoder writes each of
#: its six fields (the plan's oneof counted once) at most once; the margin is for
#: encoders that split a message.
_MAX_PLAN_REQUEST_FIELDS = 32
#: DeclarePlanRequest's field number of its explicit shard list (placement.proto).
_EXPLICIT_LIST_FIELD = 3
_LENGTH_DELIMITED = 2


@njit
def _varint_at(data: Any, at: int, stop: int) -> Any:  # pragma: no cover - compiled
    """The varint at ``data[at:]`` (a uint64) and the offset after it: past ``stop``
    when it does not end before ``stop`` or is longer than 10 bytes."""
    value = np.uint64(0)
    for i in range(10):
        if at + i >= stop:
            break
        byte = data[at + i]
        value |= np.uint64(byte & 0x7F) << np.uint64(7 * i)
        if byte < 0x80:
            return value, at + i + 1
    return np.uint64(0), stop + 1


@njit
def count_fields(
    data: Any, start: int, stop: int, cap: int
) -> int:  # pragma: no cover - compiled; its twin below is what coverage sees
    """The number of fields encoded in ``data[start:stop]`` (a uint8 array), counting
    at most ``cap + 1`` of them: ``cap + 1`` means "more than ``cap``". A field that
    ends past ``stop`` is counted and ends the walk. ``-1 - wire_type`` at the first
    field of wire type 3, 4, 6 or 7 (groups, invalid)."""
    count = 0
    at = start
    while at < stop:
        count += 1
        if count > cap:
            return count
        tag, at = _varint_at(data, at, stop)
        if at > stop:
            return count
        wire_type = int(tag & np.uint64(7))
        if wire_type == 0:
            _, at = _varint_at(data, at, stop)
        elif wire_type == 1:
            at += 8
        elif wire_type == 2:
            length, at = _varint_at(data, at, stop)
            if at > stop or length > np.uint64(stop - at):
                return count
            at += int(length)
        elif wire_type == 5:
            at += 4
        else:
            return -1 - wire_type
    return count


def count_fields_py(data: Any, start: int, stop: int, cap: int) -> int:
    """Plain-Python twin of :func:`count_fields` (the same results)."""
    count = 0
    for field in _fields(bytes(data), start, stop):
        count += 1
        if count > cap:
            return count
        if field.wire_type in (3, 4, 6, 7):
            return -1 - field.wire_type
        if field.stop > stop:
            return count
    return count


class _Field(NamedTuple):
    number: int
    wire_type: int
    start: int  # a length-delimited field's payload: data[start:stop]
    stop: int


def _fields(data: bytes, start: int, stop: int) -> Iterator[_Field]:
    """Each field header in ``data[start:stop]`` and where its value lies; stops after
    a field of an unknown wire type or one that ends past ``stop``."""
    at = start
    while at < stop:
        tag, at = _varint(data, at, stop)
        wire_type = tag & 7
        if wire_type == 0:
            _, value_end = _varint(data, at, stop)
            field = _Field(tag >> 3, wire_type, at, value_end)
        elif wire_type == _LENGTH_DELIMITED:
            length, at = _varint(data, at, stop)
            field = _Field(tag >> 3, wire_type, at, at + length)
        elif wire_type in (1, 5):
            field = _Field(tag >> 3, wire_type, at, at + (8 if wire_type == 1 else 4))
        else:
            field = _Field(tag >> 3, wire_type, at, stop + 1)
        yield field
        at = field.stop


def _varint(data: bytes, at: int, stop: int) -> tuple[int, int]:
    """The varint at ``data[at:]`` and the offset after it (past ``stop`` when it does
    not end before it, or is longer than 10 bytes)."""
    value = shift = 0
    for index in range(at, min(at + 10, stop)):
        value |= (data[index] & 0x7F) << shift
        if data[index] < 0x80:
            return value, index + 1
        shift += 7
    return 0, stop + 1


def _counted(data: np.ndarray[Any, Any], start: int, stop: int, cap: int, what: str) -> int:
    """:func:`count_fields`, with a group or an invalid wire type refused."""
    count = int(count_fields(data, start, stop, cap))
    if count < 0:
        raise InvalidArgument(f"{what} holds no field of wire type {-1 - count}")
    return count


def check_report_encoding(data: bytes) -> None:
    """Refuse a ReportLocalReads request that no valid report encodes: longer than
    :data:`~tierstore.wire.local.MAX_REPORT_BYTES`, or of more top-level fields than a
    dataset and :data:`~tierstore.wire.local.MAX_REPORT_ENTRIES` entries. Raises
    InvalidArgument."""
    if len(data) > MAX_REPORT_BYTES:
        raise InvalidArgument(f"a read report is at most {MAX_REPORT_BYTES} bytes, not {len(data)}")
    raw = np.frombuffer(data, dtype=np.uint8)
    if _counted(raw, 0, len(raw), _MAX_REPORT_FIELDS, "a read report") > _MAX_REPORT_FIELDS:
        raise InvalidArgument(
            f"a read report holds at most {MAX_REPORT_ENTRIES} entries and its dataset: "
            f"it has more than {_MAX_REPORT_FIELDS} fields"
        )


def check_plan_encoding(data: bytes) -> None:
    """Refuse a DeclarePlan request whose explicit shard list has more than
    :data:`~tierstore.engine.planbook.MAX_PLAN_ENTRIES` entries (the parser merges a
    list given in several pieces: they are added up), or of more than a few top-level
    fields. Raises InvalidArgument (InvalidPlan for the list's length)."""
    what = "a DeclarePlan request"
    raw = np.frombuffer(data, dtype=np.uint8)
    if _counted(raw, 0, len(raw), _MAX_PLAN_REQUEST_FIELDS, what) > _MAX_PLAN_REQUEST_FIELDS:
        raise InvalidArgument(f"{what} has more than {_MAX_PLAN_REQUEST_FIELDS} fields")
    entries = 0
    for field in _fields(data, 0, len(data)):
        if field.number != _EXPLICIT_LIST_FIELD or field.wire_type != _LENGTH_DELIMITED:
            continue
        stop = min(field.stop, len(data))
        entries += _counted(raw, field.start, stop, MAX_PLAN_ENTRIES - entries, "a shard list")
        if entries > MAX_PLAN_ENTRIES:
            raise InvalidPlan(f"a plan has at most {MAX_PLAN_ENTRIES:,} entries")


def check_prefetch_encoding(data: bytes) -> None:
    """Refuse a Prefetch request naming more than :data:`MAX_PREFETCH_SHARDS` shards
    (more top-level fields than those and the dataset). Raises InvalidArgument."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if _counted(raw, 0, len(raw), MAX_PREFETCH_SHARDS + 1, "a prefetch") > MAX_PREFETCH_SHARDS + 1:
        raise InvalidArgument(f"at most {MAX_PREFETCH_SHARDS} shards per prefetch")


def check_token_encoding(data: bytes) -> None:
    """Refuse a CreateToken request giving more than :data:`MAX_TOKEN_GRANTS` grants
    (more top-level fields than those, its principal and its ttl_s). Raises
    InvalidArgument."""
    raw = np.frombuffer(data, dtype=np.uint8)
    cap = MAX_TOKEN_GRANTS + _TOKEN_OTHER_FIELDS
    if _counted(raw, 0, len(raw), cap, "a token request") > cap:
        raise InvalidArgument(f"a token gives at most {MAX_TOKEN_GRANTS:,} grants")


#: The request checks by full method name (:class:`tierstore.server.decoding.DecodeInterceptor`).
REQUEST_CHECKS: dict[str, Callable[[bytes], None]] = {
    "/tierstore.v1.ShardService/ReportLocalReads": check_report_encoding,
    "/tierstore.v1.PlacementService/DeclarePlan": check_plan_encoding,
    "/tierstore.v1.PlacementService/Prefetch": check_prefetch_encoding,
    "/tierstore.v1.AdminService/CreateToken": check_token_encoding,
}
