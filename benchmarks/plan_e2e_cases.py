"""The end-to-end plan benchmark's pieces: a live node behind a throttled archive, and
the simulator's side (a run as a simulator trace, the prediction).

:class:`Testbed` starts, all on ``127.0.0.1``:

* **SeaweedFS** (:class:`~tierstore.tiers.seaweedfs.SeaweedServer`, telemetry off) — the
  archive;
* a :class:`~tierstore.testing.throttle.ThrottlingProxy` in front of its S3 port, **in a
  child process** (so its event loop shares no GIL with the reader being timed): every
  response byte of every connection pays one shared token bucket of ``b`` bytes/s, and
  every request a 20 ms time to first byte; no per-connection limit;
* ``tierstore serve`` as a subprocess, as shipped (TLS, tokens), its ``--s3-endpoint``
  the proxy, its engine settings from a ``--config`` TOML (:func:`engine_toml`): the
  prefetcher's bandwidth estimate set to ``b``;

and a client (``tierstore.connect``, the admin token) in this process. It also holds the
dataset chores the benchmark needs between runs (load, drain, evict everything, the
hot-read baseline) and scrapes the server's Prometheus counters for diagnosis.

:meth:`Testbed.close` stops everything (SeaweedFS gets SIGKILL if it ignores SIGTERM)
and removes the work directory, also after a failure part-way through a start.

The simulator's side: :func:`live_trace` (the server's exported events of one run),
:func:`reader_trace` (a run as the reader recorded it), :func:`schedule_trace` (the
a-priori run), and :func:`predict` (``simulate`` with the node's capacity and a
:class:`~tierstore.sim.simulator.PrefetchModel` of the node's prefetch settings).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tierstore.client.client import Client
from tierstore.client.connect import connect
from tierstore.frames import CHECKSUM_BYTES
from tierstore.policy.registry import make_driven_policy
from tierstore.sim.events import Event, PlanClosed, PlanDeclared, PositionReported, Read, Trace
from tierstore.sim.simulator import PrefetchModel, SimResult, simulate
from tierstore.sim.tracefile import TraceWriter
from tierstore.testing.throttle import ProxyProcess, ThrottleSettings, bucket_burst_bytes
from tierstore.tiers.seaweedfs import SeaweedServer
from tierstore.types import TracedClose, TracedPlan, TracedPosition, TracedRead, TraceEvent

__all__ = [
    "MiB",
    "NodeSettings",
    "Testbed",
    "engine_toml",
    "live_trace",
    "predict",
    "reader_trace",
    "run_events",
    "save_trace",
    "schedule_trace",
    "stored_bytes",
]

MiB = 1 << 20
BUCKET = "tierstore-plan-e2e"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.05
SETTLE_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """What the node and its archive are given (sizes are stored bytes)."""

    #: the archive's bandwidth b, all connections together, bytes/s.
    archive_bytes_per_s: float
    #: the hot tier's capacity as the simulator sees it (C): whole shards only.
    capacity_bytes: int
    #: one stored shard (the eviction step).
    shard_bytes: int
    ttfb_s: float = 0.02
    prefetch_depth: int = 4
    promotion_threads: int = 4
    prefetch_horizon_s: float = 10.0

    @property
    def hot_capacity_bytes(self) -> int:
        """``--hot-capacity``: C plus half a shard, so that the tier never holds more
        than C of whole shards while the high watermark sits at the capacity."""
        return self.capacity_bytes + self.shard_bytes // 2

    @property
    def low_watermark(self) -> float:
        """Evict down to exactly C: one shard out for one shard in, as the simulator.
        (The mover frees down to ``int(capacity x low)``, which must not fall a byte
        short of C, or every eviction would take a second shard.)"""
        low = self.capacity_bytes / self.hot_capacity_bytes
        while int(self.hot_capacity_bytes * low) < self.capacity_bytes:
            low = math.nextafter(low, 1.0)
        return low


def engine_toml(node: NodeSettings) -> str:
    """The ``--config`` file: the prefetcher's estimate of the archive bandwidth is b,
    and the watermarks make eviction free exactly the room an incoming shard needs
    (high at the capacity, low at C), which is what the simulator models; the engine's
    defaults (0.90 / 0.75) would hold 75-90 % of C and evict in bulk."""
    return (
        f"archive_bandwidth_bytes_per_s = {float(node.archive_bytes_per_s)!r}\n"
        f"prefetch_horizon_s = {float(node.prefetch_horizon_s)!r}\n"
        f"prefetch_depth = {node.prefetch_depth}\n"
        f"promotion_threads = {node.promotion_threads}\n"
        "high_watermark = 1.0\n"
        f"low_watermark = {node.low_watermark!r}\n"
    )


def stored_bytes(payload_bytes: int, frame_bytes: int) -> int:
    """Stored size of a plaintext raw shard: each frame carries an xxh3 trailer."""
    frames = max(1, -(-payload_bytes // frame_bytes))
    return payload_bytes + frames * CHECKSUM_BYTES


# tierstore serve, with a settings file.


class ServeProcess:
    """``tierstore serve`` over an external archive, with ``--config``; logs to a file."""

    _READY = re.compile(r"serving on (\S+) .*?metrics on (\S+)/metrics.*?tierstore: ready", re.S)

    def __init__(self, data_dir: Path, command: list[str], env: dict[str, str], log: Path):
        self.log_path = log
        self._log: IO[bytes] = log.open("ab")
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        self.data_dir = data_dir
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            match = self._READY.search(log.read_text(errors="replace"))
            if match is not None:
                self.address, self.metrics_url = match.group(1), match.group(2) + "/metrics"
                return
            if self._process.poll() is not None:
                break
            time.sleep(POLL_S)
        tail = log.read_text(errors="replace")[-4000:]
        self.stop()
        raise RuntimeError(f"tierstore serve did not start (log {log}):\n{tail}")

    def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL after a timeout. Idempotent."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()


# The simulator's side.


def run_events(events: list[TraceEvent], job: str) -> list[TraceEvent]:
    """The exported events from ``job``'s plan declaration to its close."""
    start, scoped = next(
        (i, e.job)
        for i, e in enumerate(events)
        if isinstance(e, TracedPlan) and e.job.endswith("/" + job)
    )
    window = []
    for event in events[start:]:
        window.append(event)
        if isinstance(event, TracedClose) and event.job == scoped:
            break
    return window


