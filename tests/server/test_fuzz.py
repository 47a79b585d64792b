"""Fuzzing every RPC with random, mutated and absurd requests (tierstore/server/*).

Each RPC gets :data:`PER_RPC` requests, generated up front from one fixed seed (one
``random.Random`` per request, so the set does not depend on thread timing) and sent
as raw bytes over generic calls: random bytes; truncated, bit-flipped, spliced or
doubled serializations of valid requests; valid messages with absurd field values
(huge numbers, NaN, empty and 2000-character names, control characters, unknown enum
values); and valid messages with an unknown field appended. PutShard gets random
sequences of messages (headers and frames in every order and count, Arrow frames with
flipped bits, garbage in the middle); GetShard streams are consumed to the end.

The server must answer every request with a deliberate status — never INTERNAL or
UNKNOWN, never a hang — keep answering health checks and reads throughout, and still
return shards written before the fuzzing byte for byte afterwards.
"""

from __future__ import annotations

import math
import random
import string
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from tests.engine.stores import FRAME, payload
from tests.server.servers import RPCS, RunningServer, error_name, invoke, metadata, serving, varint
from tierstore import arrowio, tensors
from tierstore.client.channel import ChannelSettings
from tierstore.client.client import Client
from tierstore.types import DatasetSettings, Durability, Role
from tierstore.v1 import common_pb2, shards_pb2

SEED = 20240611
#: Requests per RPC (every one of the 26 tierstore RPCs).
PER_RPC = 2000
WORKERS = 4
#: A health check and a canary read run after every this many requests.
PROBE_EVERY = 400

PUT = "/tierstore.v1.ShardService/PutShard"
GET = "/tierstore.v1.ShardService/GetShard"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
#: Fuzzed requests for each of health (API port, health port) and reflection.
PER_HEALTH_RPC = 300

#: Datasets the fuzzer's data token may change (admin) and one it may only read.
FUZZ_DATASETS = {
    "fuzz": DatasetSettings(),
    "fuzz-enc": DatasetSettings(encrypted=True),
    "fuzz-wt": DatasetSettings(durability=Durability.WRITE_THROUGH),
    "fuzz-ro": DatasetSettings(encrypted=True),
}
#: Datasets no fuzzed request names: their shards must come back byte for byte.
CANARY_DATASETS = {"canary-plain": DatasetSettings(), "canary-enc": DatasetSettings(encrypted=True)}

#: Codes a caller's mistake may earn. Anything else (INTERNAL, UNKNOWN, DEADLINE_EXCEEDED,
#: a transport failure) is a server bug.
EXPECTED_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,  # a read starting past a shard's end
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    # Only with a tierstore-error trailer: a read overtaken by a concurrent put or delete.
    grpc.StatusCode.UNAVAILABLE,
}


# Value pools. Names the fuzzer may use never include the canary datasets.

DATASET_NAMES = [
    "fuzz",
    "fuzz-enc",
    "fuzz-wt",
    "fuzz-ro",
    "fuzz2",
    "nope",
    "a",
    "x" * 63,
    "x" * 64,
    "",
    "*",
    "Fuzz",
    "-fuzz",
    ".",
    "..",
    "fuzz/../fuzz-ro",
    "fuzz\x00",
    "fuzz ",
]
SHARD_NAMES = [
    "s0",
    "s1",
    "arrow",
    "tensor",
    "dir/s2",
    "missing",
    "",
    "/abs",
    "a/../b",
    "a//b",
    ".",
    "..",
    "a\x00b",
    "a\nb",
    "\u202eevil",
    "\u00e9t\u00e9/\U0001f4a5",
    "x" * 1024,
    "x" * 1025,
    "y" * 2000,
    "\u00e9" * 600,
]
ABSURD_STRINGS = [
    "",
    " ",
    "*",
    "\x00",
    "\x01\x02\x1f\x7f",
    "\t\r\n",
    "%s%n%x",
    "'; DROP TABLE shards; --",
    "\ufeff",
    "\u2028",
    "\U0010fffd",
    "z" * 2000,
    "ts_" + "0" * 12 + "_" + "A" * 43,
    "Bearer x",
]
PRINCIPALS = ["svc:fuzz", "bob@example.com", "", "-x", "a" * 128, "a" * 129, "a b", "\x00"]
UINT64 = [0, 1, 2, 7, FRAME - 1, FRAME, FRAME + 1, 1 << 31, (1 << 32) - 1, 1 << 62]
UINT64 += [(1 << 63) - 1, (1 << 64) - 1]
UINT32 = [0, 1, 2, 3, 7, 100, (1 << 31) - 1, 1 << 31, (1 << 32) - 1]
DOUBLES = [0.0, -0.0, 1.0, -1.0, 60.0, 1e-300, 5e-324, 1e308, -1e308, math.inf, -math.inf, math.nan]
#: Access-plan job ids: a few reused (declared, then reported and closed), and absurd ones.
JOBS = ["j1", "j1", "j2", "j3", "", "x" * 256, "x" * 257, "a\nb", "\x00", "epoch/0"]
POLICIES = ["lru", "s3fifo", "epoch-pin", "clairvoyant", "belady", "", "LRU", "nope"]
#: Ids of throwaway tokens the fuzzer may revoke (filled in before the cases are made).
REVOCABLE: list[str] = []
UNKNOWN_ENUMS = [-(1 << 31), -1, 4, 5, 99, (1 << 31) - 1]


