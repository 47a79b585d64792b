"""Bad input and failures through the real server: each a specific, clear error (or, for a
restart, no error and no sample lost or repeated)."""

from __future__ import annotations

import inspect
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from torch.utils.data import DataLoader

from tests.server.conftest import ServerProcess, poll
from tests.server.test_restart import flip_hot_frame
from tierstore import errors
from tierstore.client.client import Client
from tierstore.server.tls import ensure_tls_material
from tierstore.torch import IterableDataset, MapDataset
from tierstore.torch.feed import DeviceFeeder
from tierstore.torch.source import service_source

from .conftest import Samples, sample_table, write_samples
from .test_dataloader import batch_ids, ids_of, loader_order

pytestmark = pytest.mark.timeout(180)


def fresh_dataset(client: Client, shards: dict[str, Any]) -> str:
    name = f"torch-bad-{uuid.uuid4().hex[:10]}"
    client.create_dataset(name, encrypted=False)
    for shard, value in shards.items():
        client.put(name, shard, value)
    return name


def test_unknown_dataset_shard_and_columns(samples: Samples) -> None:
    with pytest.raises(errors.DatasetNotFound):
        IterableDataset("no-such-dataset", **samples.connection)
    with pytest.raises(errors.ShardNotFound, match="'part-999'"):
        IterableDataset(samples.dataset, shards=["part-000", "part-999"], **samples.connection)
    with pytest.raises(errors.InvalidArgument, match=r"unknown column\(s\) \['nope'\]"):
        MapDataset(samples.dataset, columns=["id", "nope"], **samples.connection)


def test_shards_may_be_any_iterable_of_names(samples: Samples) -> None:
    # A generator was a bare TypeError ("object of type 'generator' has no len()"), and
    # so was an int ("'int' object is not iterable").
    names = ["part-001", "part-000"]
    chosen = MapDataset(samples.dataset, shards=(n for n in names), **samples.connection)
    assert chosen.shards.names == ("part-000", "part-001")
    streamed = IterableDataset(samples.dataset, shards=iter(names), **samples.connection)
    assert streamed.shards.names == ("part-000", "part-001")
    for bad in (3, "part-000", [b"part-000"], object()):
        with pytest.raises(errors.InvalidArgument, match="must be a list of shard names"):
            IterableDataset(samples.dataset, shards=bad, **samples.connection)  # type: ignore[arg-type]


def test_columns_may_be_any_iterable_of_names(samples: Samples) -> None:
    # A generator was a bare TypeError ("object of type 'generator' has no len()").
    chosen = MapDataset(samples.dataset, columns=(c for c in ["id"]), **samples.connection)
    assert list(chosen[0]) == ["id"]
    streamed = IterableDataset(samples.dataset, columns=iter(["id"]), **samples.connection)
    assert list(next(iter(streamed))) == ["id"]
    for bad in (3, "id", [b"id"]):
        with pytest.raises(errors.InvalidArgument, match="must be a list of column names"):
            MapDataset(samples.dataset, columns=bad, **samples.connection)  # type: ignore[arg-type]


#: every option of the plugin's public classes that takes True or False
BOOLEAN_OPTIONS = {
    IterableDataset: ["shuffle", "drop_last", "pin_memory", "declare_plan", "even_ranks"],
    MapDataset: [],
    DeviceFeeder: [],
}


def test_the_boolean_options_are_all_listed_here() -> None:
    for kind, options in BOOLEAN_OPTIONS.items():
        parameters = inspect.signature(kind.__init__).parameters.values()
        assert [p.name for p in parameters if p.annotation == "bool"] == options


@pytest.mark.parametrize("value", ["no", "False", 0, 1, None, np.int8(0)], ids=repr)
@pytest.mark.parametrize("option", BOOLEAN_OPTIONS[IterableDataset])
def test_a_boolean_option_takes_only_true_or_false(
    samples: Samples, option: str, value: object
) -> None:
    # Any value was taken for its truth: shuffle="no" shuffled.
    with pytest.raises(errors.InvalidArgument, match=f"^{option} must be True or False, got "):
        IterableDataset(samples.dataset, **{option: value}, **samples.connection)
    taken = IterableDataset(samples.dataset, **{option: np.bool_(True)}, **samples.connection)
    assert getattr(taken, option) is True  # numpy's bools are bools