def live_trace(window: list[TraceEvent]) -> Trace:
    """The run's exported events as a simulator trace (shards named by first appearance)."""
    ids: dict[str, int] = {}
    sizes: list[int] = []

    def key(name: str, size: int) -> int:
        if name not in ids:
            ids[name] = len(sizes)
            sizes.append(size)
        return ids[name]

    t0 = window[0].t
    sim: list[Event] = []
    for event in window:
        t = event.t - t0
        if isinstance(event, TracedRead):
            sim.append(Read(t, key(event.shard, event.size)))
        elif isinstance(event, TracedPlan):
            keys = tuple(key(n, s) for n, s in zip(event.shards, event.sizes, strict=True))
            sim.append(PlanDeclared(t, event.job, keys))
        elif isinstance(event, TracedPosition):
            sim.append(PositionReported(t, event.job, event.position))
        else:
            sim.append(PlanClosed(t, event.job))
    return Trace("live", tuple(sizes), sim)


def reader_trace(
    order: list[str], size: int, declared_at: float, reads: list[tuple[float, float]]
) -> Trace:
    """The run as the reader made it: the plan declared at ``declared_at``, read ``i`` at
    ``reads[i][0]`` and reported at ``reads[i][1]`` (one clock), every shard ``size``
    bytes."""
    ids = {name: i for i, name in enumerate(sorted(set(order)))}
    events: list[Event] = [PlanDeclared(0.0, "job", tuple(ids[n] for n in order))]
    for position, (name, (read_at, reported_at)) in enumerate(zip(order, reads, strict=True)):
        events.append(Read(read_at - declared_at, ids[name]))
        events.append(PositionReported(reported_at - declared_at, "job", position + 1))
    events.append(PlanClosed(events[-1].t, "job"))
    return Trace("reader", (size,) * len(ids), events)