def _string_for(field: FieldDescriptor, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(ABSURD_STRINGS)
    if roll < 0.2:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 40)))
    name = field.name
    if name in ("dataset", "name"):
        return rng.choice(DATASET_NAMES)
    if name in ("shard", "prefix", "start_after", "shards"):
        return rng.choice(SHARD_NAMES)
    if name == "principal":
        return rng.choice(PRINCIPALS)
    if name == "job":
        return rng.choice(JOBS)
    if name == "policy":
        return rng.choice(POLICIES)
    if name == "token_id":
        if REVOCABLE and rng.random() < 0.5:
            return rng.choice(REVOCABLE)
        return rng.choice(["", "0" * 12, "f" * 12, "zz", "0" * 13, "../tokens"])
    return rng.choice(ABSURD_STRINGS)


def _scalar(field: FieldDescriptor, rng: random.Random) -> object:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _string_for(field, rng)
    if kind == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 16, 100]))
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == FieldDescriptor.TYPE_UINT64:
        return rng.choice(UINT64) if rng.random() < 0.8 else rng.getrandbits(64)
    if kind == FieldDescriptor.TYPE_UINT32:
        return rng.choice(UINT32) if rng.random() < 0.8 else rng.getrandbits(32)
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return rng.choice(DOUBLES) if rng.random() < 0.8 else rng.uniform(-1e9, 1e9)
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        return rng.choice(known) if rng.random() < 0.6 else rng.choice(UNKNOWN_ENUMS)
    raise AssertionError(f"no generator for field {field.full_name} of type {kind}")


def fill(message: Message, rng: random.Random, depth: int = 0) -> Message:
    """Set a random subset of ``message``'s fields to random, often absurd, values."""
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.2:
            continue
        if field.is_repeated:
            count = rng.choice([0, 1, 2, 3, 10]) if rng.random() < 0.97 else 300
            target = getattr(message, field.name)
            for _ in range(count):
                if field.message_type is not None:
                    fill(target.add(), rng, depth + 1)
                else:
                    target.append(_scalar(field, rng))
        elif field.message_type is not None:
            if depth < 3:
                sub = getattr(message, field.name)
                sub.SetInParent()
                fill(sub, rng, depth + 1)
        else:
            setattr(message, field.name, _scalar(field, rng))
    return message


