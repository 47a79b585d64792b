"""Data loss the node reports reaches its admins through GetTierStats (and `tierstore
stats`), each caller seeing only the datasets it may see."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests.engine.backdoor import put_raw_record
from tests.server.servers import serving
from tierstore.cli.main import app
from tierstore.client.connect import connect
from tierstore.types import DatasetSettings, Role


def test_tier_stats_name_the_damaged_shards_of_the_datasets_shown(tmp_path: Path) -> None:
    datasets = {"mine": DatasetSettings(), "theirs": DatasetSettings()}
    with serving(tmp_path, insecure=True, datasets=datasets) as running:
        for dataset in datasets:
            running.store.put(dataset, "s", b"bytes")
            put_raw_record(running.store, dataset, "s", b'{"v":1,"na')
        running.store.list("mine")  # a walk notes the damage (opening the store would)
        running.store.list("theirs")
        admin = running.token("admin", ("*", Role.ADMIN))
        mine = running.token("tenant", ("mine", Role.READER))
        with connect(running.address, token=admin, insecure=True) as client:
            reported = client.stats()["data_loss"]
            assert [entry.split(":")[0] for entry in reported] == ["mine/s", "theirs/s"]
            assert [e.split(":")[0] for e in client.stats("theirs")["data_loss"]] == ["theirs/s"]
        env = {"TIERSTORE_ADDRESS": running.address, "TIERSTORE_TOKEN": admin, "COLUMNS": "200"}
        shown = CliRunner().invoke(app, ["--insecure", "stats"], env=env)
        assert shown.exit_code == 0, shown.output
        assert "data loss reported" in shown.stdout and "theirs/s" in shown.stdout
        as_json = CliRunner().invoke(app, ["--insecure", "--json", "stats"], env=env)
        assert [e.split(":")[0] for e in json.loads(as_json.stdout)["data_loss"]] == [
            "mine/s",
            "theirs/s",
        ]
        with connect(running.address, token=mine, insecure=True) as client:
            assert [entry.split(":")[0] for entry in client.stats()["data_loss"]] == ["mine/s"]
            running.store.delete("mine", "s")
            assert client.stats()["data_loss"] == []
