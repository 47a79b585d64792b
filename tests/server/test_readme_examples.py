"""The README's Python examples, run as written against the real server (the client
library's and the access plan's) and an embedded store (the engine's): only names and
paths are swapped for the test's own, and every swap must find its text, so an example
that changes is run as it now reads, or this test says what it no longer finds."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.server.conftest import ServerProcess, unique

README = Path(__file__).resolve().parents[2] / "README.md"


def example(section: str, index: int = 0) -> str:
    """The ``index``-th ```python block of the README section headed ``section``."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], re.S)
    return str(blocks[index])


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
