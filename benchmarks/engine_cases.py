"""Engine benchmark cases: the engine and its ceiling, measured on the same bytes in one run.

Shared by ``bench_engine.py`` (pytest-benchmark) and ``engine_report.py`` (the
one-run report table), so both time exactly the same code.

Every :class:`Case` has an *engine* side (through :class:`tierstore.engine.store.Store`)
and a *ceiling* side (the raw library the engine is built on, doing the same
work on the same bytes): raw ``lmdb`` zero-copy reads, raw ``AESGCM.decrypt_into``,
raw parallel boto3 GETs, a raw sequential write + ``fdatasync``. A case's figure
is the ratio engine / ceiling (habit 11 of STYLE.md).

The churn test, a property of the hot tier rather than a ratio, is in
:mod:`churn_case`.

The consumer ("touch") on both sides of the read cases is
:func:`touch`: ``np.frombuffer(frame, np.uint64).sum()`` over every payload
frame, a memory-bandwidth-bound pass that stands for a loader copying the
bytes into a tensor. The encrypted case applies no touch on either side: the
decryption itself reads every ciphertext byte and writes every plaintext byte.

Layout of the data: ``total_bytes`` of random (incompressible) bytes cut into
64 MiB shards of 4 MiB frames (the engine's default frame limit).
"""

from __future__ import annotations

import os
import shutil
import statistics
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import boto3
import botocore.config
import numpy as np
import xxhash
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tierstore.config import EngineSettings
from tierstore.crypto import KEY_BYTES, TAG_BYTES, LocalKeyring
from tierstore.engine.catalog import FRAMES_DB
from tierstore.engine.records import ShardRecord, archive_frames_key, catalog_key, frame_key
from tierstore.engine.store import Store
from tierstore.frames import CHECKSUM_BYTES, FrameSealer, shard_context
from tierstore.tiers.memory import MemoryTier
from tierstore.tiers.s3 import S3Tier
from tierstore.tiers.seaweedfs import SeaweedServer
from tierstore.types import DatasetSettings, Durability

__all__ = [
    "FRAME_BYTES",
    "SHARD_BYTES",
    "BareVerifyPipeline",
    "Case",
    "ColdRead",
    "EncryptedHotRead",
    "EngineBench",
    "GiB",
    "HotRead",
    "MiB",
    "PairResult",
    "WriteBackPut",
    "check_not_tmpfs",
    "measure",
    "random_payload",
    "timed",
    "touch",
]

MiB = 1 << 20
GiB = 1 << 30
FRAME_BYTES = 4 * MiB
SHARD_BYTES = 64 * MiB
BUCKET = "tierstore-bench"
SETTLE_TIMEOUT_S = 120.0


def touch(buffer: Any) -> int:
    """Read every byte of ``buffer`` (length a multiple of 8) once; the read cases' consumer."""
    return int(np.frombuffer(buffer, dtype=np.uint64).sum())


def random_payload(nbytes: int, seed: int = 1234) -> bytes:
    """``nbytes`` of reproducible incompressible bytes."""
    return np.random.default_rng(seed).bytes(nbytes)


def check_not_tmpfs(path: Path) -> str:
    """The filesystem type holding ``path``; raises if it is a RAM filesystem."""
    best, fstype = "", "?"
    resolved = path.resolve()
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, mount_point, kind, *_ = line.split()
            if resolved.is_relative_to(mount_point) and len(mount_point) > len(best):
                best, fstype = mount_point, kind
    if fstype in ("tmpfs", "ramfs"):
        raise RuntimeError(f"{path} is on {fstype}; benchmark on the disk the store would use")
    return fstype


