"""A dataset made with an Arrow schema takes only shards of that schema, through the
client library and the CLI, against the real server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.server.conftest import ServerProcess, unique
from tests.server.test_e2e_cli import one_line_error, run
from tierstore.client.client import Client
from tierstore.errors import InvalidArgument, SchemaMismatch

SCHEMA = pa.schema([pa.field("label", pa.int64()), pa.field("path", pa.string())])


def test_the_library_makes_a_dataset_of_one_schema(admin: Client) -> None:
    name = unique()
    settings = admin.create_dataset(name, encrypted=False, schema=SCHEMA)
    assert pa.ipc.read_schema(pa.py_buffer(settings.arrow_schema)).equals(SCHEMA)
    assert admin.get_dataset(name) == settings
    good = pa.table({"label": [1, 2], "path": ["a", "b"]}, schema=SCHEMA)
    admin.put(name, "good", good)
    admin.put(name, "streamed", good.to_reader())
    for value in (b"raw", np.zeros(3), pa.table({"label": [1], "path": [b"x"]})):
        with pytest.raises(SchemaMismatch):
            admin.put(name, "bad", value)
    assert [shard.name for shard in admin.list(name)] == ["good", "streamed"]
    assert admin.read_table(name, "good").equals(good)
    with pytest.raises(InvalidArgument, match="schema must be a pyarrow"):
        admin.create_dataset(unique(), schema="label: int64")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["arrow", "parquet"])
def test_the_cli_makes_a_dataset_of_a_files_schema(
    server: ServerProcess, tmp_path: Path, kind: str
) -> None:
    env = server.cli_env()
    name = unique()
    source = tmp_path / f"schema.{kind}"
    table = pa.table({"label": [7], "path": ["p"]}, schema=SCHEMA)
    if kind == "parquet":
        pq.write_table(table, source)
    else:
        with pa.ipc.new_file(source, SCHEMA) as writer:
            writer.write_table(table)
    made = run(env, "dataset", "create", name, "--no-encrypted", "--schema", str(source))
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["schema"] == ["label: int64", "path: string"]
    listed = {d["name"]: d for d in json.loads(run(env, "dataset", "ls").stdout)}
    assert listed[name]["schema"] == ["label: int64", "path: string"]
    table_text = run(env, "dataset", "ls", json_output=False)
    assert b"2 columns" in table_text.stdout
    if kind == "arrow":  # the file itself goes in, as an Arrow shard of that schema
        stored = run(env, "put", name, str(source), "--kind", "arrow")
        assert stored.returncode == 0, stored.stderr
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"not a table")
    refused = run(env, "put", name, str(raw))
    assert refused.returncode == 2
    assert "SchemaMismatch" in one_line_error(refused) and "raw bytes" in one_line_error(refused)
    not_arrow = run(env, "dataset", "create", unique(), "--schema", str(raw))
    assert not_arrow.returncode == 2 and "MalformedArrow" in one_line_error(not_arrow)
    missing = run(env, "dataset", "create", unique(), "--schema", str(tmp_path / "nope.arrow"))
    assert missing.returncode == 2  # was a traceback
    assert "--schema" in one_line_error(missing) and "cannot read it" in one_line_error(missing)