def save_trace(window: list[TraceEvent], path: Path) -> None:
    """Write the run's events as a trace file (``tierstore simulate`` replays it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as stream:
        writer = TraceWriter(stream)
        for event in window:
            if isinstance(event, TracedRead):
                writer.read(event.t, event.dataset, event.shard, event.size)
            elif isinstance(event, TracedPlan):
                writer.plan(event.t, event.job, event.dataset, event.shards, event.sizes)
            elif isinstance(event, TracedPosition):
                writer.position(event.t, event.job, event.position)
            else:
                writer.close(event.t, event.job)


def schedule_trace(order: list[str], size: int, rate: float, hot_s: float) -> Trace:
    """The a-priori trace: the plan read exactly every ``1/rate`` s, each read reported
    when a hot read would end (``hot_s`` later)."""
    reads = [(0.01 + i / rate, 0.01 + i / rate + hot_s) for i in range(len(order))]
    return reader_trace(order, size, 0.0, reads)


#: how the live archive link is mapped onto the simulator's PrefetchModel.
LINK_MODELS = ("shared", "split", "per-fetch")


def predict(
    trace: Trace, policy: str, node: NodeSettings, warmup: int, *, link: str = "shared"
) -> SimResult:
    """The simulator's hit ratio for ``trace`` on this node, the archive link modelled as
    ``link``: ``"shared"`` (the primary: one link of ``b`` that the fetches in flight
    split evenly, with the proxy's bucket burst after idle spells, as the proxy's one
    token bucket does), ``"split"`` (``depth`` channels
    of ``b / depth``: every fetch takes ``depth x size / b`` however few run) or
    ``"per-fetch"`` (``depth`` channels of ``b``: a lone fetch's time on the live link,
    but up to ``depth x b`` together). All offer the engine's budget: ``depth``
    requests, ``b x horizon`` bytes."""
    depth = node.prefetch_depth
    b, horizon = node.archive_bytes_per_s, node.prefetch_horizon_s
    latency = node.ttfb_s  # the proxy's time to first byte, on every GET
    if link == "shared":
        burst = bucket_burst_bytes(b)  # the proxy's bucket, refilled while the link idles
        model = PrefetchModel(
            b, depth, horizon, shared_link=True, burst_bytes=burst, latency_s=latency
        )
    elif link == "split":
        model = PrefetchModel(b / depth, depth, horizon, latency_s=latency)
    elif link == "per-fetch":
        model = PrefetchModel(b, depth, horizon / depth, latency_s=latency)
    else:
        raise ValueError(f"link must be one of {LINK_MODELS}, not {link!r}")
    return simulate(
        trace, make_driven_policy(policy), node.capacity_bytes, warmup_reads=warmup, prefetch=model
    )


# The whole bed.


class Testbed:
    """SeaweedFS, the throttling proxy and ``tierstore serve``, plus an admin client.

    Everything lives in one temporary directory under ``parent``, removed by :meth:`close`.
    ``local_reads``: whether the client may read hot shards in place (same host) rather
    than through the service.
    """

    def __init__(
        self, node: NodeSettings, parent: Path | None = None, *, local_reads: bool = False
    ) -> None:
        self.node = node
        self.local_reads = local_reads
        self.workdir = Path(tempfile.mkdtemp(prefix="tierstore-plan-e2e-", dir=parent))
        self._seaweed: SeaweedServer | None = None
        self._proxy: ProxyProcess | None = None
        self._server: ServeProcess | None = None
        self._client: Client | None = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        node = self.node
        self._seaweed = SeaweedServer(self.workdir / "weed").start()
        archive = self._seaweed.s3_settings(BUCKET)
        self._proxy = ProxyProcess(
            self._seaweed.s3_port,
            ThrottleSettings(
                ttfb_s=node.ttfb_s,
                per_connection_bytes_per_s=None,
                total_bytes_per_s=node.archive_bytes_per_s,
            ),
        )
        config = self.workdir / "engine.toml"
        config.write_text(engine_toml(node))
        data_dir = self.workdir / "node"
        command = [
            sys.executable,
            "-m",
            "tierstore",
            "serve",
            f"--data-dir={data_dir}",
            "--listen=127.0.0.1:0",
            "--health-listen=127.0.0.1:0",
            "--metrics-listen=127.0.0.1:0",
            f"--s3-endpoint={self._proxy.endpoint_url}",
            f"--bucket={archive.bucket}",
            f"--hot-capacity={node.hot_capacity_bytes}",
            f"--config={config}",
        ]
        env = dict(os.environ)
        # The archive's secret travels in the environment, not on the command line.
        env["TIERSTORE_S3_ACCESS_KEY"] = archive.access_key_id
        env["TIERSTORE_S3_SECRET_KEY"] = archive.secret_access_key
        self._server = ServeProcess(data_dir, command, env, self.workdir / "serve.log")
        self._client = connect(
            self._server.address,
            token=(data_dir / "admin.token").read_text().strip(),
            ca=data_dir / "tls" / "ca.pem",
            # The documented switch of the client's local read path (docs/local-reads.md).
            environ={"TIERSTORE_LOCAL_READS": "1" if self.local_reads else "0"},
        )

    @property
    def client(self) -> Client:
        assert self._client is not None, "not started"
        return self._client

    def close(self) -> None:
        """Stop the client, server, proxy and SeaweedFS; remove the work directory."""
        for stop in (
            self._client.close if self._client else None,
            self._server.stop if self._server else None,
            self._proxy.close if self._proxy else None,
            self._seaweed.stop if self._seaweed else None,
        ):
            if stop is not None:
                try:
                    stop()
                except Exception as exc:  # keep cleaning up the rest
                    print(f"cleanup: {exc!r}", file=sys.stderr)
        self._client = self._server = self._proxy = self._seaweed = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Dataset chores.

    def load(self, dataset: str, names: list[str], payload: Any) -> None:
        """Create ``dataset`` and put every shard (``payload(i)`` its bytes), draining the
        archive backlog whenever it passes half the hot tier, then wait until the archive
        holds everything."""
        client = self.client
        client.create_dataset(dataset, encrypted=False)
        for index, name in enumerate(names):
            client.put(dataset, name, payload(index))
            if client.stats()["backlog_bytes"] > self.node.capacity_bytes // 2:
                self.drain()
        self.drain()
        unarchived = [info.name for info in client.list(dataset) if not info.archived]
        if unarchived:
            raise RuntimeError(f"not archived after the drain: {unarchived[:5]}")

    def drain(self) -> None:
        """Poll until the server's mover has archived everything."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            stats = self.client.stats()
            if stats["backlog_bytes"] == 0 and stats["journal_entries"] == 0:
                return
            time.sleep(POLL_S)
        raise RuntimeError(f"the mover did not drain: {self.client.stats()}")

    def hot_bytes(self, dataset: str) -> int:
        return int(self.client.stats(dataset)["datasets"][dataset]["hot_bytes"])

    def evict_all(self, dataset: str, names: list[str]) -> None:
        """Evict every shard, until the dataset stays cold for a second (promotions queued
        by the previous run may land after the first pass)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        cold_since: float | None = None
        while time.monotonic() < deadline:
            if self.hot_bytes(dataset) == 0:
                cold_since = cold_since or time.monotonic()
                if time.monotonic() - cold_since >= 1.0:
                    return
            else:
                cold_since = None
                for name in names:
                    self.client.evict(dataset, name)
            time.sleep(0.1)
        raise RuntimeError(f"{dataset} did not stay cold: {self.hot_bytes(dataset)} bytes hot")

    def hot_read_s(self, dataset: str, names: list[str], repeats: int = 5) -> float:
        """The median time of a whole-shard read served from the hot tier (the stall
        baseline): ``names`` are promoted, each read ``repeats`` times (first pass dropped)."""
        client = self.client
        client.prefetch(dataset, names)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while not all(client.stat(dataset, name).hot for name in names):
            if time.monotonic() > deadline:
                raise RuntimeError("the baseline shards were not promoted")
            time.sleep(POLL_S)
        times = []
        for attempt in range(repeats + 1):
            for name in names:
                started = time.perf_counter()
                client.get(dataset, name)
                if attempt:
                    times.append(time.perf_counter() - started)
        return statistics.median(times)

    def counters(self) -> dict[str, float]:
        """The server's promotion, eviction, archive-GET and served-byte counters."""
        assert self._server is not None
        with urllib.request.urlopen(self._server.metrics_url, timeout=10) as response:
            text = response.read().decode()
        wanted = {
            "promotions": r"^tierstore_promotions_total (\S+)",
            "evictions": r"^tierstore_evictions_total (\S+)",
            "archive_gets": (
                r'^tierstore_archive_request_seconds_count\{operation="get",outcome="ok"\} (\S+)'
            ),
            "served_hot_bytes": r'^tierstore_served_bytes_total\{tier="hot"\} (\S+)',
            "served_archive_bytes": r'^tierstore_served_bytes_total\{tier="archive"\} (\S+)',
        }
        found = {}
        for name, pattern in wanted.items():
            match = re.search(pattern, text, re.M)
            found[name] = float(match.group(1)) if match else 0.0
        return found
