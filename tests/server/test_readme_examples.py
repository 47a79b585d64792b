"""The README's examples, run as written: the client library's, the access plan's, the
PyTorch loop's and the CLI's against real servers, the engine's on an embedded store. Only
names, paths and sizes are swapped for the test's own (and "cuda" for "cpu" without a
GPU), and every swap must find its text, so an example that changes is run as it now
reads, or this test says what it no longer finds."""

from __future__ import annotations

import functools
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.server.conftest import ServerProcess, poll, unique
from tests.server.test_e2e_cli import Ran, run
from tierstore.client.client import Client

README = Path(__file__).resolve().parents[2] / "README.md"


def section_text(section: str) -> str:
    """The README's section headed ``section``."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def example(section: str, index: int = 0) -> str:
    """The ``index``-th ```python block of the README section headed ``section``."""
    return str(re.findall(r"```python\n(.*?)```", section_text(section), re.S)[index])


def succeeded(env: dict[str, str], args: list[str]) -> Ran | None:
    """What ``tierstore ARGS`` did, if it succeeded."""
    ran = run(env, *args)
    return ran if ran.returncode == 0 else None


def swapped(code: str, swaps: dict[str, str]) -> str:
    for old, new in swaps.items():
        assert old in code, f"the README example no longer holds {old!r}:\n{code}"
        code = code.replace(old, new)
    return code


def test_the_client_library_example_runs_as_written(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's own connection: the three variables the banner prints.
    monkeypatch.setenv("TIERSTORE_ADDRESS", server.address)
    monkeypatch.setenv("TIERSTORE_TOKEN", server.token)
    monkeypatch.setenv("TIERSTORE_CA", str(server.ca_path))
    monkeypatch.delenv("TIERSTORE_TOKEN_FILE", raising=False)
    name = unique("readme")
    source, copy = tmp_path / "file", tmp_path / "copy"
    source.write_bytes(bytes(range(256)) * 1000)
    (tmp_path / "parquet").mkdir()
    for part in range(2):
        pq.write_table(
            pa.table({"x": range(part * 100, part * 100 + 100)}),
            tmp_path / "parquet" / f"{part}.parquet",
        )
    code = swapped(
        example("The client library"),
        {
            '"imagenet"': repr(name),
            '"/path/to/file"': repr(str(source)),
            '"/tmp/file"': repr(str(copy)),
            '"parquet/"': repr(str(tmp_path / "parquet")),
        },
    )
    scope: dict[str, object] = {}
    exec(compile(code, f"{README}: The client library", "exec"), scope)
    client = scope["client"]

    assert scope["table"] == pa.table({"label": [1, 2, 3]})
    array = scope["array"]
    assert isinstance(array, np.ndarray)
    assert array.shape == (1024, 768) and array.dtype == np.float16
    assert scope["part"] == pa.py_buffer(b"bytes")  # b"any bytes"[4:9]
    assert copy.read_bytes() == source.read_bytes()
    last = scope["sink"]  # iter_bytes's last piece: the file's end
    assert isinstance(last, bytearray) and len(last) > 0 and source.read_bytes().endswith(last)
    big = client.read_table(name, "train/big")  # type: ignore[attr-defined]
    assert sorted(big.column("x").to_pylist()) == list(range(200))
    assert [info.name for info in client.list(name)] == [  # type: ignore[attr-defined]
        "emb/0",
        "raw/file",
        "train/00001",
        "train/big",
    ]  # raw/blob deleted at the end

    plan = swapped(example("Placement: policies, plans, simulation"), {'"imagenet"': repr(name)})
    exec(compile(plan, f"{README}: access plans", "exec"), scope)
    client.close_plan(scope["job"])  # type: ignore[attr-defined]


def test_the_embedded_engine_example_runs_as_written(tmp_path: Path) -> None:
    code = swapped(
        example("The client library", 1),
        {
            '"/var/lib/tierstore"': repr(str(tmp_path / "data")),
            # The archive it names is not there: the in-memory one its comment offers.
            "open_store(settings) as store": "open_store(settings, archive=MemoryTier()) as store",
            "hot_capacity_bytes=500 << 30": "hot_capacity_bytes=1 << 30",
        },
    )
    exec(
        compile("from tierstore.tiers.memory import MemoryTier\n" + code, str(README), "exec"),
        {},
    )
    assert (tmp_path / "data" / "hot").is_dir()


def test_the_cli_examples_run_as_written(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node of its own: the example rotates and retires the node's master keys.
    node = spawn_server(tmp_path / "node")
    env = node.cli_env()
    monkeypatch.chdir(tmp_path)
    for index in (1, 2, 3):
        table = pa.table({"label": np.arange(1000, dtype=np.int64) + index})
        (tmp_path / "shards" / "train").mkdir(parents=True, exist_ok=True)
        with pa.ipc.new_file(
            tmp_path / "shards" / "train" / f"0000{index}.arrow", table.schema
        ) as w:
            w.write_table(table)
    name = unique("readme")
    cli, placement = (
        [
            re.sub(r"\s+#.*", "", line).replace("imagenet", name)
            for line in re.findall(r"```sh\n(.*?)```", section_text(section), re.S)[0].splitlines()
            # seconds each (piped into too); tests/cli runs it, stdin and all
            if "tierstore simulate" not in line
        ]
        for section in ("The CLI", "Placement: policies, plans, simulation")
    )
    # The placement example works on the CLI example's shards, before they are deleted.
    assert cli[-2:] == [
        f"tierstore rm {name} train/00001.arrow",
        f"tierstore dataset rm {name} --force",
    ]
    lines = cli[:-2] + placement + cli[-2:]
    assert len(lines) > 20
    created: dict[str, Any] = {}
    for line in lines:
        args = shlex.split(line.replace("<token-id>", str(created.get("token_id"))))
        stdout_to = None
        if ">" in args:
            stdout_to = Path(args[args.index(">") + 1])
            args = args[: args.index(">")]
        assert args[0] == "tierstore"
        if args[1:3] == ["keys", "retire"]:  # "once resealed": the mover reseals the archive
            ran = poll(functools.partial(succeeded, env, args[1:]), 60, "the key's retirement")
        else:
            ran = run(env, *args[1:])
        assert ran.returncode == 0, f"{line}: {ran.stderr.decode()}"
        if args[1:3] == ["token", "create"]:
            created = json.loads(ran.stdout)
        if stdout_to is not None:
            stdout_to.write_bytes(ran.stdout)
    assert len((tmp_path / "part.bin").read_bytes()) == 1024
    with pa.ipc.open_stream(tmp_path / "shard.arrow") as shard:
        assert shard.read_all().column("label").to_pylist()[:2] == [1, 2]
    assert (tmp_path / "trace.jsonl.gz").stat().st_size > 0


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")  # no GPU here
def test_the_pytorch_example_runs_as_written(
    admin: Client, server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("TIERSTORE_ADDRESS", server.address)
    monkeypatch.setenv("TIERSTORE_TOKEN", server.token)
    monkeypatch.setenv("TIERSTORE_CA", str(server.ca_path))
    monkeypatch.delenv("TIERSTORE_TOKEN_FILE", raising=False)
    name = unique("readme")
    admin.create_dataset(name, encrypted=False)
    for index in range(4):
        rows = np.arange(300, dtype=np.int64) + 1000 * index
        admin.put(name, f"train/{index:05d}", pa.table({"id": rows}))
    code = swapped(
        example("PyTorch"),
        {
            '"imagenet"': repr(name),
            "num_workers=8": "num_workers=2",  # twice: the dataset's and the loader's
            '"cuda"': repr("cuda" if torch.cuda.is_available() else "cpu"),
            "        ...\n": "        seen.append((epoch, batch['id'].tolist(), len(loader)))\n",
        },
    )
    scope: dict[str, object] = {"seen": (seen := [])}
    exec(compile(code, f"{README}: PyTorch", "exec"), scope)
    for epoch in range(3):
        batches = [ids for read, ids, _ in seen if read == epoch]
        assert sorted(row for ids in batches for row in ids) == sorted(
            1000 * index + row for index in range(4) for row in range(300)
        )
        assert all(length == len(batches) for read, _, length in seen if read == epoch)
