"""The loader benchmark's live node: SeaweedFS, a throttling proxy in front of its S3 port
(in a spawned child process), and ``tierstore serve``, plus the admin client that loads the
shards of :mod:`loader_cases` three ways (:meth:`Testbed.load`): local Arrow IPC files, S3
objects (the same file bytes), and tierstore shards.

Everything listens on ``127.0.0.1``. :meth:`Testbed.close` stops every child (SeaweedFS
gets SIGKILL when it ignores SIGTERM) and removes the work directory, also after a
failure part-way through a start.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine_cases import check_not_tmpfs
from loader_cases import (
    DATASET,
    OBJECT_BUCKET,
    DataSpec,
    ipc_file_bytes,
    s3_client,
    shard_table,
)
from service_processes import ServerProcess

from tierstore.client.client import Client
from tierstore.client.connect import connect
from tierstore.testing.throttle import ProxyProcess, ThrottleSettings
from tierstore.tiers.seaweedfs import SeaweedServer

__all__ = ["Testbed"]

ARCHIVE_BUCKET = "loader-bench-archive"
SETTLE_TIMEOUT_S = 600.0
POLL_S = 0.1


# The node.


class Testbed:
    """SeaweedFS, a throttling proxy in front of its S3 port, ``tierstore serve`` (as
    shipped: TLS, tokens, local reads granted), an admin client, and the shards.

    The server is restarted on the same data directory to change its archive endpoint
    (SeaweedFS directly, or through the proxy) or its hot capacity.
    """

    def __init__(
        self,
        spec: DataSpec,
        throttle: ThrottleSettings,
        parent: Path | None = None,
        *,
        encrypted: bool = False,
    ):
        self.spec = spec
        #: whether the tierstore dataset is encrypted at rest (the clients' default):
        #: its readers then decrypt each frame.
        self.encrypted = encrypted
        self.workdir = Path(tempfile.mkdtemp(prefix="tierstore-loader-bench-", dir=parent))
        self.files = self.workdir / "files"
        self.fstype = ""
        self._seaweed: SeaweedServer | None = None
        self._proxy: ProxyProcess | None = None
        self._server: ServerProcess | None = None
        self._client: Client | None = None
        self._s3: Any = None
        self.throttled = False
        self.hot_capacity = 0
        try:
            self.fstype = check_not_tmpfs(self.workdir)
            self._seaweed = SeaweedServer(self.workdir / "weed").start()
            self.archive = self._seaweed.s3_settings(ARCHIVE_BUCKET)
            self.credentials = (self.archive.access_key_id, self.archive.secret_access_key)
            self._proxy = ProxyProcess(self._seaweed.s3_port, throttle)
            self._s3 = s3_client(self.archive.endpoint_url, self.credentials)
        except BaseException:
            self.close()
            raise

    def endpoint(self, throttled: bool) -> str:
        """The archive's S3 endpoint: SeaweedFS itself, or the throttling proxy."""
        assert self._proxy is not None
        return self._proxy.endpoint_url if throttled else self.archive.endpoint_url

    def start_server(self, *, throttled: bool, hot_capacity: int) -> None:
        """(Re)start ``tierstore serve`` on the node's data directory."""
        self.stop_server()
        archive = dataclasses.replace(self.archive, endpoint_url=self.endpoint(throttled))
        self._server = ServerProcess(
            self.workdir / "node", archive, hot_capacity, self.workdir / "serve.log"
        ).start()
        self.throttled, self.hot_capacity = throttled, hot_capacity

    def stop_server(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            self._server.stop()
            self._server = None

    def connect_kwargs(self) -> dict[str, Any]:
        """``address``, ``token`` and ``ca`` of the running server, for ``connect``."""
        assert self._server is not None, "the server is not running"
        return {
            "address": self._server.address,
            "token": self._server.token,
            "ca": str(self._server.ca_path),
        }

    @property
    def client(self) -> Client:
        """The admin's client. It never reads in place, so this process holds no LMDB
        snapshot when the DataLoader forks its workers (they would fall back to gRPC)."""
        if self._client is None:
            self._client = connect(**self.connect_kwargs(), local_reads=False)
        return self._client

    def load(self, log: Callable[[str], None]) -> None:
        """Write every shard as a local IPC file, an S3 object and a tierstore shard; wait
        until the server's archive holds them all."""
        self.files.mkdir()
        self._s3.create_bucket(Bucket=OBJECT_BUCKET)
        client = self.client
        client.create_dataset(DATASET, encrypted=self.encrypted)
        began = time.perf_counter()
        for index, name in enumerate(self.spec.names):
            table = shard_table(self.spec, index)
            data = ipc_file_bytes(table)
            (self.files / f"{name}.arrow").write_bytes(memoryview(data))
            self._s3.put_object(Bucket=OBJECT_BUCKET, Key=f"{name}.arrow", Body=data.to_pybytes())
            client.put(DATASET, name, table)
            if index % 16 == 15:
                log(f"  loaded {index + 1}/{self.spec.shards} shards")
        self.drain()
        seconds = time.perf_counter() - began
        log(f"  loaded and archived {self.spec.shards} shards in {seconds:.0f} s")
        for name in self.spec.names:
            info = client.stat(DATASET, name)
            if not info.archived:
                raise RuntimeError(f"{DATASET}/{name} is not archived: {info}")

    def drain(self) -> None:
        """Wait (polling) until the server's mover has archived everything."""
        self._poll(
            lambda: (s := self.client.stats())["backlog_bytes"] == 0 and s["journal_entries"] == 0,
            "the mover to drain",
        )

    def dataset_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.client.stats(DATASET)["datasets"][DATASET]
        return stats

    def settle(self) -> None:
        """Wait until the hot tier stops changing (promotions and prefetches done): its
        dataset's hot bytes equal over 2 s."""
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            hot = self.dataset_stats()["hot_bytes"]
            if hot != last:
                last, stable_since = hot, time.monotonic()
            elif time.monotonic() - stable_since >= 2.0:
                return
            time.sleep(POLL_S)
        raise RuntimeError("the hot tier did not settle")

    def wait_all_hot(self) -> None:
        self._poll(
            lambda: self.dataset_stats()["hot_shards"] == self.spec.shards,
            "every shard to be hot again",
        )

    def evict_all(self) -> None:
        """Drop every shard from the hot tier (each is archived), after the tier settled."""
        self.settle()
        for name in self.spec.names:
            self.client.evict(DATASET, name)
        hot = self.dataset_stats()["hot_shards"]
        if hot:
            raise RuntimeError(f"{hot} shards still hot after evicting all")

    def _poll(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(POLL_S)
        raise RuntimeError(f"timed out waiting for {what}")

    def close(self) -> None:
        """Stop everything and remove the work directory. Idempotent."""
        self.stop_server()
        if self._s3 is not None:
            self._s3.close()
            self._s3 = None
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None
        if self._seaweed is not None:
            self._seaweed.stop()
            self._seaweed = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