def test_a_count_takes_only_an_int(samples: Samples) -> None:
    # True was taken as 1 (and a count_threads of 0 or "8" went on unchecked).
    for option, low in (("cache_shards", 1), ("count_threads", 1)):
        for value in (True, low - 1, "8", 2.0):
            with pytest.raises(errors.InvalidArgument, match=f"^{option} must be an int >= {low}"):
                MapDataset(samples.dataset, **{option: value}, **samples.connection)
    for value in (True, -1, "2"):
        with pytest.raises(errors.InvalidArgument, match=r"^prefetch must be an int >= 0"):
            DeviceFeeder([], "cpu", prefetch=value)  # type: ignore[arg-type]
    assert len(MapDataset(samples.dataset, cache_shards=1, count_threads=1, **samples.connection))


def test_a_resume_state_whose_shuffle_is_no_bool_is_malformed(samples: Samples) -> None:
    dataset = IterableDataset(samples.dataset, shuffle=False, **samples.connection)
    state = dataset.state_dict()
    with pytest.raises(errors.InvalidArgument, match=r"malformed .*shuffle is 'False'"):
        dataset.load_state_dict({**state, "shuffle": "False"})  # was read as True


def test_an_epoch_is_refused_when_set_unless_an_int_below_2_63(samples: Samples) -> None:
    # The epoch lives in 64 signed bits: set_epoch(2**64 + 5) read epoch 5's order, and
    # set_epoch(2**63) was taken, then state_dict() failed on a negative epoch.
    dataset = IterableDataset(samples.dataset, seed=3, **samples.connection)
    dataset.set_epoch(5)
    state = dataset.state_dict()
    for epoch in (2**63, 2**64 + 5):
        below = f"^epoch must be below 9223372036854775808, got {epoch}$"
        with pytest.raises(errors.InvalidArgument, match=below):
            dataset.set_epoch(epoch)
        with pytest.raises(errors.InvalidArgument, match=below):
            dataset.epoch_length(epoch=epoch)
        with pytest.raises(errors.InvalidArgument, match=below):
            dataset.load_state_dict({**state, "epoch": epoch})
    for epoch in (-1, True, 5.0, "5", None):
        with pytest.raises(errors.InvalidArgument, match=r"^epoch must be an int >= 0"):
            dataset.set_epoch(epoch)  # type: ignore[arg-type]
    assert dataset.state_dict() == state
    last = 2**63 - 1
    dataset.set_epoch(last)
    assert dataset.state_dict()["epoch"] == last
    loader = DataLoader(dataset, batch_size=16, num_workers=2, multiprocessing_context="fork")
    assert batch_ids(loader) == loader_order(samples, 2, 16, seed=3, epoch=last)


def test_raw_shards_and_empty_datasets(admin: Client, samples: Samples) -> None:
    raw = fresh_dataset(admin, {"blob": b"\x01" * 100, "table": sample_table(0, 3)})
    with pytest.raises(errors.WrongShardKind, match=r"\['blob'\] hold raw bytes"):
        IterableDataset(raw, **samples.connection)
    assert len(MapDataset(raw, shards=["table"], **samples.connection)) == 3
    empty = fresh_dataset(admin, {})
    with pytest.raises(errors.InvalidArgument, match="has no shards at all"):
        IterableDataset(empty, **samples.connection)