# Timing.


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took (wall clock)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass(frozen=True, slots=True)
class PairResult:
    """Engine and ceiling timings of one case (seconds per repetition, warm-up dropped)."""

    name: str
    nbytes: int
    target: float
    engine_s: tuple[float, ...]
    ceiling_s: tuple[float, ...]
    note: str = ""
    #: the dropped warm-up rounds (first touch, file allocation), for the record.
    warmup_engine_s: tuple[float, ...] = ()
    warmup_ceiling_s: tuple[float, ...] = ()

    @property
    def engine_gib_s(self) -> float:
        """Best engine throughput (GiB/s)."""
        return self.nbytes / min(self.engine_s) / GiB

    @property
    def ceiling_gib_s(self) -> float:
        """Best ceiling throughput (GiB/s)."""
        return self.nbytes / min(self.ceiling_s) / GiB

    @property
    def ratio(self) -> float:
        """Best engine throughput over best ceiling throughput: the figure compared to target."""
        return min(self.ceiling_s) / min(self.engine_s)

    @property
    def median_ratio(self) -> float:
        """The same ratio from the medians (shows how much noise the best hides)."""
        return statistics.median(self.ceiling_s) / statistics.median(self.engine_s)

    @property
    def passed(self) -> bool:
        return self.ratio >= self.target


class Case(Protocol):
    """One engine-vs-ceiling comparison. ``setup_*`` run untimed before each timed side."""

    name: str
    target: float
    nbytes: int
    note: str

    def setup_engine(self) -> None: ...
    def engine(self) -> None: ...
    def setup_ceiling(self) -> None: ...
    def ceiling(self) -> None: ...
    def finish(self) -> None: ...


def measure(case: Case, repeats: int, warmup: int = 1) -> PairResult:
    """Time both sides of ``case`` ``warmup + repeats`` times, interleaved.

    Engine and ceiling alternate (and swap order every round), so drift and
    neighbours' load on a shared machine hit both sides alike. Warm-up rounds
    are kept apart from the figures. ``case.finish()`` runs at the end, also on
    error.
    """
    try:
        return _measure(case, repeats, warmup)
    finally:
        case.finish()


def _measure(case: Case, repeats: int, warmup: int) -> PairResult:
    engine_s: list[float] = []
    ceiling_s: list[float] = []
    for round_ in range(warmup + repeats):
        sides = [(case.setup_engine, case.engine, engine_s)]
        sides.append((case.setup_ceiling, case.ceiling, ceiling_s))
        if round_ % 2:
            sides.reverse()
        for setup, run, sink in sides:
            setup()
            sink.append(timed(run))
    return PairResult(
        case.name,
        case.nbytes,
        case.target,
        tuple(engine_s[warmup:]),
        tuple(ceiling_s[warmup:]),
        case.note,
        tuple(engine_s[:warmup]),
        tuple(ceiling_s[:warmup]),
    )


# The shared set-up: a store over a real SeaweedFS archive, loaded once.


