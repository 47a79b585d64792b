"""Answers that grow with the data stay under the message limit: ListShards pages,
whatever the shards' frame counts, ListDatasets pages, whatever the datasets'
schemas, and GetTierStats's reports of lost shards.

Each ShardInfo carries every frame's size, so a page of 1,000 shards of many small
frames could pass the 80 MiB message limit, and the dataset could not be listed at
all; a node reports every unreadable record, so one with very many could not give its
stats. The server's limit is lowered here (to 64 KiB) so that a few shards show it
without gigabytes of data.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from tests.engine.backdoor import put_raw_record
from tierstore.cli.main import app as cli
from tierstore.client.connect import connect
from tierstore.server import app
from tierstore.types import DatasetSettings, Role, ShardKind
from tierstore.v1 import datasets_pb2, shards_pb2

from .servers import invoke, serving

LIMIT = 64 * 1024
FRAMES = 2_000  # about 2 KB of frame sizes per shard: 32 of them fill the limit
SHARDS = 60
LOST = 250  # about 115 KB of reports of 400-character names
DATASETS = 40  # about 3 KB of Arrow schema each: over 100 KB in all


def test_a_listing_of_shards_of_many_frames_comes_in_pages_under_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "MAX_MESSAGE_BYTES", LIMIT)
    with serving(tmp_path, insecure=True, datasets={"many": DatasetSettings()}) as running:
        names = [f"s{i:03d}" for i in range(SHARDS)]
        for index, name in enumerate(names):
            frames = [bytes([index])] * FRAMES
            running.store.put_frames("many", name, ShardKind.RAW, frames)
        token = running.token("reader", ("many", Role.READER))
        (page,) = invoke(
            running.channel(),
            "/tierstore.v1.ShardService/ListShards",
            shards_pb2.ListShardsRequest(dataset="many", limit=SHARDS),
            token,
        )
        assert 0 < len(page.shards) < SHARDS
        assert page.ByteSize() < LIMIT
        assert page.next_start_after == page.shards[-1].name
        with connect(running.address, token=token, insecure=True, local_reads=False) as client:
            listed = client.list("many")
            assert [info.name for info in listed] == names
            assert all(info.frame_sizes == (1,) * FRAMES for info in listed)
            # A limit is still the most a listing holds, over short pages too.
            assert [info.name for info in client.list("many", limit=45)] == names[:45]
            after = client.list("many", start_after=names[10], limit=40)
            assert [info.name for info in after] == names[11:51]


def test_tier_stats_of_a_node_with_many_lost_shards_stay_under_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every unreadable catalog record is reported: a dataset whose records all became
    # unreadable made GetTierStats pass the message limit, so no stats at all.
    monkeypatch.setattr(app, "MAX_MESSAGE_BYTES", LIMIT)
    with serving(tmp_path, insecure=True, datasets={"lost": DatasetSettings()}) as running:
        names = [f"{i:03d}".ljust(400, "x") for i in range(LOST)]
        for name in names:
            running.store.put("lost", name, b"bytes")
            put_raw_record(running.store, "lost", name, b'{"v":1,"na')
        running.store.list("lost")  # a walk notes the damage (opening the store would)
        admin = running.token("admin", ("*", Role.ADMIN))
        with connect(running.address, token=admin, insecure=True) as client:
            stats = client.stats()
            shown = [entry.split(":")[0] for entry in stats["data_loss"]]
            assert 0 < len(shown) < LOST
            assert shown == [f"lost/{name}" for name in names[: len(shown)]]
            assert stats["data_loss_omitted"] == LOST - len(shown)
        env = {"TIERSTORE_ADDRESS": running.address, "TIERSTORE_TOKEN": admin, "COLUMNS": "200"}
        printed = CliRunner().invoke(cli, ["--insecure", "stats"], env=env)
        assert printed.exit_code == 0, printed.output
        assert f"{LOST - len(shown)} more not shown" in printed.stdout


def test_a_listing_of_datasets_with_large_schemas_comes_in_pages_under_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ListDatasets sent every dataset in one answer, each with its schema: 1,500
    # datasets of a 1,000-column schema passed the 80 MiB limit, and no caller could
    # list datasets at all (RESOURCE_EXHAUSTED every time).
    monkeypatch.setattr(app, "MAX_MESSAGE_BYTES", LIMIT)
    wide = pa.schema([(f"column_{i:03d}_{'x' * 40}", pa.float32()) for i in range(30)])
    with serving(tmp_path, insecure=True) as running:
        admin = running.token("admin", ("*", Role.ADMIN))
        names = [f"ds{i:03d}" for i in range(DATASETS)]
        seen = names[5::7]  # a reader's grants, spread over the pages
        reader = running.token("reader", *((name, Role.READER) for name in seen))
        with connect(running.address, token=admin, insecure=True) as client:
            for name in names:
                client.create_dataset(name, encrypted=False, schema=wide)
            (page,) = invoke(
                running.channel(),
                "/tierstore.v1.DatasetService/ListDatasets",
                datasets_pb2.ListDatasetsRequest(limit=DATASETS),
                admin,
            )
            assert 0 < len(page.datasets) < DATASETS
            assert page.ByteSize() < LIMIT
            assert page.next_start_after == page.datasets[-1].name
            (short,) = invoke(
                running.channel(),
                "/tierstore.v1.DatasetService/ListDatasets",
                datasets_pb2.ListDatasetsRequest(start_after=names[10], limit=3),
                admin,
            )
            assert [d.name for d in short.datasets] == names[11:14]
            assert short.next_start_after == names[13]
            with pytest.raises(grpc.RpcError) as bad:
                invoke(
                    running.channel(),
                    "/tierstore.v1.DatasetService/ListDatasets",
                    datasets_pb2.ListDatasetsRequest(start_after="../up"),
                    admin,
                )
            assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "invalid dataset name '../up'" in str(bad.value.details())
            listed = client.list_datasets()
            assert [name for name, _ in listed] == names
            assert all(pa.ipc.read_schema(pa.py_buffer(s.arrow_schema)) == wide for _, s in listed)
            # A client before pages asks with no limit, and takes its answer for all of
            # them: it gets all of them, or the error it got before, never a first page.
            with pytest.raises(grpc.RpcError) as whole:
                invoke(
                    running.channel(),
                    "/tierstore.v1.DatasetService/ListDatasets",
                    datasets_pb2.ListDatasetsRequest(),
                    admin,
                )
            assert whole.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        (everything,) = invoke(
            running.channel(),
            "/tierstore.v1.DatasetService/ListDatasets",
            datasets_pb2.ListDatasetsRequest(),
            reader,
        )
        assert [d.name for d in everything.datasets] == seen and not everything.next_start_after
        with connect(running.address, token=reader, insecure=True) as client:
            assert [name for name, _ in client.list_datasets()] == seen
        env = {"TIERSTORE_ADDRESS": running.address, "TIERSTORE_TOKEN": admin}
        printed = CliRunner().invoke(cli, ["--insecure", "dataset", "ls", "--json"], env=env)
        assert printed.exit_code == 0, printed.output
        assert [entry["name"] for entry in json.loads(printed.stdout)] == names