def test_a_wrong_ca_is_raised_at_once_not_retried_as_an_outage(
    samples: Samples, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = ensure_tls_material(tmp_path / "other-node")
    source = service_source(samples.address, samples.token, other.ca_cert_path, retry_s=30)
    with (
        caplog.at_level(logging.WARNING, "tierstore.torch.source"),
        pytest.raises(errors.ServerCertificateRejected) as caught,
    ):
        source.read(samples.dataset, samples.shards[0])
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert any("while reading shard" in note for note in caught.value.__notes__)
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert retries == []


def test_schema_drift_stops_the_loader_with_both_shards_named(
    admin: Client, samples: Samples
) -> None:
    drifted = sample_table(1, 5).set_column(0, "id", pa.array(np.arange(5, dtype=np.int32)))
    name = fresh_dataset(admin, {"a": sample_table(0, 5), "b": drifted})
    dataset = IterableDataset(name, shuffle=False, **samples.connection)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(errors.InvalidArgument, match="column 'id' is int32 in shard 'b'"):
        list(loader)
    with pytest.raises(errors.InvalidArgument, match="schema drift"):
        MapDataset(name, **samples.connection)  # found while counting rows


def test_a_column_a_shard_has_twice_is_refused_by_name(admin: Client, samples: Samples) -> None:
    # Selecting it raised a bare KeyError; taking every column made samples of one 'id'.
    ids = pa.array(np.arange(5, dtype=np.int64))
    twice = pa.table([ids, pa.array(np.arange(5) * 2), ids], names=["id", "label", "id"])
    name = fresh_dataset(admin, {"a": twice})
    with pytest.raises(errors.InvalidArgument, match=r"\['id'\].*more than once in shard 'a'"):
        IterableDataset(name, columns=["label", "id"], **samples.connection)
    with pytest.raises(errors.UnsupportedData, match=r"\['id'\].*more than once"):
        IterableDataset(name, **samples.connection)
    assert MapDataset(name, columns=["label"], **samples.connection)[1] == {"label": 2}
    # A later shard with a selected column twice is schema drift, named as such.
    later = fresh_dataset(admin, {"a": sample_table(0, 5), "b": twice})
    with pytest.raises(errors.InvalidArgument, match=r"shard 'b' has column\(s\) \['id'\] more"):
        MapDataset(later, columns=["id"], **samples.connection)
    streamed = IterableDataset(later, columns=["id"], shuffle=False, **samples.connection)
    with pytest.raises(errors.InvalidArgument, match=r"shard 'b' has column\(s\) \['id'\] more"):
        list(streamed)


def test_a_shard_deleted_after_the_object_was_made_says_so(admin: Client, samples: Samples) -> None:
    # It failed every later epoch with a bare "no shard 'b' in dataset ...", as if the
    # name had been mistyped, though the object listed it.
    name = fresh_dataset(admin, {name: sample_table(i, 5) for i, name in enumerate("abc")})
    streamed = IterableDataset(name, shuffle=False, columns=["id"], **samples.connection)
    mapped = MapDataset(name, columns=["id"], **samples.connection)
    admin.delete(name, "b")
    deleted = r"shard 'b' of dataset '.*' was deleted after this dataset object was made"
    for epoch in range(2):
        streamed.set_epoch(epoch)
        loader = DataLoader(streamed, batch_size=None, num_workers=0)
        with pytest.raises(errors.ShardNotFound, match=deleted) as caught:
            list(loader)
        assert "make a new dataset object" in str(caught.value)
        assert "from an epoch's start" in str(caught.value)  # an old state will not fit
    with pytest.raises(errors.ShardNotFound, match=deleted):
        mapped[7]
    assert int(mapped[12]["id"]) == 2002  # the other shards still read


def test_more_workers_than_shards(admin: Client, samples: Samples) -> None:
    name = fresh_dataset(admin, {"a": sample_table(0, 7), "b": sample_table(1, 4)})
    dataset = IterableDataset(name, **samples.connection)
    loader = DataLoader(dataset, batch_size=3, num_workers=3, multiprocessing_context="fork")
    # The idle worker yields nothing (and warns, in its own process); nothing hangs.
    assert sorted(ids_of(loader)) == [*range(7), *range(1000, 1004)]


def test_a_server_restart_mid_epoch_neither_repeats_nor_drops_samples(
    spawn_server: Callable[..., ServerProcess],
    restart_in_place: Callable[[ServerProcess], None],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Through the service: the client's local path (when it has one) reads the hot tier in
    # place and would not notice the server going away.
    monkeypatch.setenv("TIERSTORE_LOCAL_READS", "0")
    running = spawn_server()
    with running.connect() as client:
        samples = write_samples(running, client)

    def make(**kwargs: Any) -> IterableDataset:
        return IterableDataset(
            samples.dataset, seed=6, read_ahead=0, **samples.connection, **kwargs
        )

    def into_second_shard(dataset: IterableDataset) -> tuple[Any, list[Any]]:
        iterator, head = iter(dataset), []
        while not (dataset.state_dict()["shard"] >= 1 and dataset.state_dict()["row"] > 0):
            head.append(next(iterator))
        return iterator, head

    reference = ids_of(make())

    # 1. The loader retries in place while the server is away, then carries on.
    iterator, head = into_second_shard(make())
    assert running.stop() == 0
    with (
        ThreadPoolExecutor(1) as pool,
        caplog.at_level(logging.WARNING, "tierstore.torch.source"),
    ):
        rest = pool.submit(lambda: list(iterator))
        poll(
            lambda: rest.done() or any("unavailable" in r.getMessage() for r in caplog.records),
            60,
            "the loader to retry a read",
        )
        assert not rest.done(), f"the loader stopped instead of retrying: {rest.exception()!r}"
        restart_in_place(running)
        tail = rest.result(timeout=120)
    assert ids_of(head + tail) == reference

    # 2. Out of retries: the error propagates, and a resume from the state loses nothing.
    dataset = make(retry_s=0.5)
    iterator, head = into_second_shard(dataset)
    assert running.stop() == 0
    more = []
    with pytest.raises(errors.Unavailable) as caught:
        for sample in iterator:
            more.append(sample)
    assert any("while reading shard" in note for note in caught.value.__notes__)
    state = dataset.state_dict()
    restart_in_place(running)
    resumed = make()
    resumed.load_state_dict(state)
    assert ids_of(head + more) + ids_of(resumed) == reference

    # 3. A dataset made while the server is away waits for it as a read does (its
    # listing failed at once); made while it stays away, it fails once out of retries.
    assert running.stop() == 0
    with (
        ThreadPoolExecutor(2) as pool,
        caplog.at_level(logging.WARNING, "tierstore.torch.source"),
    ):
        made = pool.submit(make)
        mapped = pool.submit(lambda: MapDataset(samples.dataset, **samples.connection))
        poll(
            lambda: (
                made.done()
                or sum(
                    f"listing dataset {samples.dataset}" in r.getMessage() for r in caplog.records
                )
                >= 2
            ),
            60,
            "the datasets to retry their listing",
        )
        assert not made.done(), f"made without retrying: {made.exception()!r}"
        restart_in_place(running)
        assert ids_of(made.result(timeout=120)) == reference
        assert len(mapped.result(timeout=120)) == len(reference)
    assert running.stop() == 0
    with pytest.raises(errors.Unavailable):
        make(retry_s=0.5)


#: A training script whose step fails while the server is away: its iterator lives on in
#: the traceback, with a shard read ahead of it retrying (retry_s=600).
FAILING_SCRIPT = """
import os, sys, threading
from tierstore.torch import IterableDataset
from tierstore.torch.source import service_source

class Told:  # the service source, telling when each read is over
    def __init__(self, inner):
        self.inner, self.over = inner, threading.Semaphore(0)
    def client(self):
        return self.inner.client()
    def read(self, dataset, shard, stop=None):
        try:
            return self.inner.read(dataset, shard, stop)
        finally:
            self.over.release()

source = Told(service_source(os.environ["ADDRESS"], os.environ["TOKEN"], os.environ["CA"], 600.0))
dataset = IterableDataset(
    os.environ["DATASET"], shuffle=False, read_ahead=1, declare_plan=False, source=source
)
iterator = iter(dataset)
next(iterator)
assert source.over.acquire(timeout=60) and source.over.acquire(timeout=60)  # shards 0 and 1
print("READY", flush=True)
sys.stdin.readline()  # the server is stopped meanwhile
for sample in iterator:
    if int(sample["id"]) >= 1000:  # shard 1's first row: shard 2 is read ahead, and retried
        break
raise RuntimeError("the training step failed")
"""


def started_script(code: str, samples: Samples) -> subprocess.Popen[str]:
    """A Python process running ``code`` on ``samples``' dataset over gRPC (its address,
    token and CA in the environment), its stdin and output piped, as text."""
    env = {
        **os.environ,
        "TIERSTORE_LOCAL_READS": "0",  # the local path would read on without the server
        "DATASET": samples.dataset,
        "ADDRESS": samples.address,
        "TOKEN": samples.token,
        "CA": samples.ca,
    }
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_script_that_fails_with_a_read_ahead_retrying_exits_at_once(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    # Read-ahead threads are the interpreter's to join at exit, and nothing stopped their
    # retries there: a failed script outlived its traceback by the whole retry_s (60 s by
    # default), retrying a shard nobody would read.
    running = spawn_server()
    with running.connect() as client:
        samples = write_samples(running, client, rows=(40, 40, 40))
    script = started_script(FAILING_SCRIPT, samples)
    try:
        assert script.stdout is not None
        assert script.stdout.readline().strip() == "READY"
        assert running.stop() == 0
        output, _ = script.communicate("\n", timeout=60)
    finally:
        script.kill()
        script.wait()
    assert script.returncode == 1, output
    assert "RuntimeError: the training step failed" in output


#: A loader without workers (``num_workers=0``) reading ahead from a node that stops
#: answering, its reads blocked, and Ctrl-C.
INTERRUPTED_SCRIPT = """
import os, sys
from torch.utils.data import DataLoader
from tierstore.torch import IterableDataset
from tierstore.torch.source import service_source

class Told:  # the service source, telling when each read starts
    def __init__(self, inner):
        self.inner = inner
    def client(self):
        return self.inner.client()
    def read(self, dataset, shard, stop=None):
        print("READING", shard, flush=True)
        return self.inner.read(dataset, shard, stop)

source = Told(service_source(os.environ["ADDRESS"], os.environ["TOKEN"], os.environ["CA"], 600.0))
dataset = IterableDataset(
    os.environ["DATASET"], shuffle=False, read_ahead=2, declare_plan=False, source=source
)
print("MADE", flush=True)
sys.stdin.readline()  # the node is frozen meanwhile
for batch in DataLoader(dataset, batch_size=8, num_workers=0):
    pass
"""


def test_ctrl_c_exits_at_once_while_reads_ahead_wait_on_a_frozen_node(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    # A read blocked on a node that stopped answering (SIGSTOP: its connections stay open)
    # is not reached by the read-ahead's stop event; the interpreter joined the pool's
    # threads at exit, so Ctrl-C took until the channel's keepalive gave up (about 78 s).
    running = spawn_server()
    with running.connect() as client:
        samples = write_samples(running, client, rows=(40, 40, 40, 40))
    script = started_script(INTERRUPTED_SCRIPT, samples)
    frozen = False
    try:
        assert script.stdin is not None and script.stdout is not None
        assert script.stdout.readline().strip() == "MADE"
        os.kill(running.pid, signal.SIGSTOP)
        frozen = True
        script.stdin.write("\n")
        script.stdin.flush()
        # Nothing can answer a read that has started: it is blocked on the frozen node.
        assert script.stdout.readline().startswith("READING")
        script.send_signal(signal.SIGINT)
        poll(lambda: script.poll() is not None, 15, "the interrupted script to exit")
        output = script.stdout.read()
    finally:
        script.kill()
        script.wait()
        if frozen:
            os.kill(running.pid, signal.SIGCONT)
    assert "KeyboardInterrupt" in output, output


@pytest.mark.parametrize("local_reads", ["0", "1"], ids=["service", "local-if-any"])
def test_a_tampered_frame_is_data_loss_never_tensors(
    spawn_server: Callable[..., ServerProcess],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    local_reads: str,
) -> None:
    monkeypatch.setenv("TIERSTORE_LOCAL_READS", local_reads)
    data_dir = tmp_path / "tampered"
    running = spawn_server(data_dir)
    with running.connect() as client:
        samples = write_samples(running, client, rows=(30, 30))
        generation = client.stat(samples.dataset, "part-001").generation
    assert running.stop() == 0
    flip_hot_frame(data_dir, generation, 1, 40)  # frame 1: the shard's first record batch
    running.start()
    connection = {**samples.connection, "address": running.address}
    dataset = IterableDataset(samples.dataset, shuffle=False, **connection)
    iterator = iter(dataset)
    assert ids_of([next(iterator) for _ in range(30)]) == list(range(30))  # the intact shard
    with pytest.raises(errors.DataLoss) as caught:
        next(iterator)
    assert any("part-001" in note for note in caught.value.__notes__)
    loader = DataLoader(dataset, batch_size=8, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(errors.DataLoss, match="part-001"):
        list(loader)
    # A map-style dataset reads no data when made (row counts are the catalog's): the
    # tampered frame is found when its shard is read, and the other shard still reads.
    mapped = MapDataset(samples.dataset, **connection)
    assert int(mapped[29]["id"]) == 29
    with pytest.raises(errors.DataLoss):
        mapped[30]