class EngineBench:
    """A temporary store (LMDB hot tier + SeaweedFS archive) loaded with benchmark data.

    Datasets: ``plain`` (write-back, plaintext) and ``enc`` (write-back,
    AES-256-GCM) hold the same ``total_bytes`` of shards, hot and archived;
    ``put`` (write-back, plaintext) is the write case's target. Everything lives
    in one temporary directory under ``parent`` (default: the system temporary
    directory), removed by :meth:`close`.
    """

    def __init__(
        self, total_bytes: int, parent: Path | None = None, cold_parallelism: int = 16
    ) -> None:
        if total_bytes % SHARD_BYTES:
            raise ValueError(f"total_bytes must be a multiple of {SHARD_BYTES // MiB} MiB")
        self.total_bytes = total_bytes
        self.cold_parallelism = cold_parallelism
        self.workdir = Path(tempfile.mkdtemp(prefix="tierstore-bench-", dir=parent))
        self.fstype = check_not_tmpfs(self.workdir)
        self.payload = random_payload(total_bytes)
        self.names = [f"shard-{i:04d}" for i in range(total_bytes // SHARD_BYTES)]
        self.keyring = LocalKeyring({"bench": os.urandom(KEY_BYTES)}, "bench")
        self.server: SeaweedServer | None = None
        self.archive: S3Tier | None = None
        self.store: Store | None = None
        self._raw_env: Any = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        self.server = SeaweedServer(self.workdir / "weed").start()
        self.archive = S3Tier(self.server.s3_settings(BUCKET))
        self.archive.ensure_bucket()
        self.settings = EngineSettings(
            data_dir=self.workdir / "store",
            # Room for every dataset and the put case's overwrites, far below the
            # high watermark: no case may trigger eviction of another's shards.
            hot_capacity_bytes=max(8 * self.total_bytes, GiB),
            max_frame_bytes=FRAME_BYTES,
            cold_read_parallelism=self.cold_parallelism,
        )
        self.store = Store(self.settings, self.archive, self.keyring)
        self.store.create_dataset("plain")
        self.store.create_dataset("enc", DatasetSettings(encrypted=True))
        self.store.create_dataset("put", DatasetSettings(durability=Durability.WRITE_BACK))
        for dataset in ("plain", "enc"):
            for name, shard in zip(self.names, self.shards(), strict=True):
                self.store.put(dataset, name, shard)
        if not self.store.drain(600):
            raise RuntimeError(f"the archive did not take the data: {self.store.stats()}")
        # The ceiling reads the store's own lmdb.Environment directly: the same map,
        # so the same pages, with no engine code in the way. py-lmdb refuses a second
        # handle on an environment in one process, and the Store has no public
        # accessor, hence the private attribute (benchmark code only).
        environment = self.store._env
        self._raw_env = environment.env
        self.raw_frames = environment.db(FRAMES_DB)
        self.raw_shards = environment.db("shards")

    def shards(self) -> Iterator[memoryview]:
        """The shard payloads, as views into one buffer."""
        view = memoryview(self.payload)
        for offset in range(0, self.total_bytes, SHARD_BYTES):
            yield view[offset : offset + SHARD_BYTES]

    def raw_read(self) -> Any:
        """A read transaction on the raw handle (``buffers=True``: zero-copy views)."""
        return self._raw_env.begin(buffers=True)

    def record(self, dataset: str, name: str) -> ShardRecord:
        """The catalog record, read through the raw handle (no engine code in the way)."""
        with self.raw_read() as txn:
            raw = txn.get(catalog_key(dataset, name), db=self.raw_shards)
            if raw is None:
                raise KeyError(f"{dataset}/{name}")
            return ShardRecord.decode(raw)

    def close(self) -> None:
        """Stop everything and remove the temporary directory. Idempotent."""
        self._raw_env = None  # the store's handle: closed with the store
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.archive is not None:
            self.archive.close()
            self.archive = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EngineBench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _live(bench: EngineBench) -> Store:
    assert bench.store is not None, "the bench is closed"
    return bench.store


# Read cases.


@dataclass
class HotRead:
    """Hot read of every plaintext shard through ``Store.get``, touching every byte.

    Ceiling: the same frame values read with raw ``lmdb`` (``buffers=True``, one
    read transaction per shard, as the engine), the same touch over each payload.
    """

    bench: EngineBench
    #: False: a what-if that skips the engine's per-read xxh3 check (see _skip_checksum).
    verify: bool = True
    name: str = "hot read (plaintext)"
    target: float = 0.9
    note: str = "consumer: np.uint64 sum per frame on both sides"
    nbytes: int = 0
    _keys: list[list[bytes]] = field(default_factory=list)
    _saved_open: Any = None

    def __post_init__(self) -> None:
        self.nbytes = self.bench.total_bytes
        if not self.verify:
            self.name = "hot read (plaintext), checksum not verified (what-if)"
            self.target = 0.0
            self.note = "FrameSealer.open patched in this process to skip xxh3 (measures its cost)"
        for name in self.bench.names:
            record = self.bench.record("plain", name)
            assert record.hot, f"plain/{name} is not hot"
            self._keys.append(
                [frame_key(record.generation, i).encode() for i in range(len(record.frame_sizes))]
            )

    def setup_engine(self) -> None:
        if not self.verify and self._saved_open is None:
            self._saved_open = FrameSealer.open
            FrameSealer.open = _skip_checksum  # type: ignore[method-assign]  # a what-if patch

    def engine(self) -> None:
        # The engine's streaming read: each frame is verified just before it is
        # handed out, so the consumer touches it while it is still in the cache.
        store = _live(self.bench)
        for name in self.bench.names:
            for frame in store.iter_frames("plain", name):
                touch(frame)

    def setup_ceiling(self) -> None:
        pass

    def ceiling(self) -> None:
        db = self.bench.raw_frames
        for keys in self._keys:
            with self.bench.raw_read() as txn:
                for key in keys:
                    touch(txn.get(key, db=db)[:-CHECKSUM_BYTES])

    def finish(self) -> None:
        if self._saved_open is not None:
            FrameSealer.open = self._saved_open  # type: ignore[method-assign]  # a what-if patch
            self._saved_open = None


#: how many frames the bare pipeline's helper may hash ahead of the consumer.
BARE_PIPELINE_AHEAD = 4


@dataclass
class BareVerifyPipeline:
    """What-if: the best a verify-then-touch hot read reaches on this machine, with no
    engine code at all.

    Raw ``lmdb`` views as the ceiling reads them; one helper thread runs xxh3 over each
    payload, up to :data:`BARE_PIPELINE_AHEAD` frames ahead of the consumer, which
    touches each frame once its hash is done. The ceiling is the hot read's.
    """

    bench: EngineBench
    name: str = "hot read, bare xxh3 + touch pipeline, no engine (what-if)"
    target: float = 0.0
    note: str = (
        f"raw lmdb, xxh3 on one helper thread up to {BARE_PIPELINE_AHEAD} frames ahead "
        "(the limit of the engine's approach)"
    )
    nbytes: int = 0
    _hot: HotRead | None = None
    _pool: ThreadPoolExecutor | None = None

    def __post_init__(self) -> None:
        self.nbytes = self.bench.total_bytes
        self._hot = HotRead(self.bench)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare-verify")

    def setup_engine(self) -> None:
        pass

    def engine(self) -> None:
        assert self._hot is not None and self._pool is not None
        db = self.bench.raw_frames
        for keys in self._hot._keys:
            with self.bench.raw_read() as txn:
                payloads = [txn.get(key, db=db)[:-CHECKSUM_BYTES] for key in keys]
                _hash_ahead_then_touch(self._pool, payloads)

    def setup_ceiling(self) -> None:
        pass

    def ceiling(self) -> None:
        assert self._hot is not None
        self._hot.ceiling()

    def finish(self) -> None:
        pass


def _hash_ahead_then_touch(pool: ThreadPoolExecutor, payloads: list[Any]) -> None:
    """xxh3 of each payload on ``pool``'s thread, up to :data:`BARE_PIPELINE_AHEAD` ahead;
    each payload touched here once its hash is done."""
    room = threading.Semaphore(BARE_PIPELINE_AHEAD)
    hashed = [threading.Event() for _ in payloads]

    def hash_all() -> None:
        for index, payload in enumerate(payloads):
            room.acquire()
            xxhash.xxh3_64_intdigest(payload)
            hashed[index].set()

    helper = pool.submit(hash_all)
    for index, payload in enumerate(payloads):
        hashed[index].wait()
        touch(payload)
        room.release()
    helper.result()


def _skip_checksum(self: FrameSealer, index: int, stored: memoryview) -> memoryview:
    """What-if stand-in for ``FrameSealer.open``: the payload view, unverified."""
    return stored[: len(stored) - CHECKSUM_BYTES]


@dataclass
class EncryptedHotRead:
    """Hot read of every encrypted shard through ``Store.get`` (decrypted by the engine).

    Ceiling: the same ciphertext frames read with raw ``lmdb`` and decrypted with
    ``AESGCM.decrypt_into`` into one preallocated buffer (key, nonce and
    associated data as the engine uses them, so every tag verifies).
    """

    bench: EngineBench
    name: str = "hot read (encrypted)"
    target: float = 0.8
    note: str = "no extra touch: decryption reads and writes every byte"
    nbytes: int = 0
    _plans: list[tuple[AESGCM, list[tuple[bytes, bytes, bytes]]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nbytes = self.bench.total_bytes
        for name in self.bench.names:
            record = self.bench.record("enc", name)
            assert record.hot and record.envelope is not None
            context = shard_context("enc", name, record.generation)
            data_key = self.bench.keyring.unwrap(record.envelope.wrapped, context)
            count = len(record.frame_sizes)
            sealer = FrameSealer(context, count)
            frames = [
                (
                    frame_key(record.generation, i).encode(),
                    record.envelope.nonce_prefix + struct.pack(">I", i),
                    sealer._aad(i),  # the engine's associated data, byte for byte
                )
                for i in range(count)
            ]
            self._plans.append((AESGCM(data_key), frames))
        self._out = bytearray(FRAME_BYTES)

    def setup_engine(self) -> None:
        pass

    def engine(self) -> None:
        store = _live(self.bench)
        for name in self.bench.names:
            data = store.get("enc", name)
            assert data.source == "hot"
            del data

    def setup_ceiling(self) -> None:
        pass

    def ceiling(self) -> None:
        db = self.bench.raw_frames
        out = memoryview(self._out)
        for aead, frames in self._plans:
            with self.bench.raw_read() as txn:
                for key, nonce, aad in frames:
                    sealed = txn.get(key, db=db)
                    aead.decrypt_into(nonce, sealed, aad, out[: len(sealed) - TAG_BYTES])

    def finish(self) -> None:
        pass


@dataclass
class ColdRead:
    """Cold read of every plaintext shard (evicted first) from the SeaweedFS archive.

    The engine does parallel ranged GETs (``cold_read_parallelism`` at a time),
    verifies each frame and queues the shard for promotion. With ``promotion``
    on (the default engine behaviour), promotion runs in the background during
    the timed read and is part of the engine's cost; between repetitions the
    benchmark waits (untimed) until every shard is hot again, then evicts it.
    With ``promotion`` off, the store's ``promoter.promote`` is replaced by a
    no-op on this instance for the duration of the case (diagnostic only).

    Ceiling: a raw boto3 client and a thread pool of the same width, GETting the
    same byte ranges of the same objects shard by shard, the same touch.
    """

    bench: EngineBench
    promotion: bool = True
    name: str = ""
    target: float = 0.9
    note: str = ""
    nbytes: int = 0
    _plans: list[tuple[str, list[tuple[int, int]]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nbytes = self.bench.total_bytes
        width = self.bench.cold_parallelism
        if not self.name:
            state = "background promotion on" if self.promotion else "promotion off (diagnostic)"
            self.name = f"cold read, {state}"
        self.note = (
            f"{width} parallel ranged GETs of 4 MiB frames per 64 MiB shard on both sides; "
            "np.uint64 sum per frame on both sides"
        )
        for name in self.bench.names:
            record = self.bench.record("plain", name)
            sizes = record.stored_sizes(CHECKSUM_BYTES)
            offsets = np.cumsum([0, *sizes])[:-1]
            ranges = [(int(o), int(s)) for o, s in zip(offsets, sizes, strict=True)]
            self._plans.append((archive_frames_key("plain", record.generation), ranges))
        assert self.bench.server is not None
        settings = self.bench.server.s3_settings(BUCKET)
        self._client = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            region_name=settings.region,
        ).client(
            "s3",
            endpoint_url=settings.endpoint_url,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=max(width, 10),
            ),
        )
        self._pool = ThreadPoolExecutor(width, thread_name_prefix="bench-boto3")
        self._saved_promote: Any = None
        self._promoting = False  # an engine run queued promotions not yet waited for

    def _disable_promotion(self) -> None:
        # Patched here, not at construction, so that building cases ahead of
        # measuring them cannot switch promotion off for another case.
        if not self.promotion and self._saved_promote is None:
            promoter = _live(self.bench).promoter
            self._saved_promote = promoter.promote
            # A what-if patch: every promotion dropped, as a full queue drops one.
            promoter.promote = lambda record, stored: False  # type: ignore[method-assign]

    def _settle(self) -> None:
        """After an engine run with promotion on, wait until every shard read is hot again."""
        store = _live(self.bench)
        if not self._promoting:
            return
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(store.stat("plain", name).hot for name in self.bench.names):
                self._promoting = False
                return
            time.sleep(0.05)
        raise RuntimeError("promotions did not finish within the settle timeout")

    def setup_engine(self) -> None:
        store = _live(self.bench)
        self._settle()
        self._disable_promotion()
        for name in self.bench.names:
            store.evict("plain", name)
            assert not store.stat("plain", name).hot

    def engine(self) -> None:
        store = _live(self.bench)
        for name in self.bench.names:
            data = store.get("plain", name)
            assert data.source == "archive"
            for frame in data.frames:
                touch(frame)
            del data
        self._promoting = self.promotion

    def setup_ceiling(self) -> None:
        self._settle()

    def _get(self, key: str, byte_range: tuple[int, int]) -> bytes:
        offset, length = byte_range
        response = self._client.get_object(
            Bucket=BUCKET, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
        )
        body: bytes = response["Body"].read()
        return body

    def ceiling(self) -> None:
        for key, ranges in self._plans:
            blobs = list(self._pool.map(lambda r, key=key: self._get(key, r), ranges))
            for blob in blobs:
                touch(memoryview(blob)[:-CHECKSUM_BYTES])

    def finish(self) -> None:
        self._settle()
        if self._saved_promote is not None:
            _live(self.bench).promoter.promote = self._saved_promote  # type: ignore[method-assign]  # a what-if patch
            self._saved_promote = None
        self._pool.shutdown()
        self._client.close()


# Write case.


@dataclass
class WriteBackPut:
    """Durable write-back puts of every shard through ``Store.put`` (fsynced LMDB commit).

    The mover uploads to SeaweedFS in the background while the puts run, as it
    would in service; both sides start with an empty journal (untimed drain).
    Each repetition overwrites the same shard names (a new generation each time).

    Ceiling: the same bytes written sequentially with ``os.pwrite`` to one file
    in the store's data directory (same filesystem), one ``fdatasync`` per
    shard as the engine commits once per put. The file is overwritten in place
    from offset 0 each repetition (allocated in the warm-up round), the
    cheapest way to get the bytes durable, so a strict ceiling.
    """

    bench: EngineBench
    #: False: a diagnostic on a second store whose mover is not started (no uploads).
    mover: bool = True
    name: str = "write-back put (durable)"
    target: float = 0.7
    note: str = "one fsynced commit per 64 MiB put; mover uploads in the background"
    nbytes: int = 0
    _quiet: Store | None = None

    def __post_init__(self) -> None:
        self.nbytes = self.bench.total_bytes
        self._path = self.bench.settings.data_dir / "ceiling-write.bin"
        if not self.mover:
            self.name = "write-back put, mover not started (diagnostic)"
            self.target = 0.0
            self.note = (
                "a second store (same disk, MemoryTier archive, start_mover=False): "
                "the commit path without background uploads"
            )

    def _store(self) -> Store:
        if self.mover:
            return _live(self.bench)
        if self._quiet is None:
            settings = replace(self.bench.settings, data_dir=self.bench.workdir / "store-no-mover")
            self._quiet = Store(settings, MemoryTier(), start_mover=False)
            self._quiet.create_dataset("put")
        return self._quiet

    def _drain(self) -> None:
        if not _live(self.bench).drain(600):
            raise RuntimeError("the mover did not drain the journal")

    def setup_engine(self) -> None:
        self._drain()

    def engine(self) -> None:
        store = self._store()
        for name, shard in zip(self.bench.names, self.bench.shards(), strict=True):
            store.put("put", name, shard)

    def setup_ceiling(self) -> None:
        self._drain()

    def ceiling(self) -> None:
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            offset = 0
            for shard in self.bench.shards():
                done = 0
                while done < len(shard):
                    done += os.pwrite(fd, shard[done:], offset + done)
                offset += done
                os.fdatasync(fd)
        finally:
            os.close(fd)

    def finish(self) -> None:
        self._drain()
        self._path.unlink(missing_ok=True)
        if self._quiet is not None:
            self._quiet.close()
            shutil.rmtree(self._quiet.settings.data_dir, ignore_errors=True)
            self._quiet = None