def unknown_field(rng: random.Random) -> bytes:
    """A field the schema does not know (999, or a far-off or invalid number)."""
    number = rng.choice([999, 999, 999, 1 << 20, (1 << 29) - 1, 0, 19000])
    wire = rng.choice([0, 1, 2, 2, 3, 4, 5, 6, 7])
    tag = varint((number << 3) | wire)
    if wire == 0:
        return tag + varint(rng.getrandbits(64))
    if wire == 1:
        return tag + rng.randbytes(8)
    if wire == 2:
        body = rng.randbytes(rng.choice([0, 1, 10, 300]))
        length = len(body) if rng.random() < 0.8 else rng.choice([len(body) + 5, 1 << 30])
        return tag + varint(length) + body
    if wire == 5:
        return tag + rng.randbytes(4)
    return tag + rng.randbytes(rng.randrange(0, 6))  # groups and invalid wire types


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A damaged copy of a serialization."""
    choice = rng.randrange(6)
    if choice == 0 and data:
        return data[: rng.randrange(len(data))]
    if choice == 1 and data:
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            spot = rng.randrange(len(flipped) * 8)
            flipped[spot // 8] ^= 1 << (spot % 8)
        return bytes(flipped)
    if choice == 2:
        spot = rng.randrange(len(data) + 1)
        return data[:spot] + rng.randbytes(rng.randint(1, 16)) + data[spot:]
    if choice == 3 and data:
        spot = rng.randrange(len(data))
        return data[:spot] + data[spot + rng.randint(1, 8) :]
    if choice == 4:
        return data + data
    return data + unknown_field(rng)


def random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 2, 3, 5, 8, 16, 64, 256, 4000]))


#: Where a plausible request of these RPCs points: deletes aim mostly at scratch names, so
#: the datasets other requests use live long enough to be worth fuzzing.
DELETE_DATASETS = ["fuzz2", "fuzz2", "nope", "fuzz-wt", "fuzz"]
DELETE_SHARDS = ["new/p", "dir/s2", "missing", "s1"]


def plausible_request(method: str, rng: random.Random) -> Message:
    """Real names and mostly sane numbers, with the odd absurd value left in."""
    message = RPCS[method].request()
    fill(message, rng)
    deleting = method.endswith("/DeleteDataset") or method.endswith("/DeleteShard")
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.1:
            continue  # keep whatever absurd value fill() chose
        if field.name in ("dataset", "name") and field.type == FieldDescriptor.TYPE_STRING:
            names = DELETE_DATASETS if deleting else list(FUZZ_DATASETS)
            setattr(message, field.name, rng.choice(names))
        elif field.name == "shard":
            names = DELETE_SHARDS if deleting else ["s0", "s1", "arrow", "tensor", "dir/s2"]
            setattr(message, field.name, rng.choice(names))
        elif field.name == "force":
            setattr(message, field.name, rng.random() < 0.2)
        elif field.name == "limit":
            setattr(message, field.name, rng.choice([0, 1, 2, 5]))
    if method == GET:
        roll = rng.random()
        if roll < 0.35:
            message.ClearField("range")  # type: ignore[arg-type]
        elif roll < 0.6:
            message.byte_range.offset = rng.randrange(0, 3 * FRAME + 2)  # type: ignore[attr-defined]
            if rng.random() < 0.7:
                message.byte_range.length = rng.randrange(0, 2 * FRAME)  # type: ignore[attr-defined]
            else:
                message.byte_range.ClearField("length")  # type: ignore[attr-defined]
        elif roll < 0.8:
            message.frame_range.first = rng.randrange(0, 4)  # type: ignore[attr-defined]
            message.frame_range.count = rng.randrange(0, 4)  # type: ignore[attr-defined]
    return message


def unary_request(method: str, rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.25:
        return random_bytes(rng)
    if roll < 0.5:
        return mutate(plausible_request(method, rng).SerializeToString(), rng)
    if roll < 0.75:
        return plausible_request(method, rng).SerializeToString()
    if roll < 0.9:  # absurd values everywhere, names included
        return fill(RPCS[method].request(), rng).SerializeToString()
    return plausible_request(method, rng).SerializeToString() + unknown_field(rng)


# PutShard streams.


def _arrow_frames(rng: random.Random) -> tuple[int, list[bytes]]:
    if rng.random() < 0.5:
        rows = rng.randint(0, 400)
        table = pa.table(
            {
                "id": pa.array(range(rows), pa.int64()),
                "text": pa.array([f"row-{i}" * rng.randint(0, 3) for i in range(rows)]),
                "score": pa.array([rng.random() for _ in range(rows)], pa.float32()),
            }
        )
        frames = arrowio.table_to_frames(table, FRAME)
        kind = common_pb2.SHARD_KIND_ARROW
    else:
        array = np.arange(rng.randint(1, 3000), dtype=np.float32).reshape(-1, 1)
        frames = tensors.tensor_to_frames(array, FRAME)
        kind = common_pb2.SHARD_KIND_TENSOR
    return kind, [frame.to_pybytes() for frame in frames]


def _frame_message(data: bytes) -> bytes:
    return shards_pb2.PutShardRequest(frame=data).SerializeToString()


def _header(rng: random.Random, kind: int, count: int) -> shards_pb2.PutShardHeader:
    header = shards_pb2.PutShardHeader(
        dataset=rng.choice(["fuzz", "fuzz-enc", "fuzz-wt"]),
        shard=rng.choice(["s0", "s1", "arrow", "tensor", "dir/s2", "new/p"]),
        kind=kind,  # type: ignore[arg-type]
        frame_count=count,
    )
    if rng.random() < 0.2:
        fill(header, rng)
    return header


def put_stream(rng: random.Random) -> list[bytes]:
    """A random sequence of PutShard messages, serialized (some damaged on purpose)."""
    if rng.random() < 0.45:
        kind, frames = _arrow_frames(rng)
    else:
        kind = common_pb2.SHARD_KIND_RAW if rng.random() < 0.9 else rng.choice([*UNKNOWN_ENUMS, 0])
        frames = [rng.randbytes(rng.choice([0, 1, 100, FRAME])) for _ in range(rng.randint(0, 6))]
    roll = rng.random()
    if roll < 0.2:  # mutate frames' bytes (Arrow: corrupt IPC messages)
        frames = [mutate(f, rng) if rng.random() < 0.5 else f for f in frames]
    elif roll < 0.3 and frames:  # drop, duplicate or reorder frames
        rng.shuffle(frames)
        frames = frames[: rng.randint(0, len(frames))] + frames[: rng.randint(0, 2)]
    elif roll < 0.35:  # a frame over the limit
        frames.insert(rng.randrange(len(frames) + 1), rng.randbytes(FRAME + rng.randint(1, 64)))
    count = len(frames)
    if rng.random() < 0.15:
        count = rng.choice([0, 1, count + 1, max(0, count - 1), (1 << 32) - 1, 1 << 20])
    header = shards_pb2.PutShardRequest(header=_header(rng, kind, count)).SerializeToString()
    end = shards_pb2.PutShardRequest(end=shards_pb2.PutShardEnd()).SerializeToString()
    messages = [header, *(_frame_message(f) for f in frames), end]
    if rng.random() < 0.05:
        messages.pop()  # no end: stores nothing, as a cancelled stream
    roll = rng.random()
    if roll < 0.05:
        messages = []
    elif roll < 0.1:
        messages = messages[1:]  # no header
    elif roll < 0.15:
        messages.insert(rng.randint(1, len(messages)), header)  # a second header
    elif roll < 0.25:  # garbage somewhere in the stream
        spot = rng.randrange(len(messages) + 1)
        messages.insert(spot, random_bytes(rng))
    elif roll < 0.35:
        spot = rng.randrange(len(messages))
        messages[spot] = mutate(messages[spot], rng)
    elif roll < 0.4:
        messages = [random_bytes(rng) for _ in range(rng.randint(1, 5))]
    elif roll < 0.45:
        messages[-1] += unknown_field(rng)
    return messages


@dataclass(frozen=True, slots=True)
class Case:
    """One fuzzed call."""

    method: str
    request: bytes | tuple[bytes, ...]
    token: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    method: str
    code: grpc.StatusCode
    trailer: str | None
    details: str
    request: bytes | tuple[bytes, ...]


def make_cases(data_token: str, admin_token: str) -> list[Case]:
    cases: list[Case] = []
    for number, method in enumerate(sorted(RPCS)):
        for index in range(PER_RPC):
            rng = random.Random(SEED * 1_000_003 + number * 100_000 + index)
            roll = rng.random()
            if roll < 0.03:
                token: str | None = None
            elif roll < 0.05:
                token = rng.choice(["", "garbage", data_token[:-1] + "A", data_token + "x"])
            elif "AdminService" in method or roll < 0.12:
                token = admin_token
            else:
                token = data_token
            request: bytes | tuple[bytes, ...] = (
                tuple(put_stream(rng)) if method == PUT else unary_request(method, rng)
            )
            cases.append(Case(method, request, token))
    random.Random(SEED).shuffle(cases)
    return cases


def run_case(channel: grpc.Channel, case: Case) -> Outcome:
    try:
        invoke(channel, case.method, case.request, case.token, raw=True, timeout=30.0)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        details = error.details() or ""  # type: ignore[attr-defined]
        return Outcome(case.method, code, error_name(error), details, case.request)
    return Outcome(case.method, grpc.StatusCode.OK, None, "", case.request)


# The server and its canaries.


@dataclass
class Canaries:
    contents: dict[tuple[str, str], bytes]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    datasets = {**FUZZ_DATASETS, **CANARY_DATASETS}
    with serving(
        tmp_path_factory.mktemp("fuzz"),
        datasets=datasets,
        max_workers=16,
        trace_capacity=500,  # thousands of trace exports: keep each one short
    ) as server:
        yield server


def seed_shards(server: RunningServer) -> Canaries:
    store = server.store
    contents: dict[tuple[str, str], bytes] = {}
    for dataset in CANARY_DATASETS:
        for shard, size, seed in (("keep/a.bin", 5 * FRAME + 17, 1), ("keep/b.bin", 100, 2)):
            data = payload(size, seed)
            store.put(dataset, shard, data)
            contents[(dataset, shard)] = data
    for dataset in FUZZ_DATASETS:
        for shard, size, seed in (("s0", 3 * FRAME, 3), ("s1", 10, 4), ("dir/s2", FRAME + 1, 5)):
            store.put(dataset, shard, payload(size, seed))
        table = pa.table({"id": pa.array(range(500), pa.int64())})
        store.put(dataset, "arrow", table)
        store.put(dataset, "tensor", np.arange(2000, dtype=np.float32).reshape(-1, 4))
    # Part of the fuzz-ro dataset is cold, so reads also take the archive path.
    assert store.drain(30)
    store.evict("fuzz-ro", "s0")
    return Canaries(contents)


def probe(channel: grpc.Channel, admin_token: str, canaries: Canaries) -> None:
    """The server still answers health checks and canary stats."""
    check = channel.unary_unary(
        HEALTH_CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    reply = check(health_pb2.HealthCheckRequest(), timeout=10, metadata=metadata(admin_token))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    (dataset, shard), data = next(iter(canaries.contents.items()))
    info = invoke(
        channel,
        "/tierstore.v1.ShardService/StatShard",
        shards_pb2.StatShardRequest(dataset=dataset, shard=shard),
        admin_token,
        timeout=10,
    )[0]
    assert info.size == len(data)


def test_fuzz_every_rpc(fuzz_server: RunningServer) -> None:
    server = fuzz_server
    canaries = seed_shards(server)
    data_token = server.token(
        "svc:fuzz",
        ("fuzz", Role.ADMIN),
        ("fuzz-enc", Role.ADMIN),
        ("fuzz-wt", Role.ADMIN),
        ("fuzz2", Role.ADMIN),
        ("fuzz-ro", Role.READER),
    )
    admin_token = server.token("admin", ("*", Role.ADMIN))
    REVOCABLE[:] = [server.tokens.create(f"svc:victim-{n}", [])[0].token_id for n in range(40)]
    cases = make_cases(data_token, admin_token)
    assert {case.method for case in cases} == set(RPCS)
    assert min(Counter(case.method for case in cases).values()) >= 2000
    channel = server.channel()

    started = time.monotonic()
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    with ThreadPoolExecutor(WORKERS) as pool:
        for start in range(0, len(cases), PROBE_EVERY):
            batch = cases[start : start + PROBE_EVERY]
            results = list(pool.map(lambda case: run_case(channel, case), batch))
            with lock:
                outcomes.extend(results)
            probe(channel, admin_token, canaries)
    elapsed = time.monotonic() - started

    codes = Counter(outcome.code for outcome in outcomes)
    by_method = Counter((outcome.method, outcome.code.name) for outcome in outcomes)
    unexpected = [
        outcome
        for outcome in outcomes
        if outcome.code not in EXPECTED_CODES
        or (outcome.code is grpc.StatusCode.UNAVAILABLE and outcome.trailer is None)
    ]
    summary = "\n".join(
        f"  {o.method} {o.code.name} {o.details[:120]!r} request={_shown(o.request)}"
        for o in unexpected[:15]
    )
    assert codes[grpc.StatusCode.INTERNAL] == 0, f"INTERNAL answers:\n{summary}"
    assert not unexpected, f"{len(unexpected)} unexpected answers:\n{summary}"
    # The fuzzing reached past validation: some calls of most RPCs succeeded.
    succeeded = {method for (method, code) in by_method if code == "OK"}
    assert len(succeeded) >= 21, sorted(set(RPCS) - succeeded)
    assert len(outcomes) == len(cases)
    print(f"\n{len(outcomes)} fuzzed calls in {elapsed:.1f} s; codes: {dict(codes)}")

    # Afterwards: the server still serves, and the canaries read back byte for byte.
    probe(channel, admin_token, canaries)
    assert server.tls is not None
    client = Client(
        ChannelSettings(address=server.address, token=admin_token, ca=server.tls.ca_cert_path)
    )
    with client:
        for (dataset, shard), data in canaries.contents.items():
            assert client.get(dataset, shard).to_pybytes() == data, (dataset, shard)
            assert client.get(dataset, shard, offset=3, length=50).to_pybytes() == data[3:53]


def _shown(request: bytes | tuple[bytes, ...]) -> str:
    if isinstance(request, bytes):
        return request[:60].hex()
    return "[" + ", ".join(part[:24].hex() for part in request[:4]) + "]"


def test_fuzz_health_and_reflection(fuzz_server: RunningServer) -> None:
    """The services tierstore does not own answer garbage with INVALID_ARGUMENT too, on
    both ports; the health port keeps answering afterwards."""
    from grpc_reflection.v1alpha import reflection_pb2

    server = fuzz_server
    token = server.token("svc:fuzz-reflection", ("fuzz", Role.READER))
    api = server.channel()
    health_port = server.channel(address=server.health_address, plaintext=True)
    valid = {
        HEALTH_CHECK: [
            health_pb2.HealthCheckRequest(service=name).SerializeToString()
            for name in ("", "tierstore.v1.ShardService", "nope", "x" * 2000)
        ],
        REFLECTION: [
            reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString(),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="tierstore.v1.ShardService"
            ).SerializeToString(),
            reflection_pb2.ServerReflectionRequest(
                file_by_filename="\x00" * 50
            ).SerializeToString(),
        ],
    }

    def request(method: str, rng: random.Random) -> bytes:
        roll = rng.random()
        if roll < 0.4:
            return random_bytes(rng)
        base = rng.choice(valid[method])
        return mutate(base, rng) if roll < 0.8 else base + unknown_field(rng)

    def call(channel: grpc.Channel, method: str, data: bytes) -> grpc.StatusCode:
        md = (("authorization", f"Bearer {token}"),)
        try:
            if method == REFLECTION:
                stream = channel.stream_stream(method)
                for _ in stream(iter([data, data]), timeout=30, metadata=md):
                    pass
            else:
                channel.unary_unary(method)(data, timeout=30, metadata=md)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined,no-any-return]
        return grpc.StatusCode.OK

    jobs = [
        (channel, method, request(method, random.Random(SEED + index)))
        for index in range(PER_HEALTH_RPC)
        for channel, method in ((api, HEALTH_CHECK), (health_port, HEALTH_CHECK), (api, REFLECTION))
    ]
    with ThreadPoolExecutor(WORKERS) as pool:
        codes = Counter(pool.map(lambda job: call(*job), jobs))
    assert set(codes) <= {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    }, codes
    assert codes[grpc.StatusCode.INVALID_ARGUMENT] > 0
    check = health_pb2.HealthCheckRequest().SerializeToString()
    reply = health_port.unary_unary(HEALTH_CHECK)(check, timeout=10)
    assert health_pb2.HealthCheckResponse.FromString(reply).status == (
        health_pb2.HealthCheckResponse.SERVING
    )


def test_the_server_stops_after_undecodable_request_streams(tmp_path: Path) -> None:
    """Undecodable messages inside request streams leave nothing behind that blocks a
    graceful stop (before requests were decoded in the call, a reflection stream of
    garbage could make ``stop()`` wait forever)."""
    with serving(tmp_path, datasets={"fuzz": DatasetSettings()}) as server:
        token = server.token("svc:fuzz", ("fuzz", Role.ADMIN))
        channel = server.channel()
        md = (("authorization", f"Bearer {token}"),)
        for index in range(20):
            garbage = [b"A", random_bytes(random.Random(index)), b"A"]
            with pytest.raises(grpc.RpcError) as caught:
                for _ in channel.stream_stream(REFLECTION)(iter(garbage), timeout=10, metadata=md):
                    pass
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            with pytest.raises(grpc.RpcError) as caught:
                channel.stream_unary(PUT)(iter(garbage), timeout=10, metadata=md)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        stopped = threading.Event()
        threading.Thread(
            target=lambda: (server.server.stop(grace_s=1.0), stopped.set()), daemon=True
        ).start()
        assert stopped.wait(30), "the server did not stop within 30 s"
