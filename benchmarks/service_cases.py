"""Service benchmark cases: the gRPC service and its ceilings, on the same bytes in one run.

Shared by ``bench_service.py`` (pytest-benchmark) and ``service_report.py`` (the
one-run report table), so both time exactly the same code. Timing, the
:class:`~engine_cases.Case` protocol and :class:`~engine_cases.PairResult` are
the engine benchmark's (:mod:`engine_cases`): engine and ceiling sides
interleaved, warm-up dropped, best and median of the repeats.

What runs where (all on ``127.0.0.1``):

* **tierstore** — ``tierstore serve`` as a subprocess, as shipped: TLS with its
  own local CA, bearer tokens, the write-back mover; its archive is a SeaweedFS
  (:class:`~tierstore.tiers.seaweedfs.SeaweedServer`, telemetry off) that the
  benchmark starts, so boto3 can read the very objects the server wrote.
* **bare grpcio** — :mod:`bare_grpc` as a subprocess: the same payload bytes in
  memory, 4 MiB frames as ``bytes`` fields, the same certificate, channel
  options and thread pool size. **TLS on both sides** in the comparisons with
  tierstore (the server is secure by default); its plaintext port only serves
  the diagnostic that prices TLS itself.
* **the clients** — this process: ``tierstore.client.connect`` (TLS + token),
  :class:`~bare_grpc.BareClient`, and a boto3 client (path style, checksums
  ``when_required``).

Every get receives a whole 64 MiB shard into one 64-byte-aligned buffer
(``pa.allocate_buffer``); tierstore's client also verifies (xxh3) or decrypts
(AES-256-GCM) each frame on the way in. No extra consumer pass on either side.

The memory case (:func:`run_memory_case`) is a property rather than a ratio:
the server's resident memory while several clients stream one large shard at
once, sampled from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import functools
import multiprocessing
import queue
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pyarrow as pa
from bare_grpc import BareClient
from engine_cases import FRAME_BYTES, SHARD_BYTES, GiB, MiB, check_not_tmpfs, random_payload
from service_processes import BareProcess, MemoryStatus, ServerProcess, memory_status

from tierstore.client.client import Client
from tierstore.client.connect import connect
from tierstore.engine.records import archive_frames_key
from tierstore.frames import CHECKSUM_BYTES
from tierstore.tiers.seaweedfs import SeaweedServer

__all__ = [
    "ArchiveGet",
    "BareTlsCost",
    "EncryptedHotGet",
    "HotGet",
    "MemoryResult",
    "ServiceBench",
    "ServicePut",
    "run_memory_case",
]

BUCKET = "tierstore-bench"
SEED = 1234
DRAIN_TIMEOUT_S = 600.0
START_TIMEOUT_S = 180.0


class ServiceBench:
    """A ``tierstore serve`` node, its SeaweedFS archive and a bare grpcio server, loaded.

    Datasets (loaded through the client, then archived by the server's mover):
    ``plain`` (write-back, plaintext) and ``enc`` (write-back, AES-256-GCM) hold the
    same ``total_bytes`` in 64 MiB shards, hot and archived; ``put`` is the put
    case's target. Everything lives in one temporary directory under ``parent``
    (default: the system temporary directory; tmpfs is refused), removed by
    :meth:`close`.
    """

    def __init__(
        self, total_bytes: int, parent: Path | None = None, archive_parallelism: int = 16
    ) -> None:
        if total_bytes % SHARD_BYTES:
            raise ValueError(f"total_bytes must be a multiple of {SHARD_BYTES // MiB} MiB")
        self.total_bytes = total_bytes
        self.archive_parallelism = archive_parallelism
        self.workdir = Path(tempfile.mkdtemp(prefix="tierstore-svc-bench-", dir=parent))
        self.fstype = check_not_tmpfs(self.workdir)
        self.payload = random_payload(total_bytes, SEED)
        self.names = [f"shard-{i:04d}" for i in range(total_bytes // SHARD_BYTES)]
        self.seaweed: SeaweedServer | None = None
        self.server: ServerProcess | None = None
        self.bare: BareProcess | None = None
        self._client: Client | None = None
        self._grpc_client: Client | None = None
        self._bare_clients: dict[bool, BareClient] = {}
        self._s3: Any = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        self.seaweed = SeaweedServer(self.workdir / "weed").start()
        self.archive = self.seaweed.s3_settings(BUCKET)
        self._s3 = boto3.session.Session(
            aws_access_key_id=self.archive.access_key_id,
            aws_secret_access_key=self.archive.secret_access_key,
            region_name=self.archive.region,
        ).client(
            "s3",
            endpoint_url=self.archive.endpoint_url,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=max(self.archive_parallelism, 10),
            ),
        )
        # Room for every dataset, the put case's generations and the memory case's
        # large shard, far below the high watermark: nothing may be evicted.
        self.hot_capacity = max(16 * self.total_bytes, 16 * GiB)
        self.start_server()
        client = self.client
        client.create_dataset("plain", encrypted=False)
        client.create_dataset("enc", encrypted=True)
        client.create_dataset("put", encrypted=False)
        for dataset in ("plain", "enc"):
            for name, shard in zip(self.names, self.shards(), strict=True):
                client.put(dataset, name, shard)
        self.drain()
        for dataset in ("plain", "enc"):
            for name in self.names:
                info = client.stat(dataset, name)
                if not (info.hot and info.archived):
                    raise RuntimeError(f"{dataset}/{name} is not hot and archived: {info}")
        assert self.server is not None
        tls = self.server.data_dir / "tls"
        self.bare = BareProcess(
            self.total_bytes,
            SEED,
            tls / "server.pem",
            tls / "server.key",
            self.workdir / "bare.log",
        ).start()

    # The tierstore server.

    def start_server(self, what_if: bool = False) -> ServerProcess:
        """Start (or restart, on the same data directory) the tierstore server; ``what_if``:
        through :mod:`serve_what_if` (suspected hot spots patched out)."""
        self.stop_server()
        self.server = ServerProcess(
            self.workdir / "node",
            self.archive,
            self.hot_capacity,
            self.workdir / "serve.log",
            what_if,
        ).start()
        return self.server

    def stop_server(self) -> None:
        for client in (self._client, self._grpc_client):
            if client is not None:
                client.close()
        self._client = self._grpc_client = None
        if self.server is not None:
            self.server.stop()

    @property
    def client(self) -> Client:
        """The admin's client of the running server (TLS and token, as a user connects)."""
        if self._client is None:
            assert self.server is not None, "the server is not running"
            self._client = connect(
                self.server.address, token=self.server.token, ca=self.server.ca_path
            )
        return self._client

    @property
    def grpc_client(self) -> Client:
        """A client of the running server with the local read path off: every read
        streams through GetShard over TLS."""
        if self._grpc_client is None:
            assert self.server is not None, "the server is not running"
            self._grpc_client = connect(
                self.server.address,
                token=self.server.token,
                ca=self.server.ca_path,
                local_reads=False,
            )
        return self._grpc_client

    def reader(self, path: str) -> Client:
        """The client whose reads take ``path``: ``"local"`` (the default client: in
        place from the hot tier when the server is on this host) or ``"grpc"``."""
        if path not in READ_PATHS:
            raise ValueError(f"read path must be one of {READ_PATHS}, not {path!r}")
        return self.client if path == "local" else self.grpc_client

    def connect_args(self) -> tuple[str, str, str]:
        """``(address, token, ca path)`` of the running server, for clients in other processes."""
        assert self.server is not None
        return self.server.address, self.server.token, str(self.server.ca_path)

    def drain(self) -> None:
        """Wait (polling) until the server's mover has archived everything."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            stats = self.client.stats()
            if stats["backlog_bytes"] == 0 and stats["journal_entries"] == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the server's mover did not drain: {self.client.stats()}")

    # The ceilings' clients.

    def bare_client(self, tls: bool = True) -> BareClient:
        """A client of the bare grpcio server (TLS with the node's CA, or plaintext)."""
        if tls not in self._bare_clients:
            assert self.bare is not None and self.server is not None
            if tls:
                client = BareClient(self.bare.tls_address, self.server.ca_path.read_bytes())
            else:
                client = BareClient(self.bare.plain_address, None)
            self._bare_clients[tls] = client
        return self._bare_clients[tls]

    @property
    def s3(self) -> Any:
        """A raw boto3 S3 client of the archive."""
        return self._s3

    def shards(self) -> list[memoryview]:
        """The shard payloads, as views into one buffer."""
        view = memoryview(self.payload)
        return [view[o : o + SHARD_BYTES] for o in range(0, self.total_bytes, SHARD_BYTES)]

    def close(self) -> None:
        """Stop everything and remove the temporary directory. Idempotent."""
        for client in self._bare_clients.values():
            client.close()
        self._bare_clients = {}
        if self.bare is not None:
            self.bare.stop()
            self.bare = None
        self.stop_server()
        self.server = None
        if self._s3 is not None:
            self._s3.close()
            self._s3 = None
        if self.seaweed is not None:
            self.seaweed.stop()
            self.seaweed = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ServiceBench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _get_all(bench: ServiceBench, dataset: str, path: str) -> None:
    client = bench.reader(path)
    before = client.read_counts
    for name in bench.names:
        data = client.get(dataset, name)
        assert data.size == SHARD_BYTES
        del data
    after = client.read_counts
    served = after.local - before.local if path == "local" else after.grpc - before.grpc
    if served != len(bench.names):
        raise RuntimeError(
            f"{served} of {len(bench.names)} gets of {dataset} took the {path} path "
            f"(counts before {before}, after {after})"
        )


def _hot_misses(bench: ServiceBench, dataset: str) -> int:
    misses: int = bench.client.stats(dataset)["datasets"][dataset]["misses"]
    return misses


# Read cases.

#: the client's two read paths; every read case says which one it times.
READ_PATHS = ("local", "grpc")


@dataclass
class HotGet:
    """Hot ``Client.get`` of every plaintext shard (TLS, token; verified into one buffer).

    ``path="grpc"`` (the transport comparison): every get streams through GetShard.
    ``path="local"``: the default client, which reads in place from the hot tier
    because the server runs on this host (a diagnostic here: no transport at all).

    Ceiling: the bare grpcio server streaming the same bytes from memory over TLS,
    received into one buffer per shard, one shard after the other as the client does.
    """

    bench: ServiceBench
    path: str = "grpc"
    name: str = ""
    target: float = 0.8
    note: str = (
        "64 MiB shards one at a time, 4 MiB frames, TLS on both sides; the client also "
        "verifies xxh3 per frame"
    )
    nbytes: int = 0
    _misses: int = 0

    def __post_init__(self) -> None:
        self.nbytes = self.bench.total_bytes
        self._misses = _hot_misses(self.bench, "plain")
        if self.path == "local":
            self.target = 0.0
        self.name = self.name or (
            "hot get (client, gRPC path, TLS) vs bare grpcio (TLS)"
            if self.path == "grpc"
            else "hot get (client, local path) vs bare grpcio (TLS) (diagnostic)"
        )

    def setup_engine(self) -> None:
        pass

    def engine(self) -> None:
        _get_all(self.bench, "plain", self.path)

    def setup_ceiling(self) -> None:
        pass

    def ceiling(self) -> None:
        bare = self.bench.bare_client(tls=True)
        for index in range(len(self.bench.names)):
            data = bare.get(index, SHARD_BYTES)
            del data

    def finish(self) -> None:
        # Every get above must have been a hot hit: no read may have gone to the archive.
        misses = _hot_misses(self.bench, "plain")
        if misses != self._misses:
            raise RuntimeError(f"{misses - self._misses} plaintext gets missed the hot tier")


@dataclass
class EncryptedHotGet:
    """Hot ``Client.get`` of every encrypted shard (the client decrypts into its buffer).

    Ceiling: the same gets of the plaintext dataset (same bytes, same TLS client).
    """

    bench: ServiceBench
    #: both sides read through this path ("local" or "grpc").
    path: str = "local"
    name: str = ""
    target: float = 0.8
    note: str = "AES-256-GCM decrypt_into on the client vs xxh3 verify + copy; same client"
    nbytes: int = 0
    _misses: int = 0

    def __post_init__(self) -> None:
        self.nbytes = self.bench.total_bytes
        self._misses = _hot_misses(self.bench, "enc")
        self.name = self.name or f"hot get: encrypted / plaintext dataset ({self.path} path)"

    def setup_engine(self) -> None:
        pass

    def engine(self) -> None:
        _get_all(self.bench, "enc", self.path)

    def setup_ceiling(self) -> None:
        pass

    def ceiling(self) -> None:
        _get_all(self.bench, "plain", self.path)

    def finish(self) -> None:
        misses = _hot_misses(self.bench, "enc")
        if misses != self._misses:
            raise RuntimeError(f"{misses - self._misses} encrypted gets missed the hot tier")


@dataclass
class ArchiveGet:
    """Hot ``Client.get`` of every plaintext shard against boto3 straight from SeaweedFS.

    Ceiling (the alternative to running tierstore at all): a raw boto3 client and a
    pool of ``archive_parallelism`` threads GETting the byte ranges of the same
    stored frames from the shard's archive object (what the engine itself does on a
    miss, the fastest way boto3 reads it), each payload copied into one buffer per
    shard; no verification. The target is a speed-up: tierstore >= 2x.
    """

    bench: ServiceBench
    #: "local": the default client (in place from the hot tier, the server being on
    #: this host); "grpc": the local path off, every get streamed over TLS.
    path: str = "local"
    name: str = ""
    target: float = 2.0
    note: str = ""
    nbytes: int = 0
    _plans: list[tuple[str, list[tuple[int, int, int]]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nbytes = self.bench.total_bytes
        self.name = self.name or f"hot get (client, {self.path} path) vs boto3 GETs from SeaweedFS"
        width = self.bench.archive_parallelism
        self.note = (
            f"ceiling: {width} parallel ranged GETs (one per 4 MiB stored frame) per 64 MiB "
            "shard, no checksum check; tierstore verifies"
        )
        for name in self.bench.names:
            info = self.bench.client.stat("plain", name)
            ranges, stored_at, payload_at = [], 0, 0
            for size in info.frame_sizes:
                ranges.append((stored_at, size, payload_at))
                stored_at += size + CHECKSUM_BYTES
                payload_at += size
            self._plans.append((archive_frames_key("plain", info.generation), ranges))
        self._pool = ThreadPoolExecutor(width, thread_name_prefix="bench-boto3")

    def setup_engine(self) -> None:
        pass

    def engine(self) -> None:
        _get_all(self.bench, "plain", self.path)

    def setup_ceiling(self) -> None:
        pass

    def _get_into(self, key: str, piece: tuple[int, int, int], out: memoryview) -> None:
        offset, size, position = piece
        response = self.bench.s3.get_object(
            Bucket=BUCKET, Key=key, Range=f"bytes={offset}-{offset + size + CHECKSUM_BYTES - 1}"
        )
        body: bytes = response["Body"].read()
        out[position : position + size] = memoryview(body)[:size]

    def ceiling(self) -> None:
        for key, ranges in self._plans:
            out = pa.allocate_buffer(SHARD_BYTES)
            view = memoryview(out).cast("B")
            list(self._pool.map(functools.partial(self._get_into, key, out=view), ranges))
            del view, out

    def finish(self) -> None:
        self._pool.shutdown()


@dataclass
class BareTlsCost:
    """Diagnostic: the bare grpcio get over TLS against the same get in plaintext."""

    bench: ServiceBench
    name: str = "bare grpcio get: TLS / plaintext (diagnostic)"
    target: float = 0.0
    note: str = "what TLS itself costs on this machine, with no tierstore code on either side"
    nbytes: int = 0

    def __post_init__(self) -> None:
        self.nbytes = self.bench.total_bytes

    def setup_engine(self) -> None:
        pass

    def engine(self) -> None:
        self._get_all(tls=True)

    def setup_ceiling(self) -> None:
        pass

    def ceiling(self) -> None:
        self._get_all(tls=False)

    def _get_all(self, tls: bool) -> None:
        bare = self.bench.bare_client(tls)
        for index in range(len(self.bench.names)):
            data = bare.get(index, SHARD_BYTES)
            del data

    def finish(self) -> None:
        pass


# Write case.


@dataclass
class ServicePut:
    """``Client.put`` of every shard into the write-back dataset ``put`` (TLS, token).

    The server spools the stream, commits it durably (one fsynced LMDB transaction)
    and acknowledges; its mover uploads to SeaweedFS in the background, as in
    service. Both sides start with an empty upload journal (untimed drain).
    Ceiling: the bare grpcio server receiving the same frames over TLS, one
    client-streaming call per shard, and dropping them. Reported, no target.
    """

    bench: ServiceBench
    name: str = "put (client, TLS, durable) vs bare grpcio receive (TLS)"
    target: float = 0.0
    note: str = (
        "one 64 MiB put per shard, 4 MiB frames; the server spools, commits with fsync and "
        "uploads in the background; the bare server drops what it receives"
    )
    nbytes: int = 0

    def __post_init__(self) -> None:
        self.nbytes = self.bench.total_bytes

    def setup_engine(self) -> None:
        self.bench.drain()

    def engine(self) -> None:
        client = self.bench.client
        for name, shard in zip(self.bench.names, self.bench.shards(), strict=True):
            client.put("put", name, shard)

    def setup_ceiling(self) -> None:
        self.bench.drain()

    def ceiling(self) -> None:
        bare = self.bench.bare_client(tls=True)
        for shard in self.bench.shards():
            frames = [shard[i : i + FRAME_BYTES] for i in range(0, len(shard), FRAME_BYTES)]
            assert bare.put(frames) == len(shard)

    def finish(self) -> None:
        self.bench.drain()


# The memory case.


@dataclass(frozen=True, slots=True)
class MemoryResult:
    """The server's memory while ``clients`` processes stream one ``shard_bytes`` shard."""

    shard_bytes: int
    clients: int
    limit_bytes: int
    #: right after the (re)started server said ready.
    baseline: MemoryStatus
    #: peaks of the samples taken while the clients streamed.
    peak_rss: int
    peak_anon: int
    peak_file: int
    #: VmHWM at the end: the peak since the server started (startup included).
    hwm: int
    samples: int
    seconds: float
    received_bytes: int
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and max(self.peak_rss, self.hwm) < self.limit_bytes

    @property
    def gib_s(self) -> float:
        """Aggregate throughput of all the clients together."""
        return self.received_bytes / self.seconds / GiB if self.seconds else 0.0


def _stream_worker(
    address: str, token: str, ca: str, dataset: str, shard: str, go: Any, results: Any
) -> None:
    """One client process: stream the shard a verified frame at a time (so the client
    holds one frame, not the shard).

    Puts ``("ready", 0, 0.0, None)`` once connected, waits for ``go``, then puts
    ``("done", bytes, seconds, error or None)``.
    """
    try:
        client = connect(address, token=token, ca=ca)
        client.stat(dataset, shard)  # connected and authorized before the clock starts
        results.put(("ready", 0, 0.0, None))
        if not go.wait(START_TIMEOUT_S):
            raise TimeoutError("the parent never said go")
        began = time.perf_counter()
        received = 0
        # Client.get would allocate the whole shard; iter_bytes hands on a frame at a
        # time, each verified into a buffer of its own.
        for piece in client.iter_bytes(dataset, shard):
            received += len(piece)
        results.put(("done", received, time.perf_counter() - began, None))
        client.close()
    except Exception as exc:  # reported to the parent, which fails the case
        results.put(("done", 0, 0.0, f"{type(exc).__name__}: {exc}"))


def _collect(
    results: Any, workers: list[Any], kind: str, timeout_s: float
) -> list[tuple[str, int, float, str | None]]:
    """One ``kind`` message per worker; raises if a worker dies silently or time runs out."""
    messages: list[tuple[str, int, float, str | None]] = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < len(workers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(messages)} of {len(workers)} stream clients were {kind}")
        try:
            message = results.get(timeout=0.5)
        except queue.Empty:
            if sum(w.is_alive() for w in workers) < len(workers) - len(messages):
                raise RuntimeError(f"a stream client died before it was {kind}") from None
            continue
        if message[3] is not None or message[0] == kind:
            messages.append(message)
    return messages


def _write_large_file(path: Path, payload: bytes, nbytes: int) -> None:
    """``nbytes`` of the payload, repeated, written to ``path`` (put from a file: mapped)."""
    with path.open("wb") as out:
        written = 0
        while written < nbytes:
            chunk = memoryview(payload)[: nbytes - written]
            out.write(chunk)
            written += len(chunk)


def _load_large_shard(bench: ServiceBench, shard_bytes: int) -> None:
    """Put the memory case's shard (``large/large-0``) unless it is there already."""
    client = bench.client
    if any(name == "large" for name, _ in client.list_datasets()):
        if client.stat("large", "large-0").size == shard_bytes:
            return
    else:
        client.create_dataset("large", encrypted=False)
    source = bench.workdir / "large.bin"
    _write_large_file(source, bench.payload, shard_bytes)
    try:
        client.put("large", "large-0", source)
    finally:
        source.unlink(missing_ok=True)
    bench.drain()


def run_memory_case(
    bench: ServiceBench,
    shard_bytes: int,
    clients: int = 8,
    limit_bytes: int = 512 * MiB,
    interval_s: float = 0.02,
    what_if: bool = False,
) -> MemoryResult:
    """Put one ``shard_bytes`` shard, restart the server, then sample its memory while
    ``clients`` processes stream that shard at once (each from its own channel).

    The restart makes VmHWM count the streaming only, not the large put (a put holds
    its whole transaction's dirty pages). Leaves a running server behind (the
    what-if server when ``what_if``).
    """
    _load_large_shard(bench, shard_bytes)
    server = bench.start_server(what_if)
    address, token, ca = bench.connect_args()
    baseline = server.memory()
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    results = context.Queue()
    workers = [
        context.Process(
            target=_stream_worker,
            args=(address, token, ca, "large", "large-0", go, results),
            daemon=True,
        )
        for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    peaks = {"rss": 0, "anon": 0, "file": 0, "samples": 0}
    done = threading.Event()

    pid = server.pid

    def sample() -> None:
        while not done.is_set():
            try:
                status = memory_status(pid)
            except OSError:  # the server died: the case fails on the clients' errors
                return
            peaks["rss"] = max(peaks["rss"], status.rss)
            peaks["anon"] = max(peaks["anon"], status.anon)
            peaks["file"] = max(peaks["file"], status.file)
            peaks["samples"] += 1
            done.wait(interval_s)

    sampler = threading.Thread(target=sample, name="bench-rss-sampler", daemon=True)
    sampler.start()
    try:
        ready = _collect(results, workers, "ready", START_TIMEOUT_S)
        began = time.perf_counter()
        go.set()
        outcomes = ready if any(m[3] for m in ready) else []
        if not outcomes:
            outcomes = _collect(results, workers, "done", DRAIN_TIMEOUT_S)
        seconds = time.perf_counter() - began
    finally:
        go.set()
        done.set()
        sampler.join()
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
    errors = [error for *_, error in outcomes if error]
    received = sum(count for _, count, _, _ in outcomes)
    if not errors and received != clients * shard_bytes:
        errors.append(f"received {received} of {clients * shard_bytes} bytes")
    return MemoryResult(
        shard_bytes=shard_bytes,
        clients=clients,
        limit_bytes=limit_bytes,
        baseline=baseline,
        peak_rss=peaks["rss"],
        peak_anon=peaks["anon"],
        peak_file=peaks["file"],
        hwm=server.memory().hwm,
        samples=peaks["samples"],
        seconds=seconds,
        received_bytes=received,
        error="; ".join(errors) or None,
    )
